//! End to end: a scrubber node in follow mode. Its gobgpd learns FlowSpec rules from an
//! announcing gobgpd (the route reflector's place) in another namespace; the follower puts
//! them into the node's XDP filter, which drops an attack on a veth pair. The rules survive
//! the loss of the BGP session and a restart of the follower (the pinned filter keeps them);
//! they go when the announcing side comes back without them, or when the hold time passes
//! with the session down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dots_agent::flowspec::follow::{self, FollowConfig};
use dots_e2e::bgp::{gobgp, gobgpd, wait_for, Daemon, Neighbor};
use dots_e2e::dots::{arrived, attack};
use dots_e2e::{Lab, Netns};

const RR_BGP: &str = "203.0.113.253";
const NODE_BGP: &str = "203.0.113.254";
const RULE: [&str; 8] = [
    "destination",
    "198.51.100.0/24",
    "protocol",
    "==17",
    "source-port",
    "==123",
    "then",
    "discard",
];

struct Follower {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<()>>,
}

fn start_follower(ns: &Netns, config: &std::path::Path) -> Follower {
    let config = FollowConfig::load(config).expect("node.toml");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = ns.run(move || {
        let dp = dots_agent::app::xdp_datapath(&config.datapath)?;
        follow::run(&config, dp, &|| flag.load(Ordering::SeqCst))
    });
    Follower { stop, thread }
}

impl Follower {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap().unwrap();
    }
}

fn rr(ns: &Netns, dir: &std::path::Path) -> Daemon {
    gobgpd(
        ns,
        dir,
        "rr",
        64512,
        &[RR_BGP],
        &[Neighbor {
            address: NODE_BGP,
            asn: 64512,
            rr_client: true,
        }],
    )
}

/// Waits until the attack (300 NTP packets) is dropped entirely, or arrives entirely.
fn wait_attack(lab: &Lab, what: &str, dropped: bool) {
    wait_for(what, Duration::from_secs(30), || {
        let n = arrived(&attack(&lab.pair, 300, 20_000));
        (n == if dropped { 0 } else { 300 }).then_some(())
    });
}

#[test]
fn a_node_follows_flowspec_into_its_xdp_filter_through_session_loss_and_restart() {
    let lab = Lab::new("fsf");
    let node = &lab.pair.b;
    let rr_ns = Netns::new("fsfrr");
    std::process::Command::new("ip")
        .args([
            "link",
            "add",
            "veth-bgp",
            "netns",
            &node.name,
            "type",
            "veth",
            "peer",
            "name",
            "veth-rr",
            "netns",
            &rr_ns.name,
        ])
        .status()
        .unwrap();
    node.ip(&["addr", "add", &format!("{NODE_BGP}/30"), "dev", "veth-bgp"]);
    node.ip(&["link", "set", "veth-bgp", "up"]);
    rr_ns.ip(&["addr", "add", &format!("{RR_BGP}/30"), "dev", "veth-rr"]);
    rr_ns.ip(&["link", "set", "veth-rr", "up"]);
    let dir = lab.dir.path();
    let mut announcer = rr(&rr_ns, dir);
    let _node_bgp = gobgpd(
        node,
        dir,
        "node",
        64512,
        &[NODE_BGP],
        &[Neighbor {
            address: RR_BGP,
            asn: 64512,
            rr_client: false,
        }],
    );
    let node_toml = |hold: u32| {
        let path = dir.join(format!("node-{hold}.toml"));
        std::fs::write(
            &path,
            format!(
                "[datapath]\ninterfaces = [\"{}\"]\nxdp_mode = \"native\"\npin_root = \"{}\"\n\
                 [flowspec]\nhold_seconds = {hold}\npoll_seconds = 1\n",
                lab.pair.b_if,
                lab.pins.0.display()
            ),
        )
        .unwrap();
        path
    };
    let session_up = |ns: &Netns| {
        wait_for("the BGP session", Duration::from_secs(30), || {
            gobgp(ns, &["neighbor"])
                .ok()
                .filter(|t| t.contains("Establ"))
                .map(|_| ())
        })
    };
    session_up(node);

    let follower = start_follower(node, &node_toml(300));
    assert_eq!(arrived(&attack(&lab.pair, 300, 20_000)), 300, "no rule yet");

    // Announced at the route reflector's place: learned, installed, dropping.
    let add: Vec<&str> = ["global", "rib", "-a", "ipv4-flowspec", "add", "match"]
        .into_iter()
        .chain(RULE)
        .collect();
    gobgp(&rr_ns, &add).unwrap();
    wait_attack(&lab, "the learned rule dropping", true);

    // The session lost: the node keeps the rule (hold time 300 s).
    announcer.kill();
    wait_for(
        "the node's table emptied by the session loss",
        Duration::from_secs(30),
        || {
            gobgp(node, &["global", "rib", "-a", "ipv4-flowspec"])
                .ok()
                .filter(|t| !t.contains("198.51.100.0/24"))
        },
    );
    assert_eq!(
        arrived(&attack(&lab.pair, 300, 20_000)),
        0,
        "kept while the session is down"
    );

    // The follower restarted while the session is down: it adopts the pinned rule and keeps it.
    follower.stop();
    assert_eq!(
        arrived(&attack(&lab.pair, 300, 20_000)),
        0,
        "the pinned filter drops while the follower is down"
    );
    let follower = start_follower(node, &node_toml(300));
    assert_eq!(
        arrived(&attack(&lab.pair, 300, 20_000)),
        0,
        "adopted after the restart"
    );

    // The announcing side back without the rule (a restarted gobgpd forgets it): withdrawn.
    announcer = rr(&rr_ns, dir);
    session_up(node);
    wait_attack(
        &lab,
        "the rule gone once the session is back without it",
        false,
    );

    // Announced again, then withdrawn by BGP.
    gobgp(&rr_ns, &add).unwrap();
    wait_attack(&lab, "the rule learned again", true);
    let del: Vec<&str> = ["global", "rib", "-a", "ipv4-flowspec", "del", "match"]
        .into_iter()
        .chain(RULE[..6].iter().copied())
        .collect();
    gobgp(&rr_ns, &del).unwrap();
    wait_attack(&lab, "the withdrawn rule removed", false);

    // A short hold time: with the session down, the rule goes when it passes.
    follower.stop();
    let follower = start_follower(node, &node_toml(2));
    gobgp(&rr_ns, &add).unwrap();
    wait_attack(&lab, "the rule learned by the short-hold follower", true);
    announcer.kill();
    wait_attack(&lab, "the rule removed after the hold time", false);
    follower.stop();
}
