//! The datapath seam: the DOTS engine asks a [`Mitigator`] to install, replace and remove
//! mitigations and to read their counters. [`XdpDatapath`] is the real one (the XDP program
//! and its maps); [`MemoryMitigator`] keeps specs in memory for protocol tests. Nothing
//! above this module knows about maps.

pub mod compile;
pub mod lock;
mod memory;
pub mod spec;
mod xdp;

use thiserror::Error;
use xdp_common::{Counter, DropReason, DROP_REASONS};

pub use compile::SpecError;
pub use memory::MemoryMitigator;
pub use spec::*;
pub use xdp::{
    check_interfaces, interface_index, AttachMode, AttachOutcome, InterfaceCounters, LoadOptions,
    XdpDatapath, DEFAULT_AMPLIFICATION_PORTS, DEFAULT_PIN_ROOT,
};

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("target {prefix} already belongs to mitigation {owner}")]
    TargetInUse { prefix: ipnet::IpNet, owner: u64 },
    #[error("datapath full: {0}")]
    Capacity(String),
    #[error("{context}: {source}")]
    Bpf {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Setup(String),
    /// Another process is the datapath's writer.
    #[error(transparent)]
    Locked(#[from] lock::LockError),
}

impl DatapathError {
    pub(crate) fn bpf(
        context: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        DatapathError::Bpf {
            context: context.into(),
            source: Box::new(e),
        }
    }
}

/// Counters of one mitigation, summed across CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MitigationCounters {
    /// Packets to a target of the mitigation within its scope (= passed + dropped).
    pub in_scope: Counter,
    pub passed: Counter,
    pub accepted: Counter,
    pub dropped: [Counter; DROP_REASONS],
    /// One per ACL entry, in the spec's order.
    pub acl: Vec<AclCounter>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclCounter {
    /// The entry name's hash (see `compile::name_hash`); names live with the spec's owner.
    pub name_hash: u64,
    pub matched: Counter,
}

impl MitigationCounters {
    pub fn dropped(&self, reason: DropReason) -> Counter {
        self.dropped[reason as usize]
    }

    pub fn dropped_total(&self) -> Counter {
        let mut t = Counter::default();
        self.dropped.iter().for_each(|c| t.add(c));
        t
    }

    /// Drops caused by rate limits (ACL rate-limit, per-source, SYN, scope cap).
    pub fn rate_limited(&self) -> Counter {
        let mut t = Counter::default();
        for r in DropReason::ALL.iter().filter(|r| r.is_rate_limit()) {
            t.add(&self.dropped[*r as usize]);
        }
        t
    }
}

/// Orders talkers by dropped packets (then bytes, then address: a stable order for equal
/// estimates) and keeps the first `n`.
pub(crate) fn rank_talkers(v: &mut Vec<(std::net::IpAddr, Counter)>, n: usize) {
    v.sort_by(|a, b| {
        (b.1.packets, b.1.bytes)
            .cmp(&(a.1.packets, a.1.bytes))
            .then(a.0.cmp(&b.0))
    });
    v.truncate(n);
}

/// Whose rules a datapath mitigation holds. The datapath keys mitigations by a `u64`, which
/// it keeps in pinned maps across restarts; this is the one place that encodes owners into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DatapathId {
    /// A DOTS mitigation, by the engine's counter (1, 2, ...).
    Mitigation(u64),
    /// A client's baseline: its data-channel ACLs over its prefixes, by its name's hash.
    Baseline(u32),
    /// An operator's mitigation (`dots-agent xdp mitigation add`), by the file's id.
    Operator(u32),
}

/// Raw ids from here up are baselines (as earlier agents pinned them).
const BASELINE_RAW: u64 = 1 << 62;
/// Raw ids from here up to the baselines are operator mitigations.
const OPERATOR_RAW: u64 = 1 << 61;

impl DatapathId {
    /// The baseline of a configured client.
    pub fn baseline(client: &str) -> DatapathId {
        DatapathId::Baseline(compile::name_hash(client) as u32)
    }

    /// The key the datapath uses (`MitigationSpec::id`, `Mitigator` calls).
    pub fn raw(self) -> u64 {
        match self {
            DatapathId::Mitigation(n) => n,
            DatapathId::Baseline(h) => BASELINE_RAW + h as u64,
            DatapathId::Operator(n) => OPERATOR_RAW + n as u64,
        }
    }

    pub fn from_raw(raw: u64) -> DatapathId {
        if let Some(h) = raw.checked_sub(BASELINE_RAW) {
            DatapathId::Baseline(h as u32)
        } else if let Some(n) = raw.checked_sub(OPERATOR_RAW) {
            DatapathId::Operator(n as u32)
        } else {
            DatapathId::Mitigation(raw)
        }
    }
}

impl std::fmt::Display for DatapathId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatapathId::Mitigation(n) => write!(f, "mitigation {n}"),
            DatapathId::Baseline(h) => write!(f, "baseline {h:08x}"),
            DatapathId::Operator(n) => write!(f, "operator mitigation {n}"),
        }
    }
}

/// What the DOTS engine needs from a datapath.
pub trait Mitigator: Send {
    /// Installs the mitigation with `spec.id`, or replaces it as one atomic change: a packet
    /// sees either the whole old rule set or the whole new one.
    fn install(&mut self, spec: &MitigationSpec) -> Result<(), DatapathError>;
    /// Removes a mitigation and returns its final counters (None if it was not installed).
    fn remove(&mut self, id: u64) -> Result<Option<MitigationCounters>, DatapathError>;
    /// Current counters (None if not installed).
    fn counters(&self, id: u64) -> Result<Option<MitigationCounters>, DatapathError>;
    /// Ids of the installed mitigations.
    fn installed(&self) -> Vec<u64>;
    /// Housekeeping a datapath defers (the XDP one deletes replaced generations after
    /// their grace period); called now and then by its owner.
    fn maintain(&mut self) {}
    /// (map, entries in use, capacity) for what the datapath holds; empty if it has no maps.
    fn occupancy(&self) -> Vec<(&'static str, usize, usize)> {
        Vec::new()
    }
    /// Counters of each interface the filter is attached to.
    fn interfaces(&self) -> Vec<(String, xdp_common::InterfaceStats)> {
        Vec::new()
    }
    /// The `n` sources with the most dropped packets of a mitigation, most first. Estimates:
    /// the datapath samples one drop in [`xdp_common::TALKER_SAMPLE`] and scales up. Empty
    /// if the mitigation is not installed or the datapath does not sample.
    fn top_talkers(&self, id: u64, n: usize) -> Vec<(std::net::IpAddr, Counter)> {
        let _ = (id, n);
        Vec::new()
    }
}

impl<M: Mitigator + ?Sized> Mitigator for Box<M> {
    fn install(&mut self, spec: &MitigationSpec) -> Result<(), DatapathError> {
        (**self).install(spec)
    }
    fn remove(&mut self, id: u64) -> Result<Option<MitigationCounters>, DatapathError> {
        (**self).remove(id)
    }
    fn counters(&self, id: u64) -> Result<Option<MitigationCounters>, DatapathError> {
        (**self).counters(id)
    }
    fn installed(&self) -> Vec<u64> {
        (**self).installed()
    }
    fn maintain(&mut self) {
        (**self).maintain()
    }
    fn occupancy(&self) -> Vec<(&'static str, usize, usize)> {
        (**self).occupancy()
    }
    fn interfaces(&self) -> Vec<(String, xdp_common::InterfaceStats)> {
        (**self).interfaces()
    }
    fn top_talkers(&self, id: u64, n: usize) -> Vec<(std::net::IpAddr, Counter)> {
        (**self).top_talkers(id, n)
    }
}
