//! The dots-lab command line as a user meets it: clear errors for bad input, scenario checks.

use std::process::{Command, Output};

fn lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dots-lab"))
        .args(args)
        .output()
        .expect("running dots-lab")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_traffic_is_refused_with_the_reason() {
    let o = lab(&[
        "traffic",
        "send",
        "--interface",
        "no-such-if0",
        "--src",
        "192.0.2.1",
        "--dst",
        "2001:db8::1",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("different address families"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn scenarios_are_checked_without_running() {
    let o = lab(&["run", "--check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("\"reflection-syn-udp\"") && out.contains("ok"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nbogus = 1\n").unwrap();
    let o = lab(&["run", "--check", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.toml"), "{}", stderr(&o));
}

#[test]
fn a_missing_agent_binary_is_named() {
    let o = lab(&["run", "--agent", "/nonexistent/dots-agent"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--agent /nonexistent/dots-agent: no such file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_fleet_scenario_is_checked_and_its_mistakes_named() {
    let fleet = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/scenarios/fleet.toml"
    );
    let o = lab(&["run", "--check", fleet]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\"fleet\": a fleet of 3 nodes"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("fleet.toml");
    let text = std::fs::read_to_string(fleet).unwrap();
    std::fs::write(&bad, text.replace("nodes = 3", "nodes = 20")).unwrap();
    let o = lab(&["run", "--check", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("[fleet]: nodes 20: give 1 to 15"),
        "{}",
        stderr(&o)
    );
    let o = lab(&["fleet", "attack", "--pps", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pps 0: give 3"), "{}", stderr(&o));
}
