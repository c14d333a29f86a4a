//! The portable sender: an AF_PACKET socket that hands prebuilt frames to the interface in
//! batches (`sendmmsg`, 64 frames per call, qdisc bypassed).
//!
//! It is what the generator uses where the kernel refuses XDP live frames (some hardened
//! kernels answer `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` by EPERM even for root).
//! Every frame is a real skb on the sending side, so it is slower than [`super::live`]
//! (about 1 to 2 Mpps per core here) but runs on any Linux. The frames of all sources are
//! built once, in a shuffled order, and sent round-robin.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{Pace, Pacer, Template};
use dots_agent::traffic::RawSocket;

/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// A paced flow sends what is due this often.
const PACE_PERIOD: Duration = Duration::from_millis(2);
const SOL_PACKET: i32 = 263;
const PACKET_QDISC_BYPASS: i32 = 20;

/// An AF_PACKET sender for one flow, bound to an interface of the calling thread's network
/// namespace. Send-only: bound with protocol 0, so the kernel queues nothing to it.
pub struct SocketSender {
    sock: RawSocket,
    /// One frame per source, in a shuffled order (the live sender picks sources at random).
    frames: Vec<Vec<u8>>,
}

impl SocketSender {
    pub fn new(t: &Template, iface: &str) -> Result<SocketSender> {
        let sock = RawSocket::bind_send_only(iface)
            .with_context(|| format!("opening an AF_PACKET socket on {iface}"))?;
        // Straight to the driver: the generator paces itself, a qdisc would only add cost.
        // Best effort (a kernel without the option still sends, through the qdisc).
        let _ = sock.set_opt(SOL_PACKET, PACKET_QDISC_BYPASS, &1i32);
        let mut order: Vec<u32> = (0..t.sources.max(1)).collect();
        shuffle(&mut order);
        let frames = order.into_iter().map(|k| t.variant(k)).collect();
        Ok(SocketSender { sock, frames })
    }

    /// Sends per `pace`, adding to `sent` as it goes; stops early when `stop` is set.
    /// Returns the number of frames the interface took.
    pub fn run(&self, pace: Pace, sent: &AtomicU64, stop: &AtomicBool) -> Result<u64> {
        let mut pacer = Pacer::new(pace, PACE_PERIOD);
        let mut total = 0u64;
        let mut next = 0usize;
        while let Some(d) = pacer.next(total, stop) {
            let mut due = d.packets.unwrap_or(BATCH as u64).min(d.remaining);
            // A paced flow catches up in batches; an unpaced one re-checks the clock and
            // the stop flag after every batch.
            while due > 0 {
                let n = self.send_batch(next, due.min(BATCH as u64) as usize)?;
                next = (next + n) % self.frames.len();
                total += n as u64;
                due -= n as u64;
                sent.fetch_add(n as u64, Ordering::Relaxed);
                if n == 0 {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Hands up to `n` frames, starting at frame `first`, to the kernel in one call.
    /// Returns how many it took (0 when its buffers are full for now).
    fn send_batch(&self, first: usize, n: usize) -> Result<usize> {
        let mut iov: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: an all-zero mmsghdr is valid (no name, no control data).
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let n = n.min(BATCH);
        for i in 0..n {
            let f = &self.frames[(first + i) % self.frames.len()];
            iov[i].iov_base = f.as_ptr() as *mut libc::c_void;
            iov[i].iov_len = f.len();
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        loop {
            // SAFETY: msgs[..n] point at live iovecs over frames that outlive the call.
            let rc =
                unsafe { libc::sendmmsg(self.sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The device or socket buffer is full: let it drain, report nothing sent.
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_micros(100));
                    return Ok(0);
                }
                _ => bail!("sending frames on an AF_PACKET socket: {e}"),
            }
        }
    }
}

/// Fisher-Yates with a small xorshift generator: the order only needs to look random.
fn shuffle(v: &mut [u32]) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ v.len() as u64;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shuffle_keeps_every_source_once() {
        let mut v: Vec<u32> = (0..4094).collect();
        super::shuffle(&mut v);
        assert_ne!(v[..10], (0..10).collect::<Vec<u32>>()[..]);
        v.sort_unstable();
        assert_eq!(v, (0..4094).collect::<Vec<u32>>());
    }
}
