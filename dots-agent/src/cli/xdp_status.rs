//! `dots-agent xdp status`: interfaces, mitigations (named by their owner: a DOTS
//! client's mid, or the operator's id), counters, rates and top talkers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use xdp_common::{Counter, DropReason, TALKER_SAMPLE};

use super::xdp::Pins;
use crate::datapath::{
    compile, DatapathId, MitigationCounters, MitigationSpec, Mitigator, XdpDatapath,
};

#[derive(Serialize, Clone, Copy, Default)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for Count {
    fn from(c: Counter) -> Self {
        Count {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

#[derive(Serialize, Default)]
pub struct Rate {
    pub pps: f64,
    pub bps: f64,
}

#[derive(Serialize)]
pub struct InterfaceReport {
    pub name: String,
    pub ifindex: Option<u32>,
    pub rx: Count,
    pub rx_rate: Option<Rate>,
    pub to_target: u64,
    pub dropped: u64,
    pub parse_errors: u64,
    pub non_ip: u64,
}

#[derive(Serialize)]
pub struct AclReport {
    pub name: String,
    pub matched: Count,
}

/// A source of dropped traffic; counts are estimates from sampled drops.
#[derive(Serialize)]
pub struct TalkerReport {
    pub source: String,
    pub dropped: Count,
}

/// Top talkers shown per mitigation.
const TOP_TALKERS: usize = 5;

#[derive(Serialize)]
pub struct MitigationReport {
    /// Whose it is: "client-a mid 3", "operator mitigation 7" (see [`owner`]).
    pub owner: String,
    /// The operator's id (`xdp mitigation remove ID`), for operator mitigations only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_id: Option<u32>,
    /// The datapath's id (internal; stable while it is installed).
    pub datapath_id: u64,
    pub targets: Vec<String>,
    pub in_scope: Count,
    pub passed: Count,
    pub accepted: Count,
    pub dropped: Count,
    pub dropped_by_reason: BTreeMap<&'static str, Count>,
    pub rate_limited: Count,
    pub drop_rate: Option<Rate>,
    pub pass_rate: Option<Rate>,
    pub acl: Vec<AclReport>,
    /// Sources with the most dropped packets, most first (sampled estimates).
    pub top_talkers: Vec<TalkerReport>,
}

#[derive(Serialize)]
pub struct StatusReport {
    pub pin_dir: String,
    pub interfaces: Vec<InterfaceReport>,
    pub mitigations: Vec<MitigationReport>,
    pub occupancy: Vec<(&'static str, usize, usize)>,
}

fn rate(a: Counter, b: Counter, secs: f64) -> Rate {
    Rate {
        pps: b.packets.saturating_sub(a.packets) as f64 / secs,
        bps: b.bytes.saturating_sub(a.bytes) as f64 * 8.0 / secs,
    }
}

/// Who each datapath id belongs to: what the running server says (`server`), else what
/// the ids tell (operator mitigations carry the operator's id).
pub fn owner(raw: u64, server: &BTreeMap<u64, String>) -> String {
    server
        .get(&raw)
        .cloned()
        .unwrap_or_else(|| match DatapathId::from_raw(raw) {
            DatapathId::Mitigation(n) => {
                format!("DOTS mitigation (datapath id {n}; no server running to name it)")
            }
            other => other.to_string(),
        })
}

/// What the pinned filter holds. `names`: owners as the running server names them;
/// `specs`: operator mitigations' files (their ACL entries' names).
pub fn status(
    pins: &Pins,
    interval: f64,
    names: &BTreeMap<u64, String>,
    specs: &BTreeMap<u32, MitigationSpec>,
) -> Result<StatusReport> {
    let dp = XdpDatapath::open_pinned(&pins.pin_root)?;
    let ifaces = XdpDatapath::attached(&pins.pin_root);
    let ifindexes: Vec<Option<u32>> = ifaces
        .iter()
        .map(|n| crate::datapath::interface_index(n))
        .collect();
    let sample = |dp: &XdpDatapath| -> Result<(Vec<Counter>, BTreeMap<u64, MitigationCounters>)> {
        let ifs = ifindexes
            .iter()
            .map(|i| {
                Ok(i.map(|i| dp.interface_counters(i))
                    .transpose()?
                    .map(|c| c.stats.rx)
                    .unwrap_or_default())
            })
            .collect::<Result<Vec<_>>>()?;
        let mut ms = BTreeMap::new();
        for id in dp.installed() {
            if let Some(c) = dp.counters(id)? {
                ms.insert(id, c);
            }
        }
        Ok((ifs, ms))
    };
    let first = if interval > 0.0 {
        Some(sample(&dp)?)
    } else {
        None
    };
    let t0 = Instant::now();
    if interval > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(interval.min(60.0)));
    }
    let (_, now) = sample(&dp)?;
    let secs = t0.elapsed().as_secs_f64();

    let mut interfaces = Vec::new();
    for (i, name) in ifaces.iter().enumerate() {
        let (stats, rx_rate) = match ifindexes[i] {
            Some(ix) => {
                let s = dp.interface_counters(ix)?.stats;
                let r = first.as_ref().map(|(f, _)| rate(f[i], s.rx, secs));
                (s, r)
            }
            None => (Default::default(), None),
        };
        interfaces.push(InterfaceReport {
            name: name.clone(),
            ifindex: ifindexes[i],
            rx: stats.rx.into(),
            rx_rate,
            to_target: stats.to_target,
            dropped: stats.dropped,
            parse_errors: stats.parse_errors,
            non_ip: stats.non_ip,
        });
    }
    let mut talkers = dp.top_talkers_all(TOP_TALKERS)?;
    let mut mitigations = Vec::new();
    for (id, c) in &now {
        let before = first.as_ref().and_then(|(_, m)| m.get(id));
        let operator_id = match DatapathId::from_raw(*id) {
            DatapathId::Operator(n) => Some(n),
            _ => None,
        };
        let spec = operator_id.and_then(|n| specs.get(&n));
        let acl = c
            .acl
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let name = spec
                    .as_ref()
                    .and_then(|s| {
                        s.acl
                            .iter()
                            .find(|e| compile::name_hash(&e.name) == a.name_hash)
                    })
                    .map(|e| e.name.clone())
                    .unwrap_or_else(|| format!("#{i}"));
                AclReport {
                    name,
                    matched: a.matched.into(),
                }
            })
            .collect();
        mitigations.push(MitigationReport {
            owner: owner(*id, names),
            operator_id,
            datapath_id: *id,
            targets: dp
                .targets(*id)
                .unwrap_or_default()
                .iter()
                .map(|t| t.to_string())
                .collect(),
            in_scope: c.in_scope.into(),
            passed: c.passed.into(),
            accepted: c.accepted.into(),
            dropped: c.dropped_total().into(),
            dropped_by_reason: DropReason::ALL
                .iter()
                .filter(|r| c.dropped(**r).packets > 0)
                .map(|r| (r.label(), c.dropped(*r).into()))
                .collect(),
            rate_limited: c.rate_limited().into(),
            drop_rate: before.map(|b| rate(b.dropped_total(), c.dropped_total(), secs)),
            pass_rate: before.map(|b| rate(b.passed, c.passed, secs)),
            acl,
            top_talkers: talkers
                .remove(id)
                .unwrap_or_default()
                .into_iter()
                .map(|(a, c)| TalkerReport {
                    source: a.to_string(),
                    dropped: c.into(),
                })
                .collect(),
        });
    }
    Ok(StatusReport {
        pin_dir: dp.pin_dir().display().to_string(),
        interfaces,
        mitigations,
        occupancy: dp.occupancy(),
    })
}

fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

pub fn render(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "XDP datapath at {}", r.pin_dir);
    if r.interfaces.is_empty() {
        let _ = writeln!(o, "not attached to any interface");
    } else {
        let _ = writeln!(
            o,
            "\n{:<16} {:>7} {:>12} {:>9} {:>12} {:>12} {:>10} {:>10}",
            "INTERFACE",
            "IFINDEX",
            "RX PKTS",
            "RX PPS",
            "TO TARGET",
            "DROPPED",
            "PARSE ERR",
            "NON-IP"
        );
        for i in &r.interfaces {
            let _ = writeln!(
                o,
                "{:<16} {:>7} {:>12} {:>9} {:>12} {:>12} {:>10} {:>10}",
                i.name,
                i.ifindex.map_or("-".into(), |x| x.to_string()),
                i.rx.packets,
                i.rx_rate.as_ref().map_or("-".into(), |r| si(r.pps)),
                i.to_target,
                i.dropped,
                i.parse_errors,
                i.non_ip
            );
        }
    }
    if r.mitigations.is_empty() {
        let _ = writeln!(o, "\nno mitigations installed");
    }
    for m in &r.mitigations {
        let _ = writeln!(o, "\n{}  targets {}", m.owner, m.targets.join(" "));
        let _ = writeln!(
            o,
            "  in scope {} pkts / {} B   passed {} pkts   dropped {} pkts / {} B   rate-limited {} pkts",
            m.in_scope.packets, m.in_scope.bytes, m.passed.packets, m.dropped.packets, m.dropped.bytes, m.rate_limited.packets
        );
        if let (Some(d), Some(p)) = (&m.drop_rate, &m.pass_rate) {
            let _ = writeln!(
                o,
                "  now: dropping {} pps ({}bit/s), passing {} pps",
                si(d.pps),
                si(d.bps),
                si(p.pps)
            );
        }
        if !m.dropped_by_reason.is_empty() {
            let reasons: Vec<String> = m
                .dropped_by_reason
                .iter()
                .map(|(k, v)| format!("{k}={}", v.packets))
                .collect();
            let _ = writeln!(o, "  dropped by reason: {}", reasons.join("  "));
        }
        for a in &m.acl {
            let _ = writeln!(
                o,
                "  acl {:<24} {:>12} pkts {:>14} B",
                a.name, a.matched.packets, a.matched.bytes
            );
        }
        if !m.top_talkers.is_empty() {
            let _ = writeln!(
                o,
                "  top talkers (dropped, estimated from 1 in {TALKER_SAMPLE} drops):"
            );
            for t in &m.top_talkers {
                let _ = writeln!(
                    o,
                    "    {:<39} {:>12} pkts {:>14} B",
                    t.source, t.dropped.packets, t.dropped.bytes
                );
            }
        }
    }
    let busy: Vec<String> = r
        .occupancy
        .iter()
        .filter(|(_, u, _)| *u > 0)
        .map(|(n, u, c)| format!("{n} {u}/{c}"))
        .collect();
    if !busy.is_empty() {
        let _ = writeln!(o, "\nmap occupancy: {}", busy.join(", "));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_lists_top_talkers() {
        let m = MitigationReport {
            owner: "client-a mid 3".into(),
            operator_id: None,
            datapath_id: 3,
            targets: vec!["198.51.100.0/24".into()],
            in_scope: Count::default(),
            passed: Count::default(),
            accepted: Count::default(),
            dropped: Count::default(),
            dropped_by_reason: BTreeMap::new(),
            rate_limited: Count::default(),
            drop_rate: None,
            pass_rate: None,
            acl: Vec::new(),
            top_talkers: vec![TalkerReport {
                source: "2001:db8::1".into(),
                dropped: Count {
                    packets: 1600,
                    bytes: 67_200,
                },
            }],
        };
        let text = render(&StatusReport {
            pin_dir: "/x".into(),
            interfaces: Vec::new(),
            mitigations: vec![m],
            occupancy: Vec::new(),
        });
        assert!(text.contains("top talkers"), "{text}");
        assert!(
            text.contains("\nclient-a mid 3  targets 198.51.100.0/24"),
            "{text}"
        );
        let line = text.lines().find(|l| l.contains("2001:db8::1")).unwrap();
        assert!(
            line.contains("1600 pkts") && line.contains("67200 B"),
            "{line}"
        );
    }
}
