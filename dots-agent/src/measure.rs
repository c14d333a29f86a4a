//! What a DOTS client measures on its own interface for telemetry (RFC 9244): traffic
//! toward its targets second by second, and the sources sending most. Counted from the
//! frames an AF_PACKET socket receives, so it works on any interface, veth included.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::af_packet::{FlowCount, PacketSocket};
use crate::signal::telemetry::{PercentileSet, RateSeries, ReportedTalker, Traffic, UnitClass};

/// Traffic seen toward some targets over whole seconds.
#[derive(Clone, Debug, Default)]
pub struct Measurement {
    /// Per second: (packets, bytes).
    pub per_second: Vec<(u64, u64)>,
    /// Totals per source address over the whole measurement.
    pub sources: BTreeMap<IpAddr, FlowCount>,
}

/// Counts what `iface` receives toward `targets` (all traffic if empty) for `seconds`
/// one-second windows (at most an hour).
pub fn measure(iface: &str, seconds: u64, targets: &[IpNet]) -> io::Result<Measurement> {
    if seconds == 0 || seconds > 3600 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("measure for 1 to 3600 seconds, not {seconds}"),
        ));
    }
    let socket = PacketSocket::open(iface)?;
    let mut m = Measurement::default();
    for _ in 0..seconds {
        let flows = socket.count_flows(Duration::from_secs(1))?;
        let (mut packets, mut bytes) = (0, 0);
        for (k, c) in flows {
            if !targets.is_empty() && !targets.iter().any(|t| t.contains(&k.dst)) {
                continue;
            }
            packets += c.packets;
            bytes += c.bytes;
            let s = m.sources.entry(k.src).or_default();
            s.packets += c.packets;
            s.bytes += c.bytes;
        }
        m.per_second.push((packets, bytes));
    }
    Ok(m)
}

impl Measurement {
    pub fn series(&self) -> RateSeries {
        let mut s = RateSeries::new(self.per_second.len());
        for (p, b) in &self.per_second {
            s.push(*p, *b);
        }
        s
    }

    /// Percentiles, peak and current in each class.
    pub fn traffic(&self, classes: &[UnitClass], p: &PercentileSet) -> Traffic {
        self.series().traffic(classes, p)
    }

    /// The `n` sources that sent most packets, with their mean rates.
    pub fn top_talkers(&self, n: usize, classes: &[UnitClass]) -> Vec<ReportedTalker> {
        let secs = self.per_second.len().max(1) as u64;
        let mut v: Vec<(&IpAddr, &FlowCount)> = self.sources.iter().collect();
        v.sort_by(|a, b| b.1.packets.cmp(&a.1.packets).then(a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .map(|(addr, c)| {
                let mut s = RateSeries::new(1);
                s.push(c.packets / secs, c.bytes / secs);
                ReportedTalker {
                    source: IpNet::from(*addr),
                    // Whether it is spoofed cannot be told from here.
                    spoofed: None,
                    attack: s.traffic(classes, &PercentileSet::default()),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_talkers_are_ranked_by_packets() {
        let mut m = Measurement {
            per_second: vec![(100, 10_000), (300, 30_000)],
            ..Default::default()
        };
        for (addr, packets) in [("192.0.2.1", 50), ("192.0.2.2", 300), ("192.0.2.3", 50)] {
            m.sources.insert(
                addr.parse().unwrap(),
                FlowCount {
                    packets,
                    bytes: packets * 100,
                },
            );
        }
        let top = m.top_talkers(2, &[UnitClass::PacketsPerSecond]);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].source, "192.0.2.2/32".parse::<IpNet>().unwrap());
        assert_eq!(top[0].attack[0].1.current, Some(150), "300 packets in 2 s");
        assert_eq!(
            top[1].source,
            "192.0.2.1/32".parse::<IpNet>().unwrap(),
            "ties by address"
        );
        let t = m.traffic(&[UnitClass::BitsPerSecond], &PercentileSet::default());
        assert_eq!(
            t[0].1.peak,
            Some(240_000),
            "bit/s: in kbit/s only 3 digits would be left"
        );
        assert_eq!(t[0].0.code(), 2);
        assert!(measure("lo", 0, &[]).is_err());
    }
}
