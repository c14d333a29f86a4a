//! The relay: which downstream mitigations are carried upstream, under which upstream mid,
//! and what upstream last said of them. The engine tells it every change
//! ([`Escalation`]); the mapping rows it keeps are stored in the engine's transaction, so
//! a restart keeps every mapping. What it wants upstream goes to the link as a
//! [`Desired`] set (a `watch` channel: the link always works on the latest), and the link's
//! reports come back through [`crate::engine::Engine::escalation_event`].

use std::collections::{BTreeMap, HashMap};

use ciborium::Value;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::hop;
use super::status::UpStatus;
use super::telemetry::{TmDesired, TmRelay, TmRow};
use crate::engine::escalation::triggers::{self, Capacity, Rate};
use crate::engine::escalation::{Escalated, Escalation, InScope, UpstreamShare};
use crate::engine::journal::{document, Change, JournalError};
use crate::signal::message::{decode_mitigation_request, encode_mitigation_request, Scope, Status};
use crate::signal::telemetry::PreMitigation;

/// One relayed mitigation, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub cuid: String,
    pub mid: u32,
    pub client: String,
    pub upstream_mid: u32,
    /// The mitigation request relayed (CBOR), and its version (each new body, +1).
    pub body: Vec<u8>,
    pub version: u64,
    /// Withdrawn downstream (or ended): withdrawn upstream at `withdraw_at`, set once the
    /// clock has seen it (None while not yet scheduled).
    pub withdrawn: bool,
    pub withdraw_at: Option<u64>,
    /// Escalated because the traffic exceeded this server's capacity: status 4
    /// (attack-exceeded-capability) until upstream confirms it mitigates.
    #[serde(default)]
    pub for_capacity: bool,
    /// The Hop-Limit it carries upstream (RFC 8768: one less than arrived, or 16).
    #[serde(default = "initial_hop_limit")]
    pub hop_limit: u8,
    /// The client domain a server-domain gateway names upstream (cdid, RFC 9132
    /// §4.4.1.2): the one a trusted gateway below named, else the downstream client's
    /// identity (its certificate's hash, as a cuid is made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdid: Option<String>,
    /// The client's latest efficacy update (RFC 9132 §4.4.3: attack-status, and RFC 9244
    /// efficacy telemetry), relayed as one (a PUT with an empty If-Match), and its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efficacy: Option<Vec<u8>>,
    #[serde(default)]
    pub efficacy_version: u64,
}

/// What arrived with the request at hand (set around one request).
#[derive(Clone, Debug, Default)]
pub struct Arrived {
    /// Its Hop-Limit (RFC 8768).
    pub hop: Option<u8>,
    /// The cdid a trusted gateway below named.
    pub cdid: Option<String>,
    /// The downstream client's identity (the cuid of its certificate).
    pub identity: Option<String>,
    /// An efficacy update's request (a PUT with an empty If-Match).
    pub efficacy: Option<Scope>,
}

fn initial_hop_limit() -> u8 {
    super::hop::INITIAL
}

fn key(cuid: &str, mid: u32) -> String {
    format!("{cuid}/{mid}")
}

/// What one upstream mid should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    Present {
        body: Vec<u8>,
        version: u64,
        hop_limit: u8,
        cdid: Option<String>,
        /// The latest efficacy update to send once upstream holds `version`.
        efficacy: Option<(u64, Vec<u8>)>,
    },
    Absent {
        cdid: Option<String>,
    },
}

/// What the relay wants upstream, by upstream mid.
pub type Desired = BTreeMap<u32, Want>;

/// The state of the upstream session, as the link reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Session {
    Connecting,
    Up { transport: &'static str },
    Lost(String),
}

/// What upstream last said of one mitigation.
#[derive(Clone, Debug, Default)]
struct Heard {
    /// The version upstream accepted (2.01 / 2.04).
    accepted: Option<u64>,
    /// Upstream's refusal of the latest version (code and diagnostic).
    refused: Option<String>,
    /// With a 4.09: upstream's conflict-information (RFC 9132 §4.4.1.3).
    conflict: Option<Value>,
    status: Option<UpStatus>,
}

enum Edit {
    Put(Row),
    Remove(String),
}

/// When an accepted request goes upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Always,
    /// Once the traffic to its targets in scope exceeds either capacity (per second).
    Exceeded {
        pps: Option<u64>,
        bps: Option<u64>,
    },
}

pub struct Relay {
    rows: BTreeMap<String, Row>,
    mode: Mode,
    /// In-scope counters of mitigations not escalated (yet), as last read: (at, pkts, bytes).
    samples: HashMap<String, (u64, u64, u64)>,
    pending: Vec<Edit>,
    heard: HashMap<u32, Heard>,
    session: Session,
    /// A gateway (no datapath of its own) reports upstream's status as its own.
    gateway: bool,
    terminating: u64,
    now: u64,
    desired: watch::Sender<Desired>,
    /// What arrived with the request being handled.
    arrived: Arrived,
    /// A server-domain gateway: relayed requests carry cdid.
    server_domain: bool,
    /// How this server is named in a 5.08's diagnostic.
    here: String,
    /// How the upstream server is named there.
    upstream: String,
    /// Relayed telemetry (RFC 9244 pre-or-ongoing-mitigation).
    tm: TmRelay,
}

impl Relay {
    /// A relay holding the stored `rows` (documents by key); unreadable rows are reported
    /// and skipped. Returns it and the receiving end for the link.
    pub fn restore(
        stored: &[(String, String)],
        gateway: bool,
        mode: Mode,
        terminating: u64,
        now: u64,
    ) -> (Relay, watch::Receiver<Desired>) {
        let mut rows = BTreeMap::new();
        let mut tm_rows = BTreeMap::new();
        for (k, doc) in stored {
            let read = match k.starts_with(super::telemetry::KEY_PREFIX) {
                true => serde_json::from_str::<TmRow>(doc).map(|r| {
                    tm_rows.insert(k.clone(), r);
                }),
                false => serde_json::from_str::<Row>(doc).map(|r| {
                    rows.insert(k.clone(), r);
                }),
            };
            if let Err(e) = read {
                tracing::error!("upstream mapping {k} is unreadable, skipped: {e}");
            }
        }
        let (desired, rx) = watch::channel(Desired::new());
        let mut relay = Relay {
            rows,
            mode,
            samples: HashMap::new(),
            pending: Vec::new(),
            heard: HashMap::new(),
            session: Session::Connecting,
            gateway,
            terminating,
            now,
            desired,
            arrived: Arrived::default(),
            server_domain: false,
            here: "this server".into(),
            upstream: "the upstream server".into(),
            tm: TmRelay::new(tm_rows),
        };
        relay.publish();
        (relay, rx)
    }

    fn current(&self, k: &str) -> Option<Row> {
        for e in self.pending.iter().rev() {
            match e {
                Edit::Put(r) if key(&r.cuid, r.mid) == k => return Some(r.clone()),
                Edit::Remove(x) if x == k => return None,
                _ => {}
            }
        }
        self.rows.get(k).cloned()
    }

    fn put(&mut self, row: Row) -> Result<Change, JournalError> {
        let k = key(&row.cuid, row.mid);
        let doc = document(&row);
        self.pending.push(Edit::Put(row));
        Ok(Change::Upstream {
            key: k,
            doc: Some(doc?),
        })
    }

    fn next_upstream_mid(&self) -> u32 {
        let pending = self.pending.iter().filter_map(|e| match e {
            Edit::Put(r) => Some(r.upstream_mid),
            Edit::Remove(_) => None,
        });
        self.rows
            .values()
            .map(|r| r.upstream_mid)
            .chain(pending)
            .max()
            .unwrap_or(0)
            + 1
    }

    fn publish(&mut self) {
        let now = self.now;
        let want: Desired = self
            .rows
            .values()
            .map(|r| {
                let gone = r.withdraw_at.is_some_and(|t| t <= now);
                let cdid = r.cdid.clone();
                let w = match gone {
                    true => Want::Absent { cdid },
                    false => Want::Present {
                        body: r.body.clone(),
                        version: r.version,
                        hop_limit: r.hop_limit,
                        cdid,
                        efficacy: r.efficacy.clone().map(|b| (r.efficacy_version, b)),
                    },
                };
                (r.upstream_mid, w)
            })
            .collect();
        self.desired.send_if_modified(|d| {
            let changed = *d != want;
            *d = want;
            changed
        });
    }

    /// Names this server in diagnostics (a 5.08 ending a loop).
    pub fn named(mut self, here: String) -> Self {
        self.here = here;
        self
    }

    pub fn here(&self) -> &str {
        &self.here
    }

    /// Relayed requests carry cdid (`[upstream] domain = "server"`).
    pub fn server_domain(mut self, yes: bool) -> Self {
        self.server_domain = yes;
        self
    }

    /// What arrived with the request about to be handled (default: none, or done).
    pub fn set_arrived(&mut self, arrived: Arrived) {
        self.arrived = arrived;
    }

    /// The cdid a new relayed request of `cuid` carries upstream, if any.
    fn cdid_for(&self, cuid: &str) -> Option<String> {
        self.server_domain.then(|| {
            let a = &self.arrived;
            a.cdid
                .clone()
                .or_else(|| a.identity.clone())
                .unwrap_or_else(|| cuid.into())
        })
    }

    /// A relayed request (arrived with Hop-Limit `hop`, under `cuid`) that is one this
    /// server relays upstream come back: the same targets, ports and protocols as a
    /// mitigation it relays for another cuid, with fewer hops left than it sent that one
    /// with (so it went round at least one more relay). Returns (downstream mid, client,
    /// the Hop-Limit it sent). A request of another client for the same targets that did
    /// not pass through here arrives with as many hops left or more, and stays a conflict.
    pub fn came_back(&self, scope: &Scope, hop: u8, cuid: &str) -> Option<(u32, String, u8)> {
        let same = |a: &Scope| {
            let sorted = |s: &Scope| {
                let mut t = s.target_prefix.clone();
                t.sort();
                let mut p = s.target_protocol.clone();
                p.sort();
                (t, p, s.target_port_range.len())
            };
            sorted(a) == sorted(scope)
                && a.target_port_range
                    .iter()
                    .all(|r| scope.target_port_range.contains(r))
        };
        self.rows
            .values()
            .filter(|r| !r.withdrawn && r.cuid != cuid && r.hop_limit > hop)
            .find(|r| decode_mitigation_request(&r.body).is_ok_and(|s| same(&s)))
            .map(|r| (r.mid, r.client.clone(), r.hop_limit))
    }

    /// The upstream server's address (a 5.08's diagnostic names it).
    pub fn upstream_name(&self) -> &str {
        &self.upstream
    }

    /// Names the upstream server in diagnostics.
    pub fn towards(mut self, upstream: String) -> Self {
        self.upstream = upstream;
        self
    }

    /// What the link should make of upstream's telemetry.
    pub fn telemetry_wants(&self) -> watch::Receiver<TmDesired> {
        self.tm.subscribe()
    }

    /// A client's pre-or-ongoing-mitigation telemetry changed (RFC 9244 §8): `report`, as
    /// the engine resolved it, is its report `tmid` now (None: deleted), `keep` the tmids
    /// it still has. Its mid-list is mapped to our upstream mids (a mitigation not relayed
    /// is left out) and its aliases (this hop's) are not named: their targets are among
    /// its prefixes.
    pub fn telemetry_changed(
        &mut self,
        cuid: &str,
        client: &str,
        tmid: Option<u32>,
        report: Option<PreMitigation>,
        keep: &[u32],
    ) -> Vec<Result<Change, JournalError>> {
        let report = report.map(|r| PreMitigation {
            mids: r
                .mids
                .iter()
                .filter_map(|m| self.current(&key(cuid, *m)).map(|row| row.upstream_mid))
                .collect(),
            aliases: Vec::new(),
            ..r
        });
        let cdid = self.cdid_for(cuid);
        self.tm
            .changed(cuid, client, tmid, report.as_ref(), keep, cdid)
    }

    /// Upstream answered the PUT of telemetry `upstream_tmid` (`refusal`: its 4.xx/5.xx).
    pub fn telemetry_answered(&mut self, upstream_tmid: u32, refusal: Option<String>) {
        self.tm.answered(upstream_tmid, refusal);
    }

    /// Upstream no longer holds telemetry `upstream_tmid` (2.02): the mapping ends.
    pub fn telemetry_deleted(&mut self, upstream_tmid: u32) -> Vec<Result<Change, JournalError>> {
        self.tm.deleted(upstream_tmid)
    }

    /// The upstream tmid of a relayed report, and upstream's refusal of it if any.
    pub fn telemetry_upstream(&self, cuid: &str, tmid: u32) -> Option<(u32, Option<String>)> {
        self.tm.upstream(cuid, tmid)
    }

    /// The cdid a relayed mitigation carries upstream.
    pub fn cdid(&self, cuid: &str, mid: u32) -> Option<String> {
        self.rows.get(&key(cuid, mid))?.cdid.clone()
    }

    /// The upstream session is up, connecting again, or lost (why).
    pub fn session(&mut self, s: Session) {
        match &s {
            Session::Lost(why) => tracing::warn!("upstream session lost: {why}; retrying"),
            Session::Up { transport } => tracing::info!("upstream session up over {transport}"),
            Session::Connecting => {}
        }
        self.session = s;
    }

    pub fn session_state(&self) -> &Session {
        &self.session
    }

    /// Upstream answered a PUT of `version` of `upstream_mid` (`refusal`: its 4.xx/5.xx;
    /// `conflict`: a 4.09's conflict-information).
    pub fn answered(
        &mut self,
        upstream_mid: u32,
        version: u64,
        refusal: Option<String>,
        conflict: Option<Value>,
    ) {
        let h = self.heard.entry(upstream_mid).or_default();
        h.conflict = conflict.filter(|_| refusal.is_some());
        match refusal {
            None => {
                h.accepted = Some(version);
                h.refused = None;
            }
            Some(why) => {
                tracing::warn!("upstream refused mid {upstream_mid}: {why}");
                h.refused = Some(why);
            }
        }
    }

    /// Upstream no longer holds `upstream_mid` (2.02 to our DELETE): the mapping ends.
    pub fn deleted(&mut self, upstream_mid: u32) -> Vec<Result<Change, JournalError>> {
        self.heard.remove(&upstream_mid);
        let Some(k) = self
            .rows
            .iter()
            .find(|(_, r)| r.upstream_mid == upstream_mid)
            .map(|(k, _)| k.clone())
        else {
            return Vec::new();
        };
        self.pending.push(Edit::Remove(k.clone()));
        vec![Ok(Change::Upstream { key: k, doc: None })]
    }

    /// Upstream's status of every mitigation of our session.
    pub fn statuses(&mut self, all: Vec<UpStatus>) {
        for h in self.heard.values_mut() {
            h.status = None;
        }
        for s in all {
            let mid = s.mid;
            self.heard.entry(mid).or_default().status = Some(s);
        }
    }

    /// The upstream mid of a downstream mitigation.
    pub fn upstream_mid(&self, cuid: &str, mid: u32) -> Option<u32> {
        self.rows.get(&key(cuid, mid)).map(|r| r.upstream_mid)
    }

    /// Every relayed mitigation upstream refuses: (cuid, mid, code and diagnostic).
    pub fn refusals(&self) -> Vec<(String, u32, String)> {
        self.rows
            .values()
            .filter_map(|r| {
                let why = self.heard.get(&r.upstream_mid)?.refused.clone()?;
                Some((r.cuid.clone(), r.mid, why))
            })
            .collect()
    }

    /// The Hop-Limit a relayed mitigation carries upstream.
    pub fn hop_limit(&self, cuid: &str, mid: u32) -> Option<u8> {
        self.rows.get(&key(cuid, mid)).map(|r| r.hop_limit)
    }

    /// How many mitigations are relayed (withdrawn ones until upstream confirms).
    pub fn relayed(&self) -> usize {
        self.rows.len()
    }

    /// Why a relayed mitigation is not (yet) held upstream, if it is not.
    pub fn problem(&self, cuid: &str, mid: u32) -> Option<String> {
        let r = self.rows.get(&key(cuid, mid))?;
        if let Session::Lost(why) = &self.session {
            return Some(format!("upstream session lost: {why}"));
        }
        self.heard.get(&r.upstream_mid)?.refused.clone()
    }
}

/// The request as relayed: alias-name and acl-list name this hop's data-channel entries
/// (upstream does not know them), so they stay here; the targets an alias stands for are
/// already among the scope's.
fn relayed_body(scope: &Scope) -> Vec<u8> {
    encode_mitigation_request(&Scope {
        alias_name: Vec::new(),
        acl_list: Vec::new(),
        ..scope.clone()
    })
}

/// Relayed while the downstream mitigation is in force.
fn in_force(s: Status) -> bool {
    matches!(
        s,
        Status::InProgress | Status::SuccessfullyMitigated | Status::Stopped
    )
}

impl Escalation for Relay {
    fn mitigation_changed(
        &mut self,
        cuid: &str,
        mid: u32,
        now: Option<Escalated<'_>>,
    ) -> Vec<Result<Change, JournalError>> {
        let k = key(cuid, mid);
        let existing = self.current(&k);
        let change = match now {
            Some(m) if in_force(m.status) => {
                let body = relayed_body(m.scope);
                let efficacy = self.arrived.efficacy.as_ref().map(|e| {
                    encode_mitigation_request(&Scope {
                        attack_status: e.attack_status,
                        efficacy_attack: e.efficacy_attack.clone(),
                        ..decode_mitigation_request(&body).unwrap_or_else(|_| m.scope.clone())
                    })
                });
                // Exceeded at once (unfit here, or the client reports more than we hold)?
                let at_once = match (self.mode, &existing) {
                    (Mode::Exceeded { pps, bps }, None) => {
                        triggers::why(Capacity::configured(pps, bps), &m.facts, None)
                    }
                    _ => None,
                };
                if let Some(why) = &at_once {
                    tracing::info!("escalating mitigation {mid} of {}: {why}", m.client);
                }
                match existing {
                    // Not escalated (yet): the clock decides by its traffic.
                    None if self.mode != Mode::Always && at_once.is_none() => return Vec::new(),
                    Some(r) if r.body == body && !r.withdrawn && efficacy.is_none() => {
                        return Vec::new()
                    }
                    Some(r) => Row {
                        version: match r.body == body && !r.withdrawn {
                            true => r.version, // an efficacy update: the request stands
                            false => r.version + 1,
                        },
                        efficacy_version: r.efficacy_version + u64::from(efficacy.is_some()),
                        efficacy: efficacy.or(r.efficacy),
                        body,
                        withdrawn: false,
                        withdraw_at: None,
                        hop_limit: self.arrived.hop.map_or(r.hop_limit, |h| hop::next(Some(h))),
                        ..r
                    },
                    None => Row {
                        cuid: cuid.to_string(),
                        mid,
                        client: m.client.to_string(),
                        upstream_mid: self.next_upstream_mid(),
                        body,
                        version: 1,
                        withdrawn: false,
                        withdraw_at: None,
                        for_capacity: at_once.is_some(),
                        hop_limit: hop::next(self.arrived.hop),
                        cdid: self.cdid_for(cuid),
                        efficacy: None,
                        efficacy_version: 0,
                    },
                }
            }
            // Withdrawn (the terminating period starts at the next tick), ended, armed or
            // forgotten: withdrawn upstream; a withdrawal already under way goes on.
            other => match existing {
                Some(r) if !r.withdrawn => Row {
                    withdrawn: true,
                    withdraw_at: match other.map(|m| m.status) {
                        Some(Status::ClientWithdrawn) => None,
                        _ => Some(0),
                    },
                    ..r
                },
                _ => return Vec::new(),
            },
        };
        vec![self.put(change)]
    }

    fn committed(&mut self) {
        self.tm.committed();
        for e in std::mem::take(&mut self.pending) {
            match e {
                Edit::Put(r) => {
                    self.rows.insert(key(&r.cuid, r.mid), r);
                }
                Edit::Remove(k) => {
                    self.rows.remove(&k);
                }
            }
        }
        self.publish();
    }

    fn undone(&mut self) {
        self.pending.clear();
        self.tm.undone();
    }

    fn tick(&mut self, at: u64, traffic: &[InScope<'_>]) -> Vec<Result<Change, JournalError>> {
        self.now = at;
        let mut out = self.escalate_exceeded(at, traffic);
        let due: Vec<Row> = self
            .rows
            .values()
            .filter(|r| r.withdrawn && r.withdraw_at.is_none())
            .cloned()
            .collect();
        for r in due {
            out.push(self.put(Row {
                withdraw_at: Some(at + self.terminating),
                ..r
            }));
        }
        if out.is_empty() {
            self.publish();
        }
        out
    }

    fn share(&self, cuid: &str, mid: u32) -> Option<UpstreamShare> {
        let r = self.rows.get(&key(cuid, mid))?;
        let heard = self.heard.get(&r.upstream_mid);
        let up = heard.and_then(|h| h.status.clone()).unwrap_or_default();
        let confirmed = heard.is_some_and(|h| {
            h.accepted == Some(r.version)
                && h.status.as_ref().is_some_and(|s| {
                    matches!(
                        s.status,
                        Some(Status::SuccessfullyMitigated | Status::Stopped)
                    )
                })
        });
        let conflict = heard
            .filter(|h| h.refused.is_some())
            .and_then(|h| h.conflict.as_ref())
            .map(|info| self.mapped_conflict(r, info, !self.gateway));
        if !self.gateway {
            // A recursive server reports its own status, but one escalated because it
            // cannot hold the attack is attack-exceeded-capability until upstream mitigates.
            return Some(UpstreamShare {
                status: (r.for_capacity && !r.withdrawn && !confirmed)
                    .then_some(Status::ExceededCapability),
                conflict_information: conflict,
                pkts_dropped: up.pkts_dropped,
                bytes_dropped: up.bytes_dropped,
                pps_dropped: up.pps_dropped,
                bps_dropped: up.bps_dropped,
                upstream: up.status.filter(|_| confirmed),
            });
        }
        let status = self.gateway.then(|| {
            let held = heard.is_some_and(|h| h.accepted == Some(r.version));
            match (&self.session, heard) {
                // Upstream holds another client's request on these targets: withdrawn
                // because of a conflict (status 7 with conflict-information, RFC 9132
                // §4.4.1.3), until upstream accepts it on a retry.
                _ if conflict.is_some() => Status::Withdrawn,
                // Nobody mitigates it: upstream refused it or cannot be reached.
                (Session::Lost(_), _) => Status::ExceededCapability,
                (_, Some(h)) if h.refused.is_some() => Status::ExceededCapability,
                _ if held => up.status.unwrap_or(Status::InProgress),
                _ => Status::InProgress,
            }
        });
        Some(UpstreamShare {
            status,
            conflict_information: conflict,
            pkts_dropped: up.pkts_dropped,
            bytes_dropped: up.bytes_dropped,
            pps_dropped: up.pps_dropped,
            bps_dropped: up.bps_dropped,
            upstream: None,
        })
    }

    fn wants_traffic(&self) -> bool {
        self.mode != Mode::Always
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl Relay {
    /// Upstream's conflict-information for the downstream client of `r`, encoded: a mid in
    /// its conflict-scope is one of our upstream mids, so it becomes that client's own mid
    /// (or is left out when it is another client's, which is not this client's to know).
    /// A recursive server still mitigates locally: its request is active (conflict-status
    /// 2, request-active) whatever upstream holds.
    fn mapped_conflict(&self, r: &Row, info: &Value, recursive: bool) -> Vec<u8> {
        let key = |k: &Value| k.as_integer().and_then(|i| u64::try_from(i).ok());
        let mapped_scope = |scope: &Value| match scope {
            Value::Map(entries) => Value::Map(
                entries
                    .iter()
                    .filter_map(|(k, v)| {
                        if key(k) != Some(5) {
                            return Some((k.clone(), v.clone()));
                        }
                        let up = v.as_integer().and_then(|i| u32::try_from(i).ok())?;
                        let down = self
                            .rows
                            .values()
                            .find(|o| o.upstream_mid == up && o.cuid == r.cuid)?;
                        Some((k.clone(), Value::from(down.mid)))
                    })
                    .collect(),
            ),
            other => other.clone(),
        };
        let mapped = match info {
            Value::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| match key(k) {
                        Some(18) if recursive => (k.clone(), Value::from(2u8)),
                        Some(21) => (k.clone(), mapped_scope(v)),
                        _ => (k.clone(), v.clone()),
                    })
                    .collect(),
            ),
            other => other.clone(),
        };
        crate::signal::cbor::encode(&mapped)
    }

    /// In `exceeded` mode: the mitigations in force, not escalated yet, whose traffic in
    /// scope since the last reading (at least a second ago) is above a capacity.
    fn escalate_exceeded(
        &mut self,
        at: u64,
        traffic: &[InScope<'_>],
    ) -> Vec<Result<Change, JournalError>> {
        let Mode::Exceeded {
            pps: cap_pps,
            bps: cap_bps,
        } = self.mode
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in traffic {
            let k = key(t.cuid, t.mid);
            if !in_force(t.mitigation.status) || self.current(&k).is_some() {
                continue;
            }
            seen.insert(k.clone());
            let now = (at, t.packets, t.bytes);
            // Before the first reading: the counters count from the mitigation's start (an
            // attack that came before the first tick counts too).
            let then = self
                .samples
                .insert(k.clone(), now)
                .unwrap_or((t.start.unwrap_or(at), 0, 0));
            let secs = at.saturating_sub(then.0);
            let measured = if secs == 0 {
                self.samples.insert(k.clone(), then); // measure over a second at least
                None
            } else {
                Some(Rate {
                    pps: t.packets.saturating_sub(then.1).checked_div(secs),
                    bps: (t.bytes.saturating_sub(then.2) * 8).checked_div(secs),
                })
            };
            // Pre-mitigation telemetry and pipe capacities arrive between requests.
            let capacity = Capacity::configured(cap_pps, cap_bps);
            let Some(over) = triggers::why(capacity, &t.mitigation.facts, measured) else {
                continue;
            };
            tracing::info!(
                "escalating mitigation {} of {}: {over}",
                t.mid,
                t.mitigation.client
            );
            let row = Row {
                cuid: t.cuid.to_string(),
                mid: t.mid,
                client: t.mitigation.client.to_string(),
                upstream_mid: self.next_upstream_mid(),
                body: relayed_body(t.mitigation.scope),
                version: 1,
                withdrawn: false,
                withdraw_at: None,
                for_capacity: true,
                hop_limit: hop::INITIAL,
                // No request at hand: the path's cuid stands for the client's identity.
                cdid: self.server_domain.then(|| t.cuid.to_string()),
                efficacy: None,
                efficacy_version: 0,
            };
            self.samples.remove(&k);
            out.push(self.put(row));
        }
        self.samples.retain(|k, _| seen.contains(k));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::MemoryMitigator;
    use crate::engine::journal::MemoryJournal;
    use crate::engine::{ClientPolicy, Engine};
    use crate::signal::message::{Lifetime, Scope};

    const T: u64 = 1_000;

    fn engine(journal: &MemoryJournal) -> (Engine<MemoryMitigator>, watch::Receiver<Desired>) {
        let policy = ClientPolicy::fixture("a", &["203.0.113.0/24"]);
        let (relay, rx) = Relay::restore(
            &journal.snapshot().upstream_mappings,
            true,
            Mode::Always,
            5,
            T,
        );
        let e = Engine::new(MemoryMitigator::new(), vec![policy])
            .with_terminating_period(0)
            .with_journal(Box::new(journal.clone()))
            .with_escalation(Box::new(relay));
        (e, rx)
    }

    fn scope() -> Scope {
        Scope::new(
            vec!["203.0.113.0/24".parse().unwrap()],
            Lifetime::Seconds(600),
        )
    }

    fn present(rx: &watch::Receiver<Desired>) -> Vec<(u32, u64)> {
        rx.borrow()
            .iter()
            .filter_map(|(m, w)| match w {
                Want::Present { version, .. } => Some((*m, *version)),
                Want::Absent { .. } => None,
            })
            .collect()
    }

    #[test]
    fn accepted_requests_get_upstream_mids_that_a_restart_keeps() {
        let j = MemoryJournal::new();
        let (mut e, rx) = engine(&j);
        e.put("a", "cu", 7, scope(), false, T).unwrap();
        e.put(
            "a",
            "cv",
            7,
            Scope::new(
                vec!["203.0.113.8/29".parse().unwrap()],
                Lifetime::Seconds(60),
            ),
            false,
            T,
        )
        .unwrap_err(); // overlaps another client's mitigation: refused, nothing relayed
        assert_eq!(present(&rx), vec![(1, 1)]);
        // A refresh with another lifetime is a new version of the same upstream mid.
        let mut longer = scope();
        longer.lifetime = Lifetime::Seconds(900);
        e.put("a", "cu", 7, longer, false, T + 1).unwrap();
        assert_eq!(present(&rx), vec![(1, 2)]);
        assert_eq!(j.snapshot().upstream_mappings.len(), 1);
        // After a restart: the same mapping, the same wish.
        let (e2, rx2) = engine(&j);
        drop(e2);
        assert_eq!(present(&rx2), vec![(1, 2)]);
    }

    #[test]
    fn a_request_that_cannot_be_stored_is_not_relayed() {
        let j = MemoryJournal::new();
        let (mut e, rx) = engine(&j);
        j.fail(true);
        assert!(e.put("a", "cu", 7, scope(), false, T).is_err());
        assert!(rx.borrow().is_empty());
        j.fail(false);
        e.put("a", "cu", 7, scope(), false, T).unwrap();
        assert_eq!(present(&rx), vec![(1, 1)]);
    }

    #[test]
    fn withdrawal_reaches_upstream_after_the_terminating_period() {
        let j = MemoryJournal::new();
        let (mut e, rx) = engine(&j);
        e.put("a", "cu", 7, scope(), false, T).unwrap();
        e.delete("cu", 7, T + 1).unwrap();
        e.tick(T + 2);
        assert_eq!(present(&rx), vec![(1, 1)], "still upstream for 5 s");
        e.tick(T + 7);
        assert_eq!(
            *rx.borrow(),
            Desired::from([(1, Want::Absent { cdid: None })])
        );
        // Upstream confirms: the mapping ends, in the store too.
        e.escalation_event::<Relay, ()>(|r| ((), r.deleted(1)))
            .unwrap();
        assert!(rx.borrow().is_empty());
        assert!(j.snapshot().upstream_mappings.is_empty());
    }

    #[test]
    fn a_request_of_ours_that_comes_back_is_told_from_a_conflict() {
        let j = MemoryJournal::new();
        let (mut e, _rx) = engine(&j);
        e.put("a", "cu", 7, scope(), false, T).unwrap();
        let r = e.escalation_mut::<Relay>().unwrap();
        assert_eq!(r.hop_limit("cu", 7), Some(16));
        // Back through another relay (15 left), under that relay's cuid: ours.
        assert_eq!(r.came_back(&scope(), 15, "cb"), Some((7, "a".into(), 16)));
        // As many hops left as we sent with: another client's request that did not pass
        // through here, a conflict; other targets, or under our client's own cuid: not ours.
        assert_eq!(r.came_back(&scope(), 16, "cb"), None);
        let other = Scope::new(
            vec!["203.0.113.0/25".parse().unwrap()],
            Lifetime::Seconds(600),
        );
        assert_eq!(r.came_back(&other, 15, "cb"), None);
        assert_eq!(r.came_back(&scope(), 15, "cu"), None);
    }

    #[test]
    fn an_upstream_conflict_is_mapped_to_the_client_mids() {
        let j = MemoryJournal::new();
        let (mut e, _rx) = engine(&j);
        e.put("a", "cu", 7, scope(), false, T).unwrap();
        use crate::signal::cbor::{map, uint};
        // Upstream: our mid 1 conflicts with our mid 1 (cause 1), then with mid 99 (not
        // ours to name).
        for (up_mid, want) in [(1u64, Some(7u64)), (99, None)] {
            let info = map(vec![
                (18, uint(1)),
                (19, uint(1)),
                (21, map(vec![(5, uint(up_mid))])),
            ]);
            let r = e.escalation_mut::<Relay>().unwrap();
            r.answered(1, 1, Some("4.09".into()), Some(info));
            let shown = &e.status("cu", Some(7), T).unwrap()[0];
            assert_eq!(shown.status, Status::Withdrawn);
            let got =
                crate::signal::cbor::parse(shown.conflict_information.as_ref().unwrap()).unwrap();
            let json = crate::signal::diag::to_json(&map(vec![(17, got)]));
            assert_eq!(json["conflict-information"]["conflict-status"], 1, "{json}");
            let mid = json["conflict-information"]["conflict-scope"]["mid"].as_u64();
            assert_eq!(mid, want, "{json}");
        }
        // Accepted on a retry: no conflict any more.
        let r = e.escalation_mut::<Relay>().unwrap();
        r.answered(1, 1, None, None);
        let shown = &e.status("cu", Some(7), T).unwrap()[0];
        assert_eq!(
            (shown.status, shown.conflict_information.clone()),
            (Status::InProgress, None)
        );
    }

    #[test]
    fn a_gateway_reports_upstream_status_and_counters() {
        let j = MemoryJournal::new();
        let (mut e, _rx) = engine(&j);
        e.put("a", "cu", 7, scope(), false, T).unwrap();
        let shown = |e: &Engine<MemoryMitigator>| {
            let s = &e.status("cu", Some(7), T).unwrap()[0];
            (s.status, s.pkts_dropped)
        };
        assert_eq!(
            shown(&e),
            (Status::InProgress, Some(0)),
            "until upstream accepts"
        );
        let r = e.escalation_mut::<Relay>().unwrap();
        r.answered(1, 1, None, None);
        r.statuses(vec![UpStatus {
            mid: 1,
            status: Some(Status::SuccessfullyMitigated),
            pkts_dropped: 42,
            ..Default::default()
        }]);
        assert_eq!(shown(&e), (Status::SuccessfullyMitigated, Some(42)));
        let r = e.escalation_mut::<Relay>().unwrap();
        r.session(Session::Lost("no answer".into()));
        assert!(r.problem("cu", 7).unwrap().contains("no answer"));
        assert_eq!(shown(&e).0, Status::ExceededCapability);
    }
}

#[cfg(test)]
mod exceeded {
    use super::*;
    use crate::datapath::{MemoryMitigator, MitigationCounters, Mitigator};
    use crate::engine::journal::MemoryJournal;
    use crate::engine::{ClientPolicy, Engine};
    use crate::signal::message::{Lifetime, Scope};
    use xdp_common::Counter;

    #[test]
    fn a_recursive_server_escalates_what_exceeds_its_capacity_and_says_so() {
        let policy = ClientPolicy::fixture("a", &["203.0.113.0/24"]);
        let mode = Mode::Exceeded {
            pps: Some(1_000),
            bps: None,
        };
        let (relay, rx) = Relay::restore(&[], false, mode, 0, 0);
        let mut e = Engine::new(MemoryMitigator::new(), vec![policy])
            .with_journal(Box::new(MemoryJournal::new()))
            .with_escalation(Box::new(relay));
        let scope = Scope::new(
            vec!["203.0.113.0/24".parse().unwrap()],
            Lifetime::Seconds(600),
        );
        e.put("a", "cu", 7, scope, false, 100).unwrap();
        let in_scope = |e: &mut Engine<MemoryMitigator>, packets: u64| {
            let id = e.mitigator().installed()[0];
            let c = MitigationCounters {
                in_scope: Counter {
                    packets,
                    bytes: packets * 100,
                },
                ..Default::default()
            };
            assert!(e.mitigator_mut().set_counters(id, c));
        };
        let shown = |e: &Engine<MemoryMitigator>| e.status("cu", Some(7), 100).unwrap()[0].status;
        in_scope(&mut e, 0);
        e.tick(101);
        in_scope(&mut e, 900);
        e.tick(102);
        assert!(rx.borrow().is_empty(), "900 packets/s: held here");
        assert_eq!(shown(&e), Status::SuccessfullyMitigated);
        in_scope(&mut e, 900 + 5_000);
        e.tick(103);
        assert_eq!(rx.borrow().len(), 1, "5,000 packets/s: escalated");
        assert_eq!(
            shown(&e),
            Status::ExceededCapability,
            "until upstream mitigates"
        );
        let r = e.escalation_mut::<Relay>().unwrap();
        r.answered(1, 1, None, None);
        r.statuses(vec![UpStatus {
            mid: 1,
            status: Some(Status::SuccessfullyMitigated),
            pkts_dropped: 10,
            ..Default::default()
        }]);
        assert_eq!(shown(&e), Status::SuccessfullyMitigated);
    }
}
