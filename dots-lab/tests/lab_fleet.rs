//! The fleet scenario end to end (root): `dots-lab run examples/scenarios/fleet.toml`
//! (a shorter, slower attack) builds the fleet in namespaces of its own: the DOTS server
//! with gobgpd as route reflector and Prometheus, three nodes each with gobgpd, `dots-agent
//! follow` and XDP, a bird2 border router. What a user checks: the attack was dropped on
//! every node (each node's own counter), the DOTS status' pkts-dropped reached the nodes'
//! sum, the plot shows them, and nothing of the fleet is left behind (namespaces, pins,
//! daemons, state).

mod common;

use std::time::Duration;

use common::{leftovers, run_to_end};

#[test]
fn the_fleet_drops_on_every_node_and_the_status_sums_them() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = common::scenario(
        dir.path(),
        "fleet.toml",
        include_str!("../../examples/scenarios/fleet.toml"),
        &[
            ("pps = 30000", "pps = 6000"),
            ("seconds = 8", "seconds = 3"),
        ],
    );
    // Building the fleet waits 60 s at most for BGP, the run 30 s for the status.
    let run = run_to_end(dir.path(), &scenario, Duration::from_secs(240));
    let (s, stdout, pid) = (&run.summary, &run.stdout, run.pid);
    let dropped: Vec<u64> = s["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect();
    assert_eq!(dropped.len(), 3, "{stdout}");
    assert!(
        dropped.iter().all(|d| *d > 0),
        "a node dropped nothing: {dropped:?}\n{stdout}"
    );
    let sum: u64 = dropped.iter().sum();
    assert_eq!(s["nodes_sum"].as_u64(), Some(sum), "{stdout}");
    assert!(
        s["status_equal_at"].is_f64(),
        "the DOTS status never reached the nodes' sum:\n{stdout}"
    );
    assert_eq!(s["status_pkts_dropped"].as_u64(), Some(sum), "{stdout}");
    assert_eq!(s["withdraw_code"], "2.02", "{stdout}");
    for line in [
        "node0 dropped",
        "node2 dropped",
        "nodes' sum",
        "DOTS pkts-dropped",
    ] {
        assert!(run.svg.contains(line), "the plot lacks {line:?}");
    }
    let mut paths = vec![
        format!("/tmp/dots-fleet-{pid}"),
        format!("/sys/fs/bpf/dots-fleet-{pid}"),
    ];
    paths.extend((0..3).map(|i| format!("/sys/fs/bpf/dots-fleet-{pid}-n{i}")));
    assert_eq!(
        leftovers(&format!("dfleet{pid}-"), &paths),
        Vec::<String>::new(),
        "left behind"
    );
}
