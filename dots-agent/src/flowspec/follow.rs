//! `dots-agent follow`: a scrubber node without DOTS listeners. It installs the FlowSpec
//! rules its local gobgpd learned (from the DOTS server's daemon or a route reflector) into
//! its own XDP filter: one datapath mitigation per destination prefix, replaced atomically
//! when its rules change, pinned like the server's (the filter keeps dropping while the
//! agent is down; a restarted agent adopts and re-learns).
//!
//! A rule leaves the filter when it is withdrawn while the daemon's BGP sessions are up. When
//! a session is down (or the daemon is), rules missing from the table are kept for
//! `hold_seconds`: a session loss must not open the gates by itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::Deserialize;

use super::gobgp::{parse_monitor_line, Gobgp, RibEvent};
use super::rule::FlowRule;
use crate::datapath::{DatapathId, MitigationSpec, Mitigator};
use crate::server::config::Datapath;

/// node.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowConfig {
    pub datapath: Datapath,
    pub flowspec: FollowFlowspec,
    /// `GET /metrics`: the filter's drops per destination prefix, for Prometheus.
    #[serde(default)]
    pub metrics: Option<NodeMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMetrics {
    pub listen: Vec<std::net::SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowFlowspec {
    #[serde(default = "super::default_api")]
    pub gobgp_api: String,
    #[serde(default = "super::default_program")]
    pub gobgp: std::path::PathBuf,
    /// How long rules missing from the table are kept while a BGP session is down.
    #[serde(default = "default_hold")]
    pub hold_seconds: u64,
    /// How often the whole table is read (sessions, hold times, anything a monitor missed);
    /// changes are applied as the daemon's monitor reports them.
    #[serde(default = "default_poll")]
    pub poll_seconds: u64,
}

fn default_hold() -> u64 {
    90
}
fn default_poll() -> u64 {
    10
}

impl FollowConfig {
    pub fn load(path: &Path) -> Result<FollowConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut c: FollowConfig =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if c.datapath.pin_root.is_relative() {
            c.datapath.pin_root = base.join(&c.datapath.pin_root);
        }
        if c.datapath.interfaces.is_empty() {
            anyhow::bail!(
                "{}: [datapath] interfaces is empty: a node filters on at least one interface",
                path.display()
            );
        }
        if c.flowspec.poll_seconds == 0 {
            anyhow::bail!(
                "{}: [flowspec] poll_seconds must be at least 1",
                path.display()
            );
        }
        let fs = super::FlowspecConfig {
            gobgp_api: c.flowspec.gobgp_api.clone(),
            gobgp: c.flowspec.gobgp.clone(),
            ..toml::from_str("").expect("defaults")
        };
        fs.check()?;
        Ok(c)
    }

    fn gobgp(&self) -> Result<Gobgp> {
        super::FlowspecConfig {
            gobgp_api: self.flowspec.gobgp_api.clone(),
            gobgp: self.flowspec.gobgp.clone(),
            ..toml::from_str("").expect("defaults")
        }
        .gobgp()
    }
}

/// The datapath id of the mitigation for destination `prefix` (stable across restarts, so
/// a restarted node replaces what it installed before).
pub fn mitigation_id(prefix: &IpNet) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prefix.hash(&mut h);
    // Below the operator and baseline ranges, never 0.
    (h.finish() & ((1 << 60) - 1)) | 1
}

fn rule_name(key: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    format!("fs-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// The filter for a set of rules: per destination prefix, its own rules and then those of
/// every shorter prefix containing it (longer destinations take precedence, RFC 8955
/// §5.1), as ACL entries. Rules that cannot become entries are returned with the reason.
pub fn plan(rules: &BTreeMap<String, FlowRule>) -> (BTreeMap<u64, MitigationSpec>, Vec<String>) {
    plan_of(&by_destination(rules))
}

fn plan_of(by_dest: &ByDestination) -> (BTreeMap<u64, MitigationSpec>, Vec<String>) {
    let mut refused = Vec::new();
    let specs = by_dest
        .keys()
        .map(|dest| {
            let spec = spec_for(by_dest, dest, &mut refused);
            (spec.id, spec)
        })
        .collect();
    (specs, refused)
}

type ByDestination<'a> = BTreeMap<IpNet, Vec<(&'a String, &'a FlowRule)>>;

fn by_destination<'a>(
    rules: impl IntoIterator<Item = (&'a String, &'a FlowRule)>,
) -> ByDestination<'a> {
    let mut by_dest: ByDestination = BTreeMap::new();
    for (key, rule) in rules {
        if let Some(d) = rule.matches.destination {
            by_dest.entry(d).or_default().push((key, rule));
        }
    }
    by_dest
}

/// The mitigation for one destination of `by_dest`.
fn spec_for(by_dest: &ByDestination, dest: &IpNet, refused: &mut Vec<String>) -> MitigationSpec {
    let mut covering: Vec<(&IpNet, &Vec<(&String, &FlowRule)>)> =
        by_dest.iter().filter(|(d, _)| d.contains(dest)).collect();
    covering.sort_by_key(|(d, _)| std::cmp::Reverse(d.prefix_len()));
    let mut spec = MitigationSpec::new(mitigation_id(dest), vec![*dest]);
    for (_, rs) in covering {
        for (key, rule) in rs {
            match rule.acl_entries(&rule_name(key)) {
                Ok(mut entries) => {
                    // A covering rule's own destination is wider than this target.
                    for e in &mut entries {
                        e.matches.destination = None;
                    }
                    spec.acl.extend(entries)
                }
                Err(why) if d_is(rule, dest) => refused.push(format!("{key}: {why}")),
                Err(_) => {}
            }
        }
    }
    spec
}

fn d_is(rule: &FlowRule, dest: &IpNet) -> bool {
    rule.matches.destination.as_ref() == Some(dest)
}

/// A learned rule and what the node knows of it.
struct Held {
    rule: FlowRule,
    /// When it went missing from the table while it could not be told withdrawn.
    missing_since: Option<Instant>,
}

/// A read of the daemon: its BGP sessions (established, configured) and its table.
pub struct Snapshot {
    sessions: Result<(usize, usize), String>,
    table: Result<Vec<super::gobgp::TableRule>, String>,
}

impl Snapshot {
    /// Three `gobgp` runs: about 0.3 s with 1,000 rules, so the loop has it done on a
    /// thread of its own and goes on applying events meanwhile.
    pub fn read(gobgp: &Gobgp) -> Snapshot {
        Snapshot {
            sessions: gobgp.sessions(),
            table: gobgp.table(),
        }
    }
}

pub struct Follower<M: Mitigator> {
    dp: M,
    gobgp: Gobgp,
    hold: Duration,
    rules: BTreeMap<String, Held>,
    installed: HashMap<u64, MitigationSpec>,
    /// Adopted from the pins at start, not yet seen in the table.
    adopted: Vec<u64>,
    started: Instant,
    /// Whether every BGP session was up at the last look.
    sessions_up: bool,
}

impl<M: Mitigator> Follower<M> {
    pub fn new(dp: M, gobgp: Gobgp, hold: Duration) -> Self {
        let adopted = dp
            .installed()
            .into_iter()
            .filter(|id| matches!(DatapathId::from_raw(*id), DatapathId::Mitigation(_)))
            .collect();
        Follower {
            dp,
            gobgp,
            hold,
            rules: BTreeMap::new(),
            installed: HashMap::new(),
            adopted,
            started: Instant::now(),
            sessions_up: false,
        }
    }

    pub fn mitigator(&self) -> &M {
        &self.dp
    }

    /// The node's exposition: drops per installed destination prefix, read now.
    pub fn exposition(&self) -> String {
        let mut drops: Vec<(IpNet, xdp_common::Counter)> = self
            .installed
            .iter()
            .map(|(id, spec)| {
                let c = self
                    .dp
                    .counters(*id)
                    .ok()
                    .flatten()
                    .map(|c| c.dropped_total());
                (spec.targets[0], c.unwrap_or_default())
            })
            .collect();
        drops.sort_by_key(|(p, _)| *p);
        super::fleet::node_exposition(&drops, self.rules.len())
    }

    fn read_sessions(&mut self) {
        let sessions = self.gobgp.sessions();
        self.sessions_up = matches!(sessions, Ok((up, total)) if up == total && total > 0);
    }

    /// Brings the whole filter in line with a read of the daemon, and with the monitor's
    /// events `since` the read began (already applied by [`Self::learn`]; taken into the
    /// table here so a rule learned meanwhile is not removed and installed again).
    pub fn settle(&mut self, snapshot: Snapshot, since: &[RibEvent]) -> Vec<String> {
        let now = Instant::now();
        self.sessions_up = matches!(snapshot.sessions, Ok((up, total)) if up == total && total > 0);
        let all_up = self.sessions_up;
        let table = match snapshot.table {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("follow: reading gobgpd's table: {e}; keeping the rules");
                None
            }
        };
        let mut problems = Vec::new();
        if let Some(table) = table {
            let mut present = BTreeMap::new();
            for t in table {
                match t.rule {
                    Ok(r) => {
                        present.insert(r.matches.gobgp_args().join(" "), r);
                    }
                    Err(why) => problems.push(format!("{}: {why}", t.nlri)),
                }
            }
            for event in since {
                match event {
                    RibEvent::Learned(r) => {
                        present.insert(r.matches.gobgp_args().join(" "), r.clone());
                    }
                    RibEvent::Withdrawn(key) | RibEvent::Unusable(Some(key), _) => {
                        present.remove(key);
                    }
                    RibEvent::Unusable(None, _) => {}
                }
            }
            for (key, held) in self.rules.iter_mut() {
                if !present.contains_key(key) && held.missing_since.is_none() {
                    held.missing_since = Some(now);
                }
            }
            let hold = self.hold;
            // Missing with every session up: withdrawn. Otherwise held for the hold time.
            self.rules.retain(|key, held| {
                present.contains_key(key)
                    || (!all_up && held.missing_since.is_some_and(|t| now - t < hold))
            });
            for (key, rule) in present {
                self.rules.insert(
                    key,
                    Held {
                        rule,
                        missing_since: None,
                    },
                );
            }
        } else {
            let hold = self.hold;
            for held in self.rules.values_mut() {
                held.missing_since.get_or_insert(now);
            }
            self.rules
                .retain(|_, h| h.missing_since.is_some_and(|t| now - t < hold));
        }
        let (specs, refused) = plan_of(&self.held());
        problems.extend(refused);
        let settled = all_up && now - self.started >= Duration::from_secs(2);
        self.apply(specs, None, settled, &mut problems);
        problems
    }

    /// Applies what the daemon's monitor reported, without reading the table: a change
    /// costs the rules of the destinations it touches, not the whole table (reading that
    /// took 1.2 s at 1,000 rules). A withdrawal counts as one only while every session is
    /// up (asked once per batch); otherwise the rule is held as in [`Self::settle`], which
    /// the poll runs and which ends the hold. Returns what it could not install.
    pub fn learn(&mut self, events: Vec<RibEvent>) -> Vec<String> {
        let now = Instant::now();
        let mut problems = Vec::new();
        let mut touched = BTreeSet::new();
        let mut withdrawn = Vec::new();
        for event in events {
            let key = match event {
                RibEvent::Learned(rule) => {
                    touched.extend(rule.matches.destination);
                    let key = rule.matches.gobgp_args().join(" ");
                    self.rules.insert(
                        key,
                        Held {
                            rule,
                            missing_since: None,
                        },
                    );
                    continue;
                }
                RibEvent::Unusable(None, why) => {
                    problems.push(why);
                    continue;
                }
                RibEvent::Unusable(Some(key), why) => {
                    problems.push(format!("{key}: {why}"));
                    key
                }
                RibEvent::Withdrawn(key) => key,
            };
            if let Some(held) = self.rules.get_mut(&key) {
                held.missing_since.get_or_insert(now);
                touched.extend(held.rule.matches.destination);
                withdrawn.push(key);
            }
        }
        if !withdrawn.is_empty() {
            self.read_sessions();
            if self.sessions_up {
                for key in withdrawn {
                    if self
                        .rules
                        .get(&key)
                        .is_some_and(|h| h.missing_since.is_some())
                    {
                        self.rules.remove(&key);
                    }
                }
            }
        }
        if touched.is_empty() {
            return problems;
        }
        // A destination's mitigation also carries the rules of every shorter one containing
        // it, so a change to a prefix touches the longer ones inside it.
        let by_dest = self.held();
        let scope: BTreeSet<IpNet> = by_dest
            .keys()
            .copied()
            .chain(self.installed.values().map(|s| s.targets[0]))
            .filter(|d| touched.iter().any(|t| t.contains(d)))
            .collect();
        let mut specs = BTreeMap::new();
        let mut refused = Vec::new();
        for dest in scope.iter().filter(|d| by_dest.contains_key(d)) {
            let spec = spec_for(&by_dest, dest, &mut refused);
            specs.insert(spec.id, spec);
        }
        problems.extend(refused);
        // Adopted mitigations are left to the table's read: while a restarted node's table
        // arrives, a rule not seen yet is not a rule withdrawn.
        self.apply(specs, Some(&scope), false, &mut problems);
        problems
    }

    /// Whether mitigations adopted from the pins wait for the table to say they are gone.
    pub fn settling(&self) -> bool {
        !self.adopted.is_empty()
    }

    /// The held rules by destination, borrowed (no copy of the table per change).
    fn held(&self) -> ByDestination<'_> {
        by_destination(self.rules.iter().map(|(k, h)| (k, &h.rule)))
    }

    /// Installs what changed first, then removes what is no longer wanted: of the
    /// destinations in `scope` (all when None), and the adopted mitigations once `settled`
    /// (the sessions are up and had time to send the table), or after the hold time.
    fn apply(
        &mut self,
        specs: BTreeMap<u64, MitigationSpec>,
        scope: Option<&BTreeSet<IpNet>>,
        settled: bool,
        problems: &mut Vec<String>,
    ) {
        for (id, spec) in &specs {
            if self.installed.get(id) == Some(spec) {
                continue;
            }
            match self.dp.install(spec) {
                Ok(()) => {
                    tracing::info!(
                        "follow: {} installed ({} rules)",
                        spec.targets[0],
                        spec.acl.len()
                    );
                    self.installed.insert(*id, spec.clone());
                }
                Err(e) => problems.push(format!("{}: {e}", spec.targets[0])),
            }
        }
        self.adopted.retain(|id| !specs.contains_key(id));
        let expired = self.started.elapsed() >= self.hold;
        let stale: Vec<u64> = self
            .installed
            .iter()
            .filter(|(id, s)| {
                !specs.contains_key(id) && scope.is_none_or(|d| d.contains(&s.targets[0]))
            })
            .map(|(id, _)| *id)
            .chain(if settled || expired {
                std::mem::take(&mut self.adopted)
            } else {
                Vec::new()
            })
            .collect();
        for id in stale {
            match self.dp.remove(id) {
                Ok(_) => {
                    if let Some(s) = self.installed.remove(&id) {
                        tracing::info!("follow: {} removed", s.targets[0]);
                    }
                }
                Err(e) => problems.push(format!("removing {}: {e}", DatapathId::from_raw(id))),
            }
        }
    }
}

/// What wakes the follower's loop.
enum Wake {
    /// Changes a monitor read.
    Rib(Vec<RibEvent>),
    /// A monitor ended or printed what it cannot read: read the table.
    Resync(String),
    /// A scrape of `/metrics`: the exposition goes back on the channel.
    Scrape(SyncSender<String>),
    /// A read of the daemon, done.
    Table(Snapshot),
}

/// The shortest time between two reads of the table that a monitor asks for: a daemon that
/// is down ends every monitor at once, which must not become a busy loop.
const RESYNC_GAP: Duration = Duration::from_secs(1);
/// How long a scrape waits for the loop (busy reading the table, say) before it is served
/// the last exposition.
const SCRAPE_WAIT: Duration = Duration::from_secs(2);

/// `gobgp monitor global rib -j`, one per family: each line's paths of that family go to
/// the loop as events; the end of the stream, or a line it cannot read, as a resync.
fn spawn_monitors(gobgp: &Gobgp, wake: &Sender<Wake>) -> Vec<Child> {
    let mut children = Vec::new();
    for (family, ipv6) in [("ipv4-flowspec", false), ("ipv6-flowspec", true)] {
        let child = Command::new(&gobgp.program)
            .args(["-u", &gobgp.host, "-p", &gobgp.port.to_string()])
            .args(["monitor", "global", "rib", "-a", family, "-j"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(mut c) => {
                let out = c.stdout.take().expect("piped");
                let wake = wake.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        let sent = match parse_monitor_line(&line, ipv6) {
                            Ok(events) if events.is_empty() => Ok(()),
                            Ok(events) => wake.send(Wake::Rib(events)),
                            Err(why) => wake.send(Wake::Resync(why)),
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                    let _ = wake.send(Wake::Resync(format!("the {family} monitor ended")));
                });
                children.push(c);
            }
            Err(e) => tracing::warn!("follow: starting gobgp monitor: {e}"),
        }
    }
    children
}

/// Runs the follower until `stop` says so: every change the daemon's monitor reports is
/// applied as it comes; the table is read at start, every `poll_seconds` (sessions, hold
/// times, anything a monitor missed) and when a monitor ends or cannot be read.
pub fn run(config: &FollowConfig, dp: Box<dyn Mitigator>, stop: &dyn Fn() -> bool) -> Result<()> {
    let gobgp = config.gobgp()?;
    let mut follower = Follower::new(
        dp,
        gobgp.clone(),
        Duration::from_secs(config.flowspec.hold_seconds),
    );
    let (wake_tx, wake_rx): (Sender<Wake>, Receiver<Wake>) = mpsc::channel();
    let mut monitors: Vec<Child> = Vec::new();
    let poll = Duration::from_secs(config.flowspec.poll_seconds);
    let mut last_problems = Vec::new();
    let _metrics = match &config.metrics {
        Some(m) => Some(super::fleet::serve_node_metrics(
            &m.listen,
            scrape_through(wake_tx.clone()),
        )?),
        None => None,
    };
    let mut last_step = Instant::now();
    let mut next_step = last_step;
    // While a read of the table is under way: the events that came since it began.
    let mut reading: Option<Vec<RibEvent>> = None;
    // A monitor asked for a read while one was under way: the next comes soon after.
    let mut resync = false;
    while !stop() {
        if reading.is_none() && Instant::now() >= next_step {
            // A monitor that ended (the daemon restarted) is started again.
            let alive = monitors
                .iter_mut()
                .all(|c| matches!(c.try_wait(), Ok(None)));
            if !alive || monitors.is_empty() {
                for mut c in monitors.drain(..) {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                monitors = spawn_monitors(&gobgp, &wake_tx);
            }
            // What the monitors reported so far is in the table about to be read; what
            // comes after is applied as it comes and taken into the read's result.
            while let Ok(w) = wake_rx.try_recv() {
                if let Wake::Scrape(reply) = w {
                    let _ = reply.send(follower.exposition());
                }
            }
            reading = Some(Vec::new());
            let (gobgp, done) = (gobgp.clone(), wake_tx.clone());
            std::thread::spawn(move || {
                let _ = done.send(Wake::Table(Snapshot::read(&gobgp)));
            });
        }
        let wait = match reading {
            Some(_) => poll,
            None => next_step.saturating_duration_since(Instant::now()),
        };
        let mut events = Vec::new();
        let mut scrapes = Vec::new();
        let mut snapshot = None;
        match wake_rx.recv_timeout(wait) {
            Ok(first) => {
                // Everything already queued goes in one batch.
                for w in
                    std::iter::once(first).chain(std::iter::from_fn(|| wake_rx.try_recv().ok()))
                {
                    match w {
                        Wake::Rib(e) => events.extend(e),
                        Wake::Scrape(reply) => scrapes.push(reply),
                        Wake::Table(s) => snapshot = Some(s),
                        Wake::Resync(why) => {
                            tracing::debug!("follow: {why}: reading the table");
                            resync = true;
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => unreachable!("the loop holds a sender"),
        }
        if !events.is_empty() {
            if let Some(since) = reading.as_mut() {
                since.extend(events.iter().cloned());
            }
            for p in follower.learn(events) {
                tracing::warn!("follow: not installed: {p}");
            }
        }
        if let Some(snapshot) = snapshot {
            let since = reading.take().unwrap_or_default();
            let problems = follower.settle(snapshot, &since);
            if problems != last_problems {
                for p in &problems {
                    tracing::warn!("follow: not installed: {p}");
                }
                last_problems = problems;
            }
            last_step = Instant::now();
            // A restarted node reads its table every second until it has settled what it
            // adopted (withdrawn while it was down: removed then).
            next_step = last_step
                + if follower.settling() {
                    poll.min(Duration::from_secs(1))
                } else {
                    poll
                };
        }
        if resync && reading.is_none() {
            next_step = next_step.min(last_step + RESYNC_GAP);
            resync = false;
        }
        for reply in scrapes {
            let _ = reply.send(follower.exposition());
        }
    }
    for mut c in monitors {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}

/// `/metrics`' renderer: asks the loop for the exposition, so a scrape reads the counters
/// as they are now (not as of the last change); the last answer if the loop is busy.
fn scrape_through(wake: Sender<Wake>) -> super::fleet::Render {
    let last = Mutex::new(String::new());
    std::sync::Arc::new(move || {
        let (reply, answer) = mpsc::sync_channel(1);
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if wake.send(Wake::Scrape(reply)).is_ok() {
            if let Ok(text) = answer.recv_timeout(SCRAPE_WAIT) {
                *last = text;
            }
        }
        last.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::AclAction;
    use crate::flowspec::rule::{FlowAction, FlowMatch};

    fn rule(dest: &str, protocols: Vec<u8>, action: FlowAction) -> (String, FlowRule) {
        let r = FlowRule {
            matches: FlowMatch {
                destination: Some(dest.parse().unwrap()),
                protocols,
                ..Default::default()
            },
            action,
        };
        (r.matches.gobgp_args().join(" "), r)
    }

    /// One mitigation per destination; a longer destination also carries the rules of the
    /// shorter ones containing it, after its own (FlowSpec's precedence).
    #[test]
    fn rules_become_one_mitigation_per_destination() {
        let rules: BTreeMap<String, FlowRule> = [
            rule("198.51.100.0/24", vec![17], FlowAction::Discard),
            rule("198.51.100.7/32", vec![6], FlowAction::RateBytes(1000.0)),
            rule("2001:db8::/48", vec![], FlowAction::Discard),
        ]
        .into_iter()
        .collect();
        let (specs, refused) = plan(&rules);
        assert!(refused.is_empty());
        assert_eq!(specs.len(), 3);
        let host = &specs[&mitigation_id(&"198.51.100.7/32".parse().unwrap())];
        let kinds: Vec<(Option<u8>, &AclAction)> = host
            .acl
            .iter()
            .map(|e| (e.matches.protocol, &e.action))
            .collect();
        assert_eq!(kinds.len(), 2);
        assert_eq!(kinds[0].0, Some(6), "its own rule first");
        assert_eq!(kinds[1], (Some(17), &AclAction::Drop));
        let net = &specs[&mitigation_id(&"198.51.100.0/24".parse().unwrap())];
        assert_eq!(
            net.acl.len(),
            1,
            "a shorter destination does not take longer ones' rules"
        );
        assert_eq!(
            plan(&rules).0,
            specs,
            "the same rules, the same specs (names and ids)"
        );
    }

    /// A `gobgp` that answers `neighbor -j` with one session, up or down.
    fn fake_gobgp(dir: &std::path::Path, up: bool) -> Gobgp {
        let program = dir.join(if up { "gobgp-up" } else { "gobgp-down" });
        let state = if up { 6 } else { 1 };
        std::fs::write(
            &program,
            format!("#!/bin/sh\necho '[{{\"state\":{{\"session_state\":{state}}}}}]'\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        Gobgp {
            program,
            host: "127.0.0.1".into(),
            port: 50051,
        }
    }

    /// The monitor's events change only the destinations they touch (a longer destination
    /// carries a shorter one's rules); a withdrawal while a session is down is held; an
    /// action the filter lacks takes the rule out and says why.
    #[test]
    fn monitor_events_change_the_filter_without_reading_the_table() {
        use crate::datapath::MemoryMitigator;
        let dir = tempfile::tempdir().unwrap();
        let mut f = Follower::new(
            MemoryMitigator::new(),
            fake_gobgp(dir.path(), false),
            Duration::from_secs(90),
        );
        let (net_key, net) = rule("198.51.100.0/24", vec![17], FlowAction::Discard);
        let (host_key, host) = rule("198.51.100.7/32", vec![6], FlowAction::Discard);
        let net_id = mitigation_id(&net.matches.destination.unwrap());
        let host_id = mitigation_id(&host.matches.destination.unwrap());
        let entries =
            |f: &Follower<MemoryMitigator>, id| f.mitigator().spec(id).map(|s| s.acl.len());

        let problems = f.learn(vec![RibEvent::Learned(net), RibEvent::Learned(host)]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            (entries(&f, net_id), entries(&f, host_id)),
            (Some(1), Some(2))
        );

        f.learn(vec![RibEvent::Withdrawn(net_key.clone())]);
        assert_eq!(entries(&f, net_id), Some(1), "held: the session is down");

        f.gobgp = fake_gobgp(dir.path(), true);
        f.learn(vec![RibEvent::Withdrawn(net_key)]);
        assert_eq!(entries(&f, net_id), None, "withdrawn with the session up");
        assert_eq!(
            entries(&f, host_id),
            Some(1),
            "the longer one lost the shorter's rule"
        );

        let problems = f.learn(vec![RibEvent::Unusable(
            Some(host_key),
            "no traffic-rate".into(),
        )]);
        assert_eq!(entries(&f, host_id), None);
        assert!(problems[0].contains("no traffic-rate"), "{problems:?}");

        // A read of the table that began before a rule was learned: the rule stays, and
        // what the table no longer has goes.
        let (_, late) = rule("198.51.100.9/32", vec![17], FlowAction::Discard);
        let late_id = mitigation_id(&late.matches.destination.unwrap());
        f.learn(vec![RibEvent::Learned(late.clone())]);
        let (_, stale) = rule("203.0.113.0/24", vec![17], FlowAction::Discard);
        let stale_id = mitigation_id(&stale.matches.destination.unwrap());
        f.learn(vec![RibEvent::Learned(stale)]);
        let read_before_it = Snapshot {
            sessions: Ok((1, 1)),
            table: Ok(Vec::new()),
        };
        f.settle(read_before_it, &[RibEvent::Learned(late)]);
        assert_eq!(entries(&f, late_id), Some(1), "learned during the read");
        assert_eq!(
            entries(&f, stale_id),
            None,
            "in neither the table nor the events since"
        );
    }
}
