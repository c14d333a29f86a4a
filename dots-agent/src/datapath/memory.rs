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
