//! End to end on a veth pair between two namespaces this test creates: attach the XDP
//! filter natively, install a mitigation, send attack and legitimate traffic, check what
//! arrived and what the counters say, withdraw, and check the attack flows again.

use std::collections::BTreeMap;
use std::time::Duration;

use dots_agent::af_packet::{FlowCount, FlowKey, PacketSocket};
use dots_agent::datapath::{
    AclAction, AclEntry, AclMatch, AttachMode, Countermeasures, LoadOptions, MitigationSpec,
    Mitigator, XdpDatapath, DEFAULT_AMPLIFICATION_PORTS,
};
use dots_e2e::{PinRoot, VethPair};
use dots_lab::packet::PacketSpec;
use dots_lab::trafficgen::socket::send_paced;
use xdp_common::DropReason;

const TARGET4: &str = "198.51.100.7";
const TARGET6: &str = "2001:db8:6401::7";

struct Flow {
    frames: Vec<Vec<u8>>,
    count: u64,
}

fn flow(srcs: &[&str], dst: &str, sport: u16, dport: u16, count: u64) -> Flow {
    Flow {
        frames: srcs
            .iter()
            .map(|s| PacketSpec::udp(s, dst, sport, dport).build())
            .collect(),
        count,
    }
}

/// Sends the flows from namespace a while namespace b counts what arrives.
fn exchange(pair: &VethPair, flows: Vec<Flow>) -> BTreeMap<FlowKey, FlowCount> {
    let b_if = pair.b_if.clone();
    let receiver = pair.b.run(move || {
        let sock = PacketSocket::open(&b_if).expect("raw socket in b");
        sock.count_flows(Duration::from_millis(2500))
            .expect("counting")
    });
    std::thread::sleep(Duration::from_millis(400));
    let a_if = pair.a_if.clone();
    let sender = pair.a.run(move || {
        let sock = PacketSocket::open(&a_if).expect("raw socket in a");
        for f in &flows {
            let sent = send_paced(&sock, &f.frames, f.count, 20_000, Duration::from_secs(5))
                .expect("sending");
            assert_eq!(sent, f.count, "all frames went out");
        }
    });
    sender.join().expect("sender");
    receiver.join().expect("receiver")
}

fn arrived(counts: &BTreeMap<FlowKey, FlowCount>, sport: u16) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| k.sport == sport)
        .map(|(_, c)| c.packets)
        .sum()
}

#[test]
fn mitigation_on_a_veth_pair_drops_the_attack_and_keeps_legitimate_traffic() {
    let pair = VethPair::new("xv");
    let pins = PinRoot::new("e2e");
    let root = pins.0.clone();
    let b_if = pair.b_if.clone();
    let mut dp = pair
        .b
        .run(move || {
            let mut o = LoadOptions::new(root);
            o.max_entries.push(("SRC_RATE", 65_536));
            let mut dp = XdpDatapath::load(&o).expect("loading");
            dp.set_amplification_ports(DEFAULT_AMPLIFICATION_PORTS)
                .expect("ports");
            let out = dp
                .attach(&b_if, AttachMode::Native)
                .expect("native XDP on veth");
            assert_eq!(out.mode, "native");
            dp
        })
        .join()
        .expect("attach thread");

    let spec = MitigationSpec {
        acl: vec![AclEntry {
            name: "bad-net".into(),
            matches: AclMatch {
                source: Some("192.0.2.128/25".parse().unwrap()),
                ..Default::default()
            },
            action: AclAction::Drop,
        }],
        countermeasures: Countermeasures {
            amplification: true,
            ..Default::default()
        },
        ..MitigationSpec::new(
            7,
            vec![
                "198.51.100.0/24".parse().unwrap(),
                "2001:db8:6401::/48".parse().unwrap(),
            ],
        )
    };
    dp.install(&spec).expect("install");

    let attack_srcs = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"];
    let legit_srcs = ["192.0.2.20", "192.0.2.21"];
    let counts = exchange(
        &pair,
        vec![
            flow(&attack_srcs, TARGET4, 123, 4444, 2000), // NTP reflection
            flow(&["2001:db8:a::1"], TARGET6, 19, 4444, 500), // chargen over IPv6
            flow(&["192.0.2.200"], TARGET4, 40001, 443, 300), // ACL-dropped network
            flow(&legit_srcs, TARGET4, 40000, 443, 1000), // legitimate
            flow(&["192.0.2.1"], "203.0.113.5", 123, 4444, 200), // not a target: untouched
        ],
    );
    assert_eq!(
        arrived(&counts, 123),
        200,
        "only the untargeted NTP flow arrives"
    );
    assert_eq!(arrived(&counts, 19), 0);
    assert_eq!(arrived(&counts, 40001), 0);
    assert_eq!(
        arrived(&counts, 40000),
        1000,
        "legitimate traffic all delivered"
    );

    let c = dp.counters(7).unwrap().unwrap();
    assert_eq!(c.dropped(DropReason::AmplificationPort).packets, 2500);
    assert_eq!(c.dropped(DropReason::AclDrop).packets, 300);
    assert_eq!(c.acl[0].matched.packets, 300);
    assert_eq!(c.passed.packets, 1000);
    assert_eq!(c.in_scope.packets, 3800);
    let ifindex = pair.b.run({
        let b_if = pair.b_if.clone();
        move || dots_agent::datapath::interface_index(&b_if)
    });
    let ifc = dp
        .interface_counters(ifindex.join().unwrap().expect("ifindex"))
        .unwrap()
        .stats;
    assert_eq!(ifc.to_target, 3800);
    assert_eq!(ifc.dropped, 2800);
    assert!(
        ifc.rx.packets >= 4000,
        "every frame crossed the program: {}",
        ifc.rx.packets
    );

    // Withdraw: the attack flows again.
    let last = dp.remove(7).expect("remove").expect("was installed");
    assert_eq!(last.dropped_total().packets, 2800);
    let counts = exchange(&pair, vec![flow(&attack_srcs, TARGET4, 123, 4444, 500)]);
    assert_eq!(arrived(&counts, 123), 500);

    drop(dp);
    assert!(XdpDatapath::detach(&pins.0, &pair.b_if).expect("detach"));
}

#[test]
fn attach_takes_over_the_link_an_older_layout_pinned() {
    // What an agent of datapath layout 2 leaves: its program attached through a link pinned
    // under <pin root>/v2/links/<interface>. Here a stand-in program (XDP_PASS) is attached
    // and pinned there the same way.
    let pair = VethPair::new("xup");
    let pins = PinRoot::new("upgrade");
    let root = pins.0.clone();
    let b_if = pair.b_if.clone();
    pair.b
        .run(move || {
            use aya::programs::links::{FdLink, PinnedLink};
            let old_links = root.join("v2").join("links");
            std::fs::create_dir_all(&old_links).expect("old layout dir");
            std::fs::create_dir_all(root.join("v2").join("maps")).expect("old maps dir");
            let mut old = dots_lab::testrun::load_trivial_xdp(2).expect("stand-in program");
            let id = old
                .program_mut()
                .attach(&b_if, aya::programs::XdpMode::Driver)
                .expect("attaching the stand-in");
            let link = old.program_mut().take_link(id).expect("link");
            FdLink::try_from(link)
                .expect("bpf_link")
                .pin(old_links.join(&b_if))
                .expect("pinning under v2");
            drop(old); // the pin keeps the stand-in attached

            let mut dp = XdpDatapath::load(&LoadOptions::new(&root)).expect("loading");
            let out = dp.attach(&b_if, AttachMode::Native).expect("attaching");
            assert!(out.replaced, "the existing link was reused");
            assert_eq!(out.migrated_from_layout, Some(2));
            assert!(!root.join("v2").exists(), "the old layout's pins are gone");
            assert_eq!(XdpDatapath::attached(&root), vec![b_if.clone()]);
            // The interface now runs our program, through the same link.
            let pinned = PinnedLink::from_pin(
                root.join(format!("v{}", xdp_common::LAYOUT_VERSION))
                    .join("links")
                    .join(&b_if),
            )
            .expect("link pinned under the new layout");
            let prog_id = FdLink::from(pinned).info().expect("link info").program_id();
            let ours = dp.program().expect("loaded").info().expect("info").id();
            assert_eq!(prog_id, ours);
            XdpDatapath::detach(&root, &b_if).expect("detaching");
            drop(dp);
            XdpDatapath::purge(&root).expect("purging");
        })
        .join()
        .expect("upgrade in namespace b");
}
