//! End to end: a DOTS server with its gobgpd as route reflector, two scrubber nodes in
//! follow mode (each its gobgpd, its XDP filter on its own veth, its /metrics), and a real
//! Prometheus scraping the nodes. One DOTS request makes both nodes drop an attack; the
//! DOTS status reports the fleet's drops, equal to the sum of the nodes' own counters; a
//! node Prometheus cannot reach is named in the server's /metrics and its last count stays
//! in the sum.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, TransportChoice};
use dots_agent::flowspec::follow::{self, FollowConfig};
use dots_agent::signal::message::{self, Lifetime, Scope};
use dots_e2e::bgp::{gobgp, gobgpd, prometheus, wait_for, Daemon, Neighbor};
use dots_e2e::dots::{arrived, ask_mid, attack, http_get, start_server};
use dots_e2e::{Lab, Netns, PinRoot, VethPair};

const METRICS: &str = "127.0.0.1:9464";
const PROMETHEUS: &str = "127.0.0.1:9090";
const NODES: usize = 2;

/// The server's end and the node's end of node `i`'s BGP link.
fn link(i: usize) -> (String, String) {
    (
        format!("203.0.113.{}", 4 * i + 1),
        format!("203.0.113.{}", 4 * i + 2),
    )
}

fn node_metrics_addr(i: usize) -> &'static str {
    Box::leak(format!("{}:9500", link(i).1).into_boxed_str())
}

struct Node {
    pair: VethPair,
    _pins: PinRoot,
    _bgp: Daemon,
    stop: Arc<AtomicBool>,
    follower: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.follower.take() {
            let _ = t.join();
        }
    }
}

fn node(i: usize, server: &Netns, dir: &std::path::Path) -> Node {
    let pair = VethPair::new(&format!("ffn{i}"));
    let (rr_end, node_end) = link(i);
    let (s_if, n_if) = (format!("veth-n{i}"), "veth-rr".to_string());
    std::process::Command::new("ip")
        .args([
            "link",
            "add",
            &s_if,
            "netns",
            &server.name,
            "type",
            "veth",
            "peer",
            "name",
            &n_if,
            "netns",
            &pair.b.name,
        ])
        .status()
        .unwrap();
    server.ip(&["addr", "add", &format!("{rr_end}/30"), "dev", &s_if]);
    server.ip(&["link", "set", &s_if, "up"]);
    pair.b
        .ip(&["addr", "add", &format!("{node_end}/30"), "dev", &n_if]);
    pair.b.ip(&["link", "set", &n_if, "up"]);
    let bgp = gobgpd(
        &pair.b,
        dir,
        &format!("node{i}"),
        64512,
        &[&node_end],
        &[Neighbor {
            address: &rr_end,
            asn: 64512,
            rr_client: false,
        }],
    );
    let pins = PinRoot::new(&format!("ffpin{i}"));
    let path = dir.join(format!("follow{i}.toml"));
    std::fs::write(
        &path,
        format!(
            "[datapath]\ninterfaces = [\"{}\"]\nxdp_mode = \"native\"\npin_root = \"{}\"\n\
             [flowspec]\npoll_seconds = 1\n[metrics]\nlisten = [\"{}\"]\n",
            pair.b_if,
            pins.0.display(),
            node_metrics_addr(i)
        ),
    )
    .unwrap();
    let config = FollowConfig::load(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let follower = pair.b.run(move || {
        let dp = dots_agent::app::xdp_datapath(&config.datapath)?;
        follow::run(&config, dp, &|| flag.load(Ordering::SeqCst))
    });
    Node {
        pair,
        _pins: pins,
        _bgp: bgp,
        stop,
        follower: Some(follower),
    }
}

fn status_dropped(ns: &Netns, cfg: &ClientConfig) -> Option<u64> {
    let r = ask_mid(ns, cfg, 1, RequestType::Get, None, false).unwrap();
    let v = dots_agent::signal::diag::to_json(&dots_agent::signal::cbor::parse(&r.payload).ok()?);
    v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["pkts-dropped"].as_u64()
}

fn node_dropped(n: &Node, i: usize) -> u64 {
    let (_, text) =
        http_get(&n.pair.b, node_metrics_addr(i), "/metrics".into()).expect("node /metrics");
    text.lines()
        .find(|l| l.starts_with("dots_node_dropped_packets_total{target=\"198.51.100.0/24\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_dots_status_counts_the_drops_of_every_node() {
    let lab = Lab::new("ff");
    let server_ns = &lab.pair.b;
    let dir = lab.dir.path();
    let neighbors: Vec<(String, String)> = (0..NODES).map(link).collect();
    let locals: Vec<&str> = neighbors.iter().map(|(s, _)| s.as_str()).collect();
    let nodes: Vec<Node> = (0..NODES).map(|i| node(i, server_ns, dir)).collect();
    let rr_neighbors: Vec<Neighbor> = neighbors
        .iter()
        .map(|(_, n)| Neighbor {
            address: n,
            asn: 64512,
            rr_client: true,
        })
        .collect();
    let _rr = gobgpd(server_ns, dir, "rr", 64512, &locals, &rr_neighbors);
    let targets: Vec<String> = (0..NODES)
        .map(|i| format!("'{}'", node_metrics_addr(i)))
        .collect();
    let _prometheus = prometheus(
        server_ns,
        dir,
        PROMETHEUS,
        &format!(
            "  - job_name: dots-nodes\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    );
    wait_for("every node's BGP session", Duration::from_secs(30), || {
        let t = gobgp(server_ns, &["neighbor"]).ok()?;
        (t.matches("Establ").count() == NODES).then_some(())
    });
    let config = lab.server_config(
        r#""198.51.100.0/24""#,
        "terminating_seconds = 0",
        &format!(
            "[metrics]\nlisten = [\"{METRICS}\"]\n\
             [flowspec]\nresync_seconds = 1\nprometheus = \"http://{PROMETHEUS}\"\nfleet_query_seconds = 1"
        ),
        r#"acl = [{ name = "ntp", matches = { protocol = 17, source_port = { lower = 123 } }, action = "drop" }]"#,
    );
    let (server, stop) = start_server(server_ns, &config);
    let client = lab.client(TransportChoice::Dtls);
    let a = &lab.pair.a;
    let body = message::encode_mitigation_request(&Scope::new(
        vec!["198.51.100.0/24".parse().unwrap()],
        Lifetime::Seconds(600),
    ));
    let created = ask_mid(a, &client, 1, RequestType::Put, Some(body), false).unwrap();
    assert_eq!(code_text(&created), "2.01");

    // Every node drops the attack sent to it.
    for n in &nodes {
        wait_for("a node dropping", Duration::from_secs(30), || {
            (arrived(&attack(&n.pair, 300, 20_000)) == 0).then_some(())
        });
    }
    let sum: u64 = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| node_dropped(n, i))
        .sum();
    assert!(
        sum >= 300 * NODES as u64,
        "each node counted its drops: {sum}"
    );
    // The traffic has stopped: the status reaches the nodes' sum once Prometheus has
    // scraped them and the server has asked it (each every second).
    wait_for(
        "the fleet's drops in the DOTS status",
        Duration::from_secs(30),
        || (status_dropped(a, &client) == Some(sum)).then_some(()),
    );

    // Node 1 unreachable for Prometheus: named in /metrics, its count still in the sum.
    nodes[1].pair.b.ip(&["link", "set", "veth-rr", "down"]);
    let down = wait_for("the node seen down", Duration::from_secs(30), || {
        let (_, text) = http_get(server_ns, METRICS, "/metrics".into())?;
        text.contains("dots_fleet_nodes_down 1").then_some(text)
    });
    let (_, n1) = link(1);
    assert!(
        down.contains(&format!("dots_fleet_node_up{{instance=\"{n1}:9500\"}} 0")),
        "{down}"
    );
    assert_eq!(
        status_dropped(a, &client),
        Some(sum),
        "a node down is not missing from the sum"
    );

    let _ = stop.send(());
    server.join().unwrap().unwrap();
    drop(nodes);
}
