//! The mitigation engine (RFC 9132 §4.4), free of I/O: authorisation of targets against a
//! client's configured prefixes, create / refresh / modify / efficacy update, same-client
//! and cross-client conflicts, lifetimes, withdrawal with the active-but-terminating period,
//! requests armed for signal loss, and status with counters read from the datapath.
//!
//! It is the only writer to the datapath ([`writer`]) and to the store (through a
//! [`journal::Journal`]): each request is one operation whose changes are committed as one
//! transaction before it is answered, and undone (state and datapath) if the commit fails.
//! The data channel is a source it asks ([`DataSource`]: aliases, RFC 9133 acl-list) and
//! tells it when a client's ACLs change ([`Engine::set_acls`]). Time is passed in (seconds),
//! so every rule is tested without clocks or sockets; values are typed, the handler does the
//! CBOR.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::datapath::{
    AclEntry, Countermeasures, DatapathError, DatapathId, MitigationSpec, Mitigator, PortRange,
};
use crate::signal::message::{
    AclActivation, ActivationType, Lifetime, MitigationStatus, Redirect, Scope, Status,
};
use crate::signal::session_config::SessionConfig;
use crate::signal::telemetry::{self as tm, TelemetrySetup};

mod acl;
mod clock;
mod config;
pub mod journal;
mod ledger;
mod record;
mod restore;
mod telemetry;
mod writer;

use journal::{Change, Journal, JournalError};

/// RFC 9132 §4.4.4: default active-but-terminating period, and its ceiling.
pub const TERMINATING_DEFAULT: u64 = 120;
pub const TERMINATING_MAX: u64 = 300;
/// Drop rates in status are averaged over at least this many seconds.
pub const RATE_WINDOW: u64 = 10;
/// An ended mitigation (status 6 or 7) stays visible this long, so that GET and observers
/// learn how it ended, before it is forgotten.
pub const ENDED_RETENTION: u64 = 60;
/// Status 3 and 7 of a preconfigured request are announced for this long (one
/// notification a second: "sent four times", RFC 9132 §4.4.1), then it is back to 8.
pub const ANNOUNCE_SECONDS: u64 = 4;
/// Default time without drops after which an active mitigation reports attack-stopped (3).
pub const ATTACK_QUIET_DEFAULT: u64 = 60;
/// How often the drop counters of active mitigations are read to tell whether the attack
/// goes on.
const ACTIVITY_CHECK: u64 = 2;

/// What an `alias-name` stands for (the data channel's aliases, RFC 8783 §6).
#[derive(Clone, Debug, Default)]
pub struct AliasTargets {
    pub prefixes: Vec<IpNet>,
    pub ports: Vec<PortRange>,
    pub protocols: Vec<u8>,
    /// How many FQDN / URI targets it holds (this server does not resolve those).
    pub names: usize,
}

/// A client's data-channel ACL entries in order, with their activation.
pub type AclEntries = Vec<(ActivationType, AclEntry)>;

/// What a change to a client's ACLs (RFC 9133 `acl-list`) would make of them.
pub struct AclEdit {
    pub client: String,
    pub entries: AclEntries,
    /// The data channel's document as it would be stored.
    pub change: Change,
}

/// What the engine asks of the data channel (RFC 8783 aliases, RFC 9133 filter control),
/// by the client's cuid.
pub trait DataSource: Send {
    /// The targets of the client's alias `name`.
    fn alias(&self, cuid: &str, name: &str) -> Option<AliasTargets>;
    /// What setting these ACLs' activation types would make of the client's ACLs, without
    /// changing anything. Err: a diagnostic (an unknown acl-name).
    fn plan_acl_list(&self, cuid: &str, acls: &[AclActivation]) -> Result<AclEdit, String>;
    /// Makes the planned change, once the engine has stored it.
    fn apply_acl_list(&mut self, cuid: &str, acls: &[AclActivation]);
}

/// What a configured client may do (from server.toml).
#[derive(Clone, Debug)]
pub struct ClientPolicy {
    pub name: String,
    /// Targets must lie inside one of these.
    pub prefixes: Vec<IpNet>,
    /// Countermeasures applied to this client's mitigations.
    pub countermeasures: Countermeasures,
    /// ACL entries the operator applies to this client's mitigations (first match decides).
    pub acl: Vec<AclEntry>,
    /// Grant lifetime -1 (indefinite) when asked; otherwise grant `max_lifetime`.
    pub allow_indefinite: bool,
    pub max_lifetime: u32,
}

/// A refusal, as the CoAP layer will send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 4.00 with a diagnostic.
    BadRequest(String),
    /// 4.03 with a diagnostic.
    Forbidden(String),
    /// 4.04.
    NotFound(String),
    /// 4.09 with conflict-information: cause, and the conflicting mid if it is the client's.
    Conflict {
        cause: u8,
        mid: Option<u32>,
        diagnostic: String,
    },
    /// 4.09: another client's active mitigation holds these targets; retry after
    /// `retry_timer` seconds (its remaining lifetime; None: indefinite).
    HeldByOther {
        targets: Vec<IpNet>,
        retry_timer: Option<u32>,
        diagnostic: String,
    },
    /// 5.03 with a diagnostic (datapath full or failing, or the store cannot record it).
    Unavailable(String),
    /// 4.22: a session parameter outside the server's limits.
    Unprocessable(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// 2.01
    Created { granted: Lifetime },
    /// 2.04
    Changed,
    /// An efficacy update for an unknown mid: discarded without a reply (RFC 9132 §4.4.3).
    Discarded,
}

#[derive(Clone, Debug)]
struct Mitigation {
    scope: Scope,
    status: Status,
    /// Epoch seconds when it became active.
    start: Option<u64>,
    /// Epoch seconds when it expires (None: indefinite).
    expires: Option<u64>,
    /// Set while active-but-terminating after a withdrawal.
    terminating_until: Option<u64>,
    installed: bool,
    /// Its datapath id: `DatapathId::Mitigation(datapath_id)`.
    datapath_id: u64,
    /// When it ended (status 6 or 7); kept for ENDED_RETENTION, then forgotten.
    ended_at: Option<u64>,
    /// A preconfigured request announcing status 3 or 7 until then, then back to 8.
    announce_until: Option<u64>,
    /// Whether the attack goes on (not stored: a restart starts watching afresh).
    activity: Activity,
    /// The attack traffic the client last said still reaches it (efficacy telemetry).
    client_attack: tm::Traffic,
}

/// One mitigation as metrics see it.
#[derive(Clone, Debug)]
pub struct MitigationView {
    pub client: String,
    pub mid: u32,
    pub status: Status,
    /// None when it is not in the datapath (armed, ended).
    pub counters: Option<crate::datapath::MitigationCounters>,
    /// The attack traffic the client reports still reaching it (efficacy telemetry).
    pub client_attack: tm::Traffic,
}

/// The drop counter as last read, and when it last moved.
#[derive(Clone, Debug, Default)]
struct Activity {
    checked_at: u64,
    dropped_packets: u64,
    last_drop_at: Option<u64>,
}

impl Mitigation {
    /// Still in force or armed (not ended).
    fn live(&self) -> bool {
        self.ended_at.is_none()
    }

    /// Active, not withdrawn, and no drops for `quiet` seconds after some: attack-stopped.
    fn quiet(&self, quiet: u64, now: u64) -> bool {
        self.installed
            && self.terminating_until.is_none()
            && self
                .activity
                .last_drop_at
                .is_some_and(|t| now.saturating_sub(t) >= quiet)
    }

    fn id(&self) -> DatapathId {
        DatapathId::Mitigation(self.datapath_id)
    }
}

pub struct Engine<M: Mitigator> {
    dp: writer::Writer<M>,
    policies: BTreeMap<String, ClientPolicy>,
    ledger: ledger::Ledger,
    next_id: u64,
    terminating: u64,
    /// Session configuration per configured client (RFC 9132 §4.5).
    configs: BTreeMap<String, SessionConfig>,
    /// Last time anything arrived from a client (cuid -> (client name, epoch s)); any
    /// traffic counts as a heartbeat (RFC 9132 §4.7).
    last_seen: BTreeMap<String, (String, u64)>,
    /// Sessions already declared lost (cleared when the client is heard again).
    lost: std::collections::BTreeSet<String>,
    /// Per datapath mitigation: the drop counter at a reading, its time, and the rate last
    /// computed (status is read through &self, hence the lock).
    rate_samples: std::sync::Mutex<std::collections::HashMap<u64, RateSample>>,
    /// Where accepted changes are committed.
    journal: Box<dyn Journal>,
    /// Changes of the current operation besides the ledger's (configurations, telemetry
    /// setups, ACL counts, the data channel's documents).
    staged: Vec<Result<Change, JournalError>>,
    /// Seconds without drops after which an active mitigation reports attack-stopped.
    attack_quiet: u64,
    /// Send every client elsewhere (RFC 9132 §4.6), for this many seconds (Max-Age).
    redirect: Option<(Redirect, u32)>,
    /// Telemetry setup per configured client (RFC 9244 §7).
    telemetry: BTreeMap<String, TelemetrySetup>,
    /// Rates measured for mitigation-status telemetry, by datapath id (only for clients
    /// that asked for server-originated telemetry; not stored).
    measured: std::collections::HashMap<u64, telemetry::Measured>,
    /// Pre-mitigation telemetry per client, by tmid (RFC 9244 §8; not stored: it
    /// describes the moment).
    reports: BTreeMap<String, BTreeMap<u32, tm::PreMitigation>>,
    /// Clients whose reported top talkers are dropped (server policy, off by default).
    drop_talkers_of: std::collections::BTreeSet<String>,
    /// Resolves `alias-name` and applies `acl-list` (None: both are refused).
    data: Option<Box<dyn DataSource>>,
    /// Data-channel ACLs per client, and how the current operation found them.
    acls: acl::Acls,
}

/// A drop-counter reading: the counter, its time, and the rate last computed from it.
type RateSample = (xdp_common::Counter, u64, Option<(u64, u64)>);

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn scopes_overlap(a: &Scope, b: &Scope) -> bool {
    a.target_prefix
        .iter()
        .any(|x| b.target_prefix.iter().any(|y| overlaps(x, y)))
}

/// A datapath refusal as the client hears it.
fn refusal(e: DatapathError) -> Refusal {
    match e {
        DatapathError::Spec(s) => Refusal::BadRequest(s.to_string()),
        DatapathError::TargetInUse { prefix, .. } => Refusal::Conflict {
            cause: 1,
            mid: None,
            diagnostic: format!("target {prefix} is already mitigated"),
        },
        other => Refusal::Unavailable(other.to_string()),
    }
}

impl<M: Mitigator> Engine<M> {
    pub fn new(mitigator: M, policies: Vec<ClientPolicy>) -> Self {
        Engine {
            dp: writer::Writer::new(mitigator),
            policies: policies.into_iter().map(|p| (p.name.clone(), p)).collect(),
            ledger: Default::default(),
            next_id: 1,
            terminating: TERMINATING_DEFAULT,
            configs: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            lost: Default::default(),
            rate_samples: Default::default(),
            journal: Box::new(journal::NoJournal),
            staged: Vec::new(),
            attack_quiet: ATTACK_QUIET_DEFAULT,
            redirect: None,
            telemetry: BTreeMap::new(),
            measured: Default::default(),
            reports: BTreeMap::new(),
            drop_talkers_of: Default::default(),
            data: None,
            acls: Default::default(),
        }
    }

    /// Commits accepted changes to `journal` from now on (restore first: see
    /// [`Engine::restore`]).
    pub fn with_journal(mut self, journal: Box<dyn Journal>) -> Self {
        self.journal = journal;
        self
    }

    /// Drops the top talkers these clients report in pre-mitigation telemetry (sources
    /// not marked spoofed), in their mitigations of overlapping targets.
    pub fn with_talker_drop(mut self, clients: impl IntoIterator<Item = String>) -> Self {
        self.drop_talkers_of = clients.into_iter().collect();
        self
    }

    /// Answers every request with a redirect to another server (maintenance, load), which
    /// clients should use for `max_age` seconds.
    pub fn with_redirect(mut self, redirect: Option<(Redirect, u32)>) -> Self {
        self.redirect = redirect;
        self
    }

    /// Starts or stops redirecting clients (an operator's decision at run time).
    pub fn set_redirect(&mut self, redirect: Option<(Redirect, u32)>) {
        self.redirect = redirect;
    }

    pub fn redirect(&self) -> Option<&(Redirect, u32)> {
        self.redirect.as_ref()
    }

    /// Sets how long an active mitigation must see no drops to report attack-stopped (3).
    pub fn with_attack_quiet(mut self, seconds: u64) -> Self {
        self.attack_quiet = seconds.max(1);
        self
    }

    /// Resolves `alias-name` and applies `acl-list` of mitigation requests through the
    /// data channel from now on.
    pub fn with_data_source(mut self, data: Box<dyn DataSource>) -> Self {
        self.data = Some(data);
        self
    }

    /// Sets the active-but-terminating period after a withdrawal (capped at the RFC's 300 s;
    /// 0 removes the rules at the next tick).
    pub fn with_terminating_period(mut self, seconds: u64) -> Self {
        self.terminating = seconds.min(TERMINATING_MAX);
        self
    }

    /// The datapath (reads only: the engine is its one writer).
    pub fn mitigator(&self) -> &M {
        self.dp.mitigator()
    }

    #[cfg(test)]
    pub(crate) fn mitigator_mut(&mut self) -> &mut M {
        self.dp.mitigator_mut()
    }

    pub fn policy(&self, client: &str) -> Option<&ClientPolicy> {
        self.policies.get(client)
    }

    fn stage(&mut self, change: Result<Change, JournalError>) {
        self.staged.push(change);
    }

    /// Ends an operation: on success its changes are committed as one transaction (and a
    /// commit that fails turns it into a refusal); a refused operation is undone, state and
    /// datapath, and so is one that could not be stored.
    fn finish<T>(&mut self, result: Result<T, Refusal>) -> Result<T, Refusal> {
        let result = result.and_then(|v| match self.commit() {
            Ok(()) => Ok(v),
            Err(e) => {
                tracing::error!("store: {e}; the request is refused and undone");
                Err(Refusal::Unavailable(format!(
                    "the server could not store this change ({e}); nothing was changed"
                )))
            }
        });
        if result.is_err() {
            self.undo();
        }
        result
    }

    /// Ends an operation nobody waits for (a clock tick): committed if possible; if not,
    /// its state stays and is written with the next commit.
    fn finish_unattended(&mut self) {
        if let Err(e) = self.commit() {
            tracing::error!("store: {e}; retried with the next change");
            self.ledger.keep_pending();
            self.acls.keep_pending();
            self.dp.committed();
        }
    }

    fn commit(&mut self) -> Result<(), JournalError> {
        let mut changes: Vec<Change> = Vec::new();
        for (cuid, mid, now) in self.ledger.touched() {
            let doc = match now {
                Some((client, m)) => Some(journal::document(&record::Record::of(client, m))?),
                None => None,
            };
            changes.push(Change::Mitigation { cuid, mid, doc });
        }
        for c in self.acls.touched_counts() {
            changes.push(c?);
        }
        for c in std::mem::take(&mut self.staged) {
            changes.push(c?);
        }
        if !changes.is_empty() {
            self.journal.commit(&changes)?;
        }
        self.ledger.committed();
        self.acls.committed();
        self.dp.committed();
        Ok(())
    }

    fn undo(&mut self) {
        self.staged.clear();
        self.dp.undo();
        self.ledger.undo();
        self.acls.undo();
    }

    /// RFC 9133: `acl-list` in a mitigation request names ACLs of the client (created over
    /// the data channel) whose activation type it sets: what that would make of them.
    fn plan_acl_list(&self, cuid: &str, scope: &Scope) -> Result<Option<AclEdit>, Refusal> {
        if scope.acl_list.is_empty() {
            return Ok(None);
        }
        let Some(data) = &self.data else {
            return Err(Refusal::BadRequest(
                "acl-list is not supported by this server (no data channel)".into(),
            ));
        };
        data.plan_acl_list(cuid, &scope.acl_list)
            .map(Some)
            .map_err(Refusal::BadRequest)
    }

    /// Adds what the scope's aliases stand for to its explicit targets (RFC 9132 §4.4.1:
    /// an alias must be the client's own, else 4.00). The alias names stay in the scope.
    fn expand_aliases(&self, cuid: &str, mut scope: Scope) -> Result<Scope, Refusal> {
        if scope.alias_name.is_empty() {
            return Ok(scope);
        }
        let Some(data) = &self.data else {
            return Err(Refusal::BadRequest(
                "alias-name is not resolved by this server (no data channel)".into(),
            ));
        };
        for name in &scope.alias_name {
            let t = data.alias(cuid, name).ok_or_else(|| {
                Refusal::BadRequest(format!(
                    "unknown alias-name {name:?} (create it over the data channel)"
                ))
            })?;
            if t.names > 0 {
                return Err(Refusal::BadRequest(format!(
                    "alias {name:?} holds FQDN or URI targets, which this server does not resolve"
                )));
            }
            for p in t.prefixes {
                if !scope.target_prefix.contains(&p) {
                    scope.target_prefix.push(p);
                }
            }
            for r in t.ports {
                if !scope.target_port_range.contains(&r) {
                    scope.target_port_range.push(r);
                }
            }
            for p in t.protocols {
                if !scope.target_protocol.contains(&p) {
                    scope.target_protocol.push(p);
                }
            }
        }
        Ok(scope)
    }

    /// PUT /mitigate/cuid/mid (`efficacy`: the request carried an empty If-Match). An
    /// `acl-list` (RFC 9133) is checked first and applied once the request is accepted, in
    /// the same transaction.
    pub fn put(
        &mut self,
        client: &str,
        cuid: &str,
        mid: u32,
        scope: Scope,
        efficacy: bool,
        now: u64,
    ) -> Result<PutOutcome, Refusal> {
        let result = self.put_with_acl_list(client, cuid, mid, scope, efficacy, now);
        let acl_list = match &result {
            Ok((_, Some(list))) => Some(list.clone()),
            _ => None,
        };
        let result = self.finish(result.map(|(outcome, _)| outcome));
        if let (Ok(_), Some(list), Some(data)) = (&result, acl_list, self.data.as_mut()) {
            data.apply_acl_list(cuid, &list);
        }
        result
    }

    /// The request, and the acl-list to apply to the data channel once it is stored.
    fn put_with_acl_list(
        &mut self,
        client: &str,
        cuid: &str,
        mid: u32,
        scope: Scope,
        efficacy: bool,
        now: u64,
    ) -> Result<(PutOutcome, Option<Vec<AclActivation>>), Refusal> {
        let edit = if self.policies.contains_key(client) {
            self.plan_acl_list(cuid, &scope)?
        } else {
            None
        };
        let acl_list = scope.acl_list.clone();
        let outcome = self.put_scope(client, cuid, mid, scope, efficacy, now)?;
        let Some(edit) = edit else {
            return Ok((outcome, None));
        };
        if !matches!(outcome, PutOutcome::Created { .. } | PutOutcome::Changed) {
            return Ok((outcome, None));
        }
        match self.apply_acls(&edit.client, Some(edit.entries)) {
            Ok(()) => {
                self.stage(Ok(edit.change));
                Ok((outcome, Some(acl_list)))
            }
            Err(e) => {
                // The request itself stands; its filter control could not be applied.
                tracing::error!("acl-list of mitigation {mid} of {cuid}: {e:?}");
                Ok((outcome, None))
            }
        }
    }

    fn put_scope(
        &mut self,
        client: &str,
        cuid: &str,
        mid: u32,
        scope: Scope,
        efficacy: bool,
        now: u64,
    ) -> Result<PutOutcome, Refusal> {
        let policy =
            self.policies.get(client).cloned().ok_or_else(|| {
                Refusal::Forbidden(format!("client {client:?} is not configured"))
            })?;
        let scope = self.expand_aliases(cuid, scope)?;
        if !scope.target_fqdn.is_empty() || !scope.target_uri.is_empty() {
            return Err(Refusal::BadRequest(
                "this server mitigates target-prefix scopes only (target-fqdn and target-uri are not resolved)".into(),
            ));
        }
        for p in &scope.target_prefix {
            if !policy.prefixes.iter().any(|allowed| allowed.contains(p)) {
                return Err(Refusal::Forbidden(format!(
                    "target {p} is outside the prefixes of client {client}"
                )));
            }
        }
        if self
            .ledger
            .client_of(cuid)
            .is_some_and(|owner| owner != client)
        {
            return Err(Refusal::Conflict {
                cause: 3,
                mid: None,
                diagnostic: "cuid collision".into(),
            });
        }
        if !efficacy && scope.attack_status.is_some() {
            return Err(Refusal::BadRequest(
                "attack-status (29) belongs in efficacy updates (a PUT with an empty If-Match)"
                    .into(),
            ));
        }
        let existing = self
            .ledger
            .get(cuid, mid)
            .filter(|m| m.live())
            .map(|m| m.scope.clone());
        if efficacy {
            let Some(old) = existing else {
                return Ok(PutOutcome::Discarded);
            };
            if !same_except_lifetime(&old, &scope) {
                return Err(Refusal::BadRequest(
                    "an efficacy update must repeat the mitigation's fields unchanged".into(),
                ));
            }
            let still_attacked = scope.attack_status == Some(1);
            self.ledger.update(cuid, mid, |m| {
                if still_attacked {
                    // The client still sees an attack: not attack-stopped, whatever we drop.
                    m.activity.last_drop_at = Some(now);
                }
                m.client_attack = scope.efficacy_attack.clone();
            });
            self.refresh(cuid, mid, scope.lifetime, &policy, now);
            return Ok(PutOutcome::Changed);
        }
        if let Some(old) = &existing {
            if same_except_lifetime(old, &scope) {
                self.refresh(cuid, mid, scope.lifetime, &policy, now);
                return Ok(PutOutcome::Changed);
            }
            return Err(Refusal::BadRequest(format!(
                "mid {mid} exists with other fields; use a higher mid to change a mitigation"
            )));
        }
        // Same client, overlapping scope, same trigger: the higher mid wins. A request with
        // trigger-mitigation true deactivates an overlapping preconfigured one that signal
        // loss made active (RFC 9132 §4.4.1: status 7, then 8).
        let mut superseded = Vec::new();
        let mut deactivated = Vec::new();
        for (other_mid, m) in self.ledger.of(cuid).into_iter().flatten() {
            if !m.live() || !scopes_overlap(&m.scope, &scope) {
                continue;
            }
            if scope.trigger_mitigation && !m.scope.trigger_mitigation && m.installed {
                deactivated.push(*other_mid);
                continue;
            }
            if m.scope.trigger_mitigation == scope.trigger_mitigation
                && m.terminating_until.is_none()
            {
                if *other_mid > mid {
                    return Err(Refusal::Conflict {
                        cause: 1,
                        mid: Some(*other_mid),
                        diagnostic: format!("mid {other_mid} of this client overlaps and is newer"),
                    });
                }
                superseded.push(*other_mid);
            }
        }
        // Other clients' active mitigations on overlapping targets: refused (policy), with
        // the contested targets and when the other mitigation's lifetime runs out.
        if let Some((_, _, _, other)) = self
            .ledger
            .iter()
            .find(|(c, _, _, m)| *c != cuid && m.installed && scopes_overlap(&m.scope, &scope))
        {
            let targets = scope
                .target_prefix
                .iter()
                .filter(|p| other.scope.target_prefix.iter().any(|o| overlaps(p, o)))
                .cloned()
                .collect();
            return Err(Refusal::HeldByOther {
                targets,
                retry_timer: other
                    .expires
                    .map(|e| e.saturating_sub(now).min(u32::MAX as u64) as u32),
                diagnostic: "another client's active mitigation overlaps these targets".into(),
            });
        }
        let granted = grant(scope.lifetime, &policy);
        let id = self.next_id;
        self.next_id += 1;
        // Take out what this request supersedes first (its targets may be the same
        // prefixes); if the new one cannot be installed, the operation is undone.
        for old_mid in &deactivated {
            self.uninstall(cuid, *old_mid);
        }
        for old_mid in &superseded {
            self.remove(cuid, *old_mid);
        }
        let mut m = Mitigation {
            scope: Scope {
                lifetime: granted,
                ..scope
            },
            status: Status::SignalLoss,
            start: None,
            expires: expiry(granted, now),
            terminating_until: None,
            installed: false,
            datapath_id: id,
            ended_at: None,
            announce_until: None,
            activity: Activity::default(),
            client_attack: Vec::new(),
        };
        if m.scope.trigger_mitigation {
            self.install(&mut m, &policy, now)?;
        }
        for old_mid in &deactivated {
            self.announce(cuid, *old_mid, Status::Withdrawn, now);
        }
        self.ledger.insert(cuid, client, mid, m);
        Ok(PutOutcome::Created { granted })
    }

    /// The spec of a mitigation: its scope, the client's policy and pipe capacity, the
    /// talkers it reported, and its live data-channel ACL entries after the policy's.
    fn spec(&self, m: &Mitigation, policy: &ClientPolicy) -> MitigationSpec {
        let mut acl = policy.acl.clone();
        acl.extend(self.acls.live(&policy.name, true));
        MitigationSpec {
            protocols: m.scope.target_protocol.clone(),
            ports: m
                .scope
                .target_port_range
                .iter()
                .map(|r| PortRange {
                    lower: r.lower,
                    upper: r.upper,
                })
                .collect(),
            countermeasures: self.countermeasures(policy),
            drop_list: self.talkers_to_drop(&policy.name, &m.scope.target_prefix),
            acl,
            ..MitigationSpec::new(m.id().raw(), m.scope.target_prefix.clone())
        }
    }

    /// Puts a mitigation into the datapath and marks it active. The client's baseline first
    /// gives up prefixes this one holds exactly (a prefix belongs to one mitigation) and
    /// takes on its activate-when-mitigating entries; a baseline that cannot be updated is
    /// logged, the mitigation's own install decides.
    fn install(
        &mut self,
        m: &mut Mitigation,
        policy: &ClientPolicy,
        now: u64,
    ) -> Result<(), Refusal> {
        if let Err(e) = self.sync_baseline(&policy.name, Some(&m.scope.target_prefix)) {
            tracing::error!("ACL baseline of {}: {e}", policy.name);
        }
        self.put_in(m, policy, now)
    }

    /// Installs a mitigation's spec and marks it active (its baseline is the caller's).
    fn put_in(
        &mut self,
        m: &mut Mitigation,
        policy: &ClientPolicy,
        now: u64,
    ) -> Result<(), Refusal> {
        self.dp.install(self.spec(m, policy)).map_err(refusal)?;
        m.installed = true;
        m.status = Status::SuccessfullyMitigated;
        m.start = Some(now);
        m.activity = Activity {
            checked_at: now,
            ..Activity::default()
        };
        Ok(())
    }

    /// The client's countermeasures: its policy, with the scope-wide cap lowered to the
    /// pipe capacity it told us (RFC 9244 §7.2), so cleaned traffic fits its link.
    fn countermeasures(&self, policy: &ClientPolicy) -> Countermeasures {
        let mut c = policy.countermeasures.clone();
        let pipe = self
            .telemetry
            .get(&policy.name)
            .and_then(|t| t.pipe_bytes_per_second());
        if let Some(bps) = pipe {
            if c.scope_bps.is_none_or(|r| r.rate > bps) {
                c.scope_bps = Some(crate::datapath::Rate::new(bps));
            }
        }
        c
    }

    /// Installs the client's active mitigations again (their countermeasures or ACL
    /// entries changed): each whose spec changed, once, and its baseline.
    fn reinstall_client(&mut self, client: &str) -> Result<(), Refusal> {
        let Some(policy) = self.policies.get(client).cloned() else {
            return Ok(());
        };
        let specs: Vec<MitigationSpec> = self
            .ledger
            .iter()
            .filter(|(_, c, _, m)| *c == client && m.installed)
            .map(|(_, _, _, m)| self.spec(m, &policy))
            .collect();
        // Same datapath ids: replaced atomically, counters kept. One that cannot take the
        // change keeps its rules; the others go on.
        let mut first_error = None;
        for spec in specs {
            if let Err(e) = self.dp.install(spec) {
                first_error.get_or_insert(refusal(e));
            }
        }
        if let Err(e) = self.sync_baseline(client, None) {
            first_error.get_or_insert(refusal(e));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Takes a mitigation's rules out of the datapath, keeping the request.
    fn uninstall(&mut self, cuid: &str, mid: u32) {
        let Some(m) = self.ledger.get(cuid, mid).filter(|m| m.installed) else {
            return;
        };
        let id = m.id();
        self.ledger.update(cuid, mid, |m| m.installed = false);
        self.take_out(cuid, id);
    }

    /// Removes a datapath mitigation of `cuid`'s client, keeps what its ACL entries
    /// counted, and updates the client's baseline.
    fn take_out(&mut self, cuid: &str, id: DatapathId) {
        let counters = match self.dp.remove(id) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("removing {id}: {e}");
                None
            }
        };
        let Some(client) = self.ledger.client_of(cuid).map(str::to_string) else {
            return;
        };
        if let Some(c) = counters {
            self.acls.retire(&client, &c);
        }
        if let Err(e) = self.sync_baseline(&client, None) {
            tracing::error!("ACL baseline of {client}: {e}");
        }
    }

    /// A preconfigured request, just taken out of the datapath, announces `status` (3 or
    /// 7) for ANNOUNCE_SECONDS before it is armed again (8).
    fn announce(&mut self, cuid: &str, mid: u32, status: Status, now: u64) {
        self.ledger.update(cuid, mid, |m| {
            m.status = status;
            m.start = None;
            m.announce_until = Some(now + ANNOUNCE_SECONDS);
        });
    }

    /// Ends a mitigation with `status` (6 or 7): out of the datapath, visible for
    /// ENDED_RETENTION more seconds.
    fn end(&mut self, cuid: &str, mid: u32, status: Status, now: u64) {
        self.uninstall(cuid, mid);
        self.ledger.update(cuid, mid, |m| {
            m.status = status;
            m.ended_at = Some(now);
            m.terminating_until = None;
            m.announce_until = None;
        });
    }

    fn refresh(&mut self, cuid: &str, mid: u32, asked: Lifetime, policy: &ClientPolicy, now: u64) {
        let granted = grant(asked, policy);
        self.ledger.update(cuid, mid, |m| {
            m.scope.lifetime = granted;
            m.expires = expiry(granted, now);
            if m.terminating_until.is_some() {
                // A renewed request during the terminating period makes it active again.
                m.terminating_until = None;
                m.status = if m.installed {
                    Status::SuccessfullyMitigated
                } else {
                    Status::SignalLoss
                };
            }
        });
    }

    fn remove(&mut self, cuid: &str, mid: u32) {
        if let Some(m) = self.ledger.remove(cuid, mid) {
            if m.installed {
                self.take_out(cuid, m.id());
            }
        }
    }

    /// DELETE /mitigate/cuid/mid: always succeeds (2.02) unless it cannot be stored; an
    /// active mitigation keeps filtering for the active-but-terminating period.
    pub fn delete(&mut self, cuid: &str, mid: u32, now: u64) -> Result<(), Refusal> {
        let result = self.withdraw(cuid, mid, now);
        self.finish(result)
    }

    fn withdraw(&mut self, cuid: &str, mid: u32, now: u64) -> Result<(), Refusal> {
        let Some(m) = self.ledger.get(cuid, mid) else {
            return Ok(());
        };
        if !m.installed {
            self.remove(cuid, mid);
            return Ok(());
        }
        let until = now + self.terminating;
        self.ledger.update(cuid, mid, |m| {
            m.status = Status::ClientWithdrawn;
            m.terminating_until = Some(until);
        });
        Ok(())
    }

    /// The status to report: attack-stopped (3) once an active one has gone quiet.
    fn shown_status(&self, m: &Mitigation, now: u64) -> Status {
        if m.status == Status::SuccessfullyMitigated && m.quiet(self.attack_quiet, now) {
            Status::Stopped
        } else {
            m.status
        }
    }

    fn counters(&self, m: &Mitigation) -> Option<crate::datapath::MitigationCounters> {
        if !m.installed {
            return None;
        }
        self.dp.mitigator().counters(m.id().raw()).ok().flatten()
    }

    /// Every mitigation with its status and datapath counters (for metrics).
    pub fn views(&self, now: u64) -> Vec<MitigationView> {
        self.ledger
            .iter()
            .map(|(_, client, mid, m)| MitigationView {
                client: client.to_string(),
                mid,
                status: self.shown_status(m, now),
                counters: self.counters(m),
                client_attack: m.client_attack.clone(),
            })
            .collect()
    }

    /// Whether an observed mitigation (or any of the client's) is announcing a status
    /// that must be sent repeatedly.
    pub fn announcing(&self, cuid: &str, mid: Option<u32>, now: u64) -> bool {
        self.ledger.of(cuid).is_some_and(|mits| {
            mits.iter().any(|(k, m)| {
                mid.is_none_or(|x| x == *k) && m.announce_until.is_some_and(|t| t > now)
            })
        })
    }

    /// GET /mitigate/cuid[/mid]: status entries with remaining lifetimes and counters.
    pub fn status(
        &self,
        cuid: &str,
        mid: Option<u32>,
        now: u64,
    ) -> Result<Vec<MitigationStatus>, Refusal> {
        let client = self.ledger.client_of(cuid);
        let selected: Vec<(u32, &Mitigation)> = match (self.ledger.of(cuid), mid) {
            (Some(m), Some(mid)) => m.get(&mid).map(|x| vec![(mid, x)]).unwrap_or_default(),
            (Some(m), None) => m.iter().map(|(k, v)| (*k, v)).collect(),
            (None, _) => Vec::new(),
        };
        if selected.is_empty() {
            return Err(Refusal::NotFound(match mid {
                Some(mid) => format!("no mitigation {mid}"),
                None => "no mitigations".into(),
            }));
        }
        Ok(selected
            .into_iter()
            .map(|(mid, m)| {
                let counters = self.counters(m);
                let remaining = match m.expires {
                    None => Lifetime::Indefinite,
                    Some(e) => Lifetime::Seconds(e.saturating_sub(now).min(u32::MAX as u64) as u32),
                };
                let dropped = counters.as_ref().map(|c| c.dropped_total());
                let rate = dropped.and_then(|d| self.drop_rate(m.datapath_id, d, now));
                MitigationStatus {
                    mid,
                    scope: Scope {
                        lifetime: remaining,
                        ..m.scope.clone()
                    },
                    mitigation_start: m.start,
                    status: self.shown_status(m, now),
                    bytes_dropped: dropped.map(|d| d.bytes),
                    bps_dropped: rate.map(|r| r.0),
                    pkts_dropped: dropped.map(|d| d.packets),
                    pps_dropped: rate.map(|r| r.1),
                    telemetry: client.and_then(|c| self.status_telemetry(c, m)),
                }
            })
            .collect())
    }

    /// Drop rate (bit/s, packets/s) of a datapath mitigation since an earlier reading at
    /// least RATE_WINDOW old (readings are taken as status is asked for, which Observe
    /// and clients do regularly). None until two readings are far enough apart.
    fn drop_rate(&self, id: u64, now_total: xdp_common::Counter, now: u64) -> Option<(u64, u64)> {
        let mut samples = self.rate_samples.lock().unwrap_or_else(|p| p.into_inner());
        let entry = samples.entry(id).or_insert((now_total, now, None));
        let (then_total, then, last) = *entry;
        if now >= then + RATE_WINDOW {
            let secs = now - then;
            let bps = now_total.bytes.saturating_sub(then_total.bytes) * 8 / secs;
            let pps = now_total.packets.saturating_sub(then_total.packets) / secs;
            *entry = (now_total, now, Some((bps, pps)));
            return Some((bps, pps));
        }
        last
    }
}

/// The same request but for lifetime (a refresh), and attack-status and efficacy
/// telemetry (an efficacy update).
fn same_except_lifetime(a: &Scope, b: &Scope) -> bool {
    Scope {
        lifetime: b.lifetime,
        attack_status: b.attack_status,
        efficacy_attack: b.efficacy_attack.clone(),
        ..a.clone()
    } == *b
}

fn grant(asked: Lifetime, policy: &ClientPolicy) -> Lifetime {
    match asked {
        Lifetime::Indefinite if policy.allow_indefinite => Lifetime::Indefinite,
        Lifetime::Indefinite => Lifetime::Seconds(policy.max_lifetime),
        Lifetime::Seconds(s) => Lifetime::Seconds(s.min(policy.max_lifetime)),
    }
}

fn expiry(l: Lifetime, now: u64) -> Option<u64> {
    match l {
        Lifetime::Indefinite => None,
        Lifetime::Seconds(s) => Some(now + s as u64),
    }
}

#[cfg(test)]
mod tests;
