//! A reload of server.toml's clients (SIGHUP or `dots-agent server reload`): new policies
//! take effect at once, for the mitigations already active too, or not at all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ClientPolicy, Engine, Refusal};
use crate::datapath::Mitigator;

/// What a reload changed, by client name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChanges {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    /// Clients no longer configured: their requests are refused from now on (4.01); the
    /// mitigations they hold stay until they end or are withdrawn.
    pub removed: Vec<String>,
    /// Active mitigations installed again under a changed policy.
    pub reinstalled: usize,
}

impl<M: Mitigator> Engine<M> {
    /// Replaces the clients' policies. Each client whose policy changed has its active
    /// mitigations (and its ACL baseline) installed again under the new one, all in one
    /// operation: if one cannot be installed, everything is put back and the running
    /// policies stay.
    pub fn reload_policies(
        &mut self,
        policies: Vec<ClientPolicy>,
        talker_drop: Vec<String>,
    ) -> Result<PolicyChanges, Refusal> {
        let new: BTreeMap<String, ClientPolicy> =
            policies.into_iter().map(|p| (p.name.clone(), p)).collect();
        let mut changes = PolicyChanges::default();
        for (name, p) in &new {
            match self.policies.get(name) {
                None => changes.added.push(name.clone()),
                Some(old) if old != p => changes.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        changes.removed = self
            .policies
            .keys()
            .filter(|n| !new.contains_key(*n))
            .cloned()
            .collect();
        let old = std::mem::replace(&mut self.policies, new);
        let old_drop =
            std::mem::replace(&mut self.drop_talkers_of, talker_drop.into_iter().collect());
        let mut result = Ok(());
        for client in changes.changed.iter().chain(&changes.added) {
            changes.reinstalled += self
                .ledger
                .iter()
                .filter(|(_, c, _, m)| c == client && m.installed)
                .count();
            if let Err(r) = self.reinstall_client(client) {
                result = Err(match r {
                    Refusal::BadRequest(d) | Refusal::Unavailable(d) => {
                        Refusal::BadRequest(format!("client {client}: {d}"))
                    }
                    other => other,
                });
                break;
            }
        }
        if result.is_err() {
            self.policies = old;
            self.drop_talkers_of = old_drop;
        }
        self.finish(result.map(|()| changes))
    }
}
