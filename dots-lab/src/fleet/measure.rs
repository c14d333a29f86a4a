//! `dots-lab fleet measure`: how fast the fleet follows the DOTS server, measured with the
//! real daemons (bench-style: it prints figures, it asserts nothing about them).
//!
//! "Live on a node" means: a read-only open of the node's pinned maps (what the XDP program
//! looks every packet up in; `XdpDatapath::open_pinned`, as `dots-agent xdp status` reads
//! them) lists the follower's mitigation for the target prefix. "At the border" means bird2's
//! FlowSpec table (`birdc show route table flowtab4|6`) holds a rule for it. Both are read
//! every `--poll-ms`, so each time is late by up to that much plus one read. The stages in
//! between come from `gobgp monitor` on the route reflector's and each node's gobgpd (a line
//! per change, stamped on arrival).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use ipnet::IpNet;

use super::daemons::RibWatch;
use super::topology::Fleet;
use super::{target, Common, DotsClient};
use crate::lab::topology::interrupted;
use crate::proof::{human, metric, summary};

#[derive(Args, Debug)]
pub struct MeasureArgs {
    #[command(flatten)]
    pub common: Common,
    /// Mitigations created one after the other (each waited for everywhere), then withdrawn.
    #[arg(long, default_value_t = 100)]
    pub mitigations: usize,
    /// Mitigations created first, back to back, and waited for as a batch: the measured
    /// ones then change a fleet that already holds these (e.g. 900 + 100 for 1,000).
    #[arg(long, default_value_t = 0)]
    pub preload: usize,
    /// How often the nodes' pinned filters and the border's table are read while waiting.
    #[arg(long, default_value_t = 20)]
    pub poll_ms: u64,
}

/// The node killed -9 and restarted.
const VICTIM: usize = 1;

/// How long one change may take to arrive everywhere before the run gives up on it.
const LIMIT: Duration = Duration::from_secs(60);

/// When one change arrived where: each node's filter, the border router.
struct Arrival {
    nodes: Vec<Option<Duration>>,
    border: Option<Duration>,
}

impl Arrival {
    fn every_node(&self) -> Option<Duration> {
        self.nodes
            .iter()
            .copied()
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
    }
}

/// A time of day bird printed (`13:02:53.400`, UTC on this machine) on the day of `near`.
fn time_of_day(stamp: &str, near: SystemTime) -> Option<SystemTime> {
    let mut p = stamp.split(':');
    let (h, m) = (
        p.next()?.parse::<u64>().ok()?,
        p.next()?.parse::<u64>().ok()?,
    );
    let s: f64 = p.next()?.parse().ok()?;
    let base = near.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let day = UNIX_EPOCH + Duration::from_secs(base - base % 86_400);
    Some(day + Duration::from_secs(h * 3600 + m * 60) + Duration::from_secs_f64(s))
}

/// Waits until every node's filter and the border hold (`present`) or no longer hold the
/// rules of `targets`. The times are the components' own: the follower's log line
/// ("installed"/"removed", written when the datapath's change had returned), confirmed by a
/// read of the node's pinned maps, and bird's import stamp; a withdrawal at the border is
/// timed by the read of its table that no longer shows it. Nodes in `skip` are not waited for.
fn wait_everywhere(
    fleet: &Fleet,
    targets: &[IpNet],
    present: bool,
    since: SystemTime,
    poll: &mut Poll,
    skip: &[usize],
) -> Result<Arrival> {
    let started = Instant::now();
    let after = |t: SystemTime| t.duration_since(since).unwrap_or_default();
    let what = if present { "installed" } else { "removed" };
    let mut nodes: Vec<Option<Duration>> = vec![None; fleet.nodes.len()];
    for &i in skip {
        nodes[i] = Some(Duration::ZERO);
    }
    let mut border = None;
    loop {
        let read = Instant::now();
        if border.is_none() {
            if present {
                let stamps: HashMap<IpNet, String> =
                    fleet.border.import_times().into_iter().collect();
                let times: Option<Vec<Duration>> = targets
                    .iter()
                    .map(|t| Some(after(time_of_day(stamps.get(t)?, since)?)))
                    .collect();
                border = times.and_then(|t| t.into_iter().max());
            } else {
                let dests: HashSet<IpNet> = fleet.border.destinations().into_iter().collect();
                if targets.iter().all(|t| !dests.contains(t)) {
                    border = Some(after(SystemTime::now()));
                }
            }
        }
        for (i, node) in fleet.nodes.iter().enumerate() {
            if nodes[i].is_some() {
                continue;
            }
            let logged = node.logged(what, since);
            let Some(times) = targets
                .iter()
                .map(|t| logged.get(t).copied())
                .collect::<Option<Vec<SystemTime>>>()
            else {
                continue;
            };
            let ids = node.installed()?;
            if targets.iter().all(|t| node.holds(&ids, t) == present) {
                nodes[i] = times.into_iter().max().map(after);
            }
        }
        poll.reads.push(read.elapsed());
        let done = border.is_some() && nodes.iter().all(Option::is_some);
        if done || started.elapsed() > LIMIT || interrupted() {
            return Ok(Arrival { nodes, border });
        }
        std::thread::sleep(poll.every);
    }
}

/// How often the nodes and the border are read, and how long each read of all of them
/// took (the resolution of the times printed).
struct Poll {
    every: Duration,
    reads: Vec<Duration>,
}

/// Per change: the stages' times from the DOTS answer.
#[derive(Default)]
struct Stages {
    reflector: Vec<Duration>,
    node_bgp: Vec<Duration>,
    node_xdp: Vec<Duration>,
    border: Vec<Duration>,
    missing: usize,
}

impl Stages {
    fn add(
        &mut self,
        a: &Arrival,
        t: &IpNet,
        withdrawn: bool,
        at: SystemTime,
        rr: &RibWatch,
        nodes: &[RibWatch],
    ) {
        let since = |w: &RibWatch| {
            w.seen(t, withdrawn)
                .map(|s| s.duration_since(at).unwrap_or_default())
        };
        self.reflector.extend(since(rr));
        if let Some(m) = nodes.iter().map(since).collect::<Option<Vec<_>>>() {
            self.node_bgp.extend(m.into_iter().max());
        }
        match (a.every_node(), a.border) {
            (Some(n), Some(b)) => {
                self.node_xdp.push(n);
                self.border.push(b);
            }
            _ => self.missing += 1,
        }
    }

    fn print(&self, what: &str, answer: &str) {
        println!("{what} ({} changes):", self.node_xdp.len() + self.missing);
        println!(
            "  {answer} -> route reflector's gobgpd   {}",
            summary(&self.reflector)
        );
        println!(
            "  {answer} -> every node's gobgpd         {}",
            summary(&self.node_bgp)
        );
        println!(
            "  {answer} -> every node's XDP filter     {}",
            summary(&self.node_xdp)
        );
        println!(
            "  {answer} -> border router (bird2)       {}",
            summary(&self.border)
        );
        if self.missing > 0 {
            println!("  not everywhere within {LIMIT:?}: {}", self.missing);
        }
    }
}

pub fn run(a: &MeasureArgs) -> Result<()> {
    if a.mitigations < 10 || a.mitigations + a.preload > 3000 {
        bail!(
            "--mitigations {} --preload {}: give at least 10 mitigations, at most 3000 in all",
            a.mitigations,
            a.preload
        );
    }
    let mut poll = Poll {
        every: Duration::from_millis(a.poll_ms.clamp(1, 1000)),
        reads: Vec::new(),
    };
    let agent = crate::proof::agent(a.common.agent.as_ref())?;
    let (pre, n) = (a.preload, a.mitigations);
    let extra = 5;
    let mut fleet = Fleet::build(agent, a.common.nodes, pre + n + extra)?;
    println!(
        "fleet: {} nodes and a border router peered with the server's gobgpd; state and logs in {}",
        fleet.nodes.len(),
        fleet.dir().display()
    );
    fleet.start_server()?;
    let client = DotsClient::start(&fleet)?;
    let rr = RibWatch::start(&fleet.scratch.topo.scrubber.path())?;
    let mut node_watch = fleet
        .nodes
        .iter()
        .map(|n| RibWatch::start(&n.ns.path()))
        .collect::<Result<Vec<_>>>()?;

    // 0. The preloaded ones, as one batch.
    if pre > 0 {
        let targets: Vec<IpNet> = (0..pre).map(target).collect();
        let (started, wall) = (Instant::now(), SystemTime::now());
        for (k, t) in targets.iter().enumerate() {
            client.put(k as u32 + 1, *t)?;
        }
        let sent = started.elapsed();
        let arrival = wait_everywhere(&fleet, &targets, true, wall, &mut poll, &[])?;
        println!(
            "preload: {pre} mitigations created back to back in {}; all live on every node after {}, at the border after {}",
            human(sent),
            arrival.every_node().map_or("-".into(), human),
            arrival.border.map_or("-".into(), human)
        );
    }

    // 1. Mitigations one after the other, each waited for everywhere.
    let mut announce = Stages::default();
    let started = Instant::now();
    for k in pre..pre + n {
        if interrupted() {
            bail!("interrupted");
        }
        let t = target(k);
        let at = client.put(k as u32 + 1, t)?.wall;
        let arrival = wait_everywhere(&fleet, &[t], true, at, &mut poll, &[])?;
        announce.add(&arrival, &t, false, at, &rr, &node_watch);
        if (k + 1 - pre) % (n / 10).max(1) == 0 {
            println!(
                "  {:>5} mitigations: the last live on every node after {}, at the border after {}",
                k + 1,
                arrival.every_node().map_or("-".into(), human),
                arrival.border.map_or("-".into(), human)
            );
        }
    }
    println!(
        "created {n} mitigations one at a time in {}",
        human(started.elapsed())
    );
    announce.print("create (PUT, one at a time)", "2.01");
    let tenth = (n / 10).max(1);
    println!(
        "  2.01 -> route reflector, first {tenth}: {}; last {tenth}: {}",
        summary(&announce.reflector[..tenth.min(announce.reflector.len())]),
        summary(&announce.reflector[announce.reflector.len().saturating_sub(tenth)..])
    );
    println!(
        "  2.01 -> every node's filter, first {tenth}: {}; last {tenth}: {}",
        summary(&announce.node_xdp[..tenth.min(announce.node_xdp.len())]),
        summary(&announce.node_xdp[announce.node_xdp.len().saturating_sub(tenth)..])
    );

    // 2. The fleet's drops in the DOTS status against the nodes' own counters.
    count_drops(&fleet, &client)?;

    // 3. One node killed -9 and restarted.
    let mut live: Vec<usize> = (pre..pre + n).collect();
    if fleet.nodes.len() >= 2 {
        kill_and_restart(&mut fleet, &client, &mut live, pre + n, extra, &mut poll)?;
        // Its monitor ended with the killed gobgpd.
        node_watch[VICTIM] = RibWatch::start(&fleet.nodes[VICTIM].ns.path())?;
    }

    // 4. Withdrawals, one after the other.
    let mut withdraw = Stages::default();
    let started = Instant::now();
    for &k in &live {
        if interrupted() {
            bail!("interrupted");
        }
        let t = target(k);
        let at = client.delete(k as u32 + 1)?.wall;
        let arrival = wait_everywhere(&fleet, &[t], false, at, &mut poll, &[])?;
        withdraw.add(&arrival, &t, true, at, &rr, &node_watch);
    }
    println!(
        "withdrew {} mitigations in {}",
        live.len(),
        human(started.elapsed())
    );
    withdraw.print("withdraw (DELETE, terminating period 0)", "2.02");
    if pre > 0 {
        let targets: Vec<IpNet> = (0..pre).map(target).collect();
        let wall = SystemTime::now();
        for k in 0..pre {
            client.delete(k as u32 + 1)?;
        }
        let arrival = wait_everywhere(&fleet, &targets, false, wall, &mut poll, &[])?;
        println!(
            "preload: {pre} withdrawn back to back; gone from every node after {}, from the border after {}",
            arrival.every_node().map_or("-".into(), human),
            arrival.border.map_or("-".into(), human)
        );
    }
    println!(
        "one round of reads (the border's table, the followers' logs, a node's pinned maps once its log names the change) took {}, every {} ms",
        summary(&poll.reads),
        poll.every.as_millis()
    );
    Ok(())
}

/// An NTP reflection attack on every node (node i: 1000 * (i+1) packets over the first
/// two mitigations' targets); then the DOTS status against the sum of the nodes' own
/// counters, until they agree.
fn count_drops(fleet: &Fleet, client: &DotsClient) -> Result<()> {
    let targets = [target(0), target(1)];
    for i in 0..fleet.nodes.len() {
        fleet.attack(i, &targets, 1000 * (i as u64 + 1), 20_000)?;
    }
    let stopped = Instant::now();
    let own =
        |t: &IpNet| -> Result<Vec<u64>> { fleet.nodes.iter().map(|n| n.dropped(t)).collect() };
    println!("fleet drops (attack sent to every node, then stopped):");
    let mut at_stop = Vec::new();
    for (m, t) in targets.iter().enumerate() {
        let per_node = own(t)?;
        at_stop.push((per_node, client.dropped(m as u32 + 1)?));
    }
    for (m, (t, (per_node, status))) in targets.iter().zip(at_stop).enumerate() {
        let sum: u64 = per_node.iter().sum();
        let mut agreed = None;
        while stopped.elapsed() < LIMIT && !interrupted() {
            if client.dropped(m as u32 + 1)? == sum {
                agreed = Some(stopped.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "  mid {} ({t}): nodes' own counters {per_node:?} = {sum}; DOTS status at the stop {status}, equal to the sum {}",
            m + 1,
            agreed.map_or(format!("not within {LIMIT:?}"), |d| format!("{} after the stop", human(d)))
        );
    }
    println!("  (Prometheus scrapes every 1 s; the server asks it within 0.1 s of each scrape)");
    Ok(())
}

/// Node 1's follower and gobgpd killed -9: what the server says while it is down, its
/// pinned filter still dropping, changes made meanwhile, and how long a restart takes to
/// catch up. `live`: the run's live mitigations (updated with the changes made here).
fn kill_and_restart(
    fleet: &mut Fleet,
    client: &DotsClient,
    live: &mut Vec<usize>,
    n: usize,
    extra: usize,
    poll: &mut Poll,
) -> Result<()> {
    let victim = VICTIM;
    let scr = &fleet.scratch.topo.scrubber;
    fleet.nodes[victim].kill9();
    let killed = Instant::now();
    println!("node {victim}: follower and gobgpd killed -9 (its pinned filter stays)");
    let mut seen_down = None;
    while killed.elapsed() < LIMIT && !interrupted() {
        if metric(scr, "dots_fleet_nodes_down").unwrap_or(0.0) >= 1.0 {
            seen_down = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // proof::metric takes a 'static name (it moves it into the namespace's thread).
    let up_metric: &'static str = Box::leak(
        format!(
            "dots_fleet_node_up{{instance=\"{}:9500\"}}",
            super::topology::link(victim).1
        )
        .into_boxed_str(),
    );
    println!(
        "  server /metrics: dots_fleet_nodes_down 1 {}; {up_metric} {}",
        seen_down.map_or("not seen".into(), |d| format!("after {}", human(d))),
        metric(scr, up_metric).unwrap_or(-1.0),
    );
    let t0 = target(0);
    let before = fleet.nodes[victim].dropped(&t0)?;
    let status_before = client.dropped(1)?;
    let sent = fleet.attack(victim, &[t0], 500, 20_000)?;
    let kept = fleet.nodes[victim].dropped(&t0)? - before;
    println!(
        "  attack on the dead node: {kept} of {sent} packets dropped by its pinned filter; DOTS status of mid 1 {status_before} -> {} (its last scraped count stays in the sum)",
        client.dropped(1)?
    );

    // Changes while it is down: the last five withdrawn, five new ones.
    let gone: Vec<usize> = live.split_off(live.len() - extra);
    let new: Vec<usize> = (n..n + extra).collect();
    let skip = [victim];
    let changed = SystemTime::now();
    for &k in &gone {
        client.delete(k as u32 + 1)?;
    }
    for &k in &new {
        client.put(k as u32 + 1, target(k))?;
    }
    let gone_t: Vec<IpNet> = gone.iter().map(|&k| target(k)).collect();
    let new_t: Vec<IpNet> = new.iter().map(|&k| target(k)).collect();
    let a = wait_everywhere(fleet, &gone_t, false, changed, poll, &skip)?;
    let b = wait_everywhere(fleet, &new_t, true, changed, poll, &skip)?;
    println!(
        "  while it is down: {extra} withdrawn and {extra} created; on the other nodes after {} and {}",
        a.every_node().map_or("-".into(), human),
        b.every_node().map_or("-".into(), human)
    );
    live.extend(&new);

    // Restarted: time until its filter holds exactly the live mitigations.
    fleet.nodes[victim].restart()?;
    let (restarted, restarted_wall) = (Instant::now(), SystemTime::now());
    let node = &fleet.nodes[victim];
    let (mut has_new, mut lost_gone, mut up_again) = (None, None, None);
    while restarted.elapsed() < LIMIT * 2 && !interrupted() {
        let ids = node.installed()?;
        if has_new.is_none() && new_t.iter().all(|t| node.holds(&ids, t)) {
            has_new = Some(restarted.elapsed());
        }
        if lost_gone.is_none() && gone_t.iter().all(|t| !node.holds(&ids, t)) {
            lost_gone = Some(restarted.elapsed());
        }
        if up_again.is_none() && metric(scr, "dots_fleet_nodes_down").unwrap_or(1.0) == 0.0 {
            up_again = Some(restarted.elapsed());
        }
        if has_new.is_some() && lost_gone.is_some() && up_again.is_some() {
            break;
        }
        std::thread::sleep(poll.every);
    }
    let ids = node.installed()?;
    let holds_all = live.iter().all(|&k| node.holds(&ids, &target(k)));
    // The reads above confirm; the times are the restarted follower's log lines.
    let logged = |ts: &[IpNet], what: &str| -> Option<Duration> {
        let lines = node.logged(what, restarted_wall);
        ts.iter()
            .map(|t| lines.get(t).copied())
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()?
            .duration_since(restarted_wall)
            .ok()
    };
    let has_new = has_new.and(logged(&new_t, "installed")).or(has_new);
    let lost_gone = lost_gone.and(logged(&gone_t, "removed")).or(lost_gone);
    let fmt = |d: Option<Duration>| d.map_or("not within the limit".to_string(), human);
    println!(
        "  restarted: the {extra} new rules live after {}, the {extra} withdrawn ones gone after {}, Prometheus scraping it again after {}; it holds all {} live mitigations: {holds_all}",
        fmt(has_new),
        fmt(lost_gone),
        fmt(up_again),
        live.len()
    );
    let sum: u64 = fleet
        .nodes
        .iter()
        .map(|n| n.dropped(&t0))
        .collect::<Result<Vec<_>>>()?
        .iter()
        .sum();
    let mut agreed = None;
    while restarted.elapsed() < LIMIT * 2 && !interrupted() {
        if client.dropped(1).context("status")? == sum {
            agreed = Some(restarted.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "  DOTS status of mid 1 equal to the nodes' sum ({sum}, with what the dead node dropped) {}",
        agreed.map_or("not within the limit".into(), |d| format!("{} after the restart", human(d)))
    );
    Ok(())
}
