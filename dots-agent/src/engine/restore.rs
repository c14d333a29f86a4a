//! A restart: the engine takes back what the store held and puts each active mitigation
//! into the datapath once, replacing what the previous run left pinned.

use super::journal::{Change, JournalError, Snapshot};
use super::record::Record;
use super::{AclEntries, Engine, Status};
use crate::datapath::{DatapathId, Mitigator};
use crate::signal::session_config::SessionConfig;
use crate::signal::telemetry::TelemetrySetup;

/// The stored rows that do not decode, each named with what it is (empty: all readable).
/// A server does not start on such a store: a skipped row would drop its rule.
pub fn unreadable(snapshot: &Snapshot) -> Vec<String> {
    fn check<T: serde::de::DeserializeOwned>(out: &mut Vec<String>, what: String, doc: &str) {
        if let Err(e) = serde_json::from_str::<T>(doc) {
            out.push(format!("{what}: {e}"));
        }
    }
    let mut out = Vec::new();
    for (cuid, mid, doc) in &snapshot.mitigations {
        check::<Record>(&mut out, format!("mitigation {mid} of {cuid}"), doc);
    }
    for (client, doc) in &snapshot.session_configs {
        check::<SessionConfig>(&mut out, format!("session configuration of {client}"), doc);
    }
    for (client, doc) in &snapshot.telemetry_setups {
        check::<TelemetrySetup>(&mut out, format!("telemetry setup of {client}"), doc);
    }
    for (client, doc) in &snapshot.acl_counts {
        check::<Vec<(u64, u64, u64)>>(&mut out, format!("ACL counts of {client}"), doc);
    }
    for (id, doc) in &snapshot.operator_mitigations {
        if id.parse::<u32>().is_err() {
            out.push(format!("operator mitigation {id:?}: not an id"));
        }
        check::<crate::datapath::MitigationSpec>(
            &mut out,
            format!("operator mitigation {id}"),
            doc,
        );
    }
    out.extend(crate::data::state::unreadable(&snapshot.data_clients));
    out
}

impl<M: Mitigator> Engine<M> {
    /// Restores session configurations, telemetry setups, the data channel's ACL entries
    /// (`acls`, by client) with what they counted, and mitigations. Datapath rules nobody
    /// owns any more are removed first; then each client's baseline and each active
    /// mitigation is installed once. Lifetimes kept counting while the agent was down:
    /// expired ones end at the next tick. `changes` (the data channel's clean-up) are
    /// committed with the engine's own. Unreadable rows are reported and skipped. Returns
    /// how many mitigations were restored.
    pub fn restore(
        &mut self,
        snapshot: &Snapshot,
        acls: Vec<(String, AclEntries)>,
        changes: Vec<Change>,
        now: u64,
    ) -> Result<usize, JournalError> {
        for (client, doc) in &snapshot.session_configs {
            match serde_json::from_str::<SessionConfig>(doc) {
                Ok(c) => {
                    self.configs.insert(client.clone(), c);
                }
                Err(e) => tracing::error!(
                    "stored session configuration of {client} is unreadable, skipped: {e}"
                ),
            }
        }
        for (client, doc) in &snapshot.telemetry_setups {
            match serde_json::from_str::<TelemetrySetup>(doc) {
                Ok(t) => self.load_setup(client, t),
                Err(e) => tracing::error!(
                    "stored telemetry setup of {client} is unreadable, skipped: {e}"
                ),
            }
        }
        for (client, entries) in acls {
            self.acls.load(&client, entries);
        }
        for (client, doc) in &snapshot.acl_counts {
            if let Err(e) = self.acls.load_counts(client, doc) {
                tracing::error!("stored ACL counts of {client} are unreadable, skipped: {e}");
            }
        }
        self.staged.extend(changes.into_iter().map(Ok));
        self.restore_operators(&snapshot.operator_mitigations);
        let mut restored = 0;
        for (cuid, mid, doc) in &snapshot.mitigations {
            let record: Record = match serde_json::from_str(doc) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(
                        "stored mitigation {mid} of {cuid} is unreadable, skipped: {e}"
                    );
                    continue;
                }
            };
            let (client, m) = record.mitigation();
            self.next_id = self.next_id.max(m.datapath_id + 1);
            if m.installed && !self.policies.contains_key(&client) {
                tracing::warn!("stored mitigation {mid} of {cuid}: client {client} is no longer configured; dropped");
                self.stage(Ok(Change::Mitigation {
                    cuid: cuid.clone(),
                    mid: *mid,
                    doc: None,
                }));
                continue;
            }
            self.ledger.load(cuid, &client, *mid, m);
            restored += 1;
        }
        let derived: Vec<(String, String)> = self
            .ledger
            .iter()
            .map(|(cuid, client, _, _)| (cuid.to_string(), client.to_string()))
            .collect();
        self.restore_cuids(&snapshot.cuid_bindings, derived);
        // Pinned rules no stored mitigation or baseline owns: a crash between a removal
        // and its record, or a client no longer configured.
        let clients: Vec<String> = self.policies.keys().cloned().collect();
        let mut wanted: std::collections::HashSet<u64> = self
            .ledger
            .iter()
            .filter(|(_, _, _, m)| m.installed)
            .map(|(_, _, _, m)| m.id().raw())
            .collect();
        wanted.extend(
            clients
                .iter()
                .filter(|c| self.baseline_spec(c, None).is_some())
                .map(|c| DatapathId::baseline(c).raw()),
        );
        wanted.extend(
            self.operators
                .ids()
                .map(|id| DatapathId::Operator(id).raw()),
        );
        for raw in self.mitigator().installed() {
            if let DatapathId::Operator(n) = DatapathId::from_raw(raw) {
                if !wanted.contains(&raw) {
                    // Never deleted silently: the operator put it there.
                    tracing::warn!(
                        "the pinned filter holds operator mitigation {n}, which this server's \
                         store does not know (added while no server ran): kept; add it through \
                         the server (`dots-agent xdp mitigation add FILE`) to store it, or \
                         remove it (`dots-agent xdp mitigation remove {n}`)"
                    );
                }
                continue;
            }
            if !wanted.contains(&raw) {
                let id = DatapathId::from_raw(raw);
                tracing::warn!(
                    "removing {id} from the pinned filter: no stored mitigation owns it"
                );
                if let Err(e) = self.dp.remove(id) {
                    tracing::error!("removing {id}: {e}");
                }
            }
        }
        for client in &clients {
            if let Err(e) = self.sync_baseline(client, None) {
                tracing::error!("ACL baseline of {client}: {e}");
            }
        }
        let active: Vec<(String, String, u32)> = self
            .ledger
            .iter()
            .filter(|(_, _, _, m)| m.installed)
            .map(|(cuid, client, mid, _)| (cuid.to_string(), client.to_string(), mid))
            .collect();
        for (cuid, client, mid) in active {
            let (Some(mut m), Some(policy)) = (
                self.ledger.get(&cuid, mid).cloned(),
                self.policies.get(&client).cloned(),
            ) else {
                continue;
            };
            let (status, start) = (m.status, m.start);
            m.installed = false;
            m.status = match self.put_in(&mut m, &policy, start.unwrap_or(now)) {
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
            self.ledger.load(&cuid, &client, mid, m);
        }
        // A mitigation that could not go back leaves its prefixes to the baseline.
        for client in &clients {
            if let Err(e) = self.sync_baseline(client, None) {
                tracing::error!("ACL baseline of {client}: {e}");
            }
        }
        self.commit()?;
        Ok(restored)
    }
}
