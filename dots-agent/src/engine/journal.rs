//! Persistence as the core sees it: each accepted change becomes a list of [`Change`]s (JSON
//! documents by key, or their deletion), and a [`Journal`] writes the list as one
//! transaction. The engine answers a request only after its commit, and undoes the request
//! (state and datapath) when the commit fails. At start the shell hands the engine and the
//! data channel a [`Snapshot`] of what was stored. The documents' formats belong to the core;
//! the store only keeps them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// One stored document written or deleted (`doc: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A mitigation request and its state.
    Mitigation {
        cuid: String,
        mid: u32,
        doc: Option<String>,
    },
    /// A client's session configuration (RFC 9132 §4.5).
    SessionConfig { client: String, doc: Option<String> },
    /// A client's telemetry setup (RFC 9244 §7).
    TelemetrySetup { client: String, doc: Option<String> },
    /// A data-channel client: registration, aliases and ACLs (RFC 8783).
    DataClient { cuid: String, doc: Option<String> },
    /// Counts of a client's ACL entries inside mitigations that have ended.
    AclCounts { client: String, doc: Option<String> },
    /// An operator's own mitigation (its spec, with the operator's id).
    Operator { id: u32, doc: Option<String> },
    /// The client holding a cuid (RFC 9132 §4.4.1.1; None: released).
    CuidBinding {
        cuid: String,
        client: Option<String>,
    },
    /// A downstream mitigation relayed upstream (gateway, recursion): its upstream mid and
    /// what was relayed, keyed by `cuid/mid`.
    Upstream { key: String, doc: Option<String> },
}

/// The document of a value, as the store keeps it.
pub fn document<T: serde::Serialize>(value: &T) -> Result<String, JournalError> {
    serde_json::to_string(value).map_err(|e| JournalError(format!("encoding a document: {e}")))
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct JournalError(pub String);

/// Where accepted changes go.
pub trait Journal: Send {
    /// Writes `changes` as one transaction: all of them or none; durable once Ok.
    fn commit(&mut self, changes: &[Change]) -> Result<(), JournalError>;
}

/// Everything stored, as documents by key (what a restart restores).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub mitigations: Vec<(String, u32, String)>,
    pub session_configs: Vec<(String, String)>,
    pub telemetry_setups: Vec<(String, String)>,
    pub data_clients: Vec<(String, String)>,
    pub acl_counts: Vec<(String, String)>,
    /// By the operator's id (as text).
    pub operator_mitigations: Vec<(String, String)>,
    /// (cuid, client).
    pub cuid_bindings: Vec<(String, String)>,
    /// Relayed mitigations, by `cuid/mid`.
    pub upstream_mappings: Vec<(String, String)>,
}

/// Keeps nothing: an engine without a store (protocol tests, the control plane in a lab).
pub struct NoJournal;

impl Journal for NoJournal {
    fn commit(&mut self, _changes: &[Change]) -> Result<(), JournalError> {
        Ok(())
    }
}

#[derive(Default)]
struct Documents {
    mitigations: BTreeMap<(String, u32), String>,
    session_configs: BTreeMap<String, String>,
    telemetry_setups: BTreeMap<String, String>,
    data_clients: BTreeMap<String, String>,
    acl_counts: BTreeMap<String, String>,
    operators: BTreeMap<u32, String>,
    cuids: BTreeMap<String, String>,
    upstream: BTreeMap<String, String>,
    transactions: usize,
}

/// A journal in memory, for tests: clones share the documents, [`MemoryJournal::snapshot`]
/// is what a restart would read, and [`MemoryJournal::fail`] makes commits fail (a full
/// disk).
#[derive(Clone, Default)]
pub struct MemoryJournal {
    docs: Arc<Mutex<Documents>>,
    failing: Arc<AtomicBool>,
}

impl MemoryJournal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Transactions committed so far.
    pub fn transactions(&self) -> usize {
        self.lock().transactions
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Documents> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        let d = self.lock();
        let pairs =
            |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Snapshot {
            mitigations: d
                .mitigations
                .iter()
                .map(|((c, m), v)| (c.clone(), *m, v.clone()))
                .collect(),
            session_configs: pairs(&d.session_configs),
            telemetry_setups: pairs(&d.telemetry_setups),
            data_clients: pairs(&d.data_clients),
            acl_counts: pairs(&d.acl_counts),
            operator_mitigations: d
                .operators
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            cuid_bindings: pairs(&d.cuids),
            upstream_mappings: pairs(&d.upstream),
        }
    }
}

fn set<K: Ord>(map: &mut BTreeMap<K, String>, key: K, doc: &Option<String>) {
    match doc {
        Some(d) => map.insert(key, d.clone()),
        None => map.remove(&key),
    };
}

impl Journal for MemoryJournal {
    fn commit(&mut self, changes: &[Change]) -> Result<(), JournalError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(JournalError("the journal refuses writes (test)".into()));
        }
        let mut d = self.lock();
        for c in changes {
            match c {
                Change::Mitigation { cuid, mid, doc } => {
                    set(&mut d.mitigations, (cuid.clone(), *mid), doc)
                }
                Change::SessionConfig { client, doc } => {
                    set(&mut d.session_configs, client.clone(), doc)
                }
                Change::TelemetrySetup { client, doc } => {
                    set(&mut d.telemetry_setups, client.clone(), doc)
                }
                Change::DataClient { cuid, doc } => set(&mut d.data_clients, cuid.clone(), doc),
                Change::AclCounts { client, doc } => set(&mut d.acl_counts, client.clone(), doc),
                Change::Operator { id, doc } => set(&mut d.operators, *id, doc),
                Change::CuidBinding { cuid, client } => set(&mut d.cuids, cuid.clone(), client),
                Change::Upstream { key, doc } => set(&mut d.upstream, key.clone(), doc),
            }
        }
        d.transactions += 1;
        Ok(())
    }
}
