//! The engine's hand on the datapath, the only caller of `Mitigator::install` and `remove`:
//! it remembers the spec it installed under each id (installing the same spec again is
//! skipped) and, within an operation, how to put back what it changed, so that a request
//! the store cannot record leaves the datapath as it was.

use std::collections::HashMap;

use crate::datapath::{DatapathError, DatapathId, MitigationCounters, MitigationSpec, Mitigator};

pub(super) struct Writer<M> {
    mitigator: M,
    /// What this process installed, by raw id (empty after a restart until restored).
    installed: HashMap<u64, MitigationSpec>,
    /// Ids changed by the current operation, with the spec each had before.
    undo: Vec<(u64, Option<MitigationSpec>)>,
}

impl<M: Mitigator> Writer<M> {
    pub fn new(mitigator: M) -> Self {
        Writer {
            mitigator,
            installed: HashMap::new(),
            undo: Vec::new(),
        }
    }

    pub fn mitigator(&self) -> &M {
        &self.mitigator
    }

    #[cfg(test)]
    pub fn mitigator_mut(&mut self) -> &mut M {
        &mut self.mitigator
    }

    /// Installs or atomically replaces `spec` (nothing to do if it is installed as it is).
    pub fn install(&mut self, spec: MitigationSpec) -> Result<(), DatapathError> {
        if self.installed.get(&spec.id) == Some(&spec) {
            return Ok(());
        }
        let id = DatapathId::from_raw(spec.id);
        let _span = tracing::info_span!("datapath", op = "install", %id).entered();
        self.mitigator.install(&spec)?;
        let raw = spec.id;
        let before = self.installed.insert(raw, spec);
        self.undo.push((raw, before));
        Ok(())
    }

    /// Removes `id` and returns its final counters.
    pub fn remove(&mut self, id: DatapathId) -> Result<Option<MitigationCounters>, DatapathError> {
        let _span = tracing::info_span!("datapath", op = "remove", %id).entered();
        let out = self.mitigator.remove(id.raw())?;
        if let Some(before) = self.installed.remove(&id.raw()) {
            self.undo.push((id.raw(), Some(before)));
        }
        Ok(out)
    }

    /// Removes `id` if this process installed it (no datapath call otherwise).
    pub fn remove_installed(
        &mut self,
        id: DatapathId,
    ) -> Result<Option<MitigationCounters>, DatapathError> {
        if !self.installed.contains_key(&id.raw()) {
            return Ok(None);
        }
        self.remove(id)
    }

    /// Lets the datapath do what it deferred (see `Mitigator::maintain`).
    pub fn maintain(&mut self) {
        self.mitigator.maintain();
    }

    /// The operation is stored (or needs no undo): the raw ids it changed.
    pub fn committed(&mut self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.undo.drain(..).map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The spec installed under `id` by this process.
    pub fn spec(&self, id: u64) -> Option<&MitigationSpec> {
        self.installed.get(&id)
    }

    /// Puts back what the operation changed, newest first (a prefix freed by one step is
    /// taken again by the step before it).
    pub fn undo(&mut self) {
        for (raw, before) in std::mem::take(&mut self.undo).into_iter().rev() {
            let id = DatapathId::from_raw(raw);
            let _span = tracing::info_span!("datapath", op = "undo", %id).entered();
            let result = match &before {
                Some(spec) => self.mitigator.install(spec),
                None => self.mitigator.remove(raw).map(|_| ()),
            };
            match result {
                Ok(()) => match before {
                    Some(spec) => self.installed.insert(raw, spec),
                    None => self.installed.remove(&raw),
                },
                Err(e) => {
                    tracing::error!("putting back {id} in the datapath: {e}");
                    None
                }
            };
        }
    }
}
