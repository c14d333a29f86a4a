//! The traffic generator used by the lab, the end-to-end tests and the benchmarks.
//!
//! - [`live`]: a fast sender: the kernel's XDP live-frames test-run mode
//!   (`BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`) replays a template frame through a
//!   tiny XDP program that rewrites the source address per packet and redirects the frame out
//!   of an interface. Socket senders top out near 2 Mpps on these machines; this does not
//!   involve a socket or an skb on the sending side.
//! - [`socket`]: the portable sender: prebuilt frames through an AF_PACKET socket in
//!   batches. [`Sender::open`] falls back to it where the kernel refuses live frames.
//! - [`fanout`]: an XDP broadcast that multiplies a socket sender's frames into xdp_frames,
//!   so the benchmark can load a receiver the way a NIC does where live frames are refused.
//! - [`receiver`]: an AF_PACKET receiver that counts what arrives, per labelled source
//!   prefix, readable live while it runs.
//!
//! A [`Flow`] says what to send: a source prefix (multi-source), one destination, UDP, TCP
//! (flags) or ICMP/ICMPv6, IPv4 or IPv6, payload size, Ethernet destination.

pub mod fanout;
pub mod live;
pub mod receiver;
pub mod socket;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ipnet::IpNet;
use serde::Deserialize;

use crate::packet::{PacketSpec, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// How long and how fast to send.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Packets per second; 0: as fast as the sender goes.
    pub pps: u64,
    pub duration: Duration,
    /// Stop after this many packets (u64::MAX: no limit).
    pub count: u64,
}

/// What a sender may send next, from [`Pacer::next`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Due {
    /// Packets due by now for a paced flow; None for an unpaced one (send at will).
    pub packets: Option<u64>,
    /// Time left in the run.
    pub left: Duration,
    /// Packets left before `Pace::count`.
    pub remaining: u64,
}

/// The clock both senders pace by: a paced flow sends what is due every `period`, in one
/// go; an unpaced one is told only how much time and how many packets are left.
pub(crate) struct Pacer {
    pace: Pace,
    period: Duration,
    start: Instant,
    next_call: Instant,
}

impl Pacer {
    pub fn new(pace: Pace, period: Duration) -> Pacer {
        let start = Instant::now();
        Pacer {
            pace,
            period,
            start,
            next_call: start,
        }
    }

    /// Waits until something is due; None when the run is over (its duration, its count,
    /// or `stop`). `total` is what was sent so far.
    pub fn next(&mut self, total: u64, stop: &AtomicBool) -> Option<Due> {
        loop {
            if stop.load(Ordering::Relaxed) || total >= self.pace.count {
                return None;
            }
            let now = Instant::now();
            let elapsed = now - self.start;
            if elapsed >= self.pace.duration {
                return None;
            }
            let packets = if self.pace.pps > 0 {
                if now < self.next_call {
                    std::thread::sleep((self.next_call - now).min(Duration::from_millis(20)));
                    continue;
                }
                self.next_call = now + self.period;
                let by_now = (self.pace.pps as f64 * elapsed.as_secs_f64()) as u64;
                Some(by_now.saturating_sub(total))
            } else {
                None
            };
            return Some(Due {
                packets,
                left: self.pace.duration - elapsed,
                remaining: self.pace.count - total,
            });
        }
    }
}

/// The line that tells the user which sender runs, and why not live frames if they were
/// refused (`fallback` from [`Sender::open`]).
pub fn announce(sender_name: &str, fallback: Option<&str>) -> String {
    match fallback {
        Some(why) => format!("generator: {sender_name} (live frames refused: {why})"),
        None => format!("generator: {sender_name}"),
    }
}

/// Which sender to use.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// XDP live frames where the kernel allows them, else AF_PACKET.
    #[default]
    Auto,
    /// XDP live frames only (fails where the kernel refuses them).
    Live,
    /// AF_PACKET socket only.
    Socket,
}

/// A sender for one flow on one interface (of the calling thread's network namespace).
pub enum Sender {
    Live(live::LiveSender),
    Socket(socket::SocketSender),
}

impl Sender {
    /// Opens the backend asked for. With [`Backend::Auto`], a kernel that refuses live
    /// frames gets the socket sender; the second value then says why.
    pub fn open(t: &Template, iface: &str, backend: Backend) -> Result<(Sender, Option<String>)> {
        match backend {
            Backend::Live => Ok((Sender::Live(live::LiveSender::new(t, iface)?), None)),
            Backend::Socket => Ok((Sender::Socket(socket::SocketSender::new(t, iface)?), None)),
            Backend::Auto => match live::LiveSender::new(t, iface) {
                Ok(s) => Ok((Sender::Live(s), None)),
                Err(live_err) => {
                    let s = socket::SocketSender::new(t, iface).map_err(|e| {
                        anyhow::anyhow!("no sender works on {iface}: {live_err:#}; and {e:#}")
                    })?;
                    Ok((Sender::Socket(s), Some(format!("{live_err:#}"))))
                }
            },
        }
    }

    /// Sends per `pace`, adding to `sent` as it goes; stops early when `stop` is set.
    /// Returns the number of packets sent.
    pub fn run(&self, pace: Pace, sent: &AtomicU64, stop: &AtomicBool) -> Result<u64> {
        match self {
            Sender::Live(s) => s.run(pace, sent, stop),
            Sender::Socket(s) => s.run(pace, sent, stop),
        }
    }

    /// The backend this sender is (never [`Backend::Auto`]).
    pub fn backend(&self) -> Backend {
        match self {
            Sender::Live(_) => Backend::Live,
            Sender::Socket(_) => Backend::Socket,
        }
    }

    /// What sends, for the user.
    pub fn name(&self) -> &'static str {
        match self {
            Sender::Live(_) => "XDP live frames",
            Sender::Socket(_) => "AF_PACKET socket",
        }
    }
}

/// At most this many distinct sources per flow (keeps every source inside one 16-bit word of
/// the address, see [`Template`]).
pub const MAX_SOURCES: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
    Icmp,
}

/// What one generator sends.
#[derive(Clone, Debug)]
pub struct Flow {
    pub sources: IpNet,
    pub destination: IpAddr,
    pub protocol: Protocol,
    pub source_port: u16,
    pub destination_port: u16,
    /// TCP flags byte (packet::TCP_*); ignored for UDP and ICMP.
    pub tcp_flags: u8,
    pub payload: usize,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// Parses "syn,ack" style TCP flag lists.
pub fn parse_tcp_flags(names: &[String]) -> Result<u8> {
    let mut flags = 0u8;
    for f in names {
        flags |= match f.trim() {
            "syn" => TCP_SYN,
            "ack" => TCP_ACK,
            "rst" => TCP_RST,
            "fin" => TCP_FIN,
            other => bail!("unknown TCP flag {other:?} (use syn, ack, rst, fin)"),
        };
    }
    Ok(flags)
}

/// A frame to replay and where the per-packet rewrite goes.
///
/// Every variant of the frame must carry valid checksums without the generator recomputing
/// them per packet. The trick: source `k` (0-based) is the first source plus `k` in the
/// address's last 16-bit word, and two other 16-bit words of the frame are lowered by `k`: the
/// IPv4 identification (covered by the IPv4 header checksum) and the first payload word
/// (covered by the UDP/TCP/ICMPv6 checksum, whose pseudo-header holds the source). A one's
/// complement sum is unchanged when one word grows by k and another shrinks by k without
/// wrapping, which the chosen base values guarantee (all >= MAX_SOURCES, sources < 2^16).
#[derive(Clone, Debug)]
pub struct Template {
    pub frame: Vec<u8>,
    /// Number of distinct sources (1: no rewrite).
    pub sources: u32,
    /// Offset of the source address's last 16-bit word and its value for source 0.
    pub source_word: (usize, u16),
    /// Words lowered by k to keep the checksums valid: (offset, value for source 0).
    pub compensation: Vec<(usize, u16)>,
}

/// Value of the compensating payload word in the template (>= MAX_SOURCES, see [`Template`]).
const PAYLOAD_WORD: u16 = 0xabab;
/// The IPv4 identification packet.rs writes (>= MAX_SOURCES).
const IPV4_ID: u16 = 0x1234;

impl Flow {
    /// Checks the flow and builds its template frame.
    pub fn template(&self) -> Result<Template> {
        if self.sources.addr().is_ipv4() != self.destination.is_ipv4() {
            bail!(
                "sources {} and destination {} are of different address families",
                self.sources,
                self.destination
            );
        }
        if self.sources.addr() != self.sources.network() {
            bail!(
                "source prefix {} has host bits set (use {})",
                self.sources,
                self.sources.trunc()
            );
        }
        if self.payload > 1400 {
            bail!(
                "payload {} bytes is larger than 1400 (frames must fit one page)",
                self.payload
            );
        }
        let host_bits = self.sources.max_prefix_len() - self.sources.prefix_len();
        // A /31 or /32 (/127, /128) uses its addresses as they are; larger prefixes skip the
        // network address (and, for IPv4, the broadcast address).
        let (first_offset, count): (u32, u64) = match host_bits {
            0 => (0, 1),
            1 => (0, 2),
            b if b >= 32 => (1, u64::MAX),
            b => (
                1,
                (1u64 << b) - if self.sources.addr().is_ipv4() { 2 } else { 1 },
            ),
        };
        let sources = count.min(MAX_SOURCES as u64) as u32;
        if sources > 1 && self.payload < 2 {
            bail!("a flow with several sources needs a payload of at least 2 bytes (the generator keeps checksums valid through its first word)");
        }
        let first = add_to_addr(self.sources.addr(), first_offset);
        let l4 = match self.protocol {
            Protocol::Udp => L4::Udp {
                sport: self.source_port,
                dport: self.destination_port,
            },
            Protocol::Tcp => L4::Tcp {
                sport: self.source_port,
                dport: self.destination_port,
                flags: self.tcp_flags,
            },
            Protocol::Icmp => L4::Icmp {
                kind: if self.destination.is_ipv4() { 8 } else { 128 },
                code: 0,
            },
        };
        let mut spec = PacketSpec::new(first, self.destination, l4);
        spec.payload_len = self.payload;
        spec.dst_mac = self.dst_mac;
        spec.src_mac = self.src_mac;
        let (ip_len, l4_off) = if first.is_ipv4() { (20, 34) } else { (40, 54) };
        let l4_header = match self.protocol {
            Protocol::Udp | Protocol::Icmp => 8,
            Protocol::Tcp => 20,
        };
        let payload_off = l4_off + l4_header;
        let mut frame = spec.build();
        let mut compensation = Vec::new();
        if sources > 1 {
            // Put the known value into the first payload word before checksumming again.
            frame[payload_off..payload_off + 2].copy_from_slice(&PAYLOAD_WORD.to_be_bytes());
            spec_checksums(&mut frame, first.is_ipv4(), self.protocol, l4_off);
            if first.is_ipv4() {
                compensation.push((14 + 4, IPV4_ID));
            }
            // ICMPv4's checksum has no pseudo-header: only the IPv4 header needs the fix.
            if !(first.is_ipv4() && self.protocol == Protocol::Icmp) {
                compensation.push((payload_off, PAYLOAD_WORD));
            }
        }
        let src_word_off = 14 + if first.is_ipv4() { 12 + 2 } else { 8 + 14 };
        let source_word = u16::from_be_bytes([frame[src_word_off], frame[src_word_off + 1]]);
        debug_assert!(ip_len > 0);
        if source_word as u32 + sources > 0x1_0000 {
            bail!(
                "internal: sources of {} would cross a 16-bit word",
                self.sources
            );
        }
        Ok(Template {
            frame,
            sources,
            source_word: (src_word_off, source_word),
            compensation,
        })
    }
}

fn add_to_addr(a: IpAddr, n: u32) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4((u32::from(v).wrapping_add(n)).into()),
        IpAddr::V6(v) => IpAddr::V6((u128::from(v).wrapping_add(n as u128)).into()),
    }
}

/// Recomputes the L4 checksum after the payload word was set (the IPv4 header is unchanged).
fn spec_checksums(frame: &mut [u8], v4: bool, proto: Protocol, l4_off: usize) {
    use crate::packet::checksum;
    let csum_off = l4_off
        + match proto {
            Protocol::Udp => 6,
            Protocol::Tcp => 16,
            Protocol::Icmp => 2,
        };
    frame[csum_off..csum_off + 2].copy_from_slice(&[0, 0]);
    let l4 = frame[l4_off..].to_vec();
    let mut pseudo = Vec::new();
    let with_pseudo = !(v4 && proto == Protocol::Icmp);
    if with_pseudo {
        if v4 {
            pseudo.extend_from_slice(&frame[26..34]);
            pseudo.extend_from_slice(&[0, if proto == Protocol::Udp { 17 } else { 6 }]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        } else {
            pseudo.extend_from_slice(&frame[22..54]);
            pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            let next = match proto {
                Protocol::Udp => 17,
                Protocol::Tcp => 6,
                Protocol::Icmp => 58,
            };
            pseudo.extend_from_slice(&[0, 0, 0, next]);
        }
    }
    pseudo.extend_from_slice(&l4);
    let mut c = checksum(&pseudo);
    if c == 0 && proto == Protocol::Udp {
        c = 0xffff;
    }
    frame[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
}

impl Template {
    /// The frame as source `k` sends it (what the XDP rewrite produces; used by tests and by
    /// the socket fallback).
    pub fn variant(&self, k: u32) -> Vec<u8> {
        let mut f = self.frame.clone();
        let k = (k % self.sources.max(1)) as u16;
        let (off, v) = self.source_word;
        f[off..off + 2].copy_from_slice(&(v + k).to_be_bytes());
        for &(off, v) in &self.compensation {
            f[off..off + 2].copy_from_slice(&(v - k).to_be_bytes());
        }
        f
    }
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("MAC address {s:?} must be six hex bytes separated by ':'");
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)
            .map_err(|_| anyhow::anyhow!("MAC address {s:?}: bad byte {p:?}"))?;
    }
    Ok(mac)
}

/// The MAC address of an interface in the calling thread's network namespace (read through
/// an ioctl: /sys/class/net shows the namespace sysfs was mounted in, not ours).
pub fn interface_mac(iface: &str) -> Result<[u8; 6]> {
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        bail!("interface name {iface:?} is empty or too long");
    }
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: req is a valid ifreq with a NUL-terminated name.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        bail!("reading the MAC address of {iface}: {err}");
    }
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum;

    fn flow(src: &str, dst: &str, protocol: Protocol) -> Flow {
        Flow {
            sources: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
            protocol,
            source_port: 123,
            destination_port: 4444,
            tcp_flags: TCP_SYN,
            payload: 18,
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
        }
    }

    /// Verifies the IPv4 header checksum and the L4 checksum of a frame.
    fn checksums_ok(f: &[u8]) -> bool {
        let v4 = f[12..14] == [0x08, 0x00];
        let (l4_off, proto) = if v4 { (34, f[23]) } else { (54, f[20]) };
        if v4 && checksum(&f[14..34]) != 0 {
            return false;
        }
        let l4 = &f[l4_off..];
        let mut p = Vec::new();
        if !(v4 && proto == 1) {
            if v4 {
                p.extend_from_slice(&f[26..34]);
                p.extend_from_slice(&[0, proto]);
                p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            } else {
                p.extend_from_slice(&f[22..54]);
                p.extend_from_slice(&(l4.len() as u32).to_be_bytes());
                p.extend_from_slice(&[0, 0, 0, proto]);
            }
        }
        p.extend_from_slice(l4);
        checksum(&p) == 0
    }

    #[test]
    fn every_source_variant_keeps_valid_checksums() {
        for (src, dst) in [
            ("192.0.2.0/26", "198.51.100.10"),
            ("203.0.113.0/24", "198.51.100.10"),
            ("2001:db8:1::/64", "2001:db8:6401::10"),
        ] {
            for proto in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
                let t = flow(src, dst, proto).template().unwrap();
                assert!(t.sources > 1);
                let mut seen = std::collections::HashSet::new();
                for k in [0, 1, 7, t.sources - 1] {
                    let f = t.variant(k);
                    assert!(checksums_ok(&f), "{src} {proto:?} source {k}");
                    let key = dots_agent::af_packet::flow_of(&f).unwrap();
                    let net: IpNet = src.parse().unwrap();
                    assert!(net.contains(&key.src), "{} outside {src}", key.src);
                    seen.insert(key.src);
                }
                assert_eq!(seen.len(), 4);
            }
        }
        assert_eq!(
            flow("192.0.2.0/26", "198.51.100.10", Protocol::Udp)
                .template()
                .unwrap()
                .sources,
            62
        );
    }

    #[test]
    fn the_pacer_spreads_a_paced_flow_and_ends_every_run() {
        let stop = AtomicBool::new(false);
        let pace = |pps, ms, count| Pace {
            pps,
            duration: Duration::from_millis(ms),
            count,
        };
        // 10,000 pps in 10 ms periods for 100 ms: what is due grows with time, and the
        // sum of what was due stays near 1,000.
        let mut p = Pacer::new(pace(10_000, 100, u64::MAX), Duration::from_millis(10));
        let mut total = 0;
        let mut calls = 0;
        while let Some(d) = p.next(total, &stop) {
            total += d.packets.expect("paced");
            calls += 1;
            assert!(calls < 100, "the pacer must wait between periods");
        }
        assert!((800..=1_100).contains(&total), "sent {total}");
        // Unpaced: no packet budget, and the count ends the run.
        let mut p = Pacer::new(pace(0, 10_000, 5), Duration::from_millis(10));
        let d = p.next(0, &stop).expect("due");
        assert_eq!((d.packets, d.remaining), (None, 5));
        assert!(p.next(5, &stop).is_none());
        // The stop flag ends it at once.
        stop.store(true, Ordering::Relaxed);
        assert!(Pacer::new(pace(0, 10_000, 5), Duration::ZERO)
            .next(0, &stop)
            .is_none());
    }

    #[test]
    fn bad_flows_are_named() {
        let e = |f: Flow| format!("{:#}", f.template().unwrap_err());
        assert!(e(flow("192.0.2.0/26", "2001:db8::1", Protocol::Udp)).contains("families"));
        assert!(e(flow("192.0.2.7/26", "198.51.100.1", Protocol::Udp)).contains("host bits"));
        let mut big = flow("192.0.2.0/26", "198.51.100.1", Protocol::Udp);
        big.payload = 5000;
        assert!(e(big).contains("1400"));
        assert!(parse_tcp_flags(&["syn".into(), "bogus".into()]).is_err());
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap()[5], 10);
    }
}
