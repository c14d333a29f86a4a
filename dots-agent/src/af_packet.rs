//! One AF_PACKET socket type for everything that sends or counts raw frames on an interface:
//! the DOTS client's telemetry measurement ([`crate::measure`]) here, and in dots-lab the
//! generator's socket sender, the lab's labelled receiver, `dots-lab traffic` and the
//! end-to-end tests. (AF_PACKET taps run after XDP on receive, so a receiver sees exactly
//! what XDP passed.)
//!
//! Written on libc: socket2 (already here, through tokio) has no sockaddr_ll, no sendmmsg,
//! no PACKET_STATISTICS or PACKET_QDISC_BYPASS, and a received frame's packet type (to skip
//! our own outgoing frames) only comes with its sockaddr_ll.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::Serialize;

const ETH_P_ALL: u16 = 0x0003;
/// Most frames per [`PacketSocket::send_batch`] call.
pub const MAX_BATCH: usize = 64;

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

/// An AF_PACKET socket bound to one interface of the calling thread's network namespace.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

/// What [`PacketSocket::recv`] got.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// The frame's length on the wire (the buffer may hold less of it).
    pub len: usize,
    /// A frame this host sent (the tap sees those too).
    pub outgoing: bool,
}

/// The kernel's receive counters of a socket since the previous read (PACKET_STATISTICS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Frames queued to the socket, dropped ones included.
    pub packets: u64,
    /// Frames dropped because the receive buffer was full (we did not read fast enough).
    pub drops: u64,
}

impl PacketSocket {
    /// A socket that sends on `iface` and receives every frame there.
    pub fn open(iface: &str) -> io::Result<PacketSocket> {
        Self::bind(iface, ETH_P_ALL)
    }

    /// A socket that only sends on `iface` (protocol 0: the kernel queues nothing to it).
    pub fn open_send_only(iface: &str) -> io::Result<PacketSocket> {
        Self::bind(iface, 0)
    }

    fn bind(iface: &str, protocol: u16) -> io::Result<PacketSocket> {
        let ifindex = if_index(iface)?;
        // SAFETY: plain socket(2) call.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (protocol.to_be()) as i32) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh, owned descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_ll is valid.
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
        Ok(PacketSocket { fd, ifindex })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn set_opt<T>(&self, level: i32, name: i32, value: &T) -> io::Result<()> {
        // SAFETY: value points at a live option value of its own size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                value as *const T as *const libc::c_void,
                std::mem::size_of::<T>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Hands frames straight to the driver, past the qdisc (for senders that pace
    /// themselves: a qdisc would only add cost). Kernels without the option refuse it.
    pub fn bypass_qdisc(&self) -> io::Result<()> {
        self.set_opt(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1i32)
    }

    /// Sets the receive buffer, above the system's limit if need be (a burst of small
    /// frames must not be lost before we read it).
    pub fn set_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
        self.set_opt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes)
    }

    /// How long [`Self::recv`] waits for a frame before it returns None.
    pub fn set_receive_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        self.set_opt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
    }

    /// Sends one frame.
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

    /// Hands up to [`MAX_BATCH`] frames to the kernel in one `sendmmsg` call. Returns how
    /// many it took: 0 when its buffers are full for now (ENOBUFS, EAGAIN: let it drain).
    pub fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        let n = frames.len().min(MAX_BATCH);
        if n == 0 {
            return Ok(0);
        }
        let mut iov: [libc::iovec; MAX_BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_BATCH];
        // SAFETY: an all-zero mmsghdr is valid (no name, no control data).
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            iov[i].iov_base = frames[i].as_ptr() as *mut libc::c_void;
            iov[i].iov_len = frames[i].len();
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        loop {
            // SAFETY: msgs[..n] point at live iovecs over frames that outlive the call.
            let rc = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => return Ok(0),
                _ => return Err(e),
            }
        }
    }

    /// Receives one frame into `buf` (the rest of a longer frame is cut, its length still
    /// reported). None when the receive timeout passed or a signal interrupted the wait.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buffers are valid for their stated sizes.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(Received {
            len: n as usize,
            outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
        }))
    }

    /// The kernel's counters since the previous call (reading them resets them).
    pub fn statistics(&self) -> io::Result<Statistics> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of_val(&st) as u32;
        // SAFETY: PACKET_STATISTICS writes a struct tpacket_stats into st.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Statistics {
            packets: st.tp_packets as u64,
            drops: st.tp_drops as u64,
        })
    }

    /// Counts the IP frames this socket receives for `duration`, per flow (this host's own
    /// outgoing frames left out).
    pub fn count_flows(&self, duration: Duration) -> io::Result<BTreeMap<FlowKey, FlowCount>> {
        self.set_receive_buffer(16 << 20)?;
        self.set_receive_timeout(Duration::from_millis(100))?;
        let mut counts: BTreeMap<FlowKey, FlowCount> = BTreeMap::new();
        let mut buf = vec![0u8; 65_536];
        let start = Instant::now();
        while start.elapsed() < duration {
            let Some(r) = self.recv(&mut buf)? else {
                continue;
            };
            if r.outgoing {
                continue;
            }
            if let Some(k) = flow_of(&buf[..r.len.min(buf.len())]) {
                let c = counts.entry(k).or_default();
                c.packets += 1;
                c.bytes += r.len as u64;
            }
        }
        Ok(counts)
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
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

    /// Runs `ip` in the calling thread's network namespace.
    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }

    /// Root: a veth pair in a namespace of the test's own thread, gone when the thread ends.
    #[test]
    fn a_batch_sent_on_a_veth_is_counted_on_its_peer() {
        std::thread::spawn(|| {
            // SAFETY: unshare on this thread only; the namespace and its veth pair go away
            // with the thread, also when an assertion fails.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", io::Error::last_os_error());
            ip(&["link", "add", "pa", "type", "veth", "peer", "name", "pb"]);
            ip(&["link", "set", "pa", "up"]);
            ip(&["link", "set", "pb", "up"]);
            let rx = PacketSocket::open("pb").unwrap();
            let tx = PacketSocket::open_send_only("pa").unwrap();
            tx.bypass_qdisc().unwrap();
            let a = PacketSpec::udp("192.0.2.1", "198.51.100.7", 123, 4444).build();
            let b = PacketSpec::tcp("2001:db8::1", "2001:db8::2", 1, 2, 2).build();
            assert_eq!(tx.send_batch(&[&a, &b, &a]).unwrap(), 3);
            assert_eq!(tx.send_batch(&[]).unwrap(), 0);
            tx.send(&b).unwrap();
            let counts = rx.count_flows(Duration::from_millis(300)).unwrap();
            let of = |f: &[u8]| counts.get(&flow_of(f).unwrap()).map(|c| c.packets);
            assert_eq!(of(&a), Some(2), "{counts:?}");
            assert_eq!(of(&b), Some(2), "{counts:?}");
            assert_eq!(
                counts[&flow_of(&a).unwrap()].bytes,
                2 * a.len() as u64,
                "bytes are frame lengths"
            );
            let st = rx.statistics().unwrap();
            assert!(st.packets >= 4 && st.drops == 0, "{st:?}");
            assert!(PacketSocket::open("no-such-if0").is_err());
        })
        .join()
        .unwrap();
    }
}
