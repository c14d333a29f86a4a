//! The operator's own mitigations: what `dots-agent xdp mitigation add FILE` installs while
//! a server runs. They go through the engine like a DOTS request (one datapath install, one
//! store transaction, undone if it cannot be stored), are stored as their own kind, restored
//! at a restart, listed, and counted in metrics under client `(operator)`. A target belongs
//! to one mitigation: an operator mitigation and a DOTS one cannot share a prefix.
//!
//! Operator mitigations someone installed into the pinned filter while no server ran are
//! not in the store; a server keeps them (never deletes what it does not own) and lists
//! them as unmanaged until they are added through it or removed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::journal::{self, Change};
use super::{refusal, Engine, MitigationView, Refusal};
use crate::datapath::{DatapathId, MitigationCounters, MitigationSpec, Mitigator};
use crate::signal::message::Status;

/// The `client` label of operator mitigations in metrics and views.
pub const OPERATOR_CLIENT: &str = "(operator)";

/// The operator's mitigations and how the current operation found them.
#[derive(Default)]
pub(super) struct Operators {
    /// By the operator's id; each spec keeps that id (the datapath's id is derived).
    specs: BTreeMap<u32, MitigationSpec>,
    before: Vec<(u32, Option<MitigationSpec>)>,
}

impl Operators {
    fn set(&mut self, id: u32, spec: Option<MitigationSpec>) {
        if !self.before.iter().any(|(i, _)| *i == id) {
            self.before.push((id, self.specs.get(&id).cloned()));
        }
        match spec {
            Some(s) => self.specs.insert(id, s),
            None => self.specs.remove(&id),
        };
    }

    pub fn committed(&mut self) {
        self.before.clear();
    }

    pub fn undo(&mut self) {
        for (id, spec) in std::mem::take(&mut self.before).into_iter().rev() {
            match spec {
                Some(s) => self.specs.insert(id, s),
                None => self.specs.remove(&id),
            };
        }
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.specs.keys().copied()
    }
}

/// One operator mitigation as `xdp mitigation list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OperatorView {
    pub id: u32,
    /// The stored spec (None: installed outside this server, not in its store).
    pub spec: Option<MitigationSpec>,
    /// Whether the datapath holds it.
    pub installed: bool,
}

/// What an operator mitigation's add did.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Added {
    Installed,
    Replaced,
    Unchanged,
}

/// The operator's id of a spec from a file (its `id`), which must fit the datapath's range.
pub fn operator_id(spec: &MitigationSpec) -> Result<u32, String> {
    u32::try_from(spec.id).map_err(|_| {
        format!(
            "mitigation id {} is too large: operator mitigations use ids up to {}",
            spec.id,
            u32::MAX
        )
    })
}

/// The spec as the datapath holds it (the operator's id mapped to its datapath id).
pub fn datapath_spec(id: u32, spec: &MitigationSpec) -> MitigationSpec {
    let mut s = spec.clone();
    s.id = DatapathId::Operator(id).raw();
    s
}

impl<M: Mitigator> Engine<M> {
    /// Installs or replaces the operator's mitigations in `specs`, all of them or none
    /// (one store transaction).
    pub fn operator_add(
        &mut self,
        specs: Vec<MitigationSpec>,
    ) -> Result<Vec<(u32, Added)>, Refusal> {
        let result = self.operator_add_steps(specs);
        self.finish(result)
    }

    fn operator_add_steps(
        &mut self,
        specs: Vec<MitigationSpec>,
    ) -> Result<Vec<(u32, Added)>, Refusal> {
        let mut out = Vec::new();
        for spec in specs {
            let id = operator_id(&spec).map_err(Refusal::BadRequest)?;
            let dp_id = DatapathId::Operator(id);
            let stored = self.operators.specs.get(&id);
            let added = match stored {
                Some(s) if *s == spec => Added::Unchanged,
                Some(_) => Added::Replaced,
                None if self.mitigator().installed().contains(&dp_id.raw()) => Added::Replaced,
                None => Added::Installed,
            };
            self.dp
                .install(datapath_spec(id, &spec))
                .map_err(|e| self.operator_refusal(id, e))?;
            self.stage(journal::document(&spec).map(|doc| Change::Operator { id, doc: Some(doc) }));
            self.operators.set(id, Some(spec));
            out.push((id, added));
        }
        Ok(out)
    }

    /// Removes an operator mitigation (stored, or only pinned); returns its final counters.
    pub fn operator_remove(&mut self, id: u32) -> Result<Option<MitigationCounters>, Refusal> {
        let result = self.operator_remove_steps(id);
        self.finish(result)
    }

    fn operator_remove_steps(&mut self, id: u32) -> Result<Option<MitigationCounters>, Refusal> {
        let dp_id = DatapathId::Operator(id);
        let stored = self.operators.specs.contains_key(&id);
        if !stored && !self.mitigator().installed().contains(&dp_id.raw()) {
            return Err(Refusal::NotFound(format!(
                "no operator mitigation {id} (see `dots-agent xdp mitigation list`)"
            )));
        }
        let counters = self.dp.remove(dp_id).map_err(refusal)?;
        if stored {
            self.stage(Ok(Change::Operator { id, doc: None }));
            self.operators.set(id, None);
        }
        Ok(counters)
    }

    /// Every operator mitigation: the stored ones, and those only pinned.
    pub fn operator_list(&self) -> Vec<OperatorView> {
        let installed = self.mitigator().installed();
        let mut out: BTreeMap<u32, OperatorView> = self
            .operators
            .specs
            .iter()
            .map(|(id, s)| {
                let raw = DatapathId::Operator(*id).raw();
                let view = OperatorView {
                    id: *id,
                    spec: Some(s.clone()),
                    installed: installed.contains(&raw),
                };
                (*id, view)
            })
            .collect();
        for raw in installed {
            if let DatapathId::Operator(id) = DatapathId::from_raw(raw) {
                out.entry(id).or_insert(OperatorView {
                    id,
                    spec: None,
                    installed: true,
                });
            }
        }
        out.into_values().collect()
    }

    /// Operator mitigations as metrics see them (client `(operator)`, mid = the id).
    pub(super) fn operator_views(&self) -> Vec<MitigationView> {
        self.operator_list()
            .into_iter()
            .filter(|v| v.installed)
            .map(|v| MitigationView {
                client: OPERATOR_CLIENT.into(),
                mid: v.id,
                status: Status::SuccessfullyMitigated,
                counters: self
                    .mitigator()
                    .counters(DatapathId::Operator(v.id).raw())
                    .ok()
                    .flatten(),
                client_attack: Default::default(),
                cdid: None,
            })
            .collect()
    }

    /// Loads stored operator mitigations (restore) and installs each; one that cannot be
    /// installed stays stored and is reported.
    pub(super) fn restore_operators(&mut self, docs: &[(String, String)]) {
        for (key, doc) in docs {
            let parsed = key
                .parse::<u32>()
                .map_err(|e| e.to_string())
                .and_then(|id| {
                    serde_json::from_str::<MitigationSpec>(doc)
                        .map(|s| (id, s))
                        .map_err(|e| e.to_string())
                });
            let (id, spec) = match parsed {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("stored operator mitigation {key} is unreadable: {e}");
                    continue;
                }
            };
            if let Err(e) = self.dp.install(datapath_spec(id, &spec)) {
                tracing::error!("stored operator mitigation {id} could not be installed: {e}");
            }
            self.operators.specs.insert(id, spec);
        }
    }

    /// Who a datapath id belongs to, for people: "client-a mid 3", "operator mitigation 7",
    /// "ACL baseline of client-a".
    pub fn describe(&self, raw: u64) -> String {
        match DatapathId::from_raw(raw) {
            DatapathId::Operator(id) => format!("operator mitigation {id}"),
            DatapathId::Baseline(_) => self
                .policies
                .keys()
                .find(|c| DatapathId::baseline(c).raw() == raw)
                .map(|c| format!("data-channel ACLs of {c}"))
                .unwrap_or_else(|| DatapathId::from_raw(raw).to_string()),
            DatapathId::Mitigation(_) => self
                .ledger
                .iter()
                .find(|(_, _, _, m)| m.id().raw() == raw)
                .map(|(_, client, mid, _)| format!("{client} mid {mid}"))
                .unwrap_or_else(|| DatapathId::from_raw(raw).to_string()),
        }
    }

    fn operator_refusal(&self, id: u32, e: crate::datapath::DatapathError) -> Refusal {
        match e {
            crate::datapath::DatapathError::TargetInUse { prefix, owner } => Refusal::Conflict {
                cause: 1,
                mid: None,
                diagnostic: format!(
                    "operator mitigation {id}: target {prefix} already belongs to {}",
                    self.describe(owner)
                ),
            },
            other => refusal(other),
        }
    }
}
