//! Packet-level tests of the XDP program through BPF_PROG_TEST_RUN: every match field,
//! action and countermeasure, IPv4 and IPv6, VLAN, fragments, malformed frames, counters,
//! atomic replacement and re-adoption of pinned state. Needs root (BPF).

mod common;

use common::{Lab, DROP, PASS};
use dots_agent::datapath::{
    AclAction, AclEntry, AclMatch, BitMatch, BitOperator, DatapathError, MitigationSpec, Mitigator,
    PortRange, Rate, RateLimit, ValueRange, XdpDatapath, DEFAULT_AMPLIFICATION_PORTS,
};
use dots_lab::packet::{Fragment, PacketSpec, L4, TCP_ACK, TCP_RST, TCP_SYN};
use xdp_common::DropReason;

const T4: &str = "198.51.100.7";
const T6: &str = "2001:db8:6401::7";
/// BPF_PROG_TEST_RUN runs XDP programs as if received on the loopback device.
const LO: u32 = 1;
/// One drop in SAMPLE is sampled into the top talkers.
const SAMPLE: usize = xdp_common::TALKER_SAMPLE as usize;

fn spec(id: u64) -> MitigationSpec {
    MitigationSpec::new(
        id,
        vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8:6401::/48".parse().unwrap(),
        ],
    )
}

fn entry(name: &str, matches: AclMatch, action: AclAction) -> AclEntry {
    AclEntry {
        name: name.into(),
        matches,
        action,
    }
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    PacketSpec::udp(src, dst, sport, dport).build()
}

fn lab_with(s: MitigationSpec) -> Lab {
    let mut lab = Lab::new();
    lab.dp
        .install(&s)
        .unwrap_or_else(|e| panic!("install: {e}"));
    lab
}

#[test]
fn unmitigated_traffic_passes_and_is_counted_per_interface() {
    let lab = lab_with(spec(1));
    assert_eq!(lab.run(&udp("192.0.2.1", "203.0.113.9", 123, 80)), PASS);
    assert_eq!(
        lab.run(&udp("2001:db8:1::1", "2001:db8:ffff::9", 123, 80)),
        PASS
    );
    let ifc = lab.dp.interface_counters(LO).unwrap().stats;
    assert_eq!(ifc.rx.packets, 2);
    assert_eq!(ifc.to_target, 0);
    assert_eq!(lab.counters(1).in_scope.packets, 0);
}

#[test]
fn odd_frames_pass_and_are_counted() {
    let lab = lab_with(spec(1));
    let mut arp = udp("192.0.2.1", T4, 1, 2);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(lab.run(&arp), PASS);
    let ip = udp("192.0.2.1", T4, 1, 2);
    assert_eq!(lab.run(&ip[..14]), PASS, "Ethernet header only");
    assert_eq!(lab.run(&ip[..14 + 12]), PASS, "IPv4 header cut short");
    let mut bad_version = ip.clone();
    bad_version[14] = 0x55;
    assert_eq!(lab.run(&bad_version), PASS);
    let mut bad_ihl = ip.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(lab.run(&bad_ihl), PASS);
    let ifc = lab.dp.interface_counters(LO).unwrap().stats;
    assert_eq!(ifc.non_ip, 1);
    assert_eq!(ifc.parse_errors, 4);
    assert_eq!(ifc.rx.packets, 5);
}

#[test]
fn truncated_transport_header_to_a_target_is_dropped_as_malformed() {
    let lab = lab_with(spec(1));
    let tcp = PacketSpec::tcp("192.0.2.1", T4, 1000, 80, TCP_SYN).build();
    let cut = &tcp[..14 + 20 + 10];
    assert_eq!(lab.run(cut), DROP);
    let other = PacketSpec::tcp("192.0.2.1", "203.0.113.1", 1000, 80, TCP_SYN).build();
    assert_eq!(
        lab.run(&other[..14 + 20 + 10]),
        PASS,
        "unmitigated traffic is never judged"
    );
    let c = lab.counters(1);
    assert_eq!(c.dropped(DropReason::Malformed).packets, 1);
    assert_eq!(c.dropped(DropReason::Malformed).bytes, 44);
}

#[test]
fn mitigated_traffic_without_rules_passes_and_is_counted() {
    let lab = lab_with(spec(1));
    let f = udp("192.0.2.1", T4, 5000, 80);
    assert_eq!(lab.run(&f), PASS);
    assert_eq!(lab.run(&udp("2001:db8:1::1", T6, 5000, 80)), PASS);
    let c = lab.counters(1);
    assert_eq!(c.in_scope.packets, 2);
    assert_eq!(c.passed.packets, 2);
    assert_eq!(c.in_scope.bytes, f.len() as u64 + 14 + 40 + 8 + 18);
    assert_eq!(lab.dp.interface_counters(LO).unwrap().stats.to_target, 2);
}

#[test]
fn scope_narrows_by_protocol_and_destination_port() {
    let mut s = spec(1);
    s.protocols = vec![17];
    s.ports = vec![PortRange::single(53), PortRange::new(8000, 8100)];
    s.countermeasures.amplification = true;
    let mut lab = lab_with(s);
    lab.dp.set_amplification_ports(&[123]).unwrap();
    assert_eq!(lab.run(&udp("192.0.2.1", T4, 123, 53)), DROP);
    assert_eq!(lab.run(&udp("192.0.2.1", T4, 123, 8050)), DROP);
    assert_eq!(
        lab.run(&udp("192.0.2.1", T4, 123, 80)),
        PASS,
        "port out of scope"
    );
    let tcp = PacketSpec::tcp("192.0.2.1", T4, 123, 53, TCP_SYN).build();
    assert_eq!(lab.run(&tcp), PASS, "protocol out of scope");
    let c = lab.counters(1);
    assert_eq!(c.in_scope.packets, 2);
    assert_eq!(c.dropped(DropReason::AmplificationPort).packets, 2);
}

#[test]
fn drop_list_and_accept_list_ipv4_and_ipv6() {
    let mut s = spec(1);
    s.drop_list = vec![
        "192.0.2.0/24".parse().unwrap(),
        "2001:db8:bad::/48".parse().unwrap(),
    ];
    s.accept_list = vec![
        "192.0.2.10/32".parse().unwrap(),
        "2001:db8:bad::10/128".parse().unwrap(),
    ];
    let lab = lab_with(s);
    assert_eq!(lab.run(&udp("192.0.2.1", T4, 1, 80)), DROP);
    assert_eq!(
        lab.run(&udp("192.0.2.10", T4, 1, 80)),
        PASS,
        "accept-list is checked first"
    );
    assert_eq!(lab.run(&udp("192.0.3.1", T4, 1, 80)), PASS);
    assert_eq!(lab.run(&udp("2001:db8:bad::1", T6, 1, 80)), DROP);
    assert_eq!(lab.run(&udp("2001:db8:bad::10", T6, 1, 80)), PASS);
    assert_eq!(lab.run(&udp("2001:db8:900d::1", T6, 1, 80)), PASS);
    let c = lab.counters(1);
    assert_eq!(c.dropped(DropReason::DropList).packets, 2);
    assert_eq!(c.accepted.packets, 2);
    assert_eq!(c.passed.packets, 4);
}

/// One ACL entry, a frame it must match and one it must not.
fn check_match(name: &str, m: AclMatch, hit: Vec<u8>, miss: Vec<u8>) {
    let mut s = spec(1);
    s.acl = vec![entry(name, m, AclAction::Drop)];
    let lab = lab_with(s);
    assert_eq!(lab.run(&hit), DROP, "{name}: should match");
    assert_eq!(lab.run(&miss), PASS, "{name}: should not match");
    let c = lab.counters(1);
    assert_eq!(c.acl[0].matched.packets, 1, "{name}: per-entry counter");
    assert_eq!(c.acl[0].matched.bytes, hit.len() as u64);
    assert_eq!(c.dropped(DropReason::AclDrop).packets, 1);
}

#[test]
fn acl_source_and_destination_prefixes() {
    check_match(
        "src4",
        AclMatch {
            source: Some("192.0.2.0/25".parse().unwrap()),
            ..Default::default()
        },
        udp("192.0.2.5", T4, 1, 2),
        udp("192.0.2.200", T4, 1, 2),
    );
    check_match(
        "dst4",
        AclMatch {
            destination: Some("198.51.100.0/29".parse().unwrap()),
            ..Default::default()
        },
        udp("192.0.2.5", T4, 1, 2),
        udp("192.0.2.5", "198.51.100.9", 1, 2),
    );
    check_match(
        "src6",
        AclMatch {
            source: Some("2001:db8:a::/64".parse().unwrap()),
            ..Default::default()
        },
        udp("2001:db8:a::1", T6, 1, 2),
        udp("2001:db8:b::1", T6, 1, 2),
    );
    check_match(
        "dst6",
        AclMatch {
            destination: Some("2001:db8:6401::7/128".parse().unwrap()),
            ..Default::default()
        },
        udp("2001:db8:a::1", T6, 1, 2),
        udp("2001:db8:a::1", "2001:db8:6401::8", 1, 2),
    );
}

#[test]
fn acl_protocol_and_ports() {
    check_match(
        "proto",
        AclMatch {
            protocol: Some(17),
            ..Default::default()
        },
        udp("192.0.2.5", T4, 1, 2),
        PacketSpec::tcp("192.0.2.5", T4, 1, 2, TCP_ACK).build(),
    );
    check_match(
        "sport-exact",
        AclMatch {
            protocol: Some(17),
            source_port: Some(PortRange::single(19)),
            ..Default::default()
        },
        udp("192.0.2.5", T4, 19, 2),
        udp("192.0.2.5", T4, 20, 2),
    );
    check_match(
        "dport-block",
        AclMatch {
            destination_port: Some(PortRange::new(1024, 2047)),
            ..Default::default()
        },
        udp("192.0.2.5", T4, 1, 2047),
        udp("192.0.2.5", T4, 1, 2048),
    );
    check_match(
        "dport-range",
        AclMatch {
            protocol: Some(6),
            destination_port: Some(PortRange::new(1000, 2000)),
            ..Default::default()
        },
        PacketSpec::tcp("192.0.2.5", T4, 1, 1500, TCP_ACK).build(),
        PacketSpec::tcp("192.0.2.5", T4, 1, 2001, TCP_ACK).build(),
    );
    check_match(
        "sport-range-v6",
        AclMatch {
            source_port: Some(PortRange::new(100, 200)),
            ..Default::default()
        },
        udp("2001:db8:a::1", T6, 150, 2),
        udp("2001:db8:a::1", T6, 99, 2),
    );
}

#[test]
fn acl_tcp_flags_operators() {
    let syn = |f| PacketSpec::tcp("192.0.2.5", T4, 1, 80, f).build();
    let bits = |b: &[&str], operator, not| BitMatch {
        bits: b.iter().map(|s| s.to_string()).collect(),
        operator,
        not,
    };
    check_match(
        "syn-only",
        AclMatch {
            tcp_flags: Some(bits(&["syn"], BitOperator::Match, false)),
            ..Default::default()
        },
        syn(TCP_SYN),
        syn(TCP_ACK),
    );
    check_match(
        "syn-or-rst",
        AclMatch {
            tcp_flags: Some(bits(&["syn", "rst"], BitOperator::Any, false)),
            ..Default::default()
        },
        syn(TCP_RST),
        syn(TCP_ACK),
    );
    check_match(
        "not-ack",
        AclMatch {
            tcp_flags: Some(bits(&["ack"], BitOperator::Match, true)),
            ..Default::default()
        },
        syn(TCP_SYN),
        syn(TCP_ACK | TCP_SYN),
    );
}

#[test]
fn acl_icmp_type_and_code() {
    check_match(
        "echo",
        AclMatch {
            icmp_type: Some(8),
            icmp_code: Some(0),
            ..Default::default()
        },
        PacketSpec::icmp("192.0.2.5", T4, 8, 0).build(),
        PacketSpec::icmp("192.0.2.5", T4, 0, 0).build(),
    );
    check_match(
        "echo6",
        AclMatch {
            protocol: Some(58),
            icmp_type: Some(128),
            ..Default::default()
        },
        PacketSpec::icmp("2001:db8:a::1", T6, 128, 0).build(),
        PacketSpec::icmp("2001:db8:a::1", T6, 129, 0).build(),
    );
}

#[test]
fn acl_fragment_length_ttl_dscp() {
    let frag = |offset, more| {
        let mut p = PacketSpec::udp("192.0.2.5", T4, 1, 2);
        p.fragment = Some(Fragment { offset, more });
        p.build()
    };
    let bits = |b: &str| BitMatch {
        bits: vec![b.into()],
        operator: BitOperator::Match,
        not: false,
    };
    check_match(
        "isf",
        AclMatch {
            fragment: Some(bits("isf")),
            ..Default::default()
        },
        frag(10, true),
        udp("192.0.2.5", T4, 1, 2),
    );
    check_match(
        "ff",
        AclMatch {
            fragment: Some(bits("ff")),
            ..Default::default()
        },
        frag(0, true),
        frag(10, true),
    );
    check_match(
        "lf",
        AclMatch {
            fragment: Some(bits("lf")),
            ..Default::default()
        },
        frag(10, false),
        frag(10, true),
    );
    let mut df = PacketSpec::udp("192.0.2.5", T4, 1, 2);
    df.dont_fragment = true;
    check_match(
        "df",
        AclMatch {
            fragment: Some(bits("df")),
            ..Default::default()
        },
        df.build(),
        udp("192.0.2.5", T4, 1, 2),
    );

    let sized = |n| {
        let mut p = PacketSpec::udp("192.0.2.5", T4, 1, 2);
        p.payload_len = n;
        p.build()
    };
    check_match(
        "length",
        AclMatch {
            length: Some(ValueRange {
                min: 1000,
                max: 1500,
            }),
            ..Default::default()
        },
        sized(1200),
        sized(100),
    );
    let ttl = |t| {
        let mut p = PacketSpec::udp("2001:db8:a::1", T6, 1, 2);
        p.ttl = t;
        p.build()
    };
    check_match(
        "ttl",
        AclMatch {
            ttl: Some(ValueRange { min: 0, max: 2 }),
            ..Default::default()
        },
        ttl(1),
        ttl(64),
    );
    let dscp = |d| {
        let mut p = PacketSpec::udp("192.0.2.5", T4, 1, 2);
        p.dscp = d;
        p.build()
    };
    check_match(
        "dscp",
        AclMatch {
            dscp: Some(46),
            ..Default::default()
        },
        dscp(46),
        dscp(0),
    );
}

#[test]
fn acl_first_matching_entry_wins_across_shapes() {
    let mut s = spec(1);
    s.acl = vec![
        entry(
            "allow-dns",
            AclMatch {
                protocol: Some(17),
                source_port: Some(PortRange::single(53)),
                ..Default::default()
            },
            AclAction::Accept,
        ),
        entry(
            "drop-net",
            AclMatch {
                source: Some("192.0.2.0/24".parse().unwrap()),
                ..Default::default()
            },
            AclAction::Drop,
        ),
        entry(
            "allow-host",
            AclMatch {
                source: Some("192.0.2.7/32".parse().unwrap()),
                ..Default::default()
            },
            AclAction::Accept,
        ),
    ];
    let lab = lab_with(s);
    assert_eq!(
        lab.run(&udp("192.0.2.9", T4, 53, 2)),
        PASS,
        "entry 0 wins over entry 1"
    );
    assert_eq!(
        lab.run(&udp("192.0.2.7", T4, 54, 2)),
        DROP,
        "entry 1 wins over entry 2"
    );
    assert_eq!(
        lab.run(&udp("192.0.3.7", T4, 54, 2)),
        PASS,
        "no entry: pass"
    );
    let c = lab.counters(1);
    let hits: Vec<u64> = c.acl.iter().map(|a| a.matched.packets).collect();
    assert_eq!(hits, vec![1, 1, 0]);
    assert_eq!(c.accepted.packets, 1);
}

#[test]
fn acl_rate_limit_accepts_up_to_the_rate() {
    let mut s = spec(1);
    let limit = RateLimit::PacketsPerSecond(Rate {
        rate: 1,
        burst: Some(3),
    });
    s.acl = vec![entry(
        "dns",
        AclMatch {
            protocol: Some(17),
            ..Default::default()
        },
        AclAction::RateLimit(limit),
    )];
    let lab = lab_with(s);
    let f = udp("192.0.2.5", T4, 1000, 53);
    let verdicts: Vec<u32> = (0..5).map(|_| lab.run(&f)).collect();
    assert_eq!(verdicts, vec![PASS, PASS, PASS, DROP, DROP]);
    let c = lab.counters(1);
    assert_eq!(c.dropped(DropReason::AclRateLimit).packets, 2);
    assert_eq!(c.accepted.packets, 3);
    assert_eq!(c.acl[0].matched.packets, 5);
    assert_eq!(c.rate_limited().packets, 2);
}

#[test]
fn amplification_countermeasure_drops_udp_from_listed_ports() {
    let mut s = spec(1);
    s.countermeasures.amplification = true;
    let mut lab = lab_with(s);
    lab.dp
        .set_amplification_ports(DEFAULT_AMPLIFICATION_PORTS)
        .unwrap();
    assert_eq!(
        lab.dp.amplification_ports().unwrap(),
        DEFAULT_AMPLIFICATION_PORTS.to_vec()
    );
    assert_eq!(lab.run(&udp("192.0.2.5", T4, 123, 4444)), DROP);
    assert_eq!(lab.run(&udp("2001:db8:a::1", T6, 11211, 4444)), DROP);
    assert_eq!(lab.run(&udp("192.0.2.5", T4, 5000, 4444)), PASS);
    assert_eq!(
        lab.run(&PacketSpec::tcp("192.0.2.5", T4, 123, 80, TCP_ACK).build()),
        PASS,
        "TCP is not reflection"
    );
    assert_eq!(
        lab.counters(1)
            .dropped(DropReason::AmplificationPort)
            .packets,
        2
    );
}

#[test]
fn fragment_countermeasure_drops_later_fragments_v4_and_v6() {
    let mut s = spec(1);
    s.countermeasures.fragments = true;
    let lab = lab_with(s);
    for (src, dst) in [("192.0.2.5", T4), ("2001:db8:a::1", T6)] {
        let mut first = PacketSpec::udp(src, dst, 1, 2);
        first.fragment = Some(Fragment {
            offset: 0,
            more: true,
        });
        let mut later = first.clone();
        later.fragment = Some(Fragment {
            offset: 100,
            more: false,
        });
        assert_eq!(
            lab.run(&first.build()),
            PASS,
            "{src}: first fragment carries ports"
        );
        assert_eq!(lab.run(&later.build()), DROP, "{src}: later fragment");
    }
    assert_eq!(lab.counters(1).dropped(DropReason::Fragment).packets, 2);
}

#[test]
fn per_source_packet_rate_limit() {
    let mut s = spec(1);
    s.countermeasures.source_pps = Some(Rate {
        rate: 1,
        burst: Some(2),
    });
    let lab = lab_with(s);
    let a = udp("192.0.2.5", T4, 1, 2);
    let b = udp("192.0.2.6", T4, 1, 2);
    assert_eq!([lab.run(&a), lab.run(&a), lab.run(&a)], [PASS, PASS, DROP]);
    assert_eq!(lab.run(&b), PASS, "another source has its own bucket");
    let v6 = udp("2001:db8:a::1", T6, 1, 2);
    assert_eq!(
        [lab.run(&v6), lab.run(&v6), lab.run(&v6)],
        [PASS, PASS, DROP]
    );
    assert_eq!(lab.counters(1).dropped(DropReason::SourceRate).packets, 2);
}

#[test]
fn syn_rate_limit_counts_only_syns() {
    let mut s = spec(1);
    s.countermeasures.syn_pps = Some(Rate {
        rate: 1,
        burst: Some(2),
    });
    let lab = lab_with(s);
    let syn = PacketSpec::tcp("192.0.2.5", T4, 1000, 80, TCP_SYN).build();
    let ack = PacketSpec::tcp("192.0.2.5", T4, 1000, 80, TCP_ACK).build();
    assert_eq!(
        [lab.run(&syn), lab.run(&syn), lab.run(&syn)],
        [PASS, PASS, DROP]
    );
    assert_eq!(
        [lab.run(&ack), lab.run(&ack), lab.run(&ack)],
        [PASS, PASS, PASS]
    );
    assert_eq!(lab.counters(1).dropped(DropReason::SynRate).packets, 1);
}

#[test]
fn scope_wide_byte_cap() {
    let mut s = spec(1);
    let f = udp("192.0.2.5", T4, 1, 2);
    let len = f.len() as u64;
    // One byte per second with a burst of three frames.
    s.countermeasures.scope_bps = Some(Rate {
        rate: 1,
        burst: Some(3 * len),
    });
    let lab = lab_with(s);
    let other_src = udp("192.0.2.99", T4, 1, 2);
    assert_eq!(
        [
            lab.run(&f),
            lab.run(&other_src),
            lab.run(&f),
            lab.run(&other_src)
        ],
        [PASS, PASS, PASS, DROP]
    );
    let c = lab.counters(1);
    assert_eq!(c.dropped(DropReason::ScopeCap).packets, 1);
    assert_eq!(c.dropped(DropReason::ScopeCap).bytes, len);
}

#[test]
fn vlan_and_qinq_frames_are_filtered() {
    let mut s = spec(1);
    s.drop_list = vec![
        "192.0.2.0/24".parse().unwrap(),
        "2001:db8:bad::/48".parse().unwrap(),
    ];
    let lab = lab_with(s);
    for tags in [vec![100], vec![100, 200]] {
        let mut p = PacketSpec::udp("192.0.2.5", T4, 1, 2);
        p.vlans = tags.clone();
        assert_eq!(lab.run(&p.build()), DROP, "tags {tags:?}");
        let mut p6 = PacketSpec::udp("2001:db8:bad::1", T6, 1, 2);
        p6.vlans = tags.clone();
        assert_eq!(lab.run(&p6.build()), DROP, "v6 tags {tags:?}");
    }
}

#[test]
fn ports_are_found_behind_ipv4_options_and_ipv6_extension_headers() {
    let mut s = spec(1);
    s.acl = vec![entry(
        "dns",
        AclMatch {
            destination_port: Some(PortRange::single(53)),
            ..Default::default()
        },
        AclAction::Drop,
    )];
    let lab = lab_with(s);
    let mut opt = PacketSpec::udp("192.0.2.5", T4, 1, 53);
    opt.ipv4_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    assert_eq!(lab.run(&opt.build()), DROP);
    let mut ext = PacketSpec::udp("2001:db8:a::1", T6, 1, 53);
    ext.ipv6_ext_headers = 3;
    assert_eq!(lab.run(&ext.build()), DROP);
    let mut frag_ext = ext.clone();
    frag_ext.fragment = Some(Fragment {
        offset: 0,
        more: true,
    });
    assert_eq!(
        lab.run(&frag_ext.build()),
        DROP,
        "first fragment behind options"
    );
    let mut too_many = ext.clone();
    too_many.ipv6_ext_headers = 9;
    assert_eq!(lab.run(&too_many.build()), DROP);
    let c = lab.counters(1);
    assert_eq!(c.dropped(DropReason::AclDrop).packets, 3);
    assert_eq!(
        c.dropped(DropReason::Malformed).packets,
        1,
        "an over-long extension chain is malformed"
    );
}

#[test]
fn longest_target_prefix_decides_the_mitigation() {
    let mut lab = Lab::new();
    let mut wide = spec(1);
    wide.targets = vec!["198.51.0.0/16".parse().unwrap()];
    let mut narrow = spec(2);
    narrow.targets = vec!["198.51.100.7/32".parse().unwrap()];
    narrow.acl = vec![entry("all", AclMatch::default(), AclAction::Drop)];
    lab.dp.install(&wide).unwrap();
    lab.dp.install(&narrow).unwrap();
    assert_eq!(lab.run(&udp("192.0.2.5", T4, 1, 2)), DROP);
    assert_eq!(lab.run(&udp("192.0.2.5", "198.51.100.8", 1, 2)), PASS);
    assert_eq!(lab.counters(2).in_scope.packets, 1);
    assert_eq!(lab.counters(1).in_scope.packets, 1);
}

#[test]
fn a_target_belongs_to_one_mitigation() {
    let mut lab = lab_with(spec(1));
    let err = lab.dp.install(&spec(2)).unwrap_err();
    assert!(
        matches!(err, DatapathError::TargetInUse { owner: 1, .. }),
        "{err}"
    );
    assert_eq!(lab.dp.installed(), vec![1]);
}

#[test]
fn replacement_is_whole_and_counters_follow_entry_names() {
    let mut s = spec(1);
    let drop_net = entry(
        "net",
        AclMatch {
            source: Some("192.0.2.0/24".parse().unwrap()),
            ..Default::default()
        },
        AclAction::Drop,
    );
    s.acl = vec![drop_net.clone()];
    let mut lab = lab_with(s.clone());
    let f = udp("192.0.2.5", T4, 1, 2);
    assert_eq!(lab.run(&f), DROP);
    assert_eq!(lab.run(&f), DROP);

    // New generation: an accept entry first, the old entry kept, one target swapped.
    s.acl = vec![
        entry(
            "host",
            AclMatch {
                source: Some("192.0.2.5/32".parse().unwrap()),
                ..Default::default()
            },
            AclAction::Accept,
        ),
        drop_net,
    ];
    s.targets = vec![
        "198.51.100.0/24".parse().unwrap(),
        "203.0.113.0/24".parse().unwrap(),
    ];
    lab.dp.install(&s).unwrap();
    assert_eq!(lab.run(&f), PASS);
    assert_eq!(
        lab.run(&udp("192.0.2.6", "203.0.113.1", 1, 2)),
        DROP,
        "new target is live"
    );
    assert_eq!(
        lab.run(&udp("2001:db8:a::1", T6, 1, 2)),
        PASS,
        "old target is gone"
    );
    let c = lab.counters(1);
    assert_eq!(c.acl[0].matched.packets, 1);
    assert_eq!(
        c.acl[1].matched.packets, 3,
        "two hits carried over from the old generation"
    );
    assert_eq!(c.in_scope.packets, 4, "mitigation counters continue");

    let last = lab.dp.remove(1).unwrap().expect("was installed");
    assert_eq!(last.in_scope.packets, 4);
    assert_eq!(lab.run(&f), PASS);
    assert!(lab.dp.counters(1).unwrap().is_none());
    assert_eq!(lab.dp.remove(1).unwrap(), None);
    // Everything was released: the same targets can be taken by another mitigation.
    lab.dp.install(&spec(9)).unwrap();
    assert_eq!(lab.dp.occupancy()[0].1, 1);
}

#[test]
fn pinned_state_is_re_adopted_by_a_new_process() {
    let mut s = spec(42);
    s.drop_list = vec!["192.0.2.0/24".parse().unwrap()];
    s.acl = vec![entry(
        "e",
        AclMatch {
            protocol: Some(6),
            ..Default::default()
        },
        AclAction::Drop,
    )];
    let mut lab = lab_with(s.clone());
    assert_eq!(lab.run(&udp("192.0.2.5", T4, 1, 2)), DROP);

    // The CLI's view: maps only, from the pins.
    let pinned = XdpDatapath::open_pinned(&lab.root.0).unwrap();
    assert_eq!(pinned.installed(), vec![42]);
    assert_eq!(
        pinned
            .counters(42)
            .unwrap()
            .unwrap()
            .dropped(DropReason::DropList)
            .packets,
        1
    );
    assert_eq!(pinned.targets(42).unwrap().len(), 2);

    // A restarted agent: loads the program again onto the same pinned maps, once the first
    // has given up the writer's lock (one writer at a time).
    assert!(
        XdpDatapath::load(&lab.root.options()).is_err(),
        "one writer at a time"
    );
    lab.dp.relinquish_writer();
    let mut again = XdpDatapath::load(&lab.root.options()).unwrap();
    assert_eq!(again.installed(), vec![42]);
    s.drop_list.clear();
    again.install(&s).unwrap();
    assert_eq!(
        lab.run(&udp("192.0.2.5", T4, 1, 2)),
        PASS,
        "the first program sees the update"
    );
    assert_eq!(again.counters(42).unwrap().unwrap().in_scope.packets, 2);
    again.remove(42).unwrap();
    assert!(XdpDatapath::open_pinned(&lab.root.0)
        .unwrap()
        .installed()
        .is_empty());
}

#[test]
fn short_and_long_target_prefixes_cover_what_they_should() {
    let mut lab = Lab::new();
    let mut s = spec(1);
    s.targets = vec![
        "10.0.0.0/8".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    s.acl = vec![entry("all", AclMatch::default(), AclAction::Drop)];
    lab.dp.install(&s).unwrap();
    assert_eq!(lab.run(&udp("192.0.2.5", "10.200.1.1", 1, 2)), DROP);
    assert_eq!(
        lab.run(&udp("2001:db8:1::1", "2001:db8:ffff:1::9", 1, 2)),
        DROP
    );
    assert_eq!(lab.run(&udp("192.0.2.5", "11.0.0.1", 1, 2)), PASS);
    assert_eq!(lab.run(&udp("2001:db8:1::1", "2001:db9::1", 1, 2)), PASS);
    lab.dp.remove(1).unwrap();
    assert_eq!(lab.run(&udp("192.0.2.5", "10.200.1.1", 1, 2)), PASS);
}

#[test]
fn a_large_acl_uses_one_tuple_and_matches_its_last_entry() {
    let mut s = spec(1);
    s.acl = (0..16_000u32)
        .map(|i| {
            let src = format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255);
            entry(
                &format!("r{i}"),
                AclMatch {
                    source: Some(src.parse().unwrap()),
                    ..Default::default()
                },
                AclAction::Drop,
            )
        })
        .collect();
    let lab = lab_with(s);
    assert_eq!(lab.run(&udp("10.0.62.127", T4, 1, 2)), DROP, "entry 15999");
    assert_eq!(lab.run(&udp("10.0.62.128", T4, 1, 2)), PASS);
    assert_eq!(lab.counters(1).acl[15_999].matched.packets, 1);
}

#[test]
fn icmp_echo_to_target_with_l4_other_protocol_passes() {
    let mut s = spec(1);
    s.acl = vec![entry(
        "udp",
        AclMatch {
            protocol: Some(17),
            destination_port: Some(PortRange::single(53)),
            ..Default::default()
        },
        AclAction::Drop,
    )];
    let lab = lab_with(s);
    let gre = PacketSpec::new(
        "192.0.2.5".parse().unwrap(),
        T4.parse().unwrap(),
        L4::Other(47),
    )
    .build();
    assert_eq!(lab.run(&gre), PASS);
    assert_eq!(
        lab.run(&PacketSpec::icmp("192.0.2.5", T4, 8, 0).build()),
        PASS
    );
}

/// Drops of A (IPv4) and B (IPv6), interleaved with passed traffic from C.
fn send_talker_traffic(lab: &Lab, a: &[u8], b: &[u8], c: &[u8], n_a: usize, n_b: usize) {
    for i in 0..n_a {
        assert_eq!(lab.run(a), DROP);
        if i < n_b {
            assert_eq!(lab.run(b), DROP);
        }
        assert_eq!(lab.run(c), PASS);
    }
}

fn talker_spec(id: u64) -> MitigationSpec {
    let mut s = spec(id);
    s.drop_list = vec![
        "192.0.2.0/24".parse().unwrap(),
        "2001:db8:bad::/48".parse().unwrap(),
    ];
    s
}

#[test]
fn top_talkers_rank_sampled_sources_of_drops() {
    let lab = lab_with(talker_spec(1));
    let a = udp("192.0.2.1", T4, 1, 80);
    let b = udp("2001:db8:bad::2", T6, 1, 80);
    // C reaches the mitigated target too, but passes: never sampled.
    let c = udp("192.0.3.1", T4, 1, 80);
    // A: 100 samples expected, B: 20 (one drop in TALKER_SAMPLE is sampled).
    let (n_a, n_b) = (100 * SAMPLE, 20 * SAMPLE);
    send_talker_traffic(&lab, &a, &b, &c, n_a, n_b);
    let counters = lab.counters(1);
    assert_eq!(
        counters.dropped(DropReason::DropList).packets,
        (n_a + n_b) as u64
    );
    assert_eq!(counters.passed.packets, n_a as u64);

    let top = lab.dp.top_talkers(1, 10);
    let addrs: Vec<String> = top.iter().map(|(ip, _)| ip.to_string()).collect();
    assert_eq!(
        addrs,
        ["192.0.2.1", "2001:db8:bad::2"],
        "A, then B; C absent"
    );
    let (ca, cb) = (top[0].1, top[1].1);
    // Samples of A ~ Binomial(100 x SAMPLE, 1/SAMPLE): mean 100, sd ~10; these bounds are
    // ~4 sd out.
    let s = SAMPLE as u64;
    assert!(
        (60 * s..=140 * s).contains(&ca.packets),
        "A estimated at {}",
        ca.packets
    );
    // B: mean 20 samples, sd ~4.5 (zero samples has odds of 2e-9).
    assert!(
        (s..=50 * s).contains(&cb.packets),
        "B estimated at {}",
        cb.packets
    );
    assert_eq!(ca.packets % s, 0, "scaled by the sampling rate");
    assert_eq!(
        ca.bytes,
        ca.packets * a.len() as u64,
        "bytes follow packets"
    );
    assert_eq!(cb.bytes, cb.packets * b.len() as u64);
    assert_eq!(lab.dp.top_talkers(1, 1).len(), 1, "truncated to n");
    assert!(lab.dp.top_talkers(7, 5).is_empty(), "not installed");

    // The CLI's view from the pins agrees.
    let pinned = XdpDatapath::open_pinned(&lab.root.0).unwrap();
    assert_eq!(pinned.top_talkers(1, 10), top);
    let all = pinned.top_talkers_all(10).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[&1], top, "one walk for all mitigations agrees");
}

#[test]
fn talkers_survive_replacement_and_go_with_the_mitigation() {
    let mut lab = lab_with(talker_spec(1));
    let a = udp("192.0.2.1", T4, 1, 80);
    for _ in 0..25 * SAMPLE {
        assert_eq!(lab.run(&a), DROP);
    }
    // 25 x SAMPLE drops leave no sample with odds of about e^-25.
    assert_eq!(lab.dp.top_talkers(1, 5).len(), 1);

    let mut s = talker_spec(1);
    s.countermeasures.fragments = true;
    lab.dp.install(&s).unwrap();
    assert_eq!(
        lab.dp.top_talkers(1, 5).len(),
        1,
        "a replacement is the same mitigation"
    );

    lab.dp.remove(1).unwrap().expect("installed");
    assert!(lab.dp.top_talkers(1, 5).is_empty());
    // A new mitigation gets the freed slot: it must start without the old talkers.
    lab.dp.install(&spec(2)).unwrap();
    assert!(lab.dp.top_talkers(2, 5).is_empty(), "no talkers inherited");
    let pinned = XdpDatapath::open_pinned(&lab.root.0).unwrap();
    assert!(pinned.top_talkers(2, 5).is_empty(), "none left in the map");
}

#[test]
fn talker_sampling_can_be_turned_off_at_load() {
    let root = common::PinRoot::new("nosample");
    let mut o = root.options();
    o.talker_sampling = false;
    let dp = XdpDatapath::load(&o).unwrap();
    let mut lab = Lab { dp, root };
    lab.dp.install(&talker_spec(1)).unwrap();
    let a = udp("192.0.2.1", T4, 1, 80);
    for _ in 0..25 * SAMPLE {
        assert_eq!(lab.run(&a), DROP);
    }
    assert!(lab.dp.top_talkers(1, 5).is_empty());
}

#[test]
fn an_unchanged_spec_is_not_reinstalled() {
    let mut lab = lab_with(talker_spec(1));
    let g = lab.dp.generation(1).expect("installed");
    lab.dp.install(&talker_spec(1)).unwrap();
    assert_eq!(lab.dp.generation(1), Some(g), "same spec: nothing written");
    let mut changed = talker_spec(1);
    changed.countermeasures.fragments = !changed.countermeasures.fragments;
    lab.dp.install(&changed).unwrap();
    assert_eq!(lab.dp.generation(1), Some(g + 1));
    // Across a restart too: the digest lives in the pinned configuration.
    drop(lab.dp);
    let mut dp = XdpDatapath::load(&lab.root.options()).unwrap();
    dp.install(&changed).unwrap();
    assert_eq!(dp.generation(1), Some(g + 1));
}

#[test]
fn quick_replacements_do_not_wait_and_keep_counting() {
    // Replacements closer together than the grace period: each writes a new generation
    // beside the retiring ones; the entry's counter keeps every match.
    let with_acl = |i: u64| {
        let mut s = spec(1);
        s.acl = vec![AclEntry {
            name: "drop-192.0.2".into(),
            matches: AclMatch {
                source: Some("192.0.2.0/24".parse().unwrap()),
                ..Default::default()
            },
            action: AclAction::Drop,
        }];
        s.countermeasures.source_pps = Some(Rate::new(1_000_000 + i));
        s
    };
    let mut lab = lab_with(with_acl(0));
    let a = udp("192.0.2.1", T4, 1, 80);
    for i in 1..=20u64 {
        lab.dp.install(&with_acl(i)).unwrap();
        assert_eq!(lab.run(&a), DROP);
    }
    assert_eq!(lab.dp.generation(1), Some(20));
    let c = lab.counters(1);
    assert_eq!(c.acl.len(), 1);
    assert_eq!(
        c.acl[0].matched.packets, 20,
        "counts of retiring generations carried over"
    );
    // Once the retiring generations are gone, the count is the same.
    std::thread::sleep(std::time::Duration::from_millis(120));
    lab.dp.maintain();
    assert_eq!(lab.counters(1).acl[0].matched.packets, 20);
    let pinned = XdpDatapath::open_pinned(&lab.root.0).unwrap();
    assert_eq!(
        pinned.counters(1).unwrap().unwrap().acl[0].matched.packets,
        20
    );
}

#[test]
fn a_removed_longer_target_falls_back_to_the_covers_live_generation() {
    // What the data channel does with a client's baseline (its /24, its ACL) and a
    // mitigation of one host inside it: the host's traffic meets the mitigation, and after
    // the mitigation ends, the baseline as it is then (here: one entry fewer).
    let port_drop = |name: &str, port: u16| {
        entry(
            name,
            AclMatch {
                protocol: Some(17),
                destination_port: Some(PortRange::single(port)),
                ..Default::default()
            },
            AclAction::Drop,
        )
    };
    let baseline = |acl: Vec<AclEntry>| MitigationSpec {
        acl,
        ..MitigationSpec::new(1000, vec!["198.51.100.0/24".parse().unwrap()])
    };
    let mut lab = lab_with(baseline(vec![port_drop("now", 4444)]));
    lab.dp
        .install(&baseline(vec![
            port_drop("now", 4444),
            port_drop("later", 5555),
        ]))
        .unwrap();
    let host = MitigationSpec {
        acl: vec![port_drop("now", 4444), port_drop("later", 5555)],
        ..MitigationSpec::new(1, vec!["198.51.100.10/32".parse().unwrap()])
    };
    lab.dp.install(&host).unwrap();
    assert_eq!(lab.run(&udp("192.0.2.1", "198.51.100.10", 1, 5555)), DROP);
    assert_eq!(
        lab.counters(1).acl[1].matched.packets,
        1,
        "the host's own mitigation"
    );
    lab.dp.remove(1).unwrap().expect("installed");
    lab.dp
        .install(&baseline(vec![port_drop("now", 4444)]))
        .unwrap();
    assert_eq!(lab.run(&udp("192.0.2.1", "198.51.100.10", 1, 5555)), PASS);
    assert_eq!(lab.run(&udp("192.0.2.1", "198.51.100.10", 1, 4444)), DROP);
    assert_eq!(lab.run(&udp("192.0.2.1", "198.51.100.11", 1, 5555)), PASS);
}

#[test]
fn counts_of_an_acl_entry_a_replacement_drops_stay_with_the_mitigation() {
    let drop_port = |name: &str, port: u16| {
        entry(
            name,
            AclMatch {
                protocol: Some(17),
                destination_port: Some(PortRange::single(port)),
                ..Default::default()
            },
            AclAction::Drop,
        )
    };
    let with = |acl: Vec<AclEntry>| MitigationSpec { acl, ..spec(1) };
    let mut lab = lab_with(with(vec![drop_port("a", 4444), drop_port("b", 5555)]));
    for _ in 0..3 {
        assert_eq!(lab.run(&udp("192.0.2.1", T4, 1, 4444)), DROP);
    }
    assert_eq!(lab.run(&udp("192.0.2.1", T4, 1, 5555)), DROP);
    let before = lab.counters(1);
    assert_eq!(before.dropped(DropReason::AclDrop).packets, 4);
    // "a" goes: its three drops stay in the mitigation's totals, now and after the
    // replaced generation is deleted, and across a restart.
    lab.dp.install(&with(vec![drop_port("b", 5555)])).unwrap();
    assert_eq!(lab.counters(1).dropped(DropReason::AclDrop).packets, 4);
    assert_eq!(lab.counters(1).acl.len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(120));
    lab.dp.maintain();
    assert_eq!(lab.run(&udp("192.0.2.1", T4, 1, 5555)), DROP);
    assert_eq!(lab.run(&udp("192.0.2.1", T4, 1, 4444)), PASS);
    let c = lab.counters(1);
    assert_eq!(c.dropped(DropReason::AclDrop).packets, 5);
    assert_eq!(c.acl[0].matched.packets, 2, "b's counts followed its name");
    assert_eq!(c.passed.packets, 1);
    let pinned = XdpDatapath::open_pinned(&lab.root.0).unwrap();
    assert_eq!(pinned.counters(1).unwrap().unwrap(), c);
}
