//! The lab's actors, shared by `dots-lab run` and the chain scenario: the customer-side
//! receiver, the customer's guard (the threshold-triggered DOTS client) and the traffic
//! generators on the internet side.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::run::tail;
use super::scenario::{Role, Scenario, CUSTOMER_PREFIXES};
use super::topology::{Netns, Proc};
use crate::trafficgen::{self, receiver, Backend, Pace, Sender};

/// The customer-side receiver on `iface` in `ns`: counts arrivals per flow (by source
/// prefix) until `stop`, for the scenario's length and 30 s more at most.
pub(crate) fn start_receiver(
    s: &Scenario,
    ns: &Netns,
    iface: &'static str,
    stop: &Arc<AtomicBool>,
) -> Result<(Arc<receiver::Counts>, std::thread::JoinHandle<Result<()>>)> {
    let counts = receiver::Counts::new(
        s.traffic
            .iter()
            .map(|t| (t.name.clone(), vec![t.sources]))
            .collect(),
    );
    let max_run = Duration::from_secs_f64(s.total_seconds()) + Duration::from_secs(30);
    let thread = {
        let counts = counts.clone();
        let stop = stop.clone();
        ns.spawn(move || -> Result<()> {
            let sock = dots_agent::af_packet::PacketSocket::open(iface)?;
            receiver::count_into(&sock, &counts, &stop, max_run)?;
            Ok(())
        })?
    };
    Ok((counts, thread))
}

/// The customer's guard (`dots-agent client guard --once`) in `ns`, watching `iface`, as
/// `client_cfg` says; its JSON events, and the first (connected) one.
pub(crate) fn start_guard(
    s: &Scenario,
    ns: &Netns,
    agent: &Path,
    client_cfg: &Path,
    iface: &str,
    guard_log: &Path,
) -> Result<(Proc, mpsc::Receiver<Value>, Value)> {
    let threshold = s.guard.threshold_pps.to_string();
    let quiet = s.guard.quiet_seconds.to_string();
    let lifetime = s.guard.lifetime.to_string();
    let guard_max = (s.total_seconds() + 20.0).to_string();
    let mut guard_args: Vec<&str> = vec![
        "client",
        "--config",
        client_cfg.to_str().unwrap_or_default(),
        "guard",
        "--interface",
        iface,
        "--threshold-pps",
        &threshold,
        "--quiet-seconds",
        &quiet,
        "--lifetime",
        &lifetime,
        "--sample-seconds",
        "0.5",
        "--max-seconds",
        &guard_max,
        "--once",
    ];
    for p in CUSTOMER_PREFIXES {
        guard_args.extend(["--target", p]);
    }
    let child = ns
        .command(agent)?
        .args(&guard_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(guard_log)?)
        .spawn()
        .context("starting the DOTS client (guard)")?;
    let mut guard = Proc {
        name: "guard",
        child,
    };
    let (ev_tx, events) = mpsc::channel::<Value>();
    let stdout = guard.child.stdout.take().context("guard stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if ev_tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let connected = events
        .recv_timeout(Duration::from_secs(20))
        .ok()
        .filter(|v| v["event"] == "connected");
    let Some(connected) = connected else {
        bail!(
            "the DOTS client did not connect to its server:\n{}",
            tail(guard_log)
        );
    };
    Ok((guard, events, connected))
}

/// The scenario's generators, one thread per flow in `ns` sending on `iface` with
/// `macs` (source, destination); legitimate flows for the whole scenario, attacks in the
/// attack phase.
pub(crate) struct Generators {
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
    /// Frames each flow has handed to the kernel so far.
    pub sent: Vec<Arc<AtomicU64>>,
    /// When they started (the scenario's time 0).
    pub t0: Instant,
}

pub(crate) fn start_generators(
    s: &Scenario,
    ns: &Netns,
    iface: &'static str,
    macs: ([u8; 6], [u8; 6]),
    backend: Backend,
    stop: &Arc<AtomicBool>,
    progress: bool,
) -> Result<Generators> {
    let (src_mac, dst_mac) = macs;
    let total = Duration::from_secs_f64(s.total_seconds());
    let start_at = Instant::now() + Duration::from_millis(500);
    let legit_span = Duration::from_secs_f64(s.phases.legit_seconds);
    let attack_span = Duration::from_secs_f64(s.phases.attack_seconds);
    let mut sent: Vec<Arc<AtomicU64>> = Vec::new();
    let mut threads = Vec::new();
    let (ready_tx, ready) = mpsc::channel::<Result<(&'static str, Option<String>)>>();
    for tr in &s.traffic {
        let template = s.flow(tr, src_mac, dst_mac).template()?;
        let (offset, span) = match tr.role {
            Role::Legit => (Duration::ZERO, total),
            Role::Attack => (legit_span, attack_span),
        };
        let counter = Arc::new(AtomicU64::new(0));
        sent.push(counter.clone());
        let stop = stop.clone();
        let ready_tx = ready_tx.clone();
        let pps = tr.pps;
        threads.push(ns.spawn(move || -> Result<()> {
            let sender = match Sender::open(&template, iface, backend) {
                Ok((s, fallback)) => {
                    let _ = ready_tx.send(Ok((s.name(), fallback)));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                    return Ok(());
                }
            };
            while Instant::now() < start_at + offset {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            sender.run(
                Pace {
                    pps,
                    duration: span,
                    count: u64::MAX,
                },
                &counter,
                &stop,
            )?;
            Ok(())
        })?);
    }
    drop(ready_tx);
    let mut told = false;
    for _ in 0..s.traffic.len() {
        match ready.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok((name, fallback))) => {
                if progress && !told {
                    told = true;
                    println!("{}", trafficgen::announce(name, fallback.as_deref()));
                }
            }
            Ok(Err(e)) => bail!("a generator could not start: {e}"),
            Err(_) => bail!("a generator did not start within 10 s"),
        }
    }
    // Wait for the generators' start (the ready phase took part of the 500 ms, or more).
    let now = Instant::now();
    if now < start_at {
        std::thread::sleep(start_at - now);
    }
    Ok(Generators {
        threads,
        sent,
        t0: start_at,
    })
}

/// What each flow's generator has sent so far (readable after the generators have ended).
pub(crate) struct Sent(Vec<Arc<AtomicU64>>);

impl Sent {
    pub fn now(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

impl Generators {
    pub fn sent(&self) -> Sent {
        Sent(self.sent.clone())
    }

    /// When the traffic started on the wall clock (ms since the epoch, as the guard stamps
    /// its events).
    pub fn t0_unix_ms(&self) -> u64 {
        dots_agent::client::guard::unix_ms() - self.t0.elapsed().as_millis() as u64
    }

    /// Waits for every generator (stop them first).
    pub fn join(self) -> Result<()> {
        for g in self.threads {
            match g.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("a generator failed: {e:#}"),
                Err(_) => bail!("a generator thread panicked"),
            }
        }
        Ok(())
    }
}
