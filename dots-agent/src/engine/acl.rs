//! The data channel's ACLs in the datapath (RFC 8783 §7). A client's live entries
//! (`immediate` ones always, `activate-when-mitigating` ones while it has a mitigation in
//! the datapath) ride at the end of each of its mitigations' specs, and on its *baseline*: a
//! datapath mitigation of the client's own over its configured prefixes (minus any prefix
//! one of its mitigations holds exactly, as a prefix belongs to one mitigation), with only
//! those entries and no countermeasures; traffic no entry matches passes as before.
//!
//! Statistics add an entry's counters over the baseline and the mitigations, plus what it
//! counted inside mitigations that have ended (stored, so they survive restarts). The data
//! channel tells the engine when a client's entries change ([`Engine::set_acls`]); each of
//! the client's mitigations whose spec changes is then installed once, and its baseline.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ipnet::IpNet;
use xdp_common::Counter;

use super::journal::{self, Change, JournalError};
use super::{refusal, AclEntries, Engine, Refusal};
use crate::datapath::compile::{self, name_hash};
use crate::datapath::{
    AclEntry, DatapathError, DatapathId, MitigationCounters, MitigationSpec, Mitigator,
};
use crate::signal::message::ActivationType;

/// `retired` of one client as stored: (entry name hash, packets, bytes).
type StoredCounts = Vec<(u64, u64, u64)>;

#[derive(Clone, Debug, Default)]
struct ClientAcls {
    /// Its entries in order, with their activation, as the data channel last told.
    entries: AclEntries,
    /// Counts of entries that ran inside mitigations since removed, by name hash.
    retired: HashMap<u64, Counter>,
}

/// Every client's ACLs, and how the current operation found them.
#[derive(Default)]
pub(super) struct Acls {
    clients: BTreeMap<String, ClientAcls>,
    before: Vec<(String, Option<ClientAcls>)>,
    /// Clients whose retired counts changed since the last commit.
    counts_touched: BTreeSet<String>,
}

impl Acls {
    /// The client's entries that are live: immediate ones, and activate-when-mitigating
    /// ones if it is `mitigating`.
    pub fn live(&self, client: &str, mitigating: bool) -> Vec<AclEntry> {
        self.clients
            .get(client)
            .map(|a| {
                a.entries
                    .iter()
                    .filter(|(t, _)| {
                        *t == ActivationType::Immediate
                            || (*t == ActivationType::ActivateWhenMitigating && mitigating)
                    })
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn remember(&mut self, client: &str) {
        if !self.before.iter().any(|(c, _)| c == client) {
            self.before
                .push((client.to_string(), self.clients.get(client).cloned()));
        }
    }

    /// Sets the client's entries; counts of entries that no longer exist are forgotten
    /// (a new ACL starts at 0).
    fn set_entries(&mut self, client: &str, entries: AclEntries) {
        self.remember(client);
        let names: HashSet<u64> = entries.iter().map(|(_, e)| name_hash(&e.name)).collect();
        let a = self.clients.entry(client.to_string()).or_default();
        a.entries = entries;
        let before = a.retired.len();
        a.retired.retain(|k, _| names.contains(k));
        if a.retired.len() != before {
            self.counts_touched.insert(client.to_string());
        }
    }

    /// Keeps what a mitigation's ACL entries counted before it left the datapath.
    pub fn retire(&mut self, client: &str, counters: &MitigationCounters) {
        if counters.acl.is_empty() {
            return;
        }
        self.remember(client);
        let retired = &mut self.clients.entry(client.to_string()).or_default().retired;
        for a in &counters.acl {
            retired.entry(a.name_hash).or_default().add(&a.matched);
        }
        self.counts_touched.insert(client.to_string());
    }

    /// Loads what was stored (a restart): nothing to write.
    pub fn load(&mut self, client: &str, entries: AclEntries) {
        self.clients.entry(client.to_string()).or_default().entries = entries;
    }

    pub fn load_counts(&mut self, client: &str, doc: &str) -> Result<(), serde_json::Error> {
        let counts: StoredCounts = serde_json::from_str(doc)?;
        self.clients.entry(client.to_string()).or_default().retired = counts
            .into_iter()
            .map(|(h, packets, bytes)| (h, Counter { packets, bytes }))
            .collect();
        Ok(())
    }

    /// The retired counts to write.
    pub fn touched_counts(&self) -> Vec<Result<Change, JournalError>> {
        self.counts_touched
            .iter()
            .map(|client| {
                let doc: StoredCounts = self
                    .clients
                    .get(client)
                    .map(|a| {
                        a.retired
                            .iter()
                            .map(|(h, c)| (*h, c.packets, c.bytes))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Change::AclCounts {
                    client: client.clone(),
                    doc: Some(journal::document(&doc)?),
                })
            })
            .collect()
    }

    pub fn committed(&mut self) {
        self.before.clear();
        self.counts_touched.clear();
    }

    pub fn keep_pending(&mut self) {
        self.before.clear();
    }

    pub fn undo(&mut self) {
        for (client, was) in std::mem::take(&mut self.before).into_iter().rev() {
            match was {
                Some(a) => self.clients.insert(client, a),
                None => self.clients.remove(&client),
            };
        }
    }
}

impl<M: Mitigator> Engine<M> {
    /// Whether the client has a mitigation in the datapath (its activate-when-mitigating
    /// entries are live).
    pub(super) fn mitigating(&self, client: &str) -> bool {
        self.ledger.cuids_of(client).any(|cuid| {
            self.ledger
                .of(cuid)
                .is_some_and(|m| m.values().any(|m| m.installed))
        })
    }

    /// The client's baseline as it should be now (None: it should not exist), with
    /// `installing` the targets of a mitigation about to go in.
    pub(super) fn baseline_spec(
        &self,
        client: &str,
        installing: Option<&[IpNet]>,
    ) -> Option<MitigationSpec> {
        let mitigating = installing.is_some() || self.mitigating(client);
        let entries = self.acls.live(client, mitigating);
        if entries.is_empty() {
            return None;
        }
        let policy = self.policies.get(client)?;
        let held = |p: &IpNet| {
            installing.is_some_and(|t| t.contains(p))
                || self.ledger.iter().any(|(_, c, _, m)| {
                    c == client && m.installed && m.scope.target_prefix.contains(p)
                })
        };
        let targets: Vec<IpNet> = policy
            .prefixes
            .iter()
            .filter(|p| !held(p))
            .copied()
            .collect();
        if targets.is_empty() {
            return None;
        }
        let mut s = MitigationSpec::new(DatapathId::baseline(client).raw(), targets);
        s.acl = entries;
        Some(s)
    }

    /// Installs, replaces or removes the client's baseline as it should be now.
    pub(super) fn sync_baseline(
        &mut self,
        client: &str,
        installing: Option<&[IpNet]>,
    ) -> Result<(), DatapathError> {
        match self.baseline_spec(client, installing) {
            Some(spec) => self.dp.install(spec),
            None => self
                .dp
                .remove_installed(DatapathId::baseline(client))
                .map(|_| ()),
        }
    }

    /// The data channel changed a client: its ACL entries are now `entries` (None: they
    /// did not change), and `changes` are its documents to store with this operation. The
    /// datapath must be able to hold every entry that is not deactivated; on a refusal, or
    /// if the store cannot record it, nothing changes.
    pub fn set_acls(
        &mut self,
        client: &str,
        entries: Option<AclEntries>,
        changes: Vec<Change>,
    ) -> Result<(), Refusal> {
        let result = self.apply_acls(client, entries);
        self.staged.extend(changes.into_iter().map(Ok));
        self.finish(result)
    }

    pub(super) fn apply_acls(
        &mut self,
        client: &str,
        entries: Option<AclEntries>,
    ) -> Result<(), Refusal> {
        let Some(entries) = entries else {
            return Ok(());
        };
        let prefixes = self
            .policies
            .get(client)
            .map(|p| p.prefixes.clone())
            .unwrap_or_default();
        if !prefixes.is_empty() {
            let mut probe = MitigationSpec::new(DatapathId::baseline(client).raw(), prefixes);
            probe.acl = entries
                .iter()
                .filter(|(t, _)| *t != ActivationType::Deactivate)
                .map(|(_, e)| e.clone())
                .collect();
            compile::validate(&probe).map_err(|e| refusal(DatapathError::Spec(e)))?;
        }
        self.acls.set_entries(client, entries);
        self.reinstall_client(client)
    }

    /// Matched packets/octets per ACL entry name hash, summed over the client's baseline,
    /// its mitigations and those that have ended.
    pub fn acl_counters(&self, client: &str) -> HashMap<u64, Counter> {
        let mut out = self
            .acls
            .clients
            .get(client)
            .map(|a| a.retired.clone())
            .unwrap_or_default();
        let ids = self
            .ledger
            .iter()
            .filter(|(_, c, _, m)| *c == client && m.installed)
            .map(|(_, _, _, m)| m.id())
            .chain([DatapathId::baseline(client)]);
        for id in ids {
            if let Ok(Some(c)) = self.mitigator().counters(id.raw()) {
                for a in c.acl {
                    out.entry(a.name_hash).or_default().add(&a.matched);
                }
            }
        }
        out
    }

    /// Matched traffic per (client, data-channel ACL entry name), for metrics.
    pub fn acl_statistics(&self) -> Vec<(String, String, Counter)> {
        let mut out = Vec::new();
        for (client, a) in &self.acls.clients {
            if a.entries.is_empty() {
                continue;
            }
            let counts = self.acl_counters(client);
            for (_, e) in &a.entries {
                let c = counts.get(&name_hash(&e.name)).copied().unwrap_or_default();
                out.push((client.clone(), e.name.clone(), c));
            }
        }
        out
    }
}
