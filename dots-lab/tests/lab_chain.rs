//! The chain scenario end to end (root): `dots-lab run examples/scenarios/chain.toml`
//! (shortened) builds four namespaces, runs the upstream scrubber, the provider's recursive
//! scrubber (escalate = "exceeded") and the customer's gateway as `dots-agent server`s, and
//! the customer's guard; the attack exceeds the provider's capacity, the request is
//! escalated, both filters drop, the customer's status counts both, the guard withdraws,
//! and nothing of the lab is left behind.

mod common;

use std::time::Duration;

use common::{leftovers, run_to_end};

#[test]
fn the_chain_escalates_and_both_filters_drop() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = common::scenario(
        dir.path(),
        "chain.toml",
        include_str!("../../examples/scenarios/chain.toml"),
        &[
            ("attack_seconds = 12", "attack_seconds = 8"),
            ("recovery_seconds = 6", "recovery_seconds = 5"),
        ],
    );
    let run = run_to_end(dir.path(), &scenario, Duration::from_secs(180));
    let (s, stdout, pid) = (&run.summary, &run.stdout, run.pid);
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {s}"));
    assert_eq!(s["response_code"], "2.01", "{stdout}");
    let why = s["escalation"]
        .as_str()
        .unwrap_or_else(|| panic!("not escalated:\n{stdout}"));
    assert!(why.contains("> capacity_pps 5000 packets/s"), "{why}");
    // Each filter dropped its part: the NTP reflection at the provider, the UDP flood on
    // port 9999 upstream.
    assert!(
        n("dropped_provider") > 0 && n("dropped_upstream") > 0,
        "{stdout}"
    );
    // The customer's status counted upstream's drops too: more than the provider's own.
    let last = &s["last_status"];
    assert!(
        last["pkts_dropped"].as_u64().unwrap() > last["provider"].as_u64().unwrap(),
        "{stdout}"
    );
    let statuses: Vec<u64> = s["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[1].as_u64().unwrap())
        .collect();
    assert!(statuses.contains(&2), "{statuses:?}");
    assert_eq!(s["withdraw_code"], "2.02", "{stdout}");
    assert!(run.svg.contains("dropped upstream") && run.svg.contains("dropped at provider"));
    let left = leftovers(
        &format!("dchain{pid}-"),
        &[
            format!("/tmp/dots-lab-chain-{pid}"),
            format!("/sys/fs/bpf/dots-lab-{pid}-up"),
            format!("/sys/fs/bpf/dots-lab-{pid}-prov"),
        ],
    );
    assert_eq!(left, Vec::<String>::new(), "left behind");
}
