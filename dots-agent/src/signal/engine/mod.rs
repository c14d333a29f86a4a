//! The mitigation engine (RFC 9132 §4.4), free of I/O: authorisation of targets against a
//! client's configured prefixes, create / refresh / modify / efficacy update, same-client
//! and cross-client conflicts, lifetimes, withdrawal with the active-but-terminating period,
//! requests armed for signal loss, and status with counters read from the datapath. Time is
//! passed in (seconds), so every rule is tested without clocks or sockets.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::message::{
    AclActivation, ActivationType, Lifetime, MitigationStatus, Redirect, Scope, Status,
};
use super::session_config::{self, ConfigError, SessionConfig};
use super::telemetry::{self, TelemetrySetup};
use crate::datapath::{
    AclEntry, Countermeasures, DatapathError, MitigationSpec, Mitigator, PortRange,
};
use crate::store::Store;

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

/// What the signal channel asks of the data channel (RFC 8783 aliases, RFC 9133 filter
/// control), by the client's cuid.
pub trait DataChannelLink: Send + Sync {
    /// The targets of the client's alias `name`.
    fn resolve(&self, cuid: &str, name: &str) -> Option<AliasTargets>;
    /// Sets the activation type of the client's ACLs (`acl-list` in a mitigation
    /// request); with `apply` false only checks that they exist. Err: a diagnostic.
    fn set_acl_activation(
        &self,
        cuid: &str,
        acls: &[AclActivation],
        apply: bool,
    ) -> Result<(), String>;
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
    /// 5.03 with a diagnostic (datapath full or failing).
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
    datapath_id: u64,
    /// When it ended (status 6 or 7); kept for ENDED_RETENTION, then forgotten.
    ended_at: Option<u64>,
    /// A preconfigured request announcing status 3 or 7 until then, then back to 8.
    announce_until: Option<u64>,
    /// Whether the attack goes on (not stored: a restart starts watching afresh).
    activity: Activity,
    /// The attack traffic the client last said still reaches it (efficacy telemetry).
    client_attack: telemetry::Traffic,
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
    pub client_attack: telemetry::Traffic,
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
}

pub struct Engine<M: Mitigator> {
    mitigator: M,
    policies: BTreeMap<String, ClientPolicy>,
    /// cuid -> (client name, mid -> mitigation)
    clients: BTreeMap<String, (String, BTreeMap<u32, Mitigation>)>,
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
    /// Where accepted state is written as it changes (None: memory only).
    store: Option<Store>,
    /// Seconds without drops after which an active mitigation reports attack-stopped.
    attack_quiet: u64,
    /// Send every client elsewhere (RFC 9132 §4.6), for this many seconds (Max-Age).
    redirect: Option<(Redirect, u32)>,
    /// Telemetry setup per configured client (RFC 9244 §7).
    telemetry: BTreeMap<String, TelemetrySetup>,
    /// Rates measured for mitigation-status telemetry, by datapath id (only for clients
    /// that asked for server-originated telemetry; not stored).
    measured: std::collections::HashMap<u64, telemetry_handling::Measured>,
    /// Pre-mitigation telemetry per client, by tmid (RFC 9244 §8; not stored: it
    /// describes the moment).
    reports: BTreeMap<String, BTreeMap<u32, telemetry::PreMitigation>>,
    /// Clients whose reported top talkers are dropped (server policy, off by default).
    drop_talkers_of: std::collections::BTreeSet<String>,
    /// Resolves `alias-name` and applies `acl-list` (None: both are refused).
    data_channel: Option<Box<dyn DataChannelLink>>,
}

/// A drop-counter reading: the counter, its time, and the rate last computed from it.
type RateSample = (xdp_common::Counter, u64, Option<(u64, u64)>);

/// A mitigation as the store keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    client: String,
    targets: Vec<IpNet>,
    ports: Vec<PortRange>,
    protocols: Vec<u8>,
    /// Granted lifetime in seconds, -1: indefinite.
    lifetime: i64,
    trigger_mitigation: bool,
    acl_list: Vec<(String, u8)>,
    /// The request's alias names (their targets are in `targets`); absent in older rows.
    #[serde(default)]
    alias_name: Vec<String>,
    status: u8,
    start: Option<u64>,
    expires: Option<u64>,
    terminating_until: Option<u64>,
    installed: bool,
    datapath_id: u64,
    #[serde(default)]
    ended_at: Option<u64>,
    #[serde(default)]
    announce_until: Option<u64>,
}

fn status_from(n: u8) -> Status {
    match n {
        1 => Status::InProgress,
        2 => Status::SuccessfullyMitigated,
        3 => Status::Stopped,
        4 => Status::ExceededCapability,
        5 => Status::ClientWithdrawn,
        6 => Status::Terminated,
        7 => Status::Withdrawn,
        _ => Status::SignalLoss,
    }
}

impl Record {
    fn of(client: &str, m: &Mitigation) -> Record {
        Record {
            client: client.to_string(),
            targets: m.scope.target_prefix.clone(),
            ports: m.scope.target_port_range.clone(),
            protocols: m.scope.target_protocol.clone(),
            lifetime: match m.scope.lifetime {
                Lifetime::Indefinite => -1,
                Lifetime::Seconds(s) => s as i64,
            },
            trigger_mitigation: m.scope.trigger_mitigation,
            alias_name: m.scope.alias_name.clone(),
            acl_list: m
                .scope
                .acl_list
                .iter()
                .map(|a| (a.acl_name.clone(), a.activation_type as u8))
                .collect(),
            status: m.status as u8,
            start: m.start,
            expires: m.expires,
            terminating_until: m.terminating_until,
            installed: m.installed,
            datapath_id: m.datapath_id,
            ended_at: m.ended_at,
            announce_until: m.announce_until,
        }
    }

    fn mitigation(self) -> (String, Mitigation) {
        let lifetime = if self.lifetime < 0 {
            Lifetime::Indefinite
        } else {
            Lifetime::Seconds(self.lifetime as u32)
        };
        let mut scope = Scope::new(self.targets, lifetime);
        scope.target_port_range = self.ports;
        scope.target_protocol = self.protocols;
        scope.trigger_mitigation = self.trigger_mitigation;
        scope.alias_name = self.alias_name;
        scope.acl_list = self
            .acl_list
            .into_iter()
            .map(|(acl_name, t)| AclActivation {
                acl_name,
                activation_type: match t {
                    2 => ActivationType::Immediate,
                    3 => ActivationType::Deactivate,
                    _ => ActivationType::ActivateWhenMitigating,
                },
            })
            .collect();
        let m = Mitigation {
            scope,
            status: status_from(self.status),
            start: self.start,
            expires: self.expires,
            terminating_until: self.terminating_until,
            installed: self.installed,
            datapath_id: self.datapath_id,
            ended_at: self.ended_at,
            announce_until: self.announce_until,
            activity: Activity::default(),
            client_attack: Vec::new(),
        };
        (self.client, m)
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn scopes_overlap(a: &Scope, b: &Scope) -> bool {
    a.target_prefix
        .iter()
        .any(|x| b.target_prefix.iter().any(|y| overlaps(x, y)))
}

impl<M: Mitigator> Engine<M> {
    pub fn new(mitigator: M, policies: Vec<ClientPolicy>) -> Self {
        Engine {
            mitigator,
            policies: policies.into_iter().map(|p| (p.name.clone(), p)).collect(),
            clients: BTreeMap::new(),
            next_id: 1,
            terminating: TERMINATING_DEFAULT,
            configs: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            lost: Default::default(),
            rate_samples: Default::default(),
            store: None,
            attack_quiet: ATTACK_QUIET_DEFAULT,
            redirect: None,
            telemetry: BTreeMap::new(),
            measured: Default::default(),
            reports: BTreeMap::new(),
            drop_talkers_of: Default::default(),
            data_channel: None,
        }
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
    pub fn with_data_channel(mut self, link: Box<dyn DataChannelLink>) -> Self {
        self.data_channel = Some(link);
        self
    }

    /// RFC 9133: `acl-list` in a mitigation request sets the activation type of the
    /// client's ACLs (created over the data channel). `apply` false: only check them.
    fn acl_control(&self, cuid: &str, scope: &Scope, apply: bool) -> Result<(), Refusal> {
        if scope.acl_list.is_empty() {
            return Ok(());
        }
        let Some(link) = &self.data_channel else {
            return Err(Refusal::BadRequest(
                "acl-list is not supported by this server (no data channel)".into(),
            ));
        };
        link.set_acl_activation(cuid, &scope.acl_list, apply)
            .map_err(Refusal::BadRequest)
    }

    /// Adds what the scope's aliases stand for to its explicit targets (RFC 9132 §4.4.1:
    /// an alias must be the client's own, else 4.00). The alias names stay in the scope.
    fn expand_aliases(&self, cuid: &str, mut scope: Scope) -> Result<Scope, Refusal> {
        if scope.alias_name.is_empty() {
            return Ok(scope);
        }
        let Some(resolver) = &self.data_channel else {
            return Err(Refusal::BadRequest(
                "alias-name is not resolved by this server (no data channel)".into(),
            ));
        };
        for name in &scope.alias_name {
            let t = resolver.resolve(cuid, name).ok_or_else(|| {
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

    /// Writes accepted state to `store` from now on, and restores what it holds: session
    /// configurations, and mitigations, whose rules are installed again (replacing what a
    /// previous run left pinned in the datapath; rules no stored mitigation owns are
    /// removed). Lifetimes kept counting while the agent was down: expired ones end at the
    /// next tick. Returns how many mitigations were restored.
    pub fn with_store(mut self, store: Store, now: u64) -> anyhow::Result<(Self, usize)> {
        let records: Vec<(String, u32, Record)> = store.mitigations()?;
        let configs: Vec<(String, SessionConfig)> = store.configs()?;
        self.configs = configs.into_iter().collect();
        let telemetry: Vec<(String, TelemetrySetup)> = store.telemetry()?;
        self.telemetry = telemetry.into_iter().collect();
        let mut restored = 0;
        for (cuid, mid, record) in records {
            let (client, mut m) = record.mitigation();
            self.next_id = self.next_id.max(m.datapath_id + 1);
            if m.installed {
                let Some(policy) = self.policies.get(&client).cloned() else {
                    tracing::warn!("stored mitigation {mid} of {cuid}: client {client} is no longer configured; dropped");
                    store.delete_mitigation(&cuid, mid)?;
                    continue;
                };
                m.installed = false;
                let (status, start) = (m.status, m.start);
                m.status = match self.install(&mut m, &policy, start.unwrap_or(now)) {
                    Ok(()) => status,
                    Err(r) => {
                        // Accepted but not enforceable: say so (status 4) rather than 2.
                        tracing::error!(
                            "stored mitigation {mid} of {cuid} could not be installed again: {r:?}"
                        );
                        Status::ExceededCapability
                    }
                };
                m.start = start;
            }
            self.clients
                .entry(cuid)
                .or_insert_with(|| (client, BTreeMap::new()))
                .1
                .insert(mid, m);
            restored += 1;
        }
        let owned: std::collections::HashSet<u64> = self
            .clients
            .values()
            .flat_map(|(_, m)| m.values().filter(|x| x.installed).map(|x| x.datapath_id))
            .collect();
        for id in self.mitigator.installed() {
            if !owned.contains(&id) {
                tracing::info!("removing datapath mitigation {id}: no stored mitigation owns it");
                let _ = self.mitigator.remove(id);
            }
        }
        self.store = Some(store);
        Ok((self, restored))
    }

    /// Writes one mitigation's current state to the store (or deletes it).
    fn persist(&self, cuid: &str, mid: u32) {
        let Some(store) = &self.store else { return };
        let result = match self
            .clients
            .get(cuid)
            .and_then(|(client, m)| m.get(&mid).map(|m| Record::of(client, m)))
        {
            Some(record) => store.put_mitigation(cuid, mid, &record),
            None => store.delete_mitigation(cuid, mid),
        };
        if let Err(e) = result {
            tracing::error!("store: mitigation {mid} of {cuid}: {e:#}");
        }
    }

    /// Sets the active-but-terminating period after a withdrawal (capped at the RFC's 300 s;
    /// 0 removes the rules at the next tick).
    pub fn with_terminating_period(mut self, seconds: u64) -> Self {
        self.terminating = seconds.min(TERMINATING_MAX);
        self
    }

    pub fn mitigator(&self) -> &M {
        &self.mitigator
    }

    #[cfg(test)]
    pub(crate) fn mitigator_mut(&mut self) -> &mut M {
        &mut self.mitigator
    }

    pub fn policy(&self, client: &str) -> Option<&ClientPolicy> {
        self.policies.get(client)
    }

    /// PUT /mitigate/cuid/mid (`efficacy`: the request carried an empty If-Match). An
    /// `acl-list` (RFC 9133) is checked first and applied once the request is accepted.
    pub fn put(
        &mut self,
        client: &str,
        cuid: &str,
        mid: u32,
        scope: Scope,
        efficacy: bool,
        now: u64,
    ) -> Result<PutOutcome, Refusal> {
        if self.policies.contains_key(client) {
            self.acl_control(cuid, &scope, false)?;
        }
        let acl_scope = (!scope.acl_list.is_empty()).then(|| scope.clone());
        let outcome = self.put_scope(client, cuid, mid, scope, efficacy, now)?;
        if let (Some(s), PutOutcome::Created { .. } | PutOutcome::Changed) = (acl_scope, outcome) {
            if let Err(e) = self.acl_control(cuid, &s, true) {
                tracing::error!("acl-list of mitigation {mid} of {cuid}: {e:?}");
            }
        }
        Ok(outcome)
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
        if let Some((owner, _)) = self.clients.get(cuid) {
            if owner != client {
                return Err(Refusal::Conflict {
                    cause: 3,
                    mid: None,
                    diagnostic: "cuid collision".into(),
                });
            }
        }
        if !efficacy && scope.attack_status.is_some() {
            return Err(Refusal::BadRequest(
                "attack-status (29) belongs in efficacy updates (a PUT with an empty If-Match)"
                    .into(),
            ));
        }
        let existing = self
            .clients
            .get(cuid)
            .and_then(|(_, m)| m.get(&mid))
            .filter(|m| m.live())
            .cloned();
        if efficacy {
            let Some(old) = existing else {
                return Ok(PutOutcome::Discarded);
            };
            if !same_except_lifetime(&old.scope, &scope) {
                return Err(Refusal::BadRequest(
                    "an efficacy update must repeat the mitigation's fields unchanged".into(),
                ));
            }
            if scope.attack_status == Some(1) {
                // The client still sees an attack: not attack-stopped, whatever we drop.
                self.note_attack(cuid, mid, now);
            }
            if let Some(m) = self
                .clients
                .get_mut(cuid)
                .and_then(|(_, m)| m.get_mut(&mid))
            {
                m.client_attack = scope.efficacy_attack.clone();
            }
            return self
                .refresh(cuid, mid, scope.lifetime, &policy, now)
                .map(|_| PutOutcome::Changed);
        }
        if let Some(old) = &existing {
            if same_except_lifetime(&old.scope, &scope) {
                return self
                    .refresh(cuid, mid, scope.lifetime, &policy, now)
                    .map(|_| PutOutcome::Changed);
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
        if let Some((_, mits)) = self.clients.get(cuid) {
            for (other_mid, m) in mits {
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
                            diagnostic: format!(
                                "mid {other_mid} of this client overlaps and is newer"
                            ),
                        });
                    }
                    superseded.push(*other_mid);
                }
            }
        }
        // Other clients' active mitigations on overlapping targets: refused (policy), with
        // the contested targets and when the other mitigation's lifetime runs out.
        for (other_cuid, (_, mits)) in &self.clients {
            if other_cuid == cuid {
                continue;
            }
            if let Some(other) = mits
                .values()
                .find(|m| m.installed && scopes_overlap(&m.scope, &scope))
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
        }
        let granted = grant(scope.lifetime, &policy);
        let id = self.next_id;
        self.next_id += 1;
        // Remove what this request supersedes first (its targets may be the same prefixes);
        // if the new one cannot be installed, the old ones are put back.
        for old_mid in &deactivated {
            self.uninstall(cuid, *old_mid);
        }
        let mut removed = Vec::new();
        for old_mid in &superseded {
            if let Some(m) = self
                .clients
                .get(cuid)
                .and_then(|(_, m)| m.get(old_mid))
                .cloned()
            {
                self.remove(cuid, *old_mid);
                removed.push((*old_mid, m));
            }
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
            if let Err(refusal) = self.install(&mut m, &policy, now) {
                for (old_mid, mut old) in removed {
                    if old.installed {
                        old.installed = false;
                        let started = old.start.unwrap_or(now);
                        let _ = self.install(&mut old, &policy, started);
                    }
                    self.clients
                        .get_mut(cuid)
                        .expect("had mitigations")
                        .1
                        .insert(old_mid, old);
                    self.persist(cuid, old_mid);
                }
                for old_mid in &deactivated {
                    self.reinstall(cuid, *old_mid, &policy, now);
                }
                return Err(refusal);
            }
        }
        for old_mid in &deactivated {
            self.announce(cuid, *old_mid, Status::Withdrawn, now);
        }
        self.clients
            .entry(cuid.to_string())
            .or_insert_with(|| (client.to_string(), BTreeMap::new()))
            .1
            .insert(mid, m);
        self.persist(cuid, mid);
        Ok(PutOutcome::Created { granted })
    }

    fn install(
        &mut self,
        m: &mut Mitigation,
        policy: &ClientPolicy,
        now: u64,
    ) -> Result<(), Refusal> {
        let spec = MitigationSpec {
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
            acl: policy.acl.clone(),
            ..MitigationSpec::new(m.datapath_id, m.scope.target_prefix.clone())
        };
        self.mitigator.install(&spec).map_err(|e| match e {
            DatapathError::Spec(s) => Refusal::BadRequest(s.to_string()),
            DatapathError::TargetInUse { prefix, .. } => Refusal::Conflict {
                cause: 1,
                mid: None,
                diagnostic: format!("target {prefix} is already mitigated"),
            },
            other => Refusal::Unavailable(other.to_string()),
        })?;
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

    /// Installs the client's active mitigations again (their countermeasures changed).
    fn reinstall_client(&mut self, client: &str, now: u64) {
        let Some(policy) = self.policies.get(client).cloned() else {
            return;
        };
        let active: Vec<(String, u32)> = self
            .clients
            .iter()
            .filter(|(_, (c, _))| c == client)
            .flat_map(|(cuid, (_, mits))| {
                mits.iter()
                    .filter(|(_, m)| m.installed)
                    .map(|(mid, _)| (cuid.clone(), *mid))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (cuid, mid) in active {
            let mut m = self.clients[&cuid].1[&mid].clone();
            let (status, start) = (m.status, m.start);
            // Same datapath id: replaced atomically, counters kept.
            match self.install(&mut m, &policy, now) {
                Ok(()) => {
                    m.status = status;
                    m.start = start;
                }
                Err(r) => tracing::error!("mitigation {mid} of {cuid}: new policy refused: {r:?}"),
            }
            self.clients
                .get_mut(&cuid)
                .expect("present")
                .1
                .insert(mid, m);
        }
    }

    /// Takes a mitigation's rules out of the datapath, keeping the request.
    fn uninstall(&mut self, cuid: &str, mid: u32) {
        let Some(m) = self
            .clients
            .get_mut(cuid)
            .and_then(|(_, m)| m.get_mut(&mid))
        else {
            return;
        };
        if m.installed {
            let _ = self.mitigator.remove(m.datapath_id);
            m.installed = false;
        }
        self.persist(cuid, mid);
    }

    /// Puts back a mitigation taken out by `uninstall` (a refused request undone).
    fn reinstall(&mut self, cuid: &str, mid: u32, policy: &ClientPolicy, now: u64) {
        let Some(mut m) = self
            .clients
            .get(cuid)
            .and_then(|(_, m)| m.get(&mid))
            .cloned()
        else {
            return;
        };
        let start = m.start;
        if self.install(&mut m, policy, now).is_ok() {
            m.start = start;
        }
        self.clients
            .get_mut(cuid)
            .expect("present")
            .1
            .insert(mid, m);
        self.persist(cuid, mid);
    }

    /// A preconfigured request, just taken out of the datapath, announces `status` (3 or
    /// 7) for ANNOUNCE_SECONDS before it is armed again (8).
    fn announce(&mut self, cuid: &str, mid: u32, status: Status, now: u64) {
        if let Some(m) = self
            .clients
            .get_mut(cuid)
            .and_then(|(_, m)| m.get_mut(&mid))
        {
            m.status = status;
            m.start = None;
            m.announce_until = Some(now + ANNOUNCE_SECONDS);
            self.persist(cuid, mid);
        }
    }

    /// Ends a mitigation with `status` (6 or 7): out of the datapath, visible for
    /// ENDED_RETENTION more seconds.
    fn end(&mut self, cuid: &str, mid: u32, status: Status, now: u64) {
        self.uninstall(cuid, mid);
        if let Some(m) = self
            .clients
            .get_mut(cuid)
            .and_then(|(_, m)| m.get_mut(&mid))
        {
            m.status = status;
            m.ended_at = Some(now);
            m.terminating_until = None;
            m.announce_until = None;
            self.persist(cuid, mid);
        }
    }

    /// The client reports an attack in progress: restart the quiet clock.
    fn note_attack(&mut self, cuid: &str, mid: u32, now: u64) {
        if let Some(m) = self
            .clients
            .get_mut(cuid)
            .and_then(|(_, m)| m.get_mut(&mid))
        {
            m.activity.last_drop_at = Some(now);
        }
    }

    fn refresh(
        &mut self,
        cuid: &str,
        mid: u32,
        asked: Lifetime,
        policy: &ClientPolicy,
        now: u64,
    ) -> Result<(), Refusal> {
        let m = self
            .clients
            .get_mut(cuid)
            .and_then(|(_, m)| m.get_mut(&mid))
            .expect("checked by caller");
        let granted = grant(asked, policy);
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
        self.persist(cuid, mid);
        Ok(())
    }

    fn remove(&mut self, cuid: &str, mid: u32) {
        if let Some(m) = self.clients.get_mut(cuid).and_then(|(_, m)| m.remove(&mid)) {
            if m.installed {
                let _ = self.mitigator.remove(m.datapath_id);
            }
            self.persist(cuid, mid);
        }
    }

    /// DELETE /mitigate/cuid/mid: always succeeds (2.02); an active mitigation keeps
    /// filtering for the active-but-terminating period.
    pub fn delete(&mut self, cuid: &str, mid: u32, now: u64) {
        let Some(m) = self
            .clients
            .get_mut(cuid)
            .and_then(|(_, m)| m.get_mut(&mid))
        else {
            return;
        };
        if !m.installed {
            self.remove(cuid, mid);
            return;
        }
        m.status = Status::ClientWithdrawn;
        m.terminating_until = Some(now + self.terminating);
        self.persist(cuid, mid);
    }

    /// Runs the clock: expires lifetimes and terminating periods (status 6), forgets ended
    /// mitigations after ENDED_RETENTION, re-arms preconfigured requests after their
    /// announcement, and watches drop counters for the end of attacks (status 3; a
    /// preconfigured request is then taken out and re-armed). Returns (cuid, mid) of what
    /// ended now.
    pub fn tick(&mut self, now: u64) -> Vec<(String, u32)> {
        enum Due {
            End,
            Forget,
            Rearm,
            Check(u64),
        }
        let mut due = Vec::new();
        for (cuid, (_, mits)) in &self.clients {
            for (mid, m) in mits {
                let what = if let Some(t) = m.ended_at {
                    (now >= t + ENDED_RETENTION).then_some(Due::Forget)
                } else if m.expires.is_some_and(|e| e <= now)
                    || m.terminating_until.is_some_and(|t| t <= now)
                {
                    Some(Due::End)
                } else if m.announce_until.is_some_and(|t| t <= now) {
                    Some(Due::Rearm)
                } else if m.installed && now >= m.activity.checked_at + ACTIVITY_CHECK {
                    Some(Due::Check(m.datapath_id))
                } else {
                    None
                };
                if let Some(what) = what {
                    due.push((cuid.clone(), *mid, what));
                }
            }
        }
        self.measure(now);
        let mut ended = Vec::new();
        for (cuid, mid, what) in due {
            match what {
                Due::End => {
                    self.end(&cuid, mid, Status::Terminated, now);
                    ended.push((cuid, mid));
                }
                Due::Forget => self.remove(&cuid, mid),
                Due::Rearm => {
                    if let Some(m) = self
                        .clients
                        .get_mut(&cuid)
                        .and_then(|(_, m)| m.get_mut(&mid))
                    {
                        m.status = Status::SignalLoss;
                        m.announce_until = None;
                        self.persist(&cuid, mid);
                    }
                }
                Due::Check(id) => {
                    let dropped = self
                        .mitigator
                        .counters(id)
                        .ok()
                        .flatten()
                        .map(|c| c.dropped_total().packets);
                    let quiet = self.attack_quiet;
                    let Some(m) = self
                        .clients
                        .get_mut(&cuid)
                        .and_then(|(_, m)| m.get_mut(&mid))
                    else {
                        continue;
                    };
                    let a = &mut m.activity;
                    if let Some(d) = dropped {
                        if d != a.dropped_packets {
                            a.dropped_packets = d;
                            a.last_drop_at = Some(now);
                        }
                    }
                    a.checked_at = now;
                    if !m.scope.trigger_mitigation && m.quiet(quiet, now) {
                        // Signal loss started it and the attack is over: nobody will
                        // withdraw it, so the server does (3 announced, then 8).
                        self.uninstall(&cuid, mid);
                        self.announce(&cuid, mid, Status::Stopped, now);
                    }
                }
            }
        }
        ended
    }

    /// The heartbeat interval in force for a client's session (0: heartbeats off): its
    /// mitigating configuration while it has active mitigations, else its idle one.
    pub fn heartbeat_interval(&self, client: &str, cuid: &str) -> u64 {
        let config = self.configs.get(client).cloned().unwrap_or_default();
        let mitigating = self
            .clients
            .get(cuid)
            .is_some_and(|(_, m)| m.values().any(|x| x.installed));
        if mitigating {
            config.mitigating.heartbeat_interval()
        } else {
            config.idle.heartbeat_interval()
        }
    }

    /// Records traffic from a client: its session is alive.
    pub fn seen(&mut self, client: &str, cuid: &str, now: u64) {
        self.last_seen
            .insert(cuid.to_string(), (client.to_string(), now));
        if self.lost.remove(cuid) {
            // Back: preconfigured requests that could not be enforced are armed again.
            let failed: Vec<u32> = self.clients.get(cuid).map_or(Vec::new(), |(_, m)| {
                m.iter()
                    .filter(|(_, m)| m.status == Status::ExceededCapability && !m.installed)
                    .map(|(k, _)| *k)
                    .collect()
            });
            for mid in failed {
                if let Some(m) = self
                    .clients
                    .get_mut(cuid)
                    .and_then(|(_, m)| m.get_mut(&mid))
                {
                    m.status = Status::SignalLoss;
                }
                self.persist(cuid, mid);
            }
        }
    }

    /// Sessions silent for longer than the client's heartbeat interval times the missing
    /// heartbeats allowed (its idle or mitigating configuration, as it has active
    /// mitigations or not) are lost: their armed requests become active. Returns the cuids.
    pub fn detect_lost_sessions(&mut self, now: u64) -> Vec<String> {
        let mut lost = Vec::new();
        for (cuid, (client, seen)) in &self.last_seen {
            if self.lost.contains(cuid) {
                continue;
            }
            let config = self.configs.get(client).cloned().unwrap_or_default();
            let mitigating = self
                .clients
                .get(cuid)
                .is_some_and(|(_, m)| m.values().any(|x| x.installed));
            let set = if mitigating {
                &config.mitigating
            } else {
                &config.idle
            };
            let interval = set.heartbeat_interval();
            if interval == 0 {
                continue; // heartbeats switched off
            }
            if now.saturating_sub(*seen) > interval * set.missing_hb_allowed() {
                lost.push(cuid.clone());
            }
        }
        for cuid in &lost {
            self.lost.insert(cuid.clone());
            let activated = self.session_lost(cuid, now);
            tracing::warn!("session of {cuid} lost; activated armed mitigations {activated:?}");
        }
        lost
    }

    /// The client's session is lost: requests armed for signal loss become active.
    pub fn session_lost(&mut self, cuid: &str, now: u64) -> Vec<u32> {
        let Some((client, mits)) = self.clients.get(cuid) else {
            return Vec::new();
        };
        let Some(policy) = self.policies.get(client).cloned() else {
            return Vec::new();
        };
        let armed: Vec<u32> = mits
            .iter()
            .filter(|(_, m)| !m.scope.trigger_mitigation && !m.installed && m.live())
            .map(|(k, _)| *k)
            .collect();
        let mut activated = Vec::new();
        for mid in armed {
            // The client's active requests overlapping a preconfigured one are withdrawn
            // at once (RFC 9132 §4.4.1: no active-but-terminating period).
            let scope = self.clients[cuid].1[&mid].scope.clone();
            let overlapping: Vec<u32> = self.clients[cuid]
                .1
                .iter()
                .filter(|(_, m)| {
                    m.scope.trigger_mitigation
                        && m.live()
                        && m.installed
                        && scopes_overlap(&m.scope, &scope)
                })
                .map(|(k, _)| *k)
                .collect();
            for other in overlapping {
                self.end(cuid, other, Status::Withdrawn, now);
            }
            let mut m = self.clients[cuid].1[&mid].clone();
            m.announce_until = None;
            match self.install(&mut m, &policy, now) {
                Ok(()) => activated.push(mid),
                Err(r) => {
                    // Armed but beyond what this datapath can hold now: status 4.
                    tracing::error!("preconfigured mitigation {mid} of {cuid}: {r:?}");
                    m.status = Status::ExceededCapability;
                }
            }
            self.clients
                .get_mut(cuid)
                .expect("present")
                .1
                .insert(mid, m);
            self.persist(cuid, mid);
        }
        activated
    }

    /// The status to report: attack-stopped (3) once an active one has gone quiet.
    fn shown_status(&self, m: &Mitigation, now: u64) -> Status {
        if m.status == Status::SuccessfullyMitigated && m.quiet(self.attack_quiet, now) {
            Status::Stopped
        } else {
            m.status
        }
    }

    /// Every mitigation with its status and datapath counters (for metrics).
    pub fn views(&self, now: u64) -> Vec<MitigationView> {
        let mut out = Vec::new();
        for (client, mits) in self.clients.values() {
            for (mid, m) in mits {
                out.push(MitigationView {
                    client: client.clone(),
                    mid: *mid,
                    status: self.shown_status(m, now),
                    counters: if m.installed {
                        self.mitigator.counters(m.datapath_id).ok().flatten()
                    } else {
                        None
                    },
                    client_attack: m.client_attack.clone(),
                });
            }
        }
        out
    }

    /// Whether an observed mitigation (or any of the client's) is announcing a status
    /// that must be sent repeatedly.
    pub fn announcing(&self, cuid: &str, mid: Option<u32>, now: u64) -> bool {
        self.clients.get(cuid).is_some_and(|(_, mits)| {
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
        let mits = self.clients.get(cuid).map(|(_, m)| m);
        let client = self.clients.get(cuid).map(|(c, _)| c.as_str());
        let selected: Vec<(u32, &Mitigation)> = match (mits, mid) {
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
                let counters = if m.installed {
                    self.mitigator.counters(m.datapath_id).ok().flatten()
                } else {
                    None
                };
                let remaining = match m.expires {
                    None => Lifetime::Indefinite,
                    Some(e) => Lifetime::Seconds(e.saturating_sub(now).min(u32::MAX as u64) as u32),
                };
                let dropped = counters.as_ref().map(|c| c.dropped_total());
                let rate = dropped.and_then(|d| self.drop_rate(m.datapath_id, d, now));
                let status = self.shown_status(m, now);
                MitigationStatus {
                    mid,
                    scope: Scope {
                        lifetime: remaining,
                        ..m.scope.clone()
                    },
                    mitigation_start: m.start,
                    status,
                    bytes_dropped: dropped.map(|d| d.bytes),
                    bps_dropped: rate.map(|r| r.0),
                    pkts_dropped: dropped.map(|d| d.packets),
                    pps_dropped: rate.map(|r| r.1),
                    telemetry: client.and_then(|c| self.status_telemetry(c, m)),
                }
            })
            .collect())
    }
}

impl<M: Mitigator> Engine<M> {
    /// Drop rate (bit/s, packets/s) of a datapath mitigation since an earlier reading at
    /// least RATE_WINDOW old (readings are taken as status is asked for, which Observe
    /// and clients do regularly). None until two readings are far enough apart.
    fn drop_rate(&self, id: u64, now_total: xdp_common::Counter, now: u64) -> Option<(u64, u64)> {
        let mut samples = self.rate_samples.lock().expect("rate samples lock");
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

    /// GET /config[/sid]: the client's configuration (defaults until it sets one).
    pub fn config_get(&self, client: &str, sid: Option<u32>) -> Result<SessionConfig, Refusal> {
        let current = self.configs.get(client).cloned().unwrap_or_default();
        match sid {
            Some(s) if current.sid != Some(s) => {
                Err(Refusal::NotFound(format!("no session configuration {s}")))
            }
            _ => Ok(current),
        }
    }

    /// PUT /config/sid: Ok(true) for a new sid (2.01), Ok(false) for the current one (2.04).
    pub fn config_put(&mut self, client: &str, sid: u32, body: &[u8]) -> Result<bool, Refusal> {
        let current = self.configs.get(client).cloned().unwrap_or_default();
        if current.sid.is_some_and(|c| sid < c) {
            return Err(Refusal::BadRequest(format!(
                "sid {sid} is lower than the current {}: a new configuration needs a higher sid",
                current.sid.unwrap_or(0)
            )));
        }
        let mut next = session_config::decode_put(body, &current).map_err(|e| match e {
            ConfigError::Bad(e) => Refusal::BadRequest(e.to_string()),
            ConfigError::Unacceptable(t) => Refusal::Unprocessable(t),
        })?;
        let created = current.sid != Some(sid);
        next.sid = Some(sid);
        if let Some(store) = &self.store {
            if let Err(e) = store.put_config(client, &next) {
                tracing::error!("store: session configuration of {client}: {e:#}");
            }
        }
        self.configs.insert(client.to_string(), next);
        Ok(created)
    }

    /// DELETE /config[/sid]: back to the defaults.
    pub fn config_delete(&mut self, client: &str) {
        self.configs.remove(client);
        if let Some(store) = &self.store {
            if let Err(e) = store.delete_config(client) {
                tracing::error!("store: session configuration of {client}: {e:#}");
            }
        }
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

mod telemetry_handling;
#[cfg(test)]
mod tests;
