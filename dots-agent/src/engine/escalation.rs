//! The seam to an upstream DOTS server (a gateway's or a recursive server's, `upstream/`):
//! the engine tells it each change of a mitigation as part of the operation that makes it
//! (so what it stores is committed in the same transaction, and undone with it), and asks it
//! for the upstream share of a mitigation's status. The engine knows nothing of sessions.

use super::journal::{Change, JournalError};
use crate::signal::message::{Scope, Status};

pub mod triggers;
pub use triggers::Facts;

/// A mitigation as the escalation sees it after an operation.
#[derive(Clone, Debug)]
pub struct Escalated<'a> {
    pub client: &'a str,
    pub scope: &'a Scope,
    pub status: Status,
    /// Epoch seconds it expires (None: indefinite).
    pub expires: Option<u64>,
    /// Withdrawn by its client: filtering here until then.
    pub terminating_until: Option<u64>,
    /// What its client reported and whether it fits here (`escalate = "exceeded"`).
    pub facts: Facts,
}

/// What reached an installed mitigation's targets in scope so far (the datapath's
/// counters), for an escalation that decides by traffic.
#[derive(Clone, Debug)]
pub struct InScope<'a> {
    pub cuid: &'a str,
    pub mid: u32,
    pub mitigation: Escalated<'a>,
    pub packets: u64,
    pub bytes: u64,
    /// Epoch seconds it became active (its counters count from then).
    pub start: Option<u64>,
}

/// The upstream share of a mitigation's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamShare {
    /// The status to report instead of the local one (a gateway reports upstream's).
    pub status: Option<Status>,
    /// Upstream's conflict-information (CBOR), mapped to the downstream client's mids.
    pub conflict_information: Option<Vec<u8>>,
    pub pkts_dropped: u64,
    pub bytes_dropped: u64,
    pub pps_dropped: u64,
    pub bps_dropped: u64,
    /// Upstream's own status of it (reported by a recursive server whose datapath could
    /// not take the mitigation, once upstream confirms).
    pub upstream: Option<Status>,
}

/// Where accepted mitigations are carried beyond this server.
pub trait Escalation: Send {
    /// A mitigation changed in the operation at hand (None: forgotten). Returns the
    /// changes to store with it; nothing takes effect before [`Escalation::committed`].
    fn mitigation_changed(
        &mut self,
        cuid: &str,
        mid: u32,
        now: Option<Escalated<'_>>,
    ) -> Vec<Result<Change, JournalError>>;
    /// The operation's changes were stored: they take effect.
    fn committed(&mut self);
    /// The operation was refused or could not be stored: its changes are dropped.
    fn undone(&mut self);
    /// Once a second: changes due by time (a withdrawal's terminating period ending, a
    /// mitigation whose traffic exceeds what this server can hold). `at` is the engine's
    /// clock (epoch seconds); `traffic` what each installed mitigation in force has seen.
    fn tick(&mut self, at: u64, traffic: &[InScope<'_>]) -> Vec<Result<Change, JournalError>>;
    /// Whether [`Escalation::tick`] needs `traffic` (reading every mitigation's counters
    /// each second is skipped otherwise).
    fn wants_traffic(&self) -> bool;
    /// Whether a request whose spec does not fit the local datapath is accepted and
    /// carried upstream rather than refused: what an escalation that decides by traffic
    /// (`exceeded`) does.
    fn takes_unfit(&self) -> bool {
        self.wants_traffic()
    }
    /// The upstream share of the status of the mitigation (None: not escalated).
    fn share(&self, cuid: &str, mid: u32) -> Option<UpstreamShare>;
    /// Lets the concrete type be reached (what upstream reported goes to it).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

use super::{refusal, ClientPolicy, Engine, Mitigation, Refusal};
use crate::datapath::Mitigator;

impl<M: Mitigator> Engine<M> {
    /// Carries accepted mitigations to `escalation` from now on (before restore).
    pub fn with_escalation(mut self, escalation: Box<dyn Escalation>) -> Self {
        self.escalation = Some(escalation);
        self
    }

    /// Runs `f` on the escalation of type `T` (what upstream reported) and stores what it
    /// changed; None without one of that type.
    pub fn escalation_event<T: 'static, R>(
        &mut self,
        f: impl FnOnce(&mut T) -> (R, Vec<Result<Change, JournalError>>),
    ) -> Option<R> {
        let e = self.escalation.as_mut()?.as_any_mut().downcast_mut::<T>()?;
        let (r, changes) = f(e);
        for c in changes {
            self.stage(c);
        }
        self.finish_unattended();
        Some(r)
    }

    /// Read access to the escalation of type `T`.
    pub fn escalation_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.escalation.as_mut()?.as_any_mut().downcast_mut::<T>()
    }

    /// The escalation's clock, once a second.
    pub(super) fn tick_escalation(&mut self, now: u64) {
        let Some(wants) = self.escalation.as_ref().map(|e| e.wants_traffic()) else {
            return;
        };
        let traffic: Vec<InScope<'_>> = self
            .ledger
            .iter()
            .filter(|(_, _, _, m)| wants && m.installed && m.ended_at.is_none())
            .filter_map(|(cuid, client, mid, m)| {
                let c = self.counters(m)?;
                Some(InScope {
                    cuid,
                    mid,
                    mitigation: Escalated {
                        client,
                        scope: &m.scope,
                        status: m.status,
                        expires: m.expires,
                        terminating_until: m.terminating_until,
                        facts: self.facts(client, m),
                    },
                    packets: c.in_scope.packets,
                    bytes: c.in_scope.bytes,
                    start: m.start,
                })
            })
            .collect();
        let Some(e) = self.escalation.as_mut() else {
            return;
        };
        let changes = e.tick(now, &traffic);
        drop(traffic);
        if changes.is_empty() {
            return;
        }
        for c in changes {
            self.stage(c);
        }
        self.finish_unattended();
    }

    /// Tells the escalation what the operation at hand changed; returns what to store.
    pub(super) fn escalate_touched(&mut self) -> Vec<Result<Change, JournalError>> {
        if self.escalation.is_none() {
            return Vec::new();
        }
        let touched = self.ledger.touched();
        let facts: Vec<Option<Facts>> = touched
            .iter()
            .map(|(_, _, m)| m.map(|(client, m)| self.facts(client, m)))
            .collect();
        let Some(e) = self.escalation.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for ((cuid, mid, m), facts) in touched.into_iter().zip(facts) {
            let view = m.map(|(client, m): (&str, &Mitigation)| Escalated {
                client,
                scope: &m.scope,
                status: m.status,
                expires: m.expires,
                terminating_until: m.terminating_until,
                facts: facts.unwrap_or_default(),
            });
            out.extend(e.mitigation_changed(&cuid, mid, view));
        }
        out
    }

    /// What decides whether `m` of `client` goes upstream: the attack rate the client
    /// reported (in the request, its efficacy updates, or pre-mitigation telemetry on
    /// overlapping targets), its pipe capacity, and whether it fits the datapath here.
    fn facts(&self, client: &str, m: &Mitigation) -> Facts {
        let telemetry = self
            .reports
            .get(client)
            .into_iter()
            .flat_map(|r| r.values())
            .filter(|r| {
                r.targets
                    .iter()
                    .any(|t| m.scope.target_prefix.iter().any(|p| super::overlaps(t, p)))
            })
            .map(|r| triggers::reported_rate(&r.attack));
        let reported = triggers::highest(
            [
                triggers::reported_rate(&m.scope.efficacy_attack),
                triggers::reported_rate(&m.client_attack),
            ]
            .into_iter()
            .chain(telemetry),
        );
        Facts {
            reported,
            pipe: self
                .telemetry
                .get(client)
                .map(triggers::pipe_rate)
                .unwrap_or_default(),
            unfit: m.unfit.clone(),
        }
    }

    /// Installs a new mitigation; one whose spec does not fit this datapath is, when the
    /// escalation takes such requests, accepted without local rules (status 1) and carried
    /// upstream at once (status 4 until upstream confirms), instead of refused.
    pub(super) fn install_or_escalate(
        &mut self,
        m: &mut Mitigation,
        policy: &ClientPolicy,
        now: u64,
    ) -> Result<(), Refusal> {
        if !self.escalation.as_ref().is_some_and(|e| e.takes_unfit()) {
            return self.install(m, policy, now);
        }
        if let Err(e) = self.sync_baseline(&policy.name, Some(&m.scope.target_prefix)) {
            tracing::error!("ACL baseline of {}: {e}", policy.name);
        }
        let Err(e) = self.put_in_datapath(m, policy, now) else {
            return Ok(());
        };
        let Some(why) = triggers::unfit(&e) else {
            return Err(refusal(e));
        };
        // Not installed here: the baseline keeps the prefixes it gave up.
        if let Err(e) = self.sync_baseline(&policy.name, None) {
            tracing::error!("ACL baseline of {}: {e}", policy.name);
        }
        m.status = Status::InProgress;
        m.unfit = Some(why);
        Ok(())
    }

    /// The upstream share of a mitigation's status.
    pub(super) fn upstream_share(&self, cuid: &str, mid: u32) -> Option<UpstreamShare> {
        self.escalation.as_ref()?.share(cuid, mid)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::datapath::{MemoryMitigator, PortRange};
    use crate::engine::PutOutcome;
    use crate::signal::message::Lifetime;
    use crate::signal::telemetry::{PipeCapacity, PreMitigation, SetupItem, Stats, Unit};
    use triggers::Rate;

    /// An escalation that notes the facts it is told, by mid.
    #[derive(Clone, Default)]
    struct Noted {
        changed: Arc<Mutex<Vec<(u32, Facts)>>>,
        ticked: Arc<Mutex<Vec<(u32, Facts)>>>,
        by_traffic: bool,
    }

    impl Escalation for Noted {
        fn mitigation_changed(
            &mut self,
            _cuid: &str,
            mid: u32,
            now: Option<Escalated<'_>>,
        ) -> Vec<Result<Change, JournalError>> {
            if let Some(m) = now {
                self.changed.lock().unwrap().push((mid, m.facts));
            }
            Vec::new()
        }
        fn committed(&mut self) {}
        fn undone(&mut self) {}
        fn tick(&mut self, _at: u64, traffic: &[InScope<'_>]) -> Vec<Result<Change, JournalError>> {
            let mut t = self.ticked.lock().unwrap();
            t.extend(traffic.iter().map(|x| (x.mid, x.mitigation.facts.clone())));
            Vec::new()
        }
        fn wants_traffic(&self) -> bool {
            self.by_traffic
        }
        fn share(&self, _cuid: &str, _mid: u32) -> Option<UpstreamShare> {
            None
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }

    fn engine(noted: &Noted) -> Engine<MemoryMitigator> {
        let policy = ClientPolicy::fixture("a", &["203.0.113.0/24"]);
        Engine::new(MemoryMitigator::new(), vec![policy]).with_escalation(Box::new(noted.clone()))
    }

    fn scope() -> Scope {
        Scope::new(
            vec!["203.0.113.0/24".parse().unwrap()],
            Lifetime::Seconds(600),
        )
    }

    /// `value` now, in RFC 9244 unit `code` (4: kilopackets/s, 8: megabit/s).
    fn rate(code: u64, value: u64) -> Vec<(Unit, Stats)> {
        let s = Stats {
            current: Some(value),
            ..Default::default()
        };
        vec![(Unit::from_code(code).unwrap(), s)]
    }

    fn last(v: &Arc<Mutex<Vec<(u32, Facts)>>>) -> Facts {
        v.lock().unwrap().last().expect("told").1.clone()
    }

    #[test]
    fn what_the_client_reports_reaches_the_escalation() {
        let noted = Noted {
            by_traffic: true,
            ..Default::default()
        };
        let mut e = engine(&noted);
        // total-attack-traffic in the request itself: 50 kpps.
        let mut s = scope();
        s.efficacy_attack = rate(4, 50);
        e.put("a", "cu", 1, s.clone(), false, 100).unwrap();
        assert_eq!(last(&noted.changed).reported.pps, Some(50_000));
        // An efficacy update saying more still arrives: the highest report counts.
        s.attack_status = Some(1);
        s.efficacy_attack = rate(4, 80);
        e.put("a", "cu", 1, s, true, 101).unwrap();
        assert_eq!(last(&noted.changed).reported.pps, Some(80_000));
        // Pre-mitigation telemetry on overlapping targets (2 Mbit/s) and a pipe capacity
        // (1 Mbit/s) arrive between requests: the clock's reading carries them.
        let report = PreMitigation {
            targets: vec!["203.0.113.8/29".parse().unwrap()],
            attack: rate(8, 2),
            ..Default::default()
        };
        e.tm_put("a", 1, report, 102).unwrap();
        let pipe = PipeCapacity {
            link_id: "uplink".into(),
            unit: Unit::from_code(8).unwrap(),
            capacity: 1,
        };
        e.tm_setup_put("a", 1, SetupItem::Pipes(vec![pipe]), 102)
            .unwrap();
        e.tick(103);
        let f = last(&noted.ticked);
        assert_eq!(
            f.reported,
            Rate {
                pps: Some(80_000),
                bps: Some(2_000_000)
            }
        );
        assert_eq!(f.pipe.bps, Some(1_000_000));
        assert_eq!(f.unfit, None);
    }

    #[test]
    fn a_spec_too_big_for_this_datapath_is_accepted_only_to_go_upstream() {
        // 17 distinct port ranges: more than the datapath's scope holds.
        let mut big = scope();
        big.target_port_range = (0..17).map(|p| PortRange::single(1000 + p)).collect();
        let always = Noted::default();
        let mut e = engine(&always);
        assert!(
            matches!(e.put("a", "cu", 1, big.clone(), false, 100), Err(Refusal::BadRequest(d)) if d.contains("port ranges")),
            "escalate = always: refused as before"
        );
        let exceeded = Noted {
            by_traffic: true,
            ..Default::default()
        };
        let mut e = engine(&exceeded);
        assert!(matches!(
            e.put("a", "cu", 1, big, false, 100),
            Ok(PutOutcome::Created { .. })
        ));
        assert!(e.mitigator().installed().is_empty(), "nothing here");
        assert_eq!(
            e.status("cu", Some(1), 100).unwrap()[0].status,
            Status::InProgress
        );
        let why = last(&exceeded.changed).unfit.expect("unfit");
        assert!(why.contains("17 port ranges"), "{why}");
        // A malformed spec is still the client's to fix.
        let mut reversed = scope();
        reversed.target_port_range = vec![PortRange {
            lower: 9,
            upper: Some(1),
        }];
        assert!(matches!(
            e.put("a", "cu", 2, reversed, false, 100),
            Err(Refusal::BadRequest(_))
        ));
    }
}
