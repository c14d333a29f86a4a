//! The mitigation engine (RFC 9132 §4.4), free of I/O: authorisation of targets against a
//! client's configured prefixes, create / refresh / modify / efficacy update, same-client
//! and cross-client conflicts, lifetimes, withdrawal with the active-but-terminating period,
//! requests armed for signal loss, and status with counters read from the datapath. Time is
//! passed in (seconds), so every rule is tested without clocks or sockets.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::message::{AclActivation, ActivationType, Lifetime, MitigationStatus, Scope, Status};
use super::session_config::{self, ConfigError, SessionConfig};
use crate::datapath::{
    AclEntry, Countermeasures, DatapathError, MitigationSpec, Mitigator, PortRange,
};
use crate::store::Store;

/// RFC 9132 §4.4.4: default active-but-terminating period, and its ceiling.
pub const TERMINATING_DEFAULT: u64 = 120;
pub const TERMINATING_MAX: u64 = 300;
/// Drop rates in status are averaged over at least this many seconds.
pub const RATE_WINDOW: u64 = 10;

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
    status: u8,
    start: Option<u64>,
    expires: Option<u64>,
    terminating_until: Option<u64>,
    installed: bool,
    datapath_id: u64,
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
        }
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
                if let Err(r) = self.install(&mut m, &policy, start.unwrap_or(now)) {
                    tracing::error!(
                        "stored mitigation {mid} of {cuid} could not be installed again: {r:?}"
                    );
                }
                m.status = status;
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

    pub fn policy(&self, client: &str) -> Option<&ClientPolicy> {
        self.policies.get(client)
    }

    /// PUT /mitigate/cuid/mid (`efficacy`: the request carried an empty If-Match).
    pub fn put(
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
        if !scope.target_fqdn.is_empty()
            || !scope.target_uri.is_empty()
            || !scope.alias_name.is_empty()
        {
            return Err(Refusal::BadRequest(
                "this server mitigates target-prefix scopes only (target-fqdn, target-uri and alias-name are not resolved)".into(),
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
        // Same client, overlapping scope, same trigger: the higher mid wins.
        let mut superseded = Vec::new();
        if let Some((_, mits)) = self.clients.get(cuid) {
            for (other_mid, m) in mits {
                if m.scope.trigger_mitigation == scope.trigger_mitigation
                    && scopes_overlap(&m.scope, &scope)
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
        // Other clients' active mitigations on overlapping targets: refused (policy).
        for (other_cuid, (_, mits)) in &self.clients {
            if other_cuid == cuid {
                continue;
            }
            if mits
                .values()
                .any(|m| m.installed && scopes_overlap(&m.scope, &scope))
            {
                return Err(Refusal::Conflict {
                    cause: 1,
                    mid: None,
                    diagnostic: "another client's active mitigation overlaps these targets".into(),
                });
            }
        }
        let granted = grant(scope.lifetime, &policy);
        let id = self.next_id;
        self.next_id += 1;
        // Remove what this request supersedes first (its targets may be the same prefixes);
        // if the new one cannot be installed, the old ones are put back.
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
                return Err(refusal);
            }
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
            countermeasures: policy.countermeasures.clone(),
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
        Ok(())
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

    /// Expires lifetimes and terminating periods. Returns (cuid, mid) of what ended.
    pub fn tick(&mut self, now: u64) -> Vec<(String, u32)> {
        let mut ended = Vec::new();
        for (cuid, (_, mits)) in &self.clients {
            for (mid, m) in mits {
                let expired = m.expires.is_some_and(|e| e <= now);
                let terminated = m.terminating_until.is_some_and(|t| t <= now);
                if expired || terminated {
                    ended.push((cuid.clone(), *mid));
                }
            }
        }
        for (cuid, mid) in &ended {
            self.remove(cuid, *mid);
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
        self.lost.remove(cuid);
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
            .filter(|(_, m)| !m.scope.trigger_mitigation && !m.installed)
            .map(|(k, _)| *k)
            .collect();
        let mut activated = Vec::new();
        for mid in armed {
            let mut m = self.clients[cuid].1[&mid].clone();
            if self.install(&mut m, &policy, now).is_ok() {
                self.clients
                    .get_mut(cuid)
                    .expect("present")
                    .1
                    .insert(mid, m);
                self.persist(cuid, mid);
                activated.push(mid);
            }
        }
        activated
    }

    /// GET /mitigate/cuid[/mid]: status entries with remaining lifetimes and counters.
    pub fn status(
        &self,
        cuid: &str,
        mid: Option<u32>,
        now: u64,
    ) -> Result<Vec<MitigationStatus>, Refusal> {
        let mits = self.clients.get(cuid).map(|(_, m)| m);
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
                MitigationStatus {
                    mid,
                    scope: Scope {
                        lifetime: remaining,
                        ..m.scope.clone()
                    },
                    mitigation_start: m.start,
                    status: m.status,
                    bytes_dropped: dropped.map(|d| d.bytes),
                    bps_dropped: rate.map(|r| r.0),
                    pkts_dropped: dropped.map(|d| d.packets),
                    pps_dropped: rate.map(|r| r.1),
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

/// The same request but for lifetime (a refresh) and attack-status (an efficacy update).
fn same_except_lifetime(a: &Scope, b: &Scope) -> bool {
    Scope {
        lifetime: b.lifetime,
        attack_status: b.attack_status,
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
mod tests {
    use super::*;
    use crate::datapath::{MemoryMitigator, MitigationCounters};
    use xdp_common::Counter;

    fn engine() -> Engine<MemoryMitigator> {
        let policy = |name: &str, p: &str| ClientPolicy {
            name: name.into(),
            prefixes: vec![p.parse().unwrap()],
            countermeasures: Countermeasures {
                amplification: true,
                ..Default::default()
            },
            acl: Vec::new(),
            allow_indefinite: false,
            max_lifetime: 86_400,
        };
        Engine::new(
            MemoryMitigator::new(),
            vec![
                policy("a", "198.51.100.0/24"),
                policy("b", "203.0.113.0/24"),
            ],
        )
    }

    fn scope(p: &str, lifetime: u32) -> Scope {
        Scope::new(vec![p.parse().unwrap()], Lifetime::Seconds(lifetime))
    }

    #[test]
    fn create_installs_and_status_reports_counters() {
        let mut e = engine();
        assert_eq!(
            e.put("a", "cu-a", 1, scope("198.51.100.7/32", 3600), false, 1000),
            Ok(PutOutcome::Created {
                granted: Lifetime::Seconds(3600)
            })
        );
        let id = e.mitigator().installed()[0];
        assert!(
            e.mitigator()
                .spec(id)
                .unwrap()
                .countermeasures
                .amplification,
            "policy countermeasures applied"
        );
        let mut c = MitigationCounters::default();
        c.dropped[0] = Counter {
            packets: 10,
            bytes: 1000,
        };
        let mut e2 = e;
        e2.mitigator.set_counters(id, c);
        assert_eq!(
            e2.status("cu-a", Some(1), 1590).unwrap()[0].pps_dropped,
            None,
            "one reading: no rate yet"
        );
        let mut c2 = MitigationCounters::default();
        c2.dropped[0] = Counter {
            packets: 10,
            bytes: 1000,
        };
        c2.dropped[1] = Counter {
            packets: 0,
            bytes: 0,
        };
        e2.mitigator.set_counters(id, c2);
        let st = e2.status("cu-a", Some(1), 1600).unwrap();
        assert_eq!(
            (st[0].pps_dropped, st[0].bps_dropped),
            (Some(0), Some(0)),
            "nothing new over 10 s"
        );
        let mut c3 = MitigationCounters::default();
        c3.dropped[0] = Counter {
            packets: 110,
            bytes: 11_000,
        };
        e2.mitigator.set_counters(id, c3);
        let later = e2.status("cu-a", Some(1), 1610).unwrap();
        assert_eq!(
            (later[0].pps_dropped, later[0].bps_dropped),
            (Some(10), Some(8_000)),
            "100 packets of 100 B in 10 s"
        );
        assert_eq!(st[0].status, Status::SuccessfullyMitigated);
        assert_eq!(st[0].scope.lifetime, Lifetime::Seconds(3000));
        assert_eq!(
            (st[0].pkts_dropped, st[0].bytes_dropped),
            (Some(10), Some(1000))
        );
        assert_eq!(st[0].mitigation_start, Some(1000));
    }

    #[test]
    fn authorisation_and_unsupported_targets() {
        let mut e = engine();
        assert!(matches!(
            e.put("a", "cu-a", 1, scope("203.0.113.1/32", 60), false, 0),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            e.put("zz", "cu-z", 1, scope("198.51.100.1/32", 60), false, 0),
            Err(Refusal::Forbidden(_))
        ));
        let mut s = scope("198.51.100.1/32", 60);
        s.target_fqdn = vec!["www.example.com".into()];
        assert!(matches!(
            e.put("a", "cu-a", 1, s, false, 0),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn refresh_modify_and_same_client_conflicts() {
        let mut e = engine();
        e.put("a", "cu-a", 5, scope("198.51.100.0/28", 60), false, 0)
            .unwrap();
        assert_eq!(
            e.put("a", "cu-a", 5, scope("198.51.100.0/28", 600), false, 10),
            Ok(PutOutcome::Changed)
        );
        assert_eq!(
            e.status("cu-a", Some(5), 10).unwrap()[0].scope.lifetime,
            Lifetime::Seconds(600)
        );
        assert!(matches!(
            e.put("a", "cu-a", 5, scope("198.51.100.0/29", 60), false, 10),
            Err(Refusal::BadRequest(_))
        ));
        // Lower mid overlapping: 4.09 naming the newer mid.
        assert_eq!(
            e.put("a", "cu-a", 4, scope("198.51.100.1/32", 60), false, 10),
            Err(Refusal::Conflict {
                cause: 1,
                mid: Some(5),
                diagnostic: "mid 5 of this client overlaps and is newer".into()
            })
        );
        // Higher mid overlapping: replaces the lower one.
        assert!(matches!(
            e.put("a", "cu-a", 6, scope("198.51.100.0/28", 60), false, 10),
            Ok(PutOutcome::Created { .. })
        ));
        assert!(matches!(
            e.status("cu-a", Some(5), 10),
            Err(Refusal::NotFound(_))
        ));
        assert_eq!(e.mitigator().installed().len(), 1);
    }

    #[test]
    fn attack_status_rides_only_on_efficacy_updates() {
        let mut e = engine();
        e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 0)
            .unwrap();
        let mut s = scope("198.51.100.0/28", 60);
        s.attack_status = Some(2);
        assert_eq!(
            e.put("a", "cu-a", 1, s.clone(), true, 5),
            Ok(PutOutcome::Changed)
        );
        assert!(matches!(
            e.put("a", "cu-a", 2, s, false, 5),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn efficacy_updates_and_other_clients() {
        let mut e = engine();
        assert_eq!(
            e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), true, 0),
            Ok(PutOutcome::Discarded)
        );
        e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 0)
            .unwrap();
        assert_eq!(
            e.put("a", "cu-a", 1, scope("198.51.100.0/28", 120), true, 5),
            Ok(PutOutcome::Changed)
        );
        assert!(matches!(
            e.put("a", "cu-a", 1, scope("198.51.100.0/29", 120), true, 5),
            Err(Refusal::BadRequest(_))
        ));
        // Another client may not take over the cuid.
        assert!(matches!(
            e.put("b", "cu-a", 9, scope("203.0.113.0/28", 60), false, 5),
            Err(Refusal::Conflict { cause: 3, .. })
        ));
    }

    #[test]
    fn withdrawal_keeps_filtering_then_ends_and_lifetimes_expire() {
        let mut e = engine();
        e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 0)
            .unwrap();
        e.put("a", "cu-a", 2, scope("198.51.100.64/28", 1000), false, 0)
            .unwrap();
        e.delete("cu-a", 2, 10);
        assert_eq!(
            e.status("cu-a", Some(2), 10).unwrap()[0].status,
            Status::ClientWithdrawn
        );
        assert_eq!(
            e.mitigator().installed().len(),
            2,
            "still filtering while terminating"
        );
        e.delete("cu-a", 99, 10); // unknown mid: still fine
        assert_eq!(e.tick(59), vec![]);
        assert_eq!(e.tick(60), vec![("cu-a".to_string(), 1)]);
        assert_eq!(e.tick(130), vec![("cu-a".to_string(), 2)]);
        assert!(e.mitigator().installed().is_empty());
        assert!(matches!(
            e.status("cu-a", None, 130),
            Err(Refusal::NotFound(_))
        ));
    }

    #[test]
    fn armed_requests_activate_on_signal_loss_and_indefinite_is_capped() {
        let mut e = engine();
        let mut s = Scope::new(
            vec!["198.51.100.0/24".parse().unwrap()],
            Lifetime::Indefinite,
        );
        s.trigger_mitigation = false;
        assert_eq!(
            e.put("a", "cu-a", 1, s, false, 0),
            Ok(PutOutcome::Created {
                granted: Lifetime::Seconds(86_400)
            })
        );
        assert_eq!(
            e.status("cu-a", Some(1), 0).unwrap()[0].status,
            Status::SignalLoss
        );
        assert!(e.mitigator().installed().is_empty());
        assert_eq!(e.session_lost("cu-a", 50), vec![1]);
        let st = &e.status("cu-a", Some(1), 50).unwrap()[0];
        assert_eq!(
            (st.status, st.mitigation_start),
            (Status::SuccessfullyMitigated, Some(50))
        );
        assert_eq!(e.mitigator().installed().len(), 1);
    }

    #[test]
    fn a_failed_replacement_keeps_the_old_mitigation() {
        let mut e = engine();
        e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 0)
            .unwrap();
        // 17 distinct port ranges: more than the datapath's scope holds.
        let mut s = scope("198.51.100.0/28", 60);
        s.target_port_range = (0..17).map(|p| PortRange::single(1000 + p)).collect();
        assert!(matches!(
            e.put("a", "cu-a", 2, s, false, 5),
            Err(Refusal::BadRequest(_))
        ));
        assert_eq!(
            e.status("cu-a", Some(1), 5).unwrap()[0].status,
            Status::SuccessfullyMitigated
        );
        assert_eq!(e.mitigator().installed().len(), 1);
    }

    #[test]
    fn accepted_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut e, n) = engine()
            .with_store(Store::open(dir.path()).unwrap(), 0)
            .unwrap();
        assert_eq!(n, 0);
        e.put("a", "cu-a", 1, scope("198.51.100.0/28", 100), false, 0)
            .unwrap();
        e.put("a", "cu-a", 2, scope("198.51.100.64/28", 1000), false, 0)
            .unwrap();
        let mut armed = scope("198.51.100.128/28", 1000);
        armed.trigger_mitigation = false;
        e.put("a", "cu-a", 3, armed, false, 0).unwrap();
        let body = [
            0xa1, 0x18, 0x1e, 0xa1, 0x18, 0x20, 0xa1, 0x18, 0x21, 0xa1, 0x18, 0x24, 0x18, 0x3c,
        ];
        e.config_put("a", 7, &body).unwrap();
        // The agent restarts 500 s later; the pinned datapath still holds an orphan rule.
        let mut datapath = MemoryMitigator::new();
        datapath
            .install(&MitigationSpec::new(
                999,
                vec!["198.51.100.200/32".parse().unwrap()],
            ))
            .unwrap();
        let fresh = Engine::new(datapath, e.policies.values().cloned().collect());
        drop(e);
        let (mut e, n) = fresh
            .with_store(Store::open(dir.path()).unwrap(), 500)
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            e.mitigator().installed().len(),
            2,
            "two active rule sets back, the orphan gone"
        );
        assert_eq!(
            e.config_get("a", Some(7))
                .unwrap()
                .mitigating
                .heartbeat_interval(),
            60
        );
        let st = e.status("cu-a", Some(2), 500).unwrap();
        assert_eq!(
            (st[0].scope.lifetime, st[0].mitigation_start),
            (Lifetime::Seconds(500), Some(0))
        );
        assert_eq!(
            e.status("cu-a", Some(3), 500).unwrap()[0].status,
            Status::SignalLoss
        );
        // Mitigation 1 expired while the agent was down.
        assert_eq!(e.tick(500), vec![("cu-a".to_string(), 1)]);
        // New mitigations get datapath ids after the restored ones.
        e.put("a", "cu-a", 4, scope("198.51.100.16/28", 100), false, 500)
            .unwrap();
        assert_eq!(e.mitigator().installed().len(), 2);
    }

    #[test]
    fn a_silent_session_activates_armed_requests() {
        let mut e = engine();
        let mut armed = scope("198.51.100.0/24", 3600);
        armed.trigger_mitigation = false;
        e.put("a", "cu-a", 1, armed, false, 0).unwrap();
        e.seen("a", "cu-a", 0);
        // Defaults: 30 s x 15 missing heartbeats.
        assert!(e.detect_lost_sessions(450).is_empty());
        assert_eq!(e.detect_lost_sessions(451), vec!["cu-a".to_string()]);
        assert_eq!(e.mitigator().installed().len(), 1, "armed request active");
        assert!(e.detect_lost_sessions(1000).is_empty(), "declared once");
        // A negotiated shorter window counts; traffic clears the loss.
        e.seen("a", "cu-a", 1000);
        let body = [
            0xa1, 0x18, 0x1e, 0xa1, 0x18, 0x20, 0xa2, 0x18, 0x21, 0xa1, 0x18, 0x24, 0x0f, 0x18,
            0x25, 0xa1, 0x18, 0x24, 0x03,
        ];
        e.config_put("a", 1, &body).unwrap(); // mitigating: 15 s x 3
        assert_eq!(e.detect_lost_sessions(1046), vec!["cu-a".to_string()]);
    }

    #[test]
    fn other_clients_overlaps_conflict() {
        let mut e = engine();
        let mut wide = engine().policies.remove("a").unwrap();
        wide.name = "c".into();
        wide.prefixes = vec!["198.51.0.0/16".parse().unwrap()];
        e.policies.insert("c".into(), wide);
        e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 0)
            .unwrap();
        assert!(matches!(
            e.put("c", "cu-c", 1, scope("198.51.100.0/24", 60), false, 0),
            Err(Refusal::Conflict {
                cause: 1,
                mid: None,
                ..
            })
        ));
    }
}
