//! The announcer: a thread of its own that keeps the local gobgpd's table equal to the rules
//! the DOTS server's committed mitigations should announce. The engine hands it changes
//! ([`crate::engine::RuleAnnouncer`]) without waiting; the thread translates them, applies
//! the guard rails and reconciles the daemon's table: new rules first, then withdrawals, so
//! a changed mitigation is never without rules (make before break). A change is compared
//! with what the thread last announced, so its cost does not grow with the table; every
//! `resync_seconds` (and after any failure) the daemon's own table is read back and
//! compared instead, which re-announces everything to a daemon that restarted
//! (`reconcile.rs`, shared with the diverter).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipnet::IpNet;

use super::gobgp::Gobgp;
use super::reconcile::{self, Change, Handle, Outcome, OutcomeNames};
use super::rule::FlowRule;
use super::translate::{translate, GuardRails, Translation};
use super::FlowspecConfig;
use crate::datapath::MitigationSpec;
use crate::engine::RuleAnnouncer;
use crate::metrics::Scrape;

/// What the announcer last achieved, for metrics and logs.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Rules wanted and announced, and how the daemon answered.
    pub daemon: Outcome,
    /// Per client: parts of its mitigations kept on this box only.
    pub local_only: BTreeMap<String, usize>,
    /// Per client: mitigations whose rules the rule limits kept back.
    pub over_limit: BTreeMap<String, usize>,
}

/// The engine's side: sends changes to the thread.
pub struct Announcer {
    thread: Handle<Report>,
    /// The nodes' drop counters through Prometheus (None: not configured).
    fleet: Option<super::fleet::FleetCounts>,
}

struct Mitigation {
    client: String,
    translation: Translation,
}

struct Worker {
    gobgp: Gobgp,
    rails: GuardRails,
    mitigations: BTreeMap<u64, Mitigation>,
}

impl Announcer {
    /// Starts the thread (it runs until the engine drops the announcer).
    pub fn start(config: &FlowspecConfig) -> anyhow::Result<Announcer> {
        let worker = Worker {
            gobgp: config.gobgp()?,
            rails: config.rails(),
            mitigations: BTreeMap::new(),
        };
        let every = Duration::from_secs(config.resync_seconds);
        let fleet = match &config.prometheus {
            Some(p) => Some(super::fleet::FleetCounts::start(
                p,
                &config.fleet_job,
                Duration::from_secs(config.fleet_query_seconds),
                Duration::from_millis(config.fleet_probe_ms),
            )?),
            None => None,
        };
        let thread = Handle::start(worker, every)?;
        Ok(Announcer { thread, fleet })
    }

    pub fn report(&self) -> Report {
        self.thread.report()
    }
}

impl RuleAnnouncer for Announcer {
    fn active(&mut self, id: u64, client: &str, prefixes: &[IpNet], spec: &MitigationSpec) {
        self.thread.active(id, client, prefixes, spec);
    }

    fn ended(&mut self, id: u64) {
        self.thread.ended(id);
    }

    fn metrics(&self) -> String {
        let fleet = self
            .fleet
            .as_ref()
            .map(|f| f.view().render())
            .unwrap_or_default();
        render(&self.report()) + &fleet
    }

    fn fleet_dropped(&self, targets: &[IpNet]) -> Option<xdp_common::Counter> {
        let view = self.fleet.as_ref()?.view();
        Some(view.dropped_within(targets))
    }
}

impl reconcile::Report for Report {
    fn daemon(&mut self) -> &mut Outcome {
        &mut self.daemon
    }
}

impl reconcile::Worker for Worker {
    const NAME: &'static str = "flowspec";
    type Table = Gobgp;
    type Report = Report;

    fn apply(&mut self, change: Change) {
        match change {
            Change::Active {
                id,
                client,
                prefixes,
                spec,
            } => {
                let translation = translate(&spec, &prefixes, &self.rails);
                for why in &translation.local_only {
                    tracing::warn!("flowspec: {client} mitigation {id}: kept local: {why}");
                }
                self.mitigations.insert(
                    id,
                    Mitigation {
                        client,
                        translation,
                    },
                );
            }
            Change::Ended(id) => {
                self.mitigations.remove(&id);
            }
        }
    }

    fn table(&self) -> &Gobgp {
        &self.gobgp
    }

    /// The rules to announce: each mitigation's, oldest first, unless its rules would take
    /// its client or the server past a limit (then none of them: a mitigation is announced
    /// whole or not at all).
    fn wanted(&mut self, report: &mut Report) -> BTreeMap<String, FlowRule> {
        let mut out: BTreeMap<String, FlowRule> = BTreeMap::new();
        let mut per_client: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, m) in &self.mitigations {
            *report.local_only.entry(m.client.clone()).or_default() +=
                m.translation.local_only.len();
            let n = m.translation.rules.len();
            let client_n = per_client.entry(&m.client).or_default();
            if *client_n + n > self.rails.max_rules_per_client
                || out.len() + n > self.rails.max_rules_total
            {
                *report.over_limit.entry(m.client.clone()).or_default() += 1;
                tracing::warn!(
                    "flowspec: {} mitigation {id}: {n} rules would pass max_rules_per_client ({}) or max_rules_total ({}); kept local",
                    m.client,
                    self.rails.max_rules_per_client,
                    self.rails.max_rules_total
                );
                continue;
            }
            *client_n += n;
            for r in &m.translation.rules {
                out.entry(r.matches.gobgp_args().join(" "))
                    .or_insert_with(|| r.clone());
            }
        }
        out
    }
}

/// The daemon's FlowSpec rules, as far as this server made them.
impl reconcile::Table for Gobgp {
    type Route = FlowRule;

    fn read(&self) -> Result<BTreeMap<String, FlowRule>, String> {
        let mut have = BTreeMap::new();
        let mut foreign = BTreeSet::new();
        for t in self.table()?.into_iter().filter(|t| t.neighbor.is_none()) {
            match t.rule {
                Ok(r) => {
                    have.insert(r.matches.gobgp_args().join(" "), r);
                }
                Err(_) => {
                    foreign.insert(t.nlri);
                }
            }
        }
        if !foreign.is_empty() {
            tracing::warn!(
                "flowspec: rules in gobgpd this server did not make, left alone: {foreign:?}"
            );
        }
        Ok(have)
    }

    fn add(&self, rule: &FlowRule) -> Result<(), String> {
        Gobgp::add(self, rule)
    }

    fn del(&self, rule: &FlowRule) -> Result<(), String> {
        Gobgp::del(self, &rule.matches)
    }

    /// The key is the match's words; only the action can differ.
    fn same(have: &FlowRule, wanted: &FlowRule) -> bool {
        have.action == wanted.action
    }
}

const OUTCOME: OutcomeNames = OutcomeNames {
    wanted: (
        "dots_flowspec_rules_wanted",
        "FlowSpec rules the committed mitigations should announce",
    ),
    announced: (
        "dots_flowspec_rules_announced",
        "FlowSpec rules of this server in gobgpd's table at the last reconciliation",
    ),
    daemon_up: "dots_flowspec_daemon_up",
    daemon_errors: "dots_flowspec_daemon_errors_total",
};

fn render(r: &Report) -> String {
    let m = Scrape::default();
    r.daemon.expose(&m, &OUTCOME);
    for (name, help, per_client) in [
        (
            "dots_flowspec_local_only",
            "Parts of mitigations FlowSpec cannot express, filtered on this box only",
            &r.local_only,
        ),
        (
            "dots_flowspec_over_limit_mitigations",
            "Mitigations not announced: their rules would pass a rule limit",
            &r.over_limit,
        ),
    ] {
        let gauge = m.gauge(name, help, &["client"]);
        for (client, n) in per_client {
            gauge.with_label_values(&[client.as_str()]).set(*n as i64);
        }
    }
    m.text()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The series README and the tests name, with their HELP and TYPE lines; a client's name
    /// escaped as a label value.
    #[test]
    fn metrics_name_the_rules_and_the_daemon() {
        let r = Report {
            daemon: Outcome::after(&Outcome::default(), 5, &Ok(4)),
            local_only: [("client-\"a\"".to_string(), 3)].into(),
            over_limit: [("client-b".to_string(), 1)].into(),
        };
        let text = render(&r);
        for line in [
            "# HELP dots_flowspec_rules_wanted FlowSpec rules the committed mitigations should announce",
            "# TYPE dots_flowspec_rules_wanted gauge",
            "dots_flowspec_rules_wanted 5",
            "# HELP dots_flowspec_rules_announced FlowSpec rules of this server in gobgpd's table at the last reconciliation",
            "dots_flowspec_rules_announced 4",
            "# HELP dots_flowspec_daemon_up Whether the last reconciliation with gobgpd succeeded",
            "dots_flowspec_daemon_up 1",
            "# HELP dots_flowspec_daemon_errors_total Reconciliations with gobgpd that failed",
            "# TYPE dots_flowspec_daemon_errors_total counter",
            "dots_flowspec_daemon_errors_total 0",
            "# HELP dots_flowspec_local_only Parts of mitigations FlowSpec cannot express, filtered on this box only",
            "# TYPE dots_flowspec_local_only gauge",
            "dots_flowspec_local_only{client=\"client-\\\"a\\\"\"} 3",
            "# HELP dots_flowspec_over_limit_mitigations Mitigations not announced: their rules would pass a rule limit",
            "dots_flowspec_over_limit_mitigations{client=\"client-b\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
