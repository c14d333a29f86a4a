//! The lab end to end (root): `dots-lab run` on a short scenario builds its namespaces,
//! runs the DOTS server with XDP and the customer's guard over DTLS, sends real traffic, and
//! must show the outcome: the guard asked, the filter dropped the attack, legitimate traffic
//! got through, the guard withdrew, and nothing of the lab is left behind. A second test
//! interrupts a lab with SIGTERM and checks the cleanup.
//!
//! The lab runs the `dots-agent` binary that cargo builds beside `dots-lab`: run these tests
//! with `cargo test --workspace` (as scripts/test.sh does), which builds both.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LAB: &str = env!("CARGO_BIN_EXE_dots-lab");

/// `dots-lab run`, with the dots-agent binary beside it (the lab's default, checked here so
/// a missing build says so instead of failing inside the lab).
fn lab_run() -> Command {
    let agent = Path::new(LAB).with_file_name("dots-agent");
    assert!(
        agent.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`",
        agent.display()
    );
    let mut c = Command::new(LAB);
    c.arg("run").arg("--agent").arg(agent);
    c
}

/// The default scenario with shorter phases and lower rates (a test on a shared machine).
fn short_scenario(dir: &Path) -> std::path::PathBuf {
    let text = include_str!("../../examples/scenarios/reflection-syn-udp.toml")
        .replace("legit_seconds = 4", "legit_seconds = 2")
        .replace("attack_seconds = 12", "attack_seconds = 6")
        .replace("recovery_seconds = 8", "recovery_seconds = 5")
        .replace("threshold_pps = 20000", "threshold_pps = 10000")
        .replace("pps = 40000", "pps = 15000")
        .replace("pps = 30000", "pps = 10000");
    let p = dir.join("short.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn leftovers(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("dlab{pid}-")))
        .map(String::from)
        .collect();
    for p in [
        format!("/sys/fs/bpf/dots-lab-{pid}"),
        format!("/tmp/dots-lab-{pid}"),
    ] {
        if Path::new(&p).exists() {
            v.push(p);
        }
    }
    v
}

#[test]
fn the_lab_scrubs_an_attack_that_the_guard_signals() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = short_scenario(dir.path());
    let json = dir.path().join("summary.json");
    let plot = dir.path().join("lab.svg");
    let child = lab_run()
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
    assert!(stdout.contains("== summary"), "{stdout}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let f = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {s}"));
    assert_eq!(s["response_code"], "2.01", "{stdout}");
    assert!(f("request_to_first_drop_ms") < 5000.0, "{stdout}");
    assert!(f("filter_dropped") > 0.5 * f("attack_offered"), "{stdout}");
    // The SYN flood's per-source burst still passes (10/s per source): well under 10 %.
    assert!(
        f("attack_delivered_while_mitigating_percent") < 10.0,
        "{stdout}"
    );
    assert!(f("legit_delivered_percent") > 95.0, "{stdout}");
    assert_eq!(s["withdraw_code"], "2.02", "{stdout}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    assert!(
        leftovers(pid).is_empty(),
        "left behind: {:?}",
        leftovers(pid)
    );
}

#[test]
fn an_interrupted_lab_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = short_scenario(dir.path());
    let mut child = lab_run()
        .arg(&scenario)
        .arg("--plot")
        .arg(dir.path().join("lab.svg"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the lab's scrubber has attached XDP (its pins exist), then interrupt.
    let t = Instant::now();
    let links = format!(
        "/sys/fs/bpf/dots-lab-{pid}/v{}/links",
        xdp_common::LAYOUT_VERSION
    );
    while !Path::new(&links).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the lab never attached"
        );
        assert!(child.try_wait().unwrap().is_none(), "the lab exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the lab did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        leftovers(pid).is_empty(),
        "left behind: {:?}",
        leftovers(pid)
    );
}
