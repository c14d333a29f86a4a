//! The seam to an upstream DOTS server (a gateway's or a recursive server's, `upstream/`):
//! the engine tells it each change of a mitigation as part of the operation that makes it
//! (so what it stores is committed in the same transaction, and undone with it), and asks it
//! for the upstream share of a mitigation's status. The engine knows nothing of sessions.

use super::journal::{Change, JournalError};
use crate::signal::message::{Scope, Status};

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
    /// The upstream share of the status of the mitigation (None: not escalated).
    fn share(&self, cuid: &str, mid: u32) -> Option<UpstreamShare>;
    /// Lets the concrete type be reached (what upstream reported goes to it).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

use super::{Engine, Mitigation};
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
        let Some(e) = self.escalation.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (cuid, mid, m) in self.ledger.touched() {
            let view = m.map(|(client, m): (&str, &Mitigation)| Escalated {
                client,
                scope: &m.scope,
                status: m.status,
                expires: m.expires,
                terminating_until: m.terminating_until,
            });
            out.extend(e.mitigation_changed(&cuid, mid, view));
        }
        out
    }

    pub(super) fn upstream_share(&self, cuid: &str, mid: u32) -> Option<UpstreamShare> {
        self.escalation.as_ref()?.share(cuid, mid)
    }
}
