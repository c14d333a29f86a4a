//! The receiver: counts the frames arriving on an interface, per labelled source prefix,
//! into atomic counters that the lab reads every second while it runs.
//!
//! It is an AF_PACKET tap, which on receive runs after XDP: it sees exactly what the filter
//! passed (on the scrubber) or what was forwarded (on the customer side). It reads only the
//! first 128 bytes of each frame (MSG_TRUNC still reports the length), and reports the
//! socket's own drops so a receiver that fell behind is never mistaken for a filter.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use dots_agent::traffic::{flow_of, RawSocket};

/// Packet and byte counters per label, plus "other" (last) for unlabelled IP frames.
pub struct Counts {
    pub labels: Vec<(String, Vec<IpNet>)>,
    pub packets: Vec<AtomicU64>,
    pub bytes: Vec<AtomicU64>,
    /// Frames the socket dropped because we did not read fast enough (PACKET_STATISTICS).
    pub socket_drops: AtomicU64,
}

impl Counts {
    pub fn new(labels: Vec<(String, Vec<IpNet>)>) -> Arc<Counts> {
        let n = labels.len() + 1;
        Arc::new(Counts {
            labels,
            packets: (0..n).map(|_| AtomicU64::new(0)).collect(),
            bytes: (0..n).map(|_| AtomicU64::new(0)).collect(),
            socket_drops: AtomicU64::new(0),
        })
    }

    /// Packets counted per label, "other" last.
    pub fn snapshot(&self) -> Vec<u64> {
        self.packets
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    fn slot(&self, src: &std::net::IpAddr) -> usize {
        self.labels
            .iter()
            .position(|(_, nets)| nets.iter().any(|n| n.contains(src)))
            .unwrap_or(self.labels.len())
    }
}

/// Counts frames on `sock` into `counts` until `stop` is set or `max` has passed.
pub fn count_into(
    sock: &RawSocket,
    counts: &Counts,
    stop: &AtomicBool,
    max: Duration,
) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    set_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(32i32 << 20))?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    set_opt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    let mut buf = [0u8; 128];
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buffers are valid for their stated sizes.
        let n = unsafe {
            libc::recvfrom(
                fd,
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
                continue;
            }
            return Err(e);
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let got = (n as usize).min(buf.len());
        if let Some(k) = flow_of(&buf[..got]) {
            let i = counts.slot(&k.src);
            counts.packets[i].fetch_add(1, Ordering::Relaxed);
            counts.bytes[i].fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    counts
        .socket_drops
        .fetch_add(socket_drops(fd), Ordering::Relaxed);
    Ok(())
}

fn set_opt(fd: i32, level: i32, name: i32, value: &impl Sized) -> io::Result<()> {
    // SAFETY: value points at a live option value of its own size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
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

/// Frames the kernel dropped on this socket since the last call (tp_drops).
fn socket_drops(fd: i32) -> u64 {
    let mut st = [0u32; 2];
    let mut len = std::mem::size_of_val(&st) as u32;
    // SAFETY: PACKET_STATISTICS writes a struct tpacket_stats (two u32) into st.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            st.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        0
    } else {
        st[1] as u64
    }
}
