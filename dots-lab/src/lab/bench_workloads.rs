//! What the veth benchmark asks of the droppers: the rule sets our filter holds, the flood
//! frames, and the closest rule xdp-tools' xdp-filter can express for each.
//!
//! - **realistic**: the customer's mitigation (amplification ports, fragments, per-source
//!   packet and SYN limits, an ACL of 20 entries: 10 rate limits on UDP source ports, 10
//!   drops on UDP destination ports, among them 9999) beside 1,000 other mitigated IPv6
//!   prefixes; the flood is UDP to 198.51.100.10:9999 from 254 sources.
//! - **harsh**: 1,000 mitigated IPv4 /24s beside the customer's /24, whose ACL has 200
//!   entries of 8 shapes; the flood comes from random sources across 198.18.0.0/15 (the
//!   benchmarking range of RFC 2544, the largest block reserved for such tests) to random
//!   hosts and ports of the customer's /24, which only the ACL's last shape matches, so
//!   every shape is probed with a key no cache has seen.

use anyhow::{bail, Context, Result};
use dots_agent::datapath::{
    AclAction, AclEntry, AclMatch, Countermeasures, MitigationSpec, PortRange, Rate, RateLimit,
};

use crate::packet::PacketSpec;

pub const XDP_FILTER_OBJ: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o";

/// Which rule set and flood the droppers face.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// The customer's mitigation with a 20-entry ACL among 1,000 others; a UDP flood on
    /// one port from 254 sources.
    Realistic,
    /// A 200-entry ACL of 8 shapes among 1,000 IPv4 mitigations; random sources, hosts and
    /// ports (cold caches).
    Harsh,
    /// Per-source and scope-wide rate limits on both CPUs: admitted against configured.
    RateLimits,
}

/// The customer's mitigation and 1,000 other mitigated prefixes (realistic).
pub fn rule_set() -> Vec<MitigationSpec> {
    let mut acl = Vec::new();
    for (i, port) in [53u16, 123, 161, 389, 1900, 11211, 19, 17, 111, 137]
        .iter()
        .enumerate()
    {
        acl.push(AclEntry {
            name: format!("rate-udp-{port}"),
            matches: AclMatch {
                protocol: Some(17),
                source_port: Some(PortRange::single(*port)),
                ..Default::default()
            },
            action: AclAction::RateLimit(RateLimit::PacketsPerSecond(Rate {
                rate: 1000 + i as u64,
                burst: Some(100),
            })),
        });
    }
    for p in [9999u16, 6666, 4444, 3074, 27015, 1434, 5060, 10001, 7, 3283] {
        acl.push(AclEntry {
            name: format!("udp-{p}-flood"),
            matches: AclMatch {
                protocol: Some(17),
                destination_port: Some(PortRange::single(p)),
                ..Default::default()
            },
            action: AclAction::Drop,
        });
    }
    let customer = MitigationSpec {
        acl,
        countermeasures: Countermeasures {
            amplification: true,
            fragments: true,
            source_pps: Some(Rate {
                rate: 1_000_000,
                burst: Some(1_000_000),
            }),
            syn_pps: Some(Rate {
                rate: 100,
                burst: Some(200),
            }),
            scope_bps: None,
        },
        ..MitigationSpec::new(
            1,
            vec![
                "198.51.100.0/24".parse().expect("constant"),
                "2001:db8:6401::/48".parse().expect("constant"),
            ],
        )
    };
    let mut v = vec![customer];
    for i in 0..1000u64 {
        let mut m = MitigationSpec::new(
            10 + i,
            vec![format!("2001:db8:{:x}::/48", 0x8000 + i)
                .parse()
                .expect("valid")],
        );
        m.countermeasures.amplification = true;
        v.push(m);
    }
    v
}

/// 200 entries over 8 shapes (source prefixes of 5 lengths, ports, ICMP); the last shape,
/// `udp to the customer's /24`, is what the harsh flood matches, so the search probes all 8.
fn harsh_acl() -> Vec<AclEntry> {
    let mut acl: Vec<AclEntry> = (0..199u32)
        .map(|i| {
            let k = i / 7;
            // Rules name 100.64.0.0/10 (shared address space), which the flood never uses:
            // only the last shape matches it. Rule prefixes generate no traffic.
            let src = |len: u8| {
                Some(
                    format!("100.64.{k}.0/{len}")
                        .parse::<ipnet::IpNet>()
                        .expect("valid"),
                )
            };
            let m = match i % 7 {
                0 => AclMatch {
                    source: src(24),
                    protocol: Some(6),
                    ..Default::default()
                },
                1 => AclMatch {
                    source: src(28),
                    protocol: Some(17),
                    ..Default::default()
                },
                2 => AclMatch {
                    source: src(32),
                    ..Default::default()
                },
                3 => AclMatch {
                    protocol: Some(17),
                    source_port: Some(PortRange::single(1 + k as u16)),
                    ..Default::default()
                },
                4 => AclMatch {
                    protocol: Some(6),
                    destination_port: Some(PortRange::single(1 + k as u16)),
                    ..Default::default()
                },
                5 => AclMatch {
                    source: src(26),
                    destination_port: Some(PortRange::single(443)),
                    ..Default::default()
                },
                _ => AclMatch {
                    icmp_type: Some(k as u8),
                    source: src(30),
                    ..Default::default()
                },
            };
            AclEntry {
                name: format!("e{i}"),
                matches: m,
                action: AclAction::Drop,
            }
        })
        .collect();
    acl.push(AclEntry {
        name: "udp-to-customer".into(),
        matches: AclMatch {
            destination: Some("198.51.100.0/24".parse().expect("constant")),
            protocol: Some(17),
            ..Default::default()
        },
        action: AclAction::Drop,
    });
    acl
}

/// The customer's /24 with the 200-entry ACL, and 1,000 other mitigated IPv4 /24s.
pub fn harsh_rule_set() -> Vec<MitigationSpec> {
    let customer = MitigationSpec {
        acl: harsh_acl(),
        countermeasures: Countermeasures {
            amplification: true,
            fragments: true,
            ..Default::default()
        },
        ..MitigationSpec::new(1, vec!["198.51.100.0/24".parse().expect("constant")])
    };
    let mut v = vec![customer];
    for i in 0..1000u64 {
        // 198.19.0.0/16 is benchmarking space too; 1,000 distinct /24s of it and of
        // 100.64.0.0/10 would do as well: only their number matters.
        let mut m = MitigationSpec::new(
            10 + i,
            vec![format!("198.19.{}.0/24", i % 250)
                .parse::<ipnet::IpNet>()
                .expect("valid")],
        );
        if i >= 250 {
            m.targets = vec![format!("100.{}.{}.0/24", 64 + i / 250, i % 250)
                .parse()
                .expect("valid")];
        }
        m.countermeasures.amplification = true;
        v.push(m);
    }
    v
}

/// `n` frames of the harsh flood: UDP from random sources of 198.18.0.0/15 to random hosts
/// (.1 to .254) and ports of 198.51.100.0/24.
pub fn harsh_frames(n: usize, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let r = next();
            let src = std::net::Ipv4Addr::from(0xc612_0000 | (r as u32 & 0x1_ffff));
            let host = 1 + (r >> 17) % 254;
            let dst = std::net::Ipv4Addr::new(198, 51, 100, host as u8);
            let sport = 1024 + (r >> 25) as u16 % 60000;
            let dport = 1 + (r >> 41) as u16 % 65535;
            let mut p = PacketSpec::new(
                src.into(),
                dst.into(),
                crate::packet::L4::Udp { sport, dport },
            );
            p.src_mac = src_mac;
            p.dst_mac = dst_mac;
            p.build()
        })
        .collect()
}

/// xdp-tools' program loaded with the closest rule it has for the workload: `udp dst port
/// 9999` (realistic), or every host of the customer's /24 as a destination (harsh: it
/// matches addresses exactly, not prefixes, and drops whatever it matches).
pub fn load_xdp_filter(pin_root: &std::path::Path, workload: Workload) -> Result<aya::Ebpf> {
    use aya::maps::{PerCpuArray, PerCpuHashMap, PerCpuValues};
    if !std::path::Path::new(XDP_FILTER_OBJ).exists() {
        bail!("{XDP_FILTER_OBJ} not found (Debian package libxdp1)");
    }
    let dir = pin_root.join("xdpfilt");
    std::fs::create_dir_all(&dir)?;
    let mut e = aya::EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .allow_unsupported_maps()
        .load_file(XDP_FILTER_OBJ)
        .context("loading xdpfilt_alw_all.o")?;
    let p: &mut aya::programs::Xdp = e
        .program_mut("xdpfilt_alw_all")
        .context("no xdpfilt_alw_all program")?
        .try_into()?;
    p.load().context("verifying xdpfilt_alw_all")?;
    // xdp-tools' common_kern_user.h: which fields of a map's entry match.
    const MAP_FLAG_DST: u64 = 1 << 1;
    const MAP_FLAG_UDP: u64 = 1 << 3;
    let ncpu = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let flags = PerCpuValues::try_from(vec![MAP_FLAG_DST | MAP_FLAG_UDP; ncpu])?;
    match workload {
        Workload::Harsh => {
            let mut v4: PerCpuHashMap<_, u32, u64> =
                PerCpuHashMap::try_from(e.map_mut("filter_ipv4").context("filter_ipv4 map")?)?;
            for host in 0..=255u8 {
                // The program looks the address up as read from the header.
                let key = u32::from_ne_bytes([198, 51, 100, host]);
                let dst = PerCpuValues::try_from(vec![MAP_FLAG_DST; ncpu])?;
                v4.insert(key, dst, 0)?;
            }
        }
        _ => {
            let mut ports: PerCpuArray<_, u64> =
                PerCpuArray::try_from(e.map_mut("filter_ports").context("filter_ports map")?)?;
            // The program reads the port from the header: network order in a u32 key.
            let key = u16::from_ne_bytes(9999u16.to_be_bytes()) as u32;
            ports.set(key, flags, 0)?;
        }
    }
    Ok(e)
}
