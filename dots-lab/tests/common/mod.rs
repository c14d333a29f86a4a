//! What the lab's end-to-end tests share: `dots-lab run` with the dots-agent binary cargo
//! builds beside it (`cargo test --workspace` builds both), a lab process bounded in time
//! (SIGTERM by its pid, then the lab's own cleanup, when it overruns or when the test fails
//! while it runs), and what a lab left behind.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const LAB: &str = env!("CARGO_BIN_EXE_dots-lab");

/// `dots-lab run --agent AGENT`, AGENT the dots-agent beside dots-lab (the lab's default,
/// checked here so a missing build says so instead of failing inside the lab).
pub fn lab_run() -> Command {
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

/// A shipped scenario with `(from, to)` replacements (shorter phases, lower rates: a test on
/// a shared machine), written into `dir`; each replacement must apply.
pub fn scenario(dir: &Path, name: &str, shipped: &str, changes: &[(&str, &str)]) -> PathBuf {
    let mut text = shipped.to_string();
    for (from, to) in changes {
        assert!(text.contains(from), "{name}: no {from:?} to replace");
        text = text.replace(from, to);
    }
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// How a lab run ended.
pub struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A running lab. Dropped while it runs (a failed assertion, an overrun), it gets SIGTERM,
/// which makes the lab remove its namespaces, pins, processes and state, and is waited for.
pub struct Lab {
    child: Child,
    pub pid: u32,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

impl Lab {
    /// Starts `cmd` with its output collected (read as it comes: a full pipe would stall
    /// the lab).
    pub fn spawn(cmd: &mut Command) -> Lab {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dots-lab");
        let out = child.stdout.take().map(drain);
        let err = child.stderr.take().map(drain);
        Lab {
            pid: child.id(),
            child,
            out,
            err,
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the lab to end by itself, at most `limit`; past it, stops it and fails.
    pub fn finish(mut self, limit: Duration) -> Ran {
        let t = Instant::now();
        while self.running() {
            if t.elapsed() > limit {
                let ran = self.terminate();
                panic!(
                    "the lab ran longer than {limit:?}; stopped:\n{}\n{}",
                    ran.stdout, ran.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.collect()
    }

    /// SIGTERM, then waits (30 s at most, then SIGKILL) for the lab's cleanup.
    pub fn terminate(mut self) -> Ran {
        self.stop();
        self.collect()
    }

    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let t = Instant::now();
        while self.running() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn collect(&mut self) -> Ran {
        let status = self.child.wait().unwrap();
        let text =
            |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        Ran {
            success: status.success(),
            stdout: text(self.out.take()),
            stderr: text(self.err.take()),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A lab run that ended well: its pid (what it leaves behind is named after it), its
/// output, its summary (`--json`) and its plot.
pub struct Finished {
    pub pid: u32,
    pub stdout: String,
    pub summary: serde_json::Value,
    pub svg: String,
}

/// `dots-lab run SCENARIO --json DIR/summary.json --plot DIR/plot.svg` to its end
/// (`limit` at most); fails unless it succeeded.
pub fn run_to_end(dir: &Path, scenario: &Path, limit: Duration) -> Finished {
    let (json, plot) = (dir.join("summary.json"), dir.join("plot.svg"));
    let lab = Lab::spawn(
        lab_run()
            .arg(scenario)
            .arg("--json")
            .arg(&json)
            .arg("--plot")
            .arg(&plot),
    );
    let pid = lab.pid;
    let ran = lab.finish(limit);
    assert!(ran.success, "lab failed:\n{}\n{}", ran.stdout, ran.stderr);
    Finished {
        pid,
        stdout: ran.stdout,
        summary: serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap(),
        svg: std::fs::read_to_string(&plot).unwrap(),
    }
}

/// What a lab left behind: namespaces whose name starts with `netns_prefix`, any of
/// `paths` (pins, its state directory `paths[0]`), and processes whose command line names
/// that state directory (the daemons it started read their configuration from there).
pub fn leftovers(netns_prefix: &str, paths: &[String]) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(netns_prefix))
        .map(String::from)
        .collect();
    v.extend(paths.iter().filter(|p| Path::new(p).exists()).cloned());
    if let Some(state) = paths.first() {
        let state = format!("{state}/");
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(state.as_str()) {
                v.push(format!(
                    "process {}: {}",
                    e.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                ));
            }
        }
    }
    v
}
