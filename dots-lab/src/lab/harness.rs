//! What a traffic scenario's run does around its own topology, shared by `lab::run` (one
//! scrubber) and `lab::chain` (a chain of agents): the state directory and certificates, a
//! scrubber's XDP drop counter, the flows' counts by role, the guard's events, the end of
//! the traffic, and the summary's flow table.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::actors::Generators;
use super::run::{tail, FlowResult, TempDir};
use super::scenario::{Role, Scenario};
use super::topology::{self, interrupted, Netns, Proc};
use dots_agent::datapath::XdpDatapath;

/// Checks for root, installs the signal handlers (Ctrl-C and SIGTERM end the run through its
/// cleanup) and makes the run's state directory `<tmp>/<name>-<pid>`, removed on drop.
pub(crate) fn prepare(name: &str) -> Result<(u32, TempDir)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, XDP): run it with sudo");
    }
    topology::install_signal_handlers();
    let pid = std::process::id();
    let state = TempDir(std::env::temp_dir().join(format!("{name}-{pid}")));
    std::fs::create_dir_all(&state.0).with_context(|| format!("creating {}", state.0.display()))?;
    Ok((pid, state))
}

/// Certificates as a user makes them: `dots-agent pki init --dir DIR/pki` with `args`
/// (`--server-name`, `--client`, ...).
pub(crate) fn pki_init(agent: &Path, dir: &Path, args: &[&str]) -> Result<()> {
    let pki = std::process::Command::new(agent)
        .args(["pki", "init", "--dir"])
        .arg(dir.join("pki"))
        .args(args)
        .output()
        .with_context(|| format!("running {} pki init", agent.display()))?;
    if !pki.status.success() {
        bail!(
            "dots-agent pki init: {}",
            String::from_utf8_lossy(&pki.stderr)
        );
    }
    Ok(())
}

/// One scrubber's XDP drop counter on its ingress.
pub(crate) struct Filter {
    datapath: XdpDatapath,
    ifindex: u32,
    base: u64,
}

impl Filter {
    /// Waits (20 s at most) for the server in `ns` to attach XDP to `iface`.
    pub(crate) fn attached(
        ns: &Netns,
        iface: &'static str,
        pins: &Path,
        server: &mut Proc,
        log: &Path,
    ) -> Result<Filter> {
        let t = Instant::now();
        while !XdpDatapath::attached(pins).iter().any(|i| i == iface) {
            if let Ok(Some(st)) = server.child.try_wait() {
                bail!(
                    "the {} exited ({st}) before attaching XDP:\n{}",
                    server.name,
                    tail(log)
                );
            }
            if t.elapsed() > Duration::from_secs(20) || interrupted() {
                bail!(
                    "the {} did not attach XDP to {iface} within 20 s:\n{}",
                    server.name,
                    tail(log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let datapath = XdpDatapath::open_pinned(pins).context("reading a scrubber's counters")?;
        let ifindex = ns
            .run_in(move || dots_agent::datapath::interface_index(iface))?
            .with_context(|| format!("{iface} vanished"))?;
        let mut f = Filter {
            datapath,
            ifindex,
            base: 0,
        };
        f.base = f.dropped();
        Ok(f)
    }

    /// Dropped since it was attached.
    pub(crate) fn dropped(&self) -> u64 {
        self.datapath
            .interface_counters(self.ifindex)
            .map(|c| c.stats.dropped)
            .unwrap_or(0)
            .saturating_sub(self.base)
    }
}

/// The scenario's flows by role, to sum per-flow counts (sent, received) into legitimate
/// and attack traffic.
pub(crate) struct Roles {
    legit: Vec<usize>,
    attack: Vec<usize>,
}

impl Roles {
    pub(crate) fn of(s: &Scenario) -> Roles {
        let idx = |role: Role| -> Vec<usize> {
            (0..s.traffic.len())
                .filter(|&i| s.traffic[i].role == role)
                .collect()
        };
        Roles {
            legit: idx(Role::Legit),
            attack: idx(Role::Attack),
        }
    }

    pub(crate) fn legit(&self, per_flow: &[u64]) -> u64 {
        self.legit.iter().map(|&i| per_flow[i]).sum()
    }

    pub(crate) fn attack(&self, per_flow: &[u64]) -> u64 {
        self.attack.iter().map(|&i| per_flow[i]).sum()
    }
}

/// Each flow's totals.
pub(crate) fn flow_results(s: &Scenario, offered: &[u64], delivered: &[u64]) -> Vec<FlowResult> {
    s.traffic
        .iter()
        .enumerate()
        .map(|(i, tr)| FlowResult {
            name: tr.name.clone(),
            role: if tr.role == Role::Legit {
                "legit"
            } else {
                "attack"
            },
            offered: offered[i],
            delivered: delivered[i],
        })
        .collect()
}

/// What the guard reported (its JSON events), and when: `at` seconds into the run, `ms` on
/// the wall clock.
pub(crate) struct GuardEvent {
    pub at: f64,
    pub ms: u64,
    pub what: Guard,
}

pub(crate) enum Guard {
    /// Its receive rate crossed the threshold.
    Threshold {
        rx_pps: f64,
    },
    Request,
    Response {
        code: String,
    },
    /// A status reading: the event itself (status, pkts_dropped, telemetry).
    Status(Value),
    Withdraw {
        code: String,
    },
    Other,
}

impl GuardEvent {
    /// `ev`, with the run's start `t0_ms` on the wall clock.
    pub(crate) fn parse(ev: Value, t0_ms: u64) -> GuardEvent {
        let ms = ev["unix_ms"]
            .as_u64()
            .unwrap_or_else(dots_agent::client::guard::unix_ms);
        let code = || ev["code"].as_str().unwrap_or("?").to_string();
        let what = match ev["event"].as_str().unwrap_or("") {
            "threshold" => Guard::Threshold {
                rx_pps: ev["rx_pps"].as_f64().unwrap_or(0.0),
            },
            "request" => Guard::Request,
            "response" => Guard::Response { code: code() },
            "withdraw" => Guard::Withdraw { code: code() },
            "status" => Guard::Status(ev.clone()),
            _ => Guard::Other,
        };
        GuardEvent {
            at: ms.saturating_sub(t0_ms) as f64 / 1000.0,
            ms,
            what,
        }
    }
}

/// Whether a run goes on at `t` seconds.
#[derive(PartialEq, Eq)]
pub(crate) enum End {
    Not,
    /// The traffic is over, and the guard has withdrawn (or exited) or never asked.
    Done,
    /// 20 s after the traffic, the guard has still not withdrawn.
    Overrun,
}

pub(crate) fn end(s: &Scenario, t: f64, guard_finished: bool, requested: bool) -> End {
    let total = s.total_seconds();
    if t >= total && (guard_finished || !requested) {
        End::Done
    } else if t >= total + 20.0 {
        End::Overrun
    } else {
        End::Not
    }
}

/// Ends the traffic: the generators stop, the receiver takes its last counts, the guard
/// stops.
pub(crate) fn end_traffic(
    stop: &Arc<AtomicBool>,
    gens: Generators,
    receiver: std::thread::JoinHandle<Result<()>>,
    guard: &mut Proc,
) -> Result<()> {
    stop.store(true, Ordering::SeqCst);
    gens.join()?;
    std::thread::sleep(Duration::from_millis(200));
    match receiver.join() {
        Ok(r) => r.context("the customer-side receiver")?,
        Err(_) => bail!("the receiver thread panicked"),
    }
    guard.stop(Duration::from_secs(3));
    Ok(())
}

/// The summary's table of flows.
pub(crate) fn print_flows(flows: &[FlowResult]) {
    println!(
        "{:<20} {:<7} {:>12} {:>12} {:>10}",
        "FLOW", "ROLE", "OFFERED", "DELIVERED", "DELIVERED%"
    );
    for f in flows {
        println!(
            "{:<20} {:<7} {:>12} {:>12} {:>9.1}%",
            f.name,
            f.role,
            f.offered,
            f.delivered,
            percent(f.delivered, f.offered)
        );
    }
}

/// `a` as a percentage of `b` (0 when `b` is).
pub(crate) fn percent(a: u64, b: u64) -> f64 {
    if b > 0 {
        100.0 * a as f64 / b as f64
    } else {
        0.0
    }
}
