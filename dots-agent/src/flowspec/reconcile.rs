//! What the FlowSpec announcer and the diverter share: a thread that takes changes from the
//! engine and keeps a table of the local gobgpd equal to what they should announce. Changes
//! queued together go into one reconciliation, compared with what the thread last announced
//! so that a change costs the same whatever the table's size. Every `every` (on a clock of
//! its own: a steady stream of changes must not postpone it) and after any failure, the
//! daemon's table is read back instead, which puts everything back into a gobgpd that
//! restarted (it forgets routes added through its API).

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// One kind of route in the local daemon, as this server announces it.
pub trait Table {
    type Route: Clone + PartialEq;
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

/// What a worker believes the daemon holds of its routes, by key: None until read back.
pub type Known<R> = Option<BTreeMap<String, R>>;

/// Makes the daemon's routes equal to `wanted`: new and changed ones first, withdrawals
/// after (a changed mitigation is never without routes: make before break). Compares with
/// `known`, or with the daemon's table read back when that is None; leaves `known` None
/// after a failure (a command may have failed half-way). Returns how many of this server's
/// routes the daemon holds.
pub fn sync<T: Table>(
    table: &T,
    known: &mut Known<T::Route>,
    wanted: &BTreeMap<String, T::Route>,
) -> Result<usize, String> {
    let mut have = match known.take() {
        Some(have) => have,
        None => table.read()?,
    };
    for (key, route) in wanted {
        if !have.get(key).is_some_and(|h| T::same(h, route)) {
            table.add(route)?;
            have.insert(key.clone(), route.clone());
        }
    }
    let stale: Vec<String> = have
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    for key in stale {
        if let Some(route) = have.remove(&key) {
            table.del(&route)?;
        }
    }
    let count = have.len();
    *known = Some(have);
    Ok(count)
}

/// The side of a worker thread that [`drive`] runs.
pub trait Worker {
    type Change;
    fn apply(&mut self, change: Self::Change);
    /// `read_back`: compare with the daemon's table read back, not with what is known.
    fn reconcile(&mut self, read_back: bool);
}

/// Runs `worker` until the sending side is dropped (the engine with it).
pub fn drive<W: Worker>(mut worker: W, rx: Receiver<W::Change>, every: Duration) {
    let mut read_back_at = Instant::now() + every;
    loop {
        let wait = read_back_at.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Everything queued goes into one reconciliation.
        for change in first.into_iter().chain(rx.try_iter()) {
            worker.apply(change);
        }
        let read_back = Instant::now() >= read_back_at;
        if read_back {
            read_back_at = Instant::now() + every;
        }
        worker.reconcile(read_back);
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
        reads: RefCell<u32>,
    }

    impl Table for Fake {
        type Route = (String, u32);
        fn read(&self) -> Result<BTreeMap<String, (String, u32)>, String> {
            *self.reads.borrow_mut() += 1;
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
    /// What was announced is remembered: the table is read once, and again only when asked
    /// to (a restarted daemon) or after a failure.
    #[test]
    fn sync_makes_before_it_breaks_and_reads_back_only_when_told() {
        let t = Fake::default();
        t.have
            .borrow_mut()
            .extend([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]);
        let wanted: BTreeMap<String, (String, u32)> = [("b", 2), ("c", 1), ("d", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), (k.to_string(), v)))
            .collect();
        let mut known = None;
        assert_eq!(sync(&t, &mut known, &wanted), Ok(3));
        assert_eq!(*t.log.borrow(), ["add b=2", "add d=1", "del a"]);
        t.log.borrow_mut().clear();
        assert_eq!(sync(&t, &mut known, &wanted), Ok(3));
        assert!(t.log.borrow().is_empty());
        assert_eq!(*t.reads.borrow(), 1, "the second sync compared with what it knew");
        // The daemon restarted empty: only a read-back notices.
        t.have.borrow_mut().clear();
        assert_eq!(sync(&t, &mut known, &wanted), Ok(3));
        assert!(t.log.borrow().is_empty());
        let mut read_back = None;
        assert_eq!(sync(&t, &mut read_back, &wanted), Ok(3));
        assert_eq!(*t.log.borrow(), ["add b=2", "add c=1", "add d=1"]);
    }
}
