//! `dots-lab fleet attack`: the fleet lab scenario. One DOTS mitigation for the customer's
//! 198.51.100.0/24 (NTP reflection dropped) reaches every node through FlowSpec; an NTP
//! reflection attack is spread over the nodes by destination, as a router's ECMP hash on
//! the destination would spread it (node i gets 198.51.100.(100+10i) to (109+10i)); every
//! second the run prints each node's own drop counter, their sum and the mitigation's
//! `pkts-dropped` in the DOTS status, which the server sums through Prometheus.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use ipnet::IpNet;

use super::topology::Fleet;
use super::{Common, DotsClient};
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
}

const TARGET: &str = "198.51.100.0/24";

fn k(n: u64) -> String {
    if n >= 10_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

pub fn run(a: &AttackArgs) -> Result<()> {
    if a.seconds == 0 || a.seconds > 300 || a.pps == 0 || a.pps > 1_000_000 {
        bail!("--seconds 1 to 300 and --pps 1 to 1000000, please");
    }
    let agent = crate::proof::agent(a.common.agent.as_ref())?;
    let mut fleet = Fleet::build(agent, a.common.nodes, 10)?;
    fleet.start_server()?;
    let nodes = fleet.nodes.len();
    println!(
        "fleet: {nodes} scrubber nodes following the DOTS server's FlowSpec; state and logs in {}",
        fleet.dir().display()
    );
    let client = DotsClient::start(&fleet)?;
    let target: IpNet = TARGET.parse()?;
    let at = client.put(1, target)?.at;
    println!("customer: mitigation for {TARGET} (NTP reflection dropped): 2.01");
    loop {
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
            break;
        }
        if at.elapsed() > Duration::from_secs(60) || interrupted() {
            bail!("the rule did not reach every node within 60 s (live: {ready:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let per_node = a.pps / nodes as u64;
    println!(
        "attack: NTP reflection, {} pps spread over the nodes by destination ({} pps each)",
        k(a.pps),
        k(per_node)
    );
    let started = Instant::now();
    let mut sent = vec![0u64; nodes];
    for second in 1..=a.seconds {
        if interrupted() {
            bail!("interrupted");
        }
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = (0..nodes)
                .map(|i| {
                    let fleet = &fleet;
                    s.spawn(move || {
                        let dests: Vec<IpNet> = (0..10)
                            .map(|j| {
                                format!("198.51.100.{}/32", 100 + 10 * i + j)
                                    .parse()
                                    .expect("an address")
                            })
                            .collect();
                        fleet.attack(i, &dests, per_node, per_node)
                    })
                })
                .collect();
            for (i, h) in handles.into_iter().enumerate() {
                sent[i] += h
                    .join()
                    .map_err(|_| anyhow::anyhow!("a sender panicked"))??;
            }
            Ok(())
        })?;
        print_line(&fleet, &client, &target, started, &format!("{second:>3} s"))?;
    }
    println!("attack stopped; sent per node {sent:?}");
    let stopped = Instant::now();
    loop {
        let (sum, status) = print_line(&fleet, &client, &target, started, "after")?;
        if sum == status {
            println!(
                "the DOTS status equals the nodes' sum {} after the attack stopped (Prometheus scrapes every 1 s, the server asks it every 1 s)",
                human(stopped.elapsed())
            );
            break;
        }
        if stopped.elapsed() > Duration::from_secs(30) || interrupted() {
            bail!("the DOTS status ({status}) did not reach the nodes' sum ({sum}) within 30 s");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    client.delete(1)?;
    println!("customer: withdrew the mitigation (2.02)");
    Ok(())
}

/// One progress line: each node's drops, their sum, the DOTS status; returns (sum, status).
fn print_line(
    fleet: &Fleet,
    client: &DotsClient,
    target: &IpNet,
    started: Instant,
    label: &str,
) -> Result<(u64, u64)> {
    let drops = fleet
        .nodes
        .iter()
        .map(|n| n.dropped(target))
        .collect::<Result<Vec<u64>>>()?;
    let sum: u64 = drops.iter().sum();
    let status = client.dropped(1)?;
    let per_node: Vec<String> = drops
        .iter()
        .enumerate()
        .map(|(i, d)| format!("node{i} {:>7}", k(*d)))
        .collect();
    println!(
        "{label} {:>5.1}s  dropped: {} | nodes' sum {:>7} | DOTS status pkts-dropped {:>7}",
        started.elapsed().as_secs_f64(),
        per_node.join("  "),
        k(sum),
        k(status)
    );
    Ok((sum, status))
}
