//! An in-memory [`Mitigator`] for protocol tests: validates specs exactly as the XDP
//! datapath does (same compiler, same target ownership rule) and lets a test set counters
//! and top talkers.

use std::collections::BTreeMap;
use std::net::IpAddr;

use xdp_common::Counter;

use super::{compile, AclCounter, DatapathError, MitigationCounters, MitigationSpec, Mitigator};

#[derive(Default)]
pub struct MemoryMitigator {
    installed: BTreeMap<u64, (MitigationSpec, MitigationCounters)>,
    /// Set by tests; kept across replacement, gone with the mitigation (like the XDP one).
    talkers: BTreeMap<u64, Vec<(IpAddr, Counter)>>,
}

impl MemoryMitigator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn spec(&self, id: u64) -> Option<&MitigationSpec> {
        self.installed.get(&id).map(|(s, _)| s)
    }

    /// Lets a test pretend the datapath counted traffic.
    pub fn set_counters(&mut self, id: u64, counters: MitigationCounters) -> bool {
        match self.installed.get_mut(&id) {
            Some((_, c)) => {
                *c = counters;
                true
            }
            None => false,
        }
    }

    /// Lets a test pretend the datapath sampled these sources (already scaled estimates,
    /// any order). False if the mitigation is not installed.
    pub fn set_talkers(&mut self, id: u64, talkers: Vec<(IpAddr, Counter)>) -> bool {
        if !self.installed.contains_key(&id) {
            return false;
        }
        self.talkers.insert(id, talkers);
        true
    }
}

impl Mitigator for MemoryMitigator {
    fn install(&mut self, spec: &MitigationSpec) -> Result<(), DatapathError> {
        compile::validate(spec)?;
        for (id, (other, _)) in &self.installed {
            if *id == spec.id {
                continue;
            }
            if let Some(p) = spec.targets.iter().find(|t| other.targets.contains(t)) {
                return Err(DatapathError::TargetInUse {
                    prefix: *p,
                    owner: *id,
                });
            }
        }
        let acl = spec
            .acl
            .iter()
            .map(|e| AclCounter {
                name_hash: compile::name_hash(&e.name),
                ..Default::default()
            })
            .collect();
        let counters = MitigationCounters {
            acl,
            ..Default::default()
        };
        self.installed.insert(spec.id, (spec.clone(), counters));
        Ok(())
    }

    fn remove(&mut self, id: u64) -> Result<Option<MitigationCounters>, DatapathError> {
        self.talkers.remove(&id);
        Ok(self.installed.remove(&id).map(|(_, c)| c))
    }

    fn counters(&self, id: u64) -> Result<Option<MitigationCounters>, DatapathError> {
        Ok(self.installed.get(&id).map(|(_, c)| c.clone()))
    }

    fn installed(&self) -> Vec<u64> {
        self.installed.keys().copied().collect()
    }

    fn top_talkers(&self, id: u64, n: usize) -> Vec<(IpAddr, Counter)> {
        let mut v = self.talkers.get(&id).cloned().unwrap_or_default();
        super::rank_talkers(&mut v, n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{AclAction, AclEntry, AclMatch};

    #[test]
    fn validates_and_owns_targets_like_the_xdp_datapath() {
        let mut m = MemoryMitigator::new();
        let mut a = MitigationSpec::new(1, vec!["198.51.100.0/24".parse().unwrap()]);
        a.acl = vec![AclEntry {
            name: "x".into(),
            matches: AclMatch::default(),
            action: AclAction::Drop,
        }];
        m.install(&a).unwrap();
        assert_eq!(m.counters(1).unwrap().unwrap().acl.len(), 1);
        let b = MitigationSpec::new(2, vec!["198.51.100.0/24".parse().unwrap()]);
        assert!(matches!(
            m.install(&b),
            Err(DatapathError::TargetInUse { owner: 1, .. })
        ));
        let bad = MitigationSpec::new(3, vec!["198.51.100.1/24".parse().unwrap()]);
        assert!(matches!(m.install(&bad), Err(DatapathError::Spec(_))));
        a.targets.push("203.0.113.0/24".parse().unwrap());
        m.install(&a).unwrap();
        assert_eq!(m.spec(1).unwrap().targets.len(), 2);
        assert_eq!(m.installed(), vec![1]);
        assert!(m.remove(1).unwrap().is_some());
        assert!(m.remove(1).unwrap().is_none());
    }

    #[test]
    fn talkers_are_sorted_truncated_and_removed_with_the_mitigation() {
        let mut m = MemoryMitigator::new();
        let c = |p| Counter {
            packets: p,
            bytes: p * 100,
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let d: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(!m.set_talkers(1, vec![(a, c(1))]), "not installed");
        m.install(&MitigationSpec::new(
            1,
            vec!["198.51.100.0/24".parse().unwrap()],
        ))
        .unwrap();
        assert!(m.set_talkers(1, vec![(d, c(5)), (a, c(50)), (b, c(20))]));
        assert_eq!(m.top_talkers(1, 2), vec![(a, c(50)), (b, c(20))]);
        assert!(m.top_talkers(2, 5).is_empty());
        m.remove(1).unwrap();
        m.install(&MitigationSpec::new(
            1,
            vec!["198.51.100.0/24".parse().unwrap()],
        ))
        .unwrap();
        assert!(m.top_talkers(1, 5).is_empty(), "gone with the mitigation");
    }
}
