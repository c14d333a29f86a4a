//! Raw-frame traffic over AF_PACKET sockets: a paced sender and a counting receiver. The
//! end-to-end tests and the demo use them on veth pairs inside their own namespaces.
//! (AF_PACKET taps run after XDP on receive, so the receiver sees exactly what XDP passed.)

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::Serialize;

const ETH_P_ALL: u16 = 0x0003;

fn if_index(iface: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(iface)
        .map_err(|_| io::Error::other("interface name has a NUL byte"))?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::other(format!(
            "no interface named {iface:?} in this network namespace"
        )));
    }
    Ok(idx)
}

/// An AF_PACKET socket bound to one interface.
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl RawSocket {
    /// A socket that sends on `iface` and receives every frame there.
    pub fn bind(iface: &str) -> io::Result<RawSocket> {
        Self::open(iface, ETH_P_ALL)
    }

    /// A socket that only sends on `iface` (protocol 0: the kernel queues nothing to it).
    pub fn bind_send_only(iface: &str) -> io::Result<RawSocket> {
        Self::open(iface, 0)
    }

    fn open(iface: &str, protocol: u16) -> io::Result<RawSocket> {
        let ifindex = if_index(iface)?;
        // SAFETY: plain socket(2) call.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (protocol.to_be()) as i32) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh, owned descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawSocket { fd, ifindex })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn set_opt(&self, level: i32, name: i32, value: &impl Sized) -> io::Result<()> {
        // SAFETY: value points at a live option value of its own size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                value as *const _ as *const libc::c_void,
                std::mem::size_of_val(value) as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid buffer.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sends `frames` round-robin, `count` frames in all, at most `pps` per second (0: as fast
/// as the socket takes them). Returns how many were sent.
pub fn send_paced(
    sock: &RawSocket,
    frames: &[Vec<u8>],
    count: u64,
    pps: u64,
    deadline: Duration,
) -> io::Result<u64> {
    if frames.is_empty() {
        return Ok(0);
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count && start.elapsed() < deadline {
        if pps > 0 {
            let due = Duration::from_secs_f64(sent as f64 / pps as f64);
            let now = start.elapsed();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(5)));
                continue;
            }
        }
        match sock.send(&frames[(sent % frames.len() as u64) as usize]) {
            Ok(()) => sent += 1,
            // The device queue is full: back off briefly and retry the same frame.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.kind() == io::ErrorKind::WouldBlock =>
            {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// A flow as the receiver sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FlowCount {
    pub packets: u64,
    pub bytes: u64,
}

/// Parses the addresses and ports of a frame (None: not IPv4/IPv6).
pub fn flow_of(frame: &[u8]) -> Option<FlowKey> {
    let mut off = 14;
    let mut et = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    while et == 0x8100 || et == 0x88a8 {
        et = u16::from_be_bytes([*frame.get(off + 2)?, *frame.get(off + 3)?]);
        off += 4;
    }
    let (src, dst, proto, l4, later_fragment) = match et {
        0x0800 => {
            let h = frame.get(off..off + 20)?;
            let ihl = (h[0] & 0x0f) as usize * 4;
            let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
            let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            (src, dst, h[9], off + ihl, frag_off != 0)
        }
        0x86dd => {
            let h = frame.get(off..off + 40)?;
            let s: [u8; 16] = h[8..24].try_into().ok()?;
            let d: [u8; 16] = h[24..40].try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                h[6],
                off + 40,
                false,
            )
        }
        _ => return None,
    };
    let (sport, dport) = match (proto, later_fragment) {
        (6 | 17, false) => {
            let p = frame.get(l4..l4 + 4)?;
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        }
        _ => (0, 0),
    };
    Some(FlowKey {
        src,
        dst,
        proto,
        sport,
        dport,
    })
}

/// Counts the IP frames received on the socket's interface for `duration`.
pub fn count_received(
    sock: &RawSocket,
    duration: Duration,
) -> io::Result<BTreeMap<FlowKey, FlowCount>> {
    // A large buffer: a burst of small frames must not be lost before we read it.
    sock.set_opt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(16i32 << 20))?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    sock.set_opt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    let mut counts: BTreeMap<FlowKey, FlowCount> = BTreeMap::new();
    let mut buf = vec![0u8; 65_536];
    let start = Instant::now();
    while start.elapsed() < duration {
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buffers are valid for their stated sizes.
        let n = unsafe {
            libc::recvfrom(
                sock.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        if let Some(k) = flow_of(&buf[..n as usize]) {
            let c = counts.entry(k).or_default();
            c.packets += 1;
            c.bytes += n as u64;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dots_lab::packet::{Fragment, PacketSpec};

    #[test]
    fn flows_are_parsed_from_frames() {
        let f = PacketSpec::udp("192.0.2.1", "198.51.100.7", 123, 4444).build();
        let k = flow_of(&f).unwrap();
        assert_eq!((k.proto, k.sport, k.dport), (17, 123, 4444));
        let mut v = PacketSpec::tcp("2001:db8::1", "2001:db8::2", 1, 2, 2);
        v.vlans = vec![7];
        assert_eq!(
            flow_of(&v.build()).unwrap().src,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let mut later = PacketSpec::udp("192.0.2.1", "198.51.100.7", 123, 4444);
        later.fragment = Some(Fragment {
            offset: 8,
            more: false,
        });
        assert_eq!(flow_of(&later.build()).unwrap().sport, 0);
        assert!(flow_of(&[0u8; 20]).is_none());
    }
}
