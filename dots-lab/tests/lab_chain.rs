//! The chain scenario end to end (root): `dots-lab run examples/scenarios/chain.toml`
//! (shortened) builds four namespaces, runs the upstream scrubber, the provider's recursive
//! scrubber (escalate = "exceeded") and the customer's gateway as `dots-agent server`s, and
//! the customer's guard; the attack exceeds the provider's capacity, the request is
//! escalated, both filters drop, the customer's status counts both, the guard withdraws,
//! and nothing of the lab is left behind.
//!
//! Runs the `dots-agent` binary cargo builds beside `dots-lab` (`cargo test --workspace`).

use std::path::Path;
use std::process::{Command, Stdio};

const LAB: &str = env!("CARGO_BIN_EXE_dots-lab");

fn leftovers(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("dchain{pid}-")))
        .map(String::from)
        .collect();
    for p in [
        format!("/sys/fs/bpf/dots-lab-{pid}-up"),
        format!("/sys/fs/bpf/dots-lab-{pid}-prov"),
        format!("/tmp/dots-lab-chain-{pid}"),
    ] {
        if Path::new(&p).exists() {
            v.push(p);
        }
    }
    v
}

#[test]
fn the_chain_escalates_and_both_filters_drop() {
    let agent = Path::new(LAB).with_file_name("dots-agent");
    assert!(
        agent.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`",
        agent.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("chain.toml");
    let text = include_str!("../../examples/scenarios/chain.toml")
        .replace("attack_seconds = 12", "attack_seconds = 8")
        .replace("recovery_seconds = 6", "recovery_seconds = 5");
    std::fs::write(&scenario, text).unwrap();
    let json = dir.path().join("summary.json");
    let plot = dir.path().join("chain.svg");
    let child = Command::new(LAB)
        .arg("run")
        .arg("--agent")
        .arg(&agent)
        .arg(&scenario)
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lab failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
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
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("dropped upstream") && svg.contains("dropped at provider"));
    assert!(
        leftovers(pid).is_empty(),
        "left behind: {:?}",
        leftovers(pid)
    );
}
