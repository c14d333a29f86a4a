//! The receiver: counts the frames arriving on an interface, per labelled source prefix,
//! into atomic counters that the lab reads every second while it runs.
//!
//! It is an AF_PACKET tap, which on receive runs after XDP: it sees exactly what the filter
//! passed (on the scrubber) or what was forwarded (on the customer side). It reads only the
//! first 128 bytes of each frame (MSG_TRUNC still reports the length), and reports the
//! socket's own drops so a receiver that fell behind is never mistaken for a filter.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use dots_agent::af_packet::{flow_of, PacketSocket};

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
    sock: &PacketSocket,
    counts: &Counts,
    stop: &AtomicBool,
    max: Duration,
) -> io::Result<()> {
    sock.set_receive_buffer(32 << 20)?;
    sock.set_receive_timeout(Duration::from_millis(50))?;
    let mut buf = [0u8; 128];
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
        let Some(r) = sock.recv(&mut buf)? else {
            continue;
        };
        if r.outgoing {
            continue;
        }
        if let Some(k) = flow_of(&buf[..r.len.min(buf.len())]) {
            let i = counts.slot(&k.src);
            counts.packets[i].fetch_add(1, Ordering::Relaxed);
            counts.bytes[i].fetch_add(r.len as u64, Ordering::Relaxed);
        }
    }
    // Unreadable statistics count as no drops: the counts themselves are still right.
    let drops = sock.statistics().map(|s| s.drops).unwrap_or(0);
    counts.socket_drops.fetch_add(drops, Ordering::Relaxed);
    Ok(())
}
