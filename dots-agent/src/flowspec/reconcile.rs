//! What the FlowSpec announcer and the diverter share: a thread that takes changes from the
//! engine and keeps a table of the local gobgpd equal to what they should announce. Changes
//! queued together go into one reconciliation; with nothing queued it reconciles every
//! `every` anyway, which puts everything back into a gobgpd that restarted (it forgets
//! routes added through its API).

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// One kind of route in the local daemon, as this server announces it.
pub trait Table {
    type Route: PartialEq;
    /// The routes this server announced that the daemon holds now, by key.
    fn read(&self) -> Result<BTreeMap<String, Self::Route>, String>;
    /// Announces `route` (replacing one with the same key).
    fn add(&self, route: &Self::Route) -> Result<(), String>;
    fn del(&self, route: &Self::Route) -> Result<(), String>;
    /// Whether a route read back is the one wanted under the same key.
    fn same(have: &Self::Route, wanted: &Self::Route) -> bool {
        have == wanted
    }
}

/// Makes the daemon's routes equal to `wanted`: new and changed ones first, withdrawals
/// after (a changed mitigation is never without routes: make before break). Returns how
/// many of this server's routes the daemon holds.
pub fn sync<T: Table>(table: &T, wanted: &BTreeMap<String, T::Route>) -> Result<usize, String> {
    let have = table.read()?;
    let mut count = have.len();
    for (key, route) in wanted {
        if !have.get(key).is_some_and(|h| T::same(h, route)) {
            table.add(route)?;
            if !have.contains_key(key) {
                count += 1;
            }
        }
    }
    for (key, route) in &have {
        if !wanted.contains_key(key) {
            table.del(route)?;
            count -= 1;
        }
    }
    Ok(count)
}

/// The side of a worker thread that [`drive`] runs.
pub trait Worker {
    type Change;
    fn apply(&mut self, change: Self::Change);
    fn reconcile(&mut self);
}

/// Runs `worker` until the sending side is dropped (the engine with it).
pub fn drive<W: Worker>(mut worker: W, rx: Receiver<W::Change>, every: Duration) {
    loop {
        let first = match rx.recv_timeout(every) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Everything queued goes into one reconciliation.
        for change in first.into_iter().chain(rx.try_iter()) {
            worker.apply(change);
        }
        worker.reconcile();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Default)]
    struct Fake {
        have: RefCell<BTreeMap<String, u32>>,
        log: RefCell<Vec<String>>,
    }

    impl Table for Fake {
        type Route = (String, u32);
        fn read(&self) -> Result<BTreeMap<String, (String, u32)>, String> {
            Ok(self
                .have
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), (k.clone(), *v)))
                .collect())
        }
        fn add(&self, r: &(String, u32)) -> Result<(), String> {
            self.log.borrow_mut().push(format!("add {}={}", r.0, r.1));
            self.have.borrow_mut().insert(r.0.clone(), r.1);
            Ok(())
        }
        fn del(&self, r: &(String, u32)) -> Result<(), String> {
            self.log.borrow_mut().push(format!("del {}", r.0));
            self.have.borrow_mut().remove(&r.0);
            Ok(())
        }
    }

    /// Changed and new routes go in before stale ones leave; equal ones are left alone.
    #[test]
    fn sync_makes_before_it_breaks() {
        let t = Fake::default();
        t.have
            .borrow_mut()
            .extend([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]);
        let wanted: BTreeMap<String, (String, u32)> = [("b", 2), ("c", 1), ("d", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), (k.to_string(), v)))
            .collect();
        assert_eq!(sync(&t, &wanted), Ok(3));
        assert_eq!(*t.log.borrow(), ["add b=2", "add d=1", "del a"]);
        t.log.borrow_mut().clear();
        assert_eq!(sync(&t, &wanted), Ok(3));
        assert!(t.log.borrow().is_empty());
    }
}
