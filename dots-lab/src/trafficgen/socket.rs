//! The portable senders, both on the agent's [`PacketSocket`]: [`SocketSender`] hands a
//! flow's prebuilt frames to the interface in batches (`sendmmsg`, 64 frames per call, qdisc
//! bypassed); [`send_paced`] sends a list of frames one by one through the qdisc (exact
//! counts at modest rates, for `dots-lab traffic send` and the end-to-end tests).
//!
//! It is what the generator uses where the kernel refuses XDP live frames (some hardened
//! kernels answer `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` by EPERM even for root).
//! Every frame is a real skb on the sending side, so it is slower than [`super::live`]
//! (about 1 to 2 Mpps per core here) but runs on any Linux. The frames of all sources are
//! built once, in a shuffled order, and sent round-robin.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Pace, Pacer, Template};
use dots_agent::af_packet::{PacketSocket, MAX_BATCH as BATCH};

/// A paced flow sends what is due this often.
const PACE_PERIOD: Duration = Duration::from_millis(2);

/// An AF_PACKET sender for one flow, bound to an interface of the calling thread's network
/// namespace. Send-only: bound with protocol 0, so the kernel queues nothing to it.
pub struct SocketSender {
    sock: PacketSocket,
    /// One frame per source, in a shuffled order (the live sender picks sources at random).
    frames: Vec<Vec<u8>>,
}

impl SocketSender {
    pub fn new(t: &Template, iface: &str) -> Result<SocketSender> {
        let sock = PacketSocket::open_send_only(iface)
            .with_context(|| format!("opening an AF_PACKET socket on {iface}"))?;
        // Best effort: a kernel without the option still sends, through the qdisc.
        let _ = sock.bypass_qdisc();
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
        let mut batch: [&[u8]; BATCH] = [&[]; BATCH];
        let n = n.min(BATCH);
        for (i, slot) in batch[..n].iter_mut().enumerate() {
            *slot = &self.frames[(first + i) % self.frames.len()];
        }
        let took = self
            .sock
            .send_batch(&batch[..n])
            .context("sending frames on an AF_PACKET socket")?;
        if took == 0 {
            // The device or socket buffer is full: let it drain.
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(took)
    }
}

/// Sends `frames` round-robin on `sock`, `count` frames in all, at most `pps` per second (0:
/// as fast as the socket takes them). Returns how many were sent.
pub fn send_paced(
    sock: &PacketSocket,
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
