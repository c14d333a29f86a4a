//! The engine's mitigations by cuid and mid. Every change goes through [`Ledger::insert`],
//! [`Ledger::update`] or [`Ledger::remove`], which remember the entry as it was before the
//! operation (to undo the operation if it cannot be stored) and mark it for the journal; so
//! nothing changes that is not written, and nothing is written that did not change.

use std::collections::{BTreeMap, BTreeSet};

use super::Mitigation;

type Key = (String, u32);

/// An entry to write: cuid, mid, and its client and mitigation (None: deleted).
pub type Touched<'a> = (String, u32, Option<(&'a str, &'a Mitigation)>);

#[derive(Default)]
pub(super) struct Ledger {
    /// cuid -> (client name, mid -> mitigation).
    clients: BTreeMap<String, (String, BTreeMap<u32, Mitigation>)>,
    /// Entries as they were before the current operation (first change only).
    before: Vec<(Key, Option<(String, Mitigation)>)>,
    /// Entries changed since the last successful commit.
    touched: BTreeSet<Key>,
}

impl Ledger {
    pub fn get(&self, cuid: &str, mid: u32) -> Option<&Mitigation> {
        self.clients.get(cuid)?.1.get(&mid)
    }

    /// The client a cuid belongs to (once it has asked for anything).
    pub fn client_of(&self, cuid: &str) -> Option<&str> {
        self.clients.get(cuid).map(|(c, _)| c.as_str())
    }

    pub fn of(&self, cuid: &str) -> Option<&BTreeMap<u32, Mitigation>> {
        self.clients.get(cuid).map(|(_, m)| m)
    }

    /// (cuid, client, mid, mitigation) of every mitigation.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, u32, &Mitigation)> {
        self.clients.iter().flat_map(|(cuid, (client, mits))| {
            mits.iter()
                .map(move |(mid, m)| (cuid.as_str(), client.as_str(), *mid, m))
        })
    }

    /// The cuids of a client.
    pub fn cuids_of<'a>(&'a self, client: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.clients
            .iter()
            .filter(move |(_, (c, _))| c == client)
            .map(|(cuid, _)| cuid.as_str())
    }

    fn remember(&mut self, cuid: &str, mid: u32) {
        let key = (cuid.to_string(), mid);
        if !self.before.iter().any(|(k, _)| *k == key) {
            let was = self
                .clients
                .get(cuid)
                .and_then(|(client, m)| m.get(&mid).map(|m| (client.clone(), m.clone())));
            self.before.push((key.clone(), was));
        }
        self.touched.insert(key);
    }

    pub fn insert(&mut self, cuid: &str, client: &str, mid: u32, m: Mitigation) {
        self.remember(cuid, mid);
        self.clients
            .entry(cuid.to_string())
            .or_insert_with(|| (client.to_string(), BTreeMap::new()))
            .1
            .insert(mid, m);
    }

    /// Changes an existing mitigation; None if there is none.
    pub fn update<R>(
        &mut self,
        cuid: &str,
        mid: u32,
        f: impl FnOnce(&mut Mitigation) -> R,
    ) -> Option<R> {
        self.get(cuid, mid)?;
        self.remember(cuid, mid);
        self.clients
            .get_mut(cuid)
            .and_then(|(_, m)| m.get_mut(&mid))
            .map(f)
    }

    /// Changes what the store does not keep (how the attack goes): nothing to write.
    pub fn watch(&mut self, cuid: &str, mid: u32, f: impl FnOnce(&mut Mitigation)) {
        if let Some(m) = self
            .clients
            .get_mut(cuid)
            .and_then(|(_, m)| m.get_mut(&mid))
        {
            f(m)
        }
    }

    pub fn remove(&mut self, cuid: &str, mid: u32) -> Option<Mitigation> {
        self.get(cuid, mid)?;
        self.remember(cuid, mid);
        self.clients.get_mut(cuid).and_then(|(_, m)| m.remove(&mid))
    }

    /// Puts an entry in place as stored (a restart): nothing to write.
    pub fn load(&mut self, cuid: &str, client: &str, mid: u32, m: Mitigation) {
        self.clients
            .entry(cuid.to_string())
            .or_insert_with(|| (client.to_string(), BTreeMap::new()))
            .1
            .insert(mid, m);
    }

    /// Entries to write: (cuid, mid, client and mitigation, or None for a deletion).
    pub fn touched(&self) -> Vec<Touched<'_>> {
        self.touched
            .iter()
            .map(|(cuid, mid)| {
                let now = self
                    .clients
                    .get(cuid)
                    .and_then(|(c, m)| m.get(mid).map(|m| (c.as_str(), m)));
                (cuid.clone(), *mid, now)
            })
            .collect()
    }

    /// The operation is stored: forget how to undo it.
    pub fn committed(&mut self) {
        self.before.clear();
        self.touched.clear();
    }

    /// The operation ended without being stored, and stays (a clock tick): its entries are
    /// written with the next commit.
    pub fn keep_pending(&mut self) {
        self.before.clear();
    }

    /// Puts every entry the operation changed back as it was.
    pub fn undo(&mut self) {
        for ((cuid, mid), was) in std::mem::take(&mut self.before).into_iter().rev() {
            match was {
                Some((client, m)) => {
                    self.clients
                        .entry(cuid.clone())
                        .or_insert_with(|| (client, BTreeMap::new()))
                        .1
                        .insert(mid, m);
                }
                None => {
                    if let Some((_, mits)) = self.clients.get_mut(&cuid) {
                        mits.remove(&mid);
                    }
                }
            }
        }
        // What was undone is as stored again, unless an earlier unstored tick changed it;
        // writing it once more is harmless.
    }
}
