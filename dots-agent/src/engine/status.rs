//! What a client reads: the status of its mitigations (RFC 9132 §4.4.2) with the datapath's
//! counters and drop rates, and the views metrics take.

use super::{Engine, Mitigation, MitigationView, Refusal, RATE_WINDOW};
use crate::datapath::Mitigator;
use crate::signal::message::{Lifetime, MitigationStatus, Scope, Status};

impl<M: Mitigator> Engine<M> {
    /// The status to report: attack-stopped (3) once an active one has gone quiet.
    pub(super) fn shown_status(&self, m: &Mitigation, now: u64) -> Status {
        if m.status == Status::SuccessfullyMitigated && m.quiet(self.attack_quiet, now) {
            Status::Stopped
        } else {
            m.status
        }
    }

    pub(super) fn counters(&self, m: &Mitigation) -> Option<crate::datapath::MitigationCounters> {
        if !m.installed {
            return None;
        }
        self.dp.mitigator().counters(m.id().raw()).ok().flatten()
    }

    /// Every mitigation with its status and datapath counters (for metrics), the
    /// operator's included.
    pub fn views(&self, now: u64) -> Vec<MitigationView> {
        self.ledger
            .iter()
            .map(|(_, client, mid, m)| MitigationView {
                client: client.to_string(),
                mid,
                status: self.shown_status(m, now),
                counters: self.counters(m),
                client_attack: m.client_attack.clone(),
                cdid: m.cdid.clone(),
            })
            .chain(self.operator_views())
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
        let mut selected: Vec<(u32, &Mitigation)> = match (self.ledger.of(cuid), mid) {
            (Some(m), Some(mid)) => m.get(&mid).map(|x| vec![(mid, x)]).unwrap_or_default(),
            (Some(m), None) => m.iter().map(|(k, v)| (*k, v)).collect(),
            (None, _) => Vec::new(),
        };
        // A gateway's GET for one client domain (cdid) reads that domain's mitigations.
        if self.request_cdid().is_some() {
            selected.retain(|(_, m)| self.same_domain(m));
        }
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
                // With FlowSpec nodes counted (announce.rs), the whole fleet's drops.
                let local = counters.as_ref().map(|c| c.dropped_total());
                let dropped = self.with_fleet(local, &m.scope.target_prefix);
                let rate = dropped.and_then(|d| self.drop_rate(m.datapath_id, d, now));
                let mut status = self.shown_status(m, now);
                let (mut bytes, mut bps) = (dropped.map(|d| d.bytes), rate.map(|r| r.0));
                let (mut pkts, mut pps) = (dropped.map(|d| d.packets), rate.map(|r| r.1));
                let mut conflict = None;
                // Escalated: upstream's drops count too (draft-ietf-dots-architecture
                // §3.2.3: the recursed mitigation's counters are incorporated).
                if let Some(up) = self.upstream_share(cuid, mid) {
                    let add = |v: Option<u64>, x: u64| Some(v.unwrap_or(0).saturating_add(x));
                    bytes = add(bytes, up.bytes_dropped);
                    bps = add(bps, up.bps_dropped);
                    pkts = add(pkts, up.pkts_dropped);
                    pps = add(pps, up.pps_dropped);
                    let in_force = matches!(
                        status,
                        Status::InProgress | Status::SuccessfullyMitigated | Status::Stopped
                    );
                    // Not installed here (its spec did not fit): upstream's status is
                    // the mitigation's.
                    let held_upstream_only = (!m.installed).then_some(up.upstream).flatten();
                    if let (Some(s), true) = (up.status.or(held_upstream_only), in_force) {
                        status = s;
                    }
                    conflict = up.conflict_information.filter(|_| in_force);
                }
                MitigationStatus {
                    mid,
                    scope: Scope {
                        lifetime: remaining,
                        ..m.scope.clone()
                    },
                    mitigation_start: m.start,
                    status,
                    bytes_dropped: bytes,
                    bps_dropped: bps,
                    pkts_dropped: pkts,
                    pps_dropped: pps,
                    telemetry: client.and_then(|c| self.status_telemetry(c, m)),
                    conflict_information: conflict,
                }
            })
            .collect())
    }

    /// Drop rate (bit/s, packets/s) of a datapath mitigation since an earlier reading at
    /// least RATE_WINDOW old (readings are taken as status is asked for, which Observe
    /// and clients do regularly). None until two readings are far enough apart.
    pub(super) fn drop_rate(
        &self,
        id: u64,
        now_total: xdp_common::Counter,
        now: u64,
    ) -> Option<(u64, u64)> {
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
