//! The mitigation engine (RFC 9132 §4.4), free of I/O: authorisation of targets against a
//! client's configured prefixes, create / refresh / modify / efficacy update, same-client
//! and cross-client conflicts, lifetimes, withdrawal with the active-but-terminating period,
//! requests armed for signal loss, and status with counters read from the datapath.
//!
//! It is the only writer to the datapath (`writer.rs`) and to the store (through a
//! [`journal::Journal`]): each request is one operation whose changes are committed as one
//! transaction before it is answered, and undone (state and datapath) if the commit fails.
//! The data channel is a source it asks ([`DataSource`]: aliases, RFC 9133 acl-list) and
//! tells it when a client's ACLs change ([`Engine::set_acls`]). Time is passed in (seconds),
//! so every rule is tested without clocks or sockets; values are typed, the handler does the
//! CBOR.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::datapath::{AclEntry, Countermeasures, DatapathError, DatapathId, Mitigator, PortRange};
use crate::signal::message::{AclActivation, ActivationType, Lifetime, Redirect, Scope, Status};
use crate::signal::session_config::SessionConfig;
use crate::signal::telemetry::{self as tm, TelemetrySetup};

mod acl;
mod announce;
mod cdid;
mod clock;
mod config;
mod cuids;
pub mod escalation;
pub mod journal;
mod ledger;
mod mitigate;
mod operator;
mod record;
mod reload;
mod restore;
mod status;
mod telemetry;
mod writer;

pub use announce::RuleAnnouncer;
pub use cuids::MAX_CUIDS_PER_CLIENT;
use journal::{Change, Journal, JournalError};
pub use operator::{
    datapath_spec as operator_datapath_spec, operator_id, Added, OperatorView, OPERATOR_CLIENT,
};
pub use reload::PolicyChanges;
pub use restore::unreadable;

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
#[derive(Clone, Debug, PartialEq)]
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

impl ClientPolicy {
    /// The fixture of the tests and fuzz targets: a client that may ask for mitigations of
    /// `prefixes` and nothing more (no countermeasures or ACL of its own, lifetimes up to a
    /// day). server.toml's clients come from `server::config` instead. Panics on a prefix
    /// that does not parse: for fixed strings, never for input.
    #[doc(hidden)]
    pub fn fixture(name: &str, prefixes: &[&str]) -> ClientPolicy {
        ClientPolicy {
            name: name.into(),
            prefixes: prefixes
                .iter()
                .map(|p| p.parse().expect("a fixture's prefix"))
                .collect(),
            countermeasures: Countermeasures::default(),
            acl: Vec::new(),
            allow_indefinite: false,
            max_lifetime: 86_400,
        }
    }
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
    /// The client domain a trusted gateway asked for it (cdid, RFC 9132 §4.4.1.2).
    cdid: Option<String>,
    /// Why its spec does not fit this datapath: not installed, carried upstream
    /// (escalation.rs; not stored: the relay's mapping keeps it upstream).
    unfit: Option<String>,
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
    /// The client domain a trusted gateway named (cdid).
    pub cdid: Option<String>,
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
    /// Commits that failed (each a refused request, or a clock tick written later).
    commit_failures: u64,
    /// The operator's own mitigations (`dots-agent xdp mitigation add` through the server).
    operators: operator::Operators,
    /// Which client holds which cuid (stored).
    cuids: cuids::Cuids,
    /// Where accepted mitigations are carried upstream (gateway, recursive server).
    escalation: Option<Box<dyn escalation::Escalation>>,
    /// Told about committed changes to DOTS mitigations (BGP FlowSpec, diversion). The
    /// escalation is not one of them: it takes part in the transaction itself.
    announcers: Vec<Box<dyn RuleAnnouncer>>,
    /// Trusted server-domain gateways and the cdid of the request at hand.
    cdid: cdid::CdidState,
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
            commit_failures: 0,
            operators: Default::default(),
            cuids: Default::default(),
            escalation: None,
            announcers: Vec::new(),
            cdid: Default::default(),
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

    /// Commits the store refused so far (for metrics).
    pub fn commit_failures(&self) -> u64 {
        self.commit_failures
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
                self.commit_failures += 1;
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
            self.commit_failures += 1;
            tracing::error!("store: {e}; retried with the next change");
            self.ledger.keep_pending();
            self.acls.keep_pending();
            let changed = self.dp.committed();
            self.announce_changes(changed);
            if let Some(e) = self.escalation.as_mut() {
                // Planned again from the ledger's pending entries with the next commit.
                e.undone();
            }
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
        for c in self.escalate_touched() {
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
        self.operators.committed();
        let changed = self.dp.committed();
        self.announce_changes(changed);
        if let Some(e) = self.escalation.as_mut() {
            e.committed();
        }
        Ok(())
    }

    /// Undoes what an operation that did not finish (a panic) changed.
    pub fn abandon(&mut self) {
        self.undo();
    }

    fn undo(&mut self) {
        self.staged.clear();
        self.dp.undo();
        self.ledger.undo();
        self.acls.undo();
        self.operators.undo();
        if let Some(e) = self.escalation.as_mut() {
            e.undone();
        }
    }
}

#[cfg(test)]
mod tests;
