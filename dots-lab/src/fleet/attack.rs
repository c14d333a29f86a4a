//! The fleet lab scenario: `dots-lab run examples/scenarios/fleet.toml` (a scenario with a
//! `[fleet]` section) and `dots-lab fleet attack`, two ways to the same [`run`]. One DOTS
//! mitigation for the customer's 198.51.100.0/24 (NTP reflection dropped) reaches every
//! node through FlowSpec; an NTP reflection attack is spread over the nodes by destination,
//! as a router's ECMP hash on the destination would spread it (node i gets
//! 198.51.100.(100+10i) to (109+10i)); every second the run prints each node's own drop
//! counter, their sum and the mitigation's `pkts-dropped` in the DOTS status, which the
//! server sums through Prometheus. [`super::report`] prints the summary and draws the plot.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::topology::Fleet;
use super::{Common, DotsClient};
use crate::lab::run::StopOnDrop;
use crate::lab::topology::interrupted;
use crate::proof::human;

#[derive(Args, Debug)]
pub struct AttackArgs {
    #[command(flatten)]
    pub common: Common,
    /// How long the attack lasts.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Attack packets per second, over all nodes.
    #[arg(long, default_value_t = 30_000)]
    pub pps: u64,
    /// Where to write the plot of the drops over time (SVG).
    #[arg(long, default_value = "fleet.svg")]
    pub plot: PathBuf,
    /// Also write the summary (with the per-second samples) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `[fleet]` in a scenario file; `dots-lab fleet attack`'s options say the same.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Scrubber nodes (each: a namespace, gobgpd, dots-agent follow, XDP on its veth).
    #[serde(default = "default_nodes")]
    pub nodes: usize,
    /// Attack packets per second, over all nodes.
    #[serde(default = "default_pps")]
    pub pps: u64,
    /// How long the attack lasts.
    #[serde(default = "default_seconds")]
    pub seconds: u64,
}

fn default_nodes() -> usize {
    3
}
fn default_pps() -> u64 {
    30_000
}
fn default_seconds() -> u64 {
    8
}

/// A scenario file with `[fleet]`: its name, description and the fleet's size and attack.
/// The customer's policy (NTP reflection dropped) and the attack's kind are fixed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetScenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub fleet: FleetSpec,
}

impl FleetScenario {
    pub fn parse(text: &str) -> Result<FleetScenario> {
        let s: FleetScenario = toml::from_str(text).context(
            "not a valid fleet scenario: it holds name, description and [fleet] (nodes, pps, \
             seconds) only; the attack (NTP reflection) and the customer's policy are fixed",
        )?;
        s.fleet.validate().context("[fleet]")?;
        Ok(s)
    }
}

const TARGET: &str = "198.51.100.0/24";
/// Node i's attack goes to its own ten addresses, 198.51.100.(100+10i) to (109+10i), so
/// 15 nodes fill 198.51.100.100-249.
const DESTINATIONS_PER_NODE: usize = 10;
pub const MAX_NODES: usize = 15;

impl FleetSpec {
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            bail!(
                "nodes {}: give 1 to {MAX_NODES} (each node's share of the attack goes to ten addresses of its own in 198.51.100.100-249)",
                self.nodes
            );
        }
        if !(1..=300).contains(&self.seconds) {
            bail!("seconds {}: give 1 to 300", self.seconds);
        }
        if self.pps < self.nodes as u64 || self.pps > 1_000_000 {
            bail!(
                "pps {}: give {} (one per node) to 1000000",
                self.pps,
                self.nodes
            );
        }
        Ok(())
    }
}

/// Each node's own drop counter, their sum and the status' `pkts-dropped`, at `t` seconds
/// after the request.
#[derive(Clone, Debug, Serialize)]
pub struct FleetSample {
    pub t: f64,
    pub nodes: Vec<u64>,
    pub sum: u64,
    pub status: u64,
}

/// What a run found; times in seconds after the mitigation request was sent.
#[derive(Clone, Debug, Serialize)]
pub struct FleetSummary {
    pub scenario: String,
    pub nodes: usize,
    pub pps: u64,
    pub response_code: String,
    pub answered_at: f64,
    /// The rule in every node's pinned XDP maps.
    pub live_everywhere_at: f64,
    pub attack_started_at: f64,
    pub attack_stopped_at: f64,
    /// Packets sent to each node, and each node's own drop counter at the end.
    pub sent: Vec<u64>,
    pub dropped: Vec<u64>,
    pub nodes_sum: u64,
    /// The status' last `pkts-dropped` before the withdrawal.
    pub status_pkts_dropped: u64,
    /// When the status first equalled the nodes' sum after the attack (None: not in 30 s).
    pub status_equal_at: Option<f64>,
    pub withdrawn_at: f64,
    pub withdraw_code: String,
    pub samples: Vec<FleetSample>,
}

/// `dots-lab fleet attack`: the scenario from the command line.
pub fn cli(a: &AttackArgs) -> Result<()> {
    let scenario = FleetScenario {
        name: "fleet".into(),
        description: "NTP reflection spread over the scrubber nodes by destination".into(),
        fleet: FleetSpec {
            nodes: a.common.nodes,
            pps: a.pps,
            seconds: a.seconds,
        },
    };
    scenario
        .fleet
        .validate()
        .context("--nodes, --pps or --seconds")?;
    let summary = run(&scenario, crate::proof::agent(a.common.agent.as_ref())?)?;
    crate::lab::report(
        &summary,
        &super::report::svg(&summary),
        || super::report::print_summary(&summary),
        &a.plot,
        a.json.as_deref(),
    )
}

pub(crate) fn k(n: u64) -> String {
    if n >= 10_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

pub fn run(scenario: &FleetScenario, agent: PathBuf) -> Result<FleetSummary> {
    let spec = &scenario.fleet;
    spec.validate()?;
    println!(
        "lab: scenario {:?}: {}",
        scenario.name, scenario.description
    );
    let mut fleet = Fleet::build(agent, spec.nodes, 10)?;
    fleet.start_server()?;
    let nodes = fleet.nodes.len();
    println!(
        "fleet: {nodes} scrubber nodes following the DOTS server's FlowSpec; state and logs in {}",
        fleet.dir().display()
    );
    let client = DotsClient::start(&fleet)?;
    let target: IpNet = TARGET.parse()?;
    let t0 = Instant::now();
    let secs = |at: Instant| at.saturating_duration_since(t0).as_secs_f64();
    let answer = client.put(1, target)?;
    println!(
        "customer: mitigation for {TARGET} (NTP reflection dropped): {}",
        answer.code
    );
    let at = answer.at;
    let live = loop {
        let ready = fleet
            .nodes
            .iter()
            .map(|n| Ok(n.holds(&n.installed()?, &target)))
            .collect::<Result<Vec<bool>>>()?;
        if ready.iter().all(|r| *r) {
            println!(
                "  its FlowSpec rule is live on every node's XDP filter after {}",
                human(at.elapsed())
            );
            break Instant::now();
        }
        if at.elapsed() > Duration::from_secs(60) || interrupted() {
            bail!("the rule did not reach every node within 60 s (live: {ready:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    let per_node = spec.pps / nodes as u64;
    println!(
        "attack: NTP reflection, {} pps spread over the nodes by destination ({} pps each)",
        k(per_node * nodes as u64),
        k(per_node)
    );
    let mut samples = Vec::new();
    let started = Instant::now();
    samples.push(sample(&fleet, &client, &target, t0)?);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let (sampled, sent) = std::thread::scope(|s| {
        // One sender per node, a second's worth at a time, so a stop ends it within a second.
        let senders: Vec<_> = (0..nodes)
            .map(|i| {
                let (fleet, stop) = (&fleet, &stop);
                s.spawn(move || -> Result<u64> {
                    let dests = destinations(i)?;
                    let mut sent = 0;
                    for _ in 0..spec.seconds {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        sent += fleet.attack(i, &dests, per_node, per_node)?;
                    }
                    Ok(sent)
                })
            })
            .collect();
        let sampled = (|| -> Result<()> {
            let mut next = 1.0;
            while !senders.iter().all(|h| h.is_finished()) {
                if interrupted() {
                    bail!("interrupted: cleaning up");
                }
                if started.elapsed().as_secs_f64() >= next {
                    let x = sample(&fleet, &client, &target, t0)?;
                    print_line(&x, "attack");
                    samples.push(x);
                    next += 1.0;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })();
        // The senders have finished, unless sampling failed: then this ends them.
        stop.store(true, Ordering::SeqCst);
        let sent = senders
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a sender panicked"))?)
            .collect::<Result<Vec<u64>>>();
        (sampled, sent)
    });
    sampled?;
    let sent = sent?;
    let stopped = Instant::now();
    println!("attack stopped; sent per node {sent:?}");
    let mut status_equal_at = None;
    // Read every 100 ms, so the lag is told to a tenth of a second; printed and plotted
    // once a second, and when the status reaches the sum.
    let mut printed: Option<Instant> = None;
    loop {
        let x = sample(&fleet, &client, &target, t0)?;
        let equal = x.sum == x.status;
        let t = x.t;
        if equal || printed.is_none_or(|p| p.elapsed() >= Duration::from_secs(1)) {
            print_line(&x, "after");
            samples.push(x);
            printed = Some(Instant::now());
        }
        if equal {
            println!(
                "the DOTS status equals the nodes' sum {} after the attack stopped (Prometheus scrapes every 1 s; the server asks it within 0.1 s of each scrape)",
                human(stopped.elapsed())
            );
            status_equal_at = Some(t);
            break;
        }
        if interrupted() {
            bail!("interrupted: cleaning up");
        }
        if stopped.elapsed() > Duration::from_secs(30) {
            println!("the DOTS status did not reach the nodes' sum within 30 s");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = samples.last().cloned().context("no sample")?;
    let bye = client.delete(1)?;
    println!("customer: withdrew the mitigation ({})", bye.code);
    Ok(FleetSummary {
        scenario: scenario.name.clone(),
        nodes,
        pps: per_node * nodes as u64,
        response_code: answer.code,
        answered_at: secs(answer.at),
        live_everywhere_at: secs(live),
        attack_started_at: secs(started),
        attack_stopped_at: secs(stopped),
        sent,
        dropped: last.nodes,
        nodes_sum: last.sum,
        status_pkts_dropped: last.status,
        status_equal_at,
        withdrawn_at: secs(bye.at),
        withdraw_code: bye.code,
        samples,
    })
}

/// Node `i`'s share of the attack: its own ten addresses.
fn destinations(i: usize) -> Result<Vec<IpNet>> {
    (0..DESTINATIONS_PER_NODE)
        .map(|j| {
            let last = 100 + DESTINATIONS_PER_NODE * i + j;
            format!("198.51.100.{last}/32")
                .parse()
                .map_err(|_| anyhow!("node {i}: no address 198.51.100.{last}"))
        })
        .collect()
}

/// Each node's drops, their sum and the status, now.
fn sample(fleet: &Fleet, client: &DotsClient, target: &IpNet, t0: Instant) -> Result<FleetSample> {
    let nodes = fleet
        .nodes
        .iter()
        .map(|n| n.dropped(target))
        .collect::<Result<Vec<u64>>>()?;
    let status = client.dropped(1)?;
    Ok(FleetSample {
        t: t0.elapsed().as_secs_f64(),
        sum: nodes.iter().sum(),
        nodes,
        status,
    })
}

/// One progress line: each node's drops, their sum, the DOTS status.
fn print_line(x: &FleetSample, label: &str) {
    let per_node: Vec<String> = x
        .nodes
        .iter()
        .enumerate()
        .map(|(i, d)| format!("node{i} {:>7}", k(*d)))
        .collect();
    println!(
        "{label:<6} {:>5.1}s  dropped: {} | nodes' sum {:>7} | DOTS status pkts-dropped {:>7}",
        x.t,
        per_node.join("  "),
        k(x.sum),
        k(x.status)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = include_str!("../../../examples/scenarios/fleet.toml");

    #[test]
    fn the_shipped_fleet_scenario_is_valid_and_its_mistakes_are_named() {
        let s = FleetScenario::parse(FLEET).unwrap();
        assert_eq!(
            (s.fleet.nodes, s.fleet.pps, s.fleet.seconds),
            (3, 30_000, 8)
        );
        let err = |from: &str, to: &str| {
            format!(
                "{:#}",
                FleetScenario::parse(&FLEET.replacen(from, to, 1)).unwrap_err()
            )
        };
        assert!(err("nodes = 3", "nodes = 16").contains("nodes 16: give 1 to 15"));
        assert!(err("nodes = 3", "nodes = 0").contains("give 1 to 15"));
        assert!(err("pps = 30000", "pps = 2").contains("pps 2: give 3 (one per node)"));
        assert!(err("seconds = 8", "seconds = 0").contains("seconds 0: give 1 to 300"));
        let mixed = format!("{FLEET}\n[phases]\nlegit_seconds = 1\n");
        let e = format!("{:#}", FleetScenario::parse(&mixed).unwrap_err());
        assert!(e.contains("name, description and [fleet]"), "{e}");
        // The last node's ten addresses still exist.
        assert_eq!(
            destinations(MAX_NODES - 1)
                .unwrap()
                .last()
                .unwrap()
                .to_string(),
            "198.51.100.249/32"
        );
    }
}
