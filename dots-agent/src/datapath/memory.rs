//! An in-memory [`Mitigator`] for protocol tests: validates specs exactly as the XDP
//! datapath does (same compiler, same target ownership rule) and lets a test set counters.

use std::collections::BTreeMap;

use super::{compile, AclCounter, DatapathError, MitigationCounters, MitigationSpec, Mitigator};

#[derive(Default)]
pub struct MemoryMitigator {
    installed: BTreeMap<u64, (MitigationSpec, MitigationCounters)>,
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
        Ok(self.installed.remove(&id).map(|(_, c)| c))
    }

    fn counters(&self, id: u64) -> Result<Option<MitigationCounters>, DatapathError> {
        Ok(self.installed.get(&id).map(|(_, c)| c.clone()))
    }

    fn installed(&self) -> Vec<u64> {
        self.installed.keys().copied().collect()
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
}
