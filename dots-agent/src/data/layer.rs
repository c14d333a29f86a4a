//! Puts data-channel ACLs into the datapath. [`AclLayer`] wraps the real [`Mitigator`]
//! between the signal engine and the XDP maps:
//!
//! - every mitigation the engine installs gets its client's live ACL entries appended
//!   (the client is the one whose configured prefixes hold the targets);
//! - each client with live entries has one more datapath mitigation of its own, the
//!   *baseline*: its configured prefixes (minus any prefix one of its mitigations holds
//!   exactly, as a prefix belongs to one mitigation) with only those ACL entries, no
//!   countermeasures; traffic no entry matches passes as before.
//!
//! Live entries: `immediate` ACLs always, `activate-when-mitigating` ones while the client
//! has at least one installed mitigation. Statistics add an entry's counters over the
//! baseline and the mitigations, plus what it counted inside mitigations that have ended
//! (kept in the store). The engine sees only its own mitigations
//! (baselines are hidden from `installed()`); the data channel drives the rest through an
//! [`AclHandle`]. Both share one lock, taken after the engine's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use xdp_common::Counter;

use super::model::Activation;
use crate::datapath::compile::{self, name_hash};
use crate::datapath::{AclEntry, DatapathError, MitigationCounters, MitigationSpec, Mitigator};

/// Datapath ids from here up are baselines (the engine counts up from 1).
pub const BASELINE_BASE: u64 = 1 << 62;

struct Layer {
    inner: Box<dyn Mitigator>,
    /// Client name -> configured prefixes.
    prefixes: BTreeMap<String, Vec<IpNet>>,
    /// What the engine installed, as it asked, with the client it belongs to.
    engine_specs: BTreeMap<u64, (String, MitigationSpec)>,
    /// Client name -> its ACL entries in order, with their activation.
    acls: BTreeMap<String, Vec<(Activation, AclEntry)>>,
    /// Client name -> ACL counts of entries that ran inside mitigations since removed
    /// (by entry name hash), so statistics do not fall back when a mitigation ends.
    retired: BTreeMap<String, HashMap<u64, Counter>>,
    /// Where `retired` is kept across restarts (None: memory only).
    store: Option<crate::store::Store>,
}

/// `retired` of one client as stored: (name hash, packets, bytes).
type StoredCounts = Vec<(u64, u64, u64)>;

/// The [`Mitigator`] the engine gets.
pub struct AclLayer {
    shared: Arc<Mutex<Layer>>,
}

/// The data channel's side of the same layer.
#[derive(Clone)]
pub struct AclHandle {
    shared: Arc<Mutex<Layer>>,
}

fn baseline_id(client: &str) -> u64 {
    BASELINE_BASE + (name_hash(client) & 0xffff_ffff)
}

impl AclLayer {
    /// Wraps `inner`; `prefixes` are each configured client's prefixes.
    pub fn new(
        inner: Box<dyn Mitigator>,
        prefixes: BTreeMap<String, Vec<IpNet>>,
    ) -> (AclLayer, AclHandle) {
        let shared = Arc::new(Mutex::new(Layer {
            inner,
            prefixes,
            engine_specs: BTreeMap::new(),
            acls: BTreeMap::new(),
            retired: BTreeMap::new(),
            store: None,
        }));
        (
            AclLayer {
                shared: shared.clone(),
            },
            AclHandle { shared },
        )
    }
}

fn lock(m: &Mutex<Layer>) -> MutexGuard<'_, Layer> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Layer {
    fn owner(&self, targets: &[IpNet]) -> Option<String> {
        self.prefixes
            .iter()
            .find(|(_, allowed)| {
                targets
                    .iter()
                    .all(|t| allowed.iter().any(|a| a.contains(t)))
            })
            .map(|(name, _)| name.clone())
    }

    fn persist_retired(&self, client: &str) {
        let Some(store) = &self.store else { return };
        let doc: StoredCounts = self
            .retired
            .get(client)
            .map(|m| m.iter().map(|(h, c)| (*h, c.packets, c.bytes)).collect())
            .unwrap_or_default();
        if let Err(e) = store.put_acl_counts(client, &doc) {
            tracing::error!("store: ACL counts of {client}: {e:#}");
        }
    }

    fn mitigating(&self, client: &str) -> bool {
        self.engine_specs.values().any(|(c, _)| c == client)
    }

    fn live_entries(&self, client: &str) -> Vec<AclEntry> {
        let mitigating = self.mitigating(client);
        self.acls
            .get(client)
            .map(|list| {
                list.iter()
                    .filter(|(a, _)| {
                        *a == Activation::Immediate
                            || (*a == Activation::WhenMitigating && mitigating)
                    })
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn merged(&self, client: Option<&str>, spec: &MitigationSpec) -> MitigationSpec {
        let mut s = spec.clone();
        if let Some(c) = client {
            s.acl.extend(self.live_entries(c));
        }
        s
    }

    /// The client's baseline as it should be now (None: it should not exist).
    fn baseline(&self, client: &str) -> Option<MitigationSpec> {
        let entries = self.live_entries(client);
        if entries.is_empty() {
            return None;
        }
        let held: Vec<IpNet> = self
            .engine_specs
            .values()
            .filter(|(c, _)| c == client)
            .flat_map(|(_, s)| s.targets.iter().copied())
            .collect();
        let targets: Vec<IpNet> = self
            .prefixes
            .get(client)?
            .iter()
            .filter(|p| !held.contains(p))
            .copied()
            .collect();
        if targets.is_empty() {
            return None;
        }
        let mut s = MitigationSpec::new(baseline_id(client), targets);
        s.acl = entries;
        Some(s)
    }

    fn sync_baseline(&mut self, client: &str) -> Result<(), DatapathError> {
        match self.baseline(client) {
            Some(spec) => self.inner.install(&spec),
            None => self.inner.remove(baseline_id(client)).map(|_| ()),
        }
    }

    /// Re-installs the client's mitigations with its live entries, and its baseline.
    fn sync_client(&mut self, client: &str) -> Result<(), DatapathError> {
        self.sync_baseline(client)?;
        let ids: Vec<u64> = self
            .engine_specs
            .iter()
            .filter(|(_, (c, _))| c == client)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let spec = self.merged(Some(client), &self.engine_specs[&id].1);
            self.inner.install(&spec)?;
        }
        Ok(())
    }
}

impl Mitigator for AclLayer {
    fn install(&mut self, spec: &MitigationSpec) -> Result<(), DatapathError> {
        let mut l = lock(&self.shared);
        let client = l.owner(&spec.targets);
        let Some(client) = client else {
            return l.inner.install(spec);
        };
        let previous = l
            .engine_specs
            .insert(spec.id, (client.clone(), spec.clone()));
        // Free exact prefixes from the baseline first, then install the merged spec. A
        // baseline that cannot be updated is logged: the mitigation's own install decides.
        if let Err(e) = l.sync_baseline(&client) {
            tracing::error!("ACL baseline of {client}: {e}");
        }
        let merged = l.merged(Some(&client), spec);
        let result = l.inner.install(&merged);
        match result {
            Ok(()) => {
                // Activate-when-mitigating entries may just have become live elsewhere.
                if let Err(e) = l.sync_client(&client) {
                    tracing::error!("ACLs of {client}: {e}");
                }
                Ok(())
            }
            Err(e) => {
                match previous {
                    Some(p) => l.engine_specs.insert(spec.id, p),
                    None => l.engine_specs.remove(&spec.id),
                };
                if let Err(e) = l.sync_client(&client) {
                    tracing::error!("ACLs of {client}: {e}");
                }
                Err(e)
            }
        }
    }

    fn remove(&mut self, id: u64) -> Result<Option<MitigationCounters>, DatapathError> {
        let mut l = lock(&self.shared);
        let out = l.inner.remove(id)?;
        if let Some((client, _)) = l.engine_specs.remove(&id) {
            let retired = l.retired.entry(client.clone()).or_default();
            for a in out.iter().flat_map(|c| &c.acl) {
                retired.entry(a.name_hash).or_default().add(&a.matched);
            }
            l.persist_retired(&client);
            if let Err(e) = l.sync_client(&client) {
                tracing::error!("ACLs of {client}: {e}");
            }
        }
        Ok(out)
    }

    fn counters(&self, id: u64) -> Result<Option<MitigationCounters>, DatapathError> {
        lock(&self.shared).inner.counters(id)
    }

    fn installed(&self) -> Vec<u64> {
        let mut ids = lock(&self.shared).inner.installed();
        ids.retain(|id| *id < BASELINE_BASE);
        ids
    }

    fn occupancy(&self) -> Vec<(&'static str, usize, usize)> {
        lock(&self.shared).inner.occupancy()
    }

    fn interfaces(&self) -> Vec<(String, xdp_common::InterfaceStats)> {
        lock(&self.shared).inner.interfaces()
    }

    fn top_talkers(&self, id: u64, n: usize) -> Vec<(std::net::IpAddr, Counter)> {
        lock(&self.shared).inner.top_talkers(id, n)
    }

    fn acl_statistics(&self) -> Vec<(String, String, Counter)> {
        let handle = AclHandle {
            shared: self.shared.clone(),
        };
        let clients: Vec<(String, Vec<String>)> = lock(&self.shared)
            .acls
            .iter()
            .map(|(c, entries)| {
                (
                    c.clone(),
                    entries.iter().map(|(_, e)| e.name.clone()).collect(),
                )
            })
            .collect();
        let mut out = Vec::new();
        for (client, names) in clients {
            let counts = handle.acl_counters(&client);
            for name in names {
                let c = counts.get(&name_hash(&name)).copied().unwrap_or_default();
                out.push((client.clone(), name, c));
            }
        }
        out
    }
}

impl AclHandle {
    /// Checks that the datapath can hold these entries (all of them, live or not), then
    /// makes them the client's ACLs and updates the datapath. On an error nothing changes.
    pub fn set_client_acls(
        &self,
        client: &str,
        entries: Vec<(Activation, AclEntry)>,
    ) -> Result<(), DatapathError> {
        let mut l = lock(&self.shared);
        let targets = l.prefixes.get(client).cloned().unwrap_or_default();
        if !targets.is_empty() {
            let mut probe = MitigationSpec::new(baseline_id(client), targets);
            probe.acl = entries
                .iter()
                .filter(|(a, _)| *a != Activation::Deactivate)
                .map(|(_, e)| e.clone())
                .collect();
            compile::validate(&probe)?;
        }
        let names: std::collections::HashSet<u64> =
            entries.iter().map(|(_, e)| name_hash(&e.name)).collect();
        let previous = l.acls.insert(client.to_string(), entries);
        if let Err(e) = l.sync_client(client) {
            match previous {
                Some(p) => l.acls.insert(client.to_string(), p),
                None => l.acls.remove(client),
            };
            if let Err(again) = l.sync_client(client) {
                tracing::error!("ACLs of {client} could not be restored: {again}");
            }
            return Err(e);
        }
        // Counts of entries that no longer exist are forgotten (a new ACL starts at 0).
        if let Some(r) = l.retired.get_mut(client) {
            let before = r.len();
            r.retain(|k, _| names.contains(k));
            if r.len() != before {
                l.persist_retired(client);
            }
        }
        Ok(())
    }

    /// Keeps the counts of ended mitigations' ACL entries in `store` (and reads what an
    /// earlier run left there), so statistics survive restarts.
    pub fn keep_counts_in(&self, store: crate::store::Store) -> anyhow::Result<()> {
        let mut l = lock(&self.shared);
        for (client, doc) in store.acl_counts::<StoredCounts>()? {
            let m = doc
                .into_iter()
                .map(|(h, packets, bytes)| (h, Counter { packets, bytes }))
                .collect();
            l.retired.insert(client, m);
        }
        l.store = Some(store);
        Ok(())
    }

    /// Sets the client's ACLs without touching the datapath (loading from the store before
    /// the engine restores its mitigations); [`AclHandle::sync_all`] installs them.
    pub fn load_client_acls(&self, client: &str, entries: Vec<(Activation, AclEntry)>) {
        lock(&self.shared).acls.insert(client.to_string(), entries);
    }

    /// Installs every client's baseline and removes baselines nobody needs (after a
    /// restart: what the previous run left pinned).
    pub fn sync_all(&self) {
        let mut l = lock(&self.shared);
        let clients: Vec<String> = l.prefixes.keys().cloned().collect();
        let wanted: Vec<u64> = clients.iter().map(|c| baseline_id(c)).collect();
        for id in l.inner.installed() {
            if id >= BASELINE_BASE && !wanted.contains(&id) {
                let _ = l.inner.remove(id);
            }
        }
        for c in clients {
            if let Err(e) = l.sync_client(&c) {
                tracing::error!("ACLs of {c}: {e}");
            }
        }
    }

    /// Matched packets/octets per ACL entry name hash, summed over the client's baseline and
    /// its mitigations (counters of entries live nowhere are absent).
    pub fn acl_counters(&self, client: &str) -> HashMap<u64, Counter> {
        let l = lock(&self.shared);
        let mut ids: Vec<u64> = l
            .engine_specs
            .iter()
            .filter(|(_, (c, _))| c == client)
            .map(|(id, _)| *id)
            .collect();
        ids.push(baseline_id(client));
        let mut out: HashMap<u64, Counter> = l.retired.get(client).cloned().unwrap_or_default();
        for id in ids {
            if let Ok(Some(c)) = l.inner.counters(id) {
                for a in c.acl {
                    out.entry(a.name_hash).or_default().add(&a.matched);
                }
            }
        }
        out
    }

    /// Whether the client has an installed mitigation (activate-when-mitigating is live).
    pub fn mitigating(&self, client: &str) -> bool {
        lock(&self.shared).mitigating(client)
    }

    /// Runs `f` on the wrapped datapath (tests read specs and set counters through it).
    pub fn with_inner<R>(&self, f: impl FnOnce(&mut dyn Mitigator) -> R) -> R {
        let mut l = lock(&self.shared);
        f(l.inner.as_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{AclAction, AclMatch, MemoryMitigator};

    fn drop_from(name: &str, src: &str) -> AclEntry {
        AclEntry {
            name: name.into(),
            matches: AclMatch {
                source: Some(src.parse().unwrap()),
                ..Default::default()
            },
            action: AclAction::Drop,
        }
    }

    fn layer() -> (AclLayer, AclHandle) {
        let prefixes = [("a".to_string(), vec!["198.51.100.0/24".parse().unwrap()])].into();
        AclLayer::new(Box::new(MemoryMitigator::new()), prefixes)
    }

    fn inner_ids(h: &AclHandle) -> Vec<u64> {
        h.with_inner(|m| m.installed())
    }

    #[test]
    fn immediate_acls_are_live_at_once_and_when_mitigating_only_with_a_mitigation() {
        let (mut layer, h) = layer();
        h.set_client_acls(
            "a",
            vec![
                (Activation::Immediate, drop_from("now", "192.0.2.0/24")),
                (
                    Activation::WhenMitigating,
                    drop_from("later", "203.0.113.0/24"),
                ),
                (Activation::Deactivate, drop_from("off", "203.0.113.0/25")),
            ],
        )
        .unwrap();
        let base = baseline_id("a");
        assert_eq!(inner_ids(&h), vec![base]);
        // The memory datapath keeps one counter per ACL entry of a spec.
        let acl_len = |h: &AclHandle, id: u64| {
            h.with_inner(|m| m.counters(id).unwrap().map(|c| c.acl.len()))
                .unwrap_or(0)
        };
        assert_eq!(acl_len(&h, base), 1, "only the immediate entry");
        assert!(
            layer.installed().is_empty(),
            "the engine does not see baselines"
        );
        // A mitigation of the whole /24 takes the prefix from the baseline.
        layer
            .install(&MitigationSpec::new(
                1,
                vec!["198.51.100.0/24".parse().unwrap()],
            ))
            .unwrap();
        assert_eq!(
            inner_ids(&h),
            vec![1],
            "baseline gone: its only prefix is held"
        );
        assert_eq!(acl_len(&h, 1), 2, "immediate + when-mitigating merged");
        assert!(h.mitigating("a"));
        layer.remove(1).unwrap();
        assert_eq!(inner_ids(&h), vec![base]);
        assert_eq!(acl_len(&h, base), 1, "when-mitigating off again");
    }

    #[test]
    fn a_narrow_mitigation_keeps_the_baseline_and_counters_sum() {
        let (mut layer, h) = layer();
        h.set_client_acls(
            "a",
            vec![(Activation::WhenMitigating, drop_from("x", "192.0.2.0/24"))],
        )
        .unwrap();
        assert!(
            inner_ids(&h).is_empty(),
            "nothing live without a mitigation"
        );
        layer
            .install(&MitigationSpec::new(
                7,
                vec!["198.51.100.7/32".parse().unwrap()],
            ))
            .unwrap();
        assert_eq!(inner_ids(&h), vec![7, baseline_id("a")]);
        let hash = name_hash("x");
        let c = h.acl_counters("a");
        assert_eq!(c.get(&hash).map(|c| c.packets), Some(0));
    }

    #[test]
    fn entries_the_datapath_cannot_hold_change_nothing() {
        let (_layer, h) = layer();
        h.set_client_acls(
            "a",
            vec![(Activation::Immediate, drop_from("x", "192.0.2.0/24"))],
        )
        .unwrap();
        let dup = vec![
            (Activation::Immediate, drop_from("y", "192.0.2.0/24")),
            (Activation::WhenMitigating, drop_from("y", "192.0.2.0/25")),
        ];
        assert!(h.set_client_acls("a", dup).is_err());
        assert_eq!(h.acl_counters("a").len(), 1, "the old entry still live");
    }
}
