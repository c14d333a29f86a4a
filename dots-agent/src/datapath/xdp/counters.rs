//! Counters: per-CPU values summed, the bases that keep an entry's and a mitigation's totals
//! across replacements, and the interfaces' counters.

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use aya::Pod;
use xdp_common::{acl_action, AclStats, DropReason, InterfaceStats, IF_STATS_SLOTS};

use super::{XdpDatapath, R};
use crate::datapath::DatapathError;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub ifindex: u32,
    pub stats: InterfaceStats,
}

/// Adds an ACL entry's counts to its mitigation's, as its action decided them.
pub(super) fn fold_acl(out: &mut xdp_common::MitigationStats, action: u8, s: &AclStats) {
    match action {
        acl_action::DROP => out.dropped[DropReason::AclDrop as usize].add(&s.matched),
        acl_action::ACCEPT => {
            out.passed.add(&s.matched);
            out.accepted.add(&s.matched);
        }
        _ => {
            let admitted = s.matched.since(&s.limited);
            out.dropped[DropReason::AclRateLimit as usize].add(&s.limited);
            out.passed.add(&admitted);
            out.accepted.add(&admitted);
        }
    }
}

impl XdpDatapath {
    pub(super) fn zero_percpu<T: Pod + Default>(
        nr: usize,
        map: &mut PerCpuArray<MapData, T>,
        idx: u32,
        what: &str,
    ) -> R<()> {
        let v = PerCpuValues::try_from(vec![T::default(); nr])
            .map_err(|e| DatapathError::bpf(what.to_string(), e))?;
        map.set(idx, v, 0)
            .map_err(|e| DatapathError::bpf(what.to_string(), e))
    }

    pub(super) fn sum_percpu<T: Pod>(
        map: &PerCpuArray<MapData, T>,
        idx: u32,
        what: &str,
        mut add: impl FnMut(&T),
    ) -> R<()> {
        let values = map
            .get(&idx, 0)
            .map_err(|e| DatapathError::bpf(what.to_string(), e))?;
        values.iter().for_each(&mut add);
        Ok(())
    }

    /// A rule's counts: its base plus every CPU's.
    pub(super) fn acl_total(&self, idx: u32) -> R<AclStats> {
        let mut total = self
            .maps
            .acl_base
            .get(&idx, 0)
            .map_err(|e| DatapathError::bpf("ACL_BASE", e))?;
        Self::sum_percpu(&self.maps.acl_stats, idx, "ACL_STATS", |c| total.add(c))?;
        Ok(total)
    }

    pub(super) fn add_acl_base(&mut self, rule: u32, s: &AclStats) -> R<()> {
        let mut base = self
            .maps
            .acl_base
            .get(&rule, 0)
            .map_err(|e| DatapathError::bpf("ACL_BASE", e))?;
        base.add(s);
        self.maps
            .acl_base
            .set(rule, base, 0)
            .map_err(|e| DatapathError::bpf("ACL_BASE", e))
    }

    /// Adds the counts of an ACL entry that no longer exists to its mitigation's base.
    pub(super) fn add_mit_base(&mut self, slot: u32, action: u8, s: &AclStats) -> R<()> {
        let mut base = self
            .maps
            .mit_base
            .get(&slot, 0)
            .map_err(|e| DatapathError::bpf("MIT_BASE", e))?;
        fold_acl(&mut base, action, s);
        self.maps
            .mit_base
            .set(slot, base, 0)
            .map_err(|e| DatapathError::bpf("MIT_BASE", e))
    }

    /// Per-interface counters for the given ifindex (summed across CPUs).
    pub fn interface_counters(&self, ifindex: u32) -> R<InterfaceCounters> {
        let slot = if ifindex < IF_STATS_SLOTS { ifindex } else { 0 };
        let mut s = InterfaceStats::default();
        Self::sum_percpu(&self.maps.if_stats, slot, "IF_STATS", |v| {
            let v = &v.stats;
            s.rx.add(&v.rx);
            s.parse_errors += v.parse_errors;
            s.non_ip += v.non_ip;
            s.to_target += v.to_target;
            s.dropped += v.dropped;
        })?;
        Ok(InterfaceCounters { ifindex, stats: s })
    }

    /// Packets the program saw on an interface, per CPU (how the load spreads).
    pub fn interface_packets_per_cpu(&self, ifindex: u32) -> R<Vec<u64>> {
        let slot = if ifindex < IF_STATS_SLOTS { ifindex } else { 0 };
        let mut v = Vec::with_capacity(self.nr_cpus);
        Self::sum_percpu(&self.maps.if_stats, slot, "IF_STATS", |s| {
            v.push(s.stats.rx.packets)
        })?;
        Ok(v)
    }
}
