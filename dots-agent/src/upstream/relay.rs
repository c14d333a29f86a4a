//! The relay: which downstream mitigations are carried upstream, under which upstream mid,
//! and what upstream last said of them. The engine tells it every change
//! ([`Escalation`]); the mapping rows it keeps are stored in the engine's transaction, so
//! a restart keeps every mapping. What it wants upstream goes to the link as a
//! [`Desired`] set (a `watch` channel: the link always works on the latest), and the link's
//! reports come back through [`crate::engine::Engine::escalation_event`].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::hop;
use super::status::UpStatus;
use crate::engine::escalation::triggers::{self, Capacity, Rate};
use crate::engine::escalation::{Escalated, Escalation, InScope, UpstreamShare};
use crate::engine::journal::{document, Change, JournalError};
use crate::signal::message::{encode_mitigation_request, Status};

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
    },
    Absent,
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
    /// The Hop-Limit of the request being handled (set around one request).
    arrived_hop: Option<u8>,
    /// How this server is named in a 5.08's diagnostic.
    here: String,
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
        for (k, doc) in stored {
            match serde_json::from_str::<Row>(doc) {
                Ok(r) => {
                    rows.insert(k.clone(), r);
                }
                Err(e) => tracing::error!("upstream mapping {k} is unreadable, skipped: {e}"),
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
            arrived_hop: None,
            here: "this server".into(),
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
                let w = match gone {
                    true => Want::Absent,
                    false => Want::Present {
                        body: r.body.clone(),
                        version: r.version,
                        hop_limit: r.hop_limit,
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

    /// The Hop-Limit of the request about to be handled (None: without one, or done).
    pub fn set_arrived_hop(&mut self, hop: Option<u8>) {
        self.arrived_hop = hop;
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

    /// Upstream answered a PUT of `version` of `upstream_mid` (`refusal`: its 4.xx/5.xx).
    pub fn answered(&mut self, upstream_mid: u32, version: u64, refusal: Option<String>) {
        let h = self.heard.entry(upstream_mid).or_default();
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
                let body = encode_mitigation_request(m.scope);
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
                    Some(r) if r.body == body && !r.withdrawn => return Vec::new(),
                    Some(r) => Row {
                        body,
                        version: r.version + 1,
                        withdrawn: false,
                        withdraw_at: None,
                        hop_limit: self.arrived_hop.map_or(r.hop_limit, |h| hop::next(Some(h))),
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
                        hop_limit: hop::next(self.arrived_hop),
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
        if !self.gateway {
            // A recursive server reports its own status, but one escalated because it
            // cannot hold the attack is attack-exceeded-capability until upstream mitigates.
            return Some(UpstreamShare {
                status: (r.for_capacity && !r.withdrawn && !confirmed)
                    .then_some(Status::ExceededCapability),
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
                // Nobody mitigates it: upstream refused it or cannot be reached.
                (Session::Lost(_), _) => Status::ExceededCapability,
                (_, Some(h)) if h.refused.is_some() => Status::ExceededCapability,
                _ if held => up.status.unwrap_or(Status::InProgress),
                _ => Status::InProgress,
            }
        });
        Some(UpstreamShare {
            status,
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
                    pps: Some(t.packets.saturating_sub(then.1) / secs),
                    bps: Some(t.bytes.saturating_sub(then.2) * 8 / secs),
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
                body: encode_mitigation_request(t.mitigation.scope),
                version: 1,
                withdrawn: false,
                withdraw_at: None,
                for_capacity: true,
                hop_limit: hop::INITIAL,
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
        let policy = ClientPolicy {
            name: "a".into(),
            prefixes: vec!["203.0.113.0/24".parse().unwrap()],
            countermeasures: Default::default(),
            acl: Vec::new(),
            allow_indefinite: false,
            max_lifetime: 86_400,
        };
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
                Want::Absent => None,
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
        assert_eq!(*rx.borrow(), Desired::from([(1, Want::Absent)]));
        // Upstream confirms: the mapping ends, in the store too.
        e.escalation_event::<Relay, ()>(|r| ((), r.deleted(1)))
            .unwrap();
        assert!(rx.borrow().is_empty());
        assert!(j.snapshot().upstream_mappings.is_empty());
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
        r.answered(1, 1, None);
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
        let policy = ClientPolicy {
            name: "a".into(),
            prefixes: vec!["203.0.113.0/24".parse().unwrap()],
            countermeasures: Default::default(),
            acl: Vec::new(),
            allow_indefinite: false,
            max_lifetime: 86_400,
        };
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
        r.answered(1, 1, None);
        r.statuses(vec![UpStatus {
            mid: 1,
            status: Some(Status::SuccessfullyMitigated),
            pkts_dropped: 10,
            ..Default::default()
        }]);
        assert_eq!(shown(&e), Status::SuccessfullyMitigated);
    }
}

/// On a relaying server, the Hop-Limit check of a request before the handler (RFC 8768):
/// Err with the reply that ends it; the value that arrived is kept for the operation.
pub fn hop_limited<M: crate::datapath::Mitigator>(
    engine: &mut crate::engine::Engine<M>,
    peer: &crate::signal::handler::Peer<'_>,
    msg: &coap_lite::Packet,
) -> Result<(), crate::signal::session::Reply> {
    let put = coap_lite::MessageClass::Request(coap_lite::RequestType::Put);
    let Some(relay) = engine
        .escalation_mut::<Relay>()
        .filter(|_| msg.header.code == put)
    else {
        return Ok(()); // not relaying, or nothing to relay: Hop-Limit is for proxies
    };
    let from = peer.client.unwrap_or(peer.cuid);
    let arrived = hop::check(msg, &relay.here, from)?;
    relay.set_arrived_hop(arrived);
    Ok(())
}

/// After the request: its Hop-Limit no longer applies.
pub fn hop_done<M: crate::datapath::Mitigator>(engine: &mut crate::engine::Engine<M>) {
    if let Some(relay) = engine.escalation_mut::<Relay>() {
        relay.set_arrived_hop(None);
    }
}
