//! The hook through which committed DOTS mitigations are announced beyond this box (BGP
//! FlowSpec, `crate::flowspec`): told only what the store has recorded, never a change that
//! is undone, and off the engine's own work (an implementation queues, it does not block).

use ipnet::IpNet;

use super::Engine;
use crate::datapath::{DatapathId, MitigationSpec, Mitigator};

pub trait RuleAnnouncer: Send {
    /// DOTS mitigation `id` (its datapath id) filters with `spec` for `client`, whose
    /// configured prefixes are `prefixes` (installed, or replaced).
    fn active(&mut self, id: u64, client: &str, prefixes: &[IpNet], spec: &MitigationSpec);
    /// It no longer filters (ended, after its terminating period).
    fn ended(&mut self, id: u64);
    /// Prometheus text lines about the announcements.
    fn metrics(&self) -> String {
        String::new()
    }
    /// What the other scrubbers dropped to these targets (None: not counted).
    fn fleet_dropped(&self, _targets: &[IpNet]) -> Option<xdp_common::Counter> {
        None
    }
}

impl<M: Mitigator> Engine<M> {
    /// Tells `announcer` every DOTS mitigation in the datapath now (after a restore), and
    /// each committed change from now on (beside the announcers added before).
    pub fn add_announcer(&mut self, announcer: Box<dyn RuleAnnouncer>) {
        let earlier = std::mem::replace(&mut self.announcers, vec![announcer]);
        let ids: Vec<u64> = self
            .ledger
            .iter()
            .filter(|(_, _, _, m)| m.installed)
            .map(|(_, _, _, m)| m.datapath_id)
            .collect();
        self.announce_changes(ids);
        self.announcers.splice(0..0, earlier);
    }

    /// This box's drops plus the fleet's, for the status of a mitigation of `targets`.
    pub(super) fn with_fleet(
        &self,
        local: Option<xdp_common::Counter>,
        targets: &[IpNet],
    ) -> Option<xdp_common::Counter> {
        let fleet = self
            .announcers
            .iter()
            .find_map(|a| a.fleet_dropped(targets));
        match (local, fleet) {
            (Some(l), Some(f)) => Some(xdp_common::Counter {
                packets: l.packets + f.packets,
                bytes: l.bytes + f.bytes,
            }),
            (l, _) => l,
        }
    }

    pub fn announcer_metrics(&self) -> String {
        self.announcers.iter().map(|a| a.metrics()).collect()
    }

    /// Tells the announcer what became of the datapath ids a committed operation changed.
    pub(super) fn announce_changes(&mut self, ids: Vec<u64>) {
        if self.announcers.is_empty() {
            return;
        }
        for id in ids {
            if !matches!(DatapathId::from_raw(id), DatapathId::Mitigation(_)) {
                continue;
            }
            let owner = self
                .ledger
                .iter()
                .find(|(_, _, _, m)| m.datapath_id == id && m.installed)
                .map(|(_, client, _, _)| client);
            let policy = owner.and_then(|c| self.policies.get(c));
            for announcer in self.announcers.iter_mut() {
                match (policy, self.dp.spec(id)) {
                    (Some(p), Some(spec)) => announcer.active(id, &p.name, &p.prefixes, spec),
                    _ => announcer.ended(id),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::datapath::MemoryMitigator;
    use crate::engine::journal::MemoryJournal;
    use crate::engine::ClientPolicy;
    use crate::signal::message::{Lifetime, Scope};

    #[derive(Clone, Default)]
    struct Told(Arc<Mutex<Vec<String>>>);

    impl RuleAnnouncer for Told {
        fn active(&mut self, id: u64, client: &str, prefixes: &[IpNet], spec: &MitigationSpec) {
            self.0.lock().unwrap().push(format!(
                "active {id} {client} {prefixes:?} {:?}",
                spec.targets
            ));
        }
        fn ended(&mut self, id: u64) {
            self.0.lock().unwrap().push(format!("ended {id}"));
        }
    }

    impl Told {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn scope(p: &str) -> Scope {
        Scope::new(vec![p.parse().unwrap()], Lifetime::Seconds(600))
    }

    /// Told what was stored, once, with the client's prefixes; never what was undone; the
    /// end after the terminating period; everything installed when it is plugged in.
    #[test]
    fn the_announcer_hears_only_committed_changes() {
        let journal = MemoryJournal::default();
        let policy = ClientPolicy::fixture("a", &["198.51.100.0/24"]);
        let mut e = Engine::new(MemoryMitigator::new(), vec![policy])
            .with_terminating_period(30)
            .with_journal(Box::new(journal.clone()));
        e.put("a", "cu-a", 1, scope("198.51.100.0/28"), false, 0)
            .unwrap();
        let told = Told::default();
        e.add_announcer(Box::new(told.clone()));
        assert_eq!(
            told.take(),
            ["active 1 a [198.51.100.0/24] [198.51.100.0/28]"]
        );

        journal.fail(true);
        assert!(e
            .put("a", "cu-a", 2, scope("198.51.100.64/28"), false, 1)
            .is_err());
        assert_eq!(
            told.take(),
            Vec::<String>::new(),
            "an undone request is not announced"
        );
        journal.fail(false);

        e.put("a", "cu-a", 3, scope("198.51.100.64/28"), false, 2)
            .unwrap();
        assert_eq!(
            told.take(),
            ["active 3 a [198.51.100.0/24] [198.51.100.64/28]"]
        );
        e.delete("cu-a", 3, 10).unwrap();
        e.tick(20);
        assert_eq!(
            told.take(),
            Vec::<String>::new(),
            "still filtering while terminating"
        );
        e.tick(40);
        assert_eq!(told.take(), ["ended 3"]);
    }
}
