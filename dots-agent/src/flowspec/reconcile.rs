//! What the FlowSpec announcer and the diverter share: a thread that takes changes from the
//! engine and keeps a table of the local gobgpd equal to what they should announce. Changes
//! queued together go into one reconciliation, compared with what the thread last announced
//! so that a change costs the same whatever the table's size. Every `every` (on a clock of
//! its own: a steady stream of changes must not postpone it) and after any failure, the
//! daemon's table is read back instead, which puts everything back into a gobgpd that
//! restarted (it forgets routes added through its API). [`Handle`] is the engine's side of
//! such a thread.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::datapath::MitigationSpec;
use crate::metrics::Scrape;

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

/// What the engine tells a worker ([`crate::engine::RuleAnnouncer`]).
pub enum Change {
    /// DOTS mitigation `id` (its datapath id) filters with `spec` for `client`, whose
    /// configured prefixes are `prefixes` (installed, or replaced).
    Active {
        id: u64,
        client: String,
        prefixes: Vec<IpNet>,
        /// Boxed: a spec is large and most changes in a queue are small.
        spec: Box<MitigationSpec>,
    },
    /// It no longer filters.
    Ended(u64),
}

/// How the reconciliations with the daemon went, as both workers report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Routes that should be in the daemon's table.
    pub wanted: usize,
    /// This server's routes in the daemon's table at the last reconciliation that succeeded.
    pub announced: usize,
    /// Whether the last reconciliation succeeded.
    pub daemon_up: bool,
    /// Reconciliations that failed.
    pub daemon_errors: u64,
    pub reconciliations: u64,
}

impl Outcome {
    /// The outcome of a reconciliation of `wanted` routes that [`sync`] ended with `synced`,
    /// after `last`.
    pub fn after(last: &Outcome, wanted: usize, synced: &Result<usize, String>) -> Outcome {
        Outcome {
            wanted,
            announced: *synced.as_ref().unwrap_or(&last.announced),
            daemon_up: synced.is_ok(),
            daemon_errors: last.daemon_errors + u64::from(synced.is_err()),
            reconciliations: last.reconciliations + 1,
        }
    }
}

/// The names an [`Outcome`] is exposed under in Prometheus: the route counts' (with their
/// HELP texts) and the daemon's.
pub struct OutcomeNames {
    pub wanted: (&'static str, &'static str),
    pub announced: (&'static str, &'static str),
    pub daemon_up: &'static str,
    pub daemon_errors: &'static str,
}

impl Outcome {
    /// Its series, in `m`.
    pub fn expose(&self, m: &Scrape, names: &OutcomeNames) {
        let (name, help) = names.wanted;
        m.gauge_value(name, help, self.wanted as i64);
        let (name, help) = names.announced;
        m.gauge_value(name, help, self.announced as i64);
        m.gauge_value(
            names.daemon_up,
            "Whether the last reconciliation with gobgpd succeeded",
            self.daemon_up.into(),
        );
        m.counter_value(
            names.daemon_errors,
            "Reconciliations with gobgpd that failed",
            self.daemon_errors,
        );
    }
}

/// What a worker last achieved, for metrics and logs.
pub trait Report: Clone + Default + Send + 'static {
    /// How the daemon took it.
    fn daemon(&mut self) -> &mut Outcome;
}

/// The side of a worker thread that [`drive`] runs.
pub trait Worker {
    /// Its thread's name, which its log lines start with.
    const NAME: &'static str;
    type Table: Table;
    type Report: Report;
    fn apply(&mut self, change: Change);
    /// The routes the daemon's table should hold now, by key; the report's own part (what
    /// was refused, and why) is filled in.
    fn wanted(
        &mut self,
        report: &mut Self::Report,
    ) -> BTreeMap<String, <Self::Table as Table>::Route>;
    fn table(&self) -> &Self::Table;
}

/// Runs `worker` until the sending side is dropped (the engine with it), each reconciliation's
/// report put into `report`.
pub fn drive<W: Worker>(
    mut worker: W,
    rx: Receiver<Change>,
    every: Duration,
    report: &Mutex<W::Report>,
) {
    let mut last = W::Report::default();
    // What the daemon holds of the worker's routes, as far as the thread knows.
    let mut known = None;
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
        if Instant::now() >= read_back_at {
            read_back_at = Instant::now() + every;
            known = None;
        }
        let mut now = W::Report::default();
        let wanted = worker.wanted(&mut now);
        let synced = sync(worker.table(), &mut known, &wanted);
        if let Err(e) = &synced {
            tracing::error!("{}: {e}; retried in the next reconciliation", W::NAME);
        }
        *now.daemon() = Outcome::after(last.daemon(), wanted.len(), &synced);
        last = now;
        *report.lock().unwrap_or_else(|p| p.into_inner()) = last.clone();
    }
}

/// The engine's side of a worker thread: hands it changes without waiting, and reads what it
/// last achieved. Dropping it ends the thread.
pub struct Handle<R> {
    tx: Sender<Change>,
    report: Arc<Mutex<R>>,
}

impl<R: Report> Handle<R> {
    /// Starts `worker` on a thread of its own, which reads the daemon's table back every
    /// `every`.
    pub fn start<W>(worker: W, every: Duration) -> std::io::Result<Handle<R>>
    where
        W: Worker<Report = R> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let report = Arc::new(Mutex::new(R::default()));
        let shared = report.clone();
        std::thread::Builder::new()
            .name(W::NAME.into())
            .spawn(move || drive(worker, rx, every, &shared))?;
        Ok(Handle { tx, report })
    }

    pub fn active(&self, id: u64, client: &str, prefixes: &[IpNet], spec: &MitigationSpec) {
        // A thread that has ended (it never does before the handle) has nothing to update.
        let _ = self.tx.send(Change::Active {
            id,
            client: client.into(),
            prefixes: prefixes.to_vec(),
            spec: Box::new(spec.clone()),
        });
    }

    pub fn ended(&self, id: u64) {
        let _ = self.tx.send(Change::Ended(id));
    }

    pub fn report(&self) -> R {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        assert_eq!(
            *t.reads.borrow(),
            1,
            "the second sync compared with what it knew"
        );
        // The daemon restarted empty: only a read-back notices.
        t.have.borrow_mut().clear();
        assert_eq!(sync(&t, &mut known, &wanted), Ok(3));
        assert!(t.log.borrow().is_empty());
        let mut read_back = None;
        assert_eq!(sync(&t, &mut read_back, &wanted), Ok(3));
        assert_eq!(*t.log.borrow(), ["add b=2", "add c=1", "add d=1"]);
    }

    /// Applies changes to the fake table: what an active mitigation's targets are, by id.
    struct Mirror {
        table: Fake,
        active: BTreeMap<u64, Vec<IpNet>>,
        applied: usize,
    }

    /// How the daemon took it, and how many changes were applied.
    impl Report for (Outcome, usize) {
        fn daemon(&mut self) -> &mut Outcome {
            &mut self.0
        }
    }

    impl Worker for Mirror {
        const NAME: &'static str = "mirror";
        type Table = Fake;
        type Report = (Outcome, usize);
        fn apply(&mut self, change: Change) {
            self.applied += 1;
            match change {
                Change::Active { id, spec, .. } => {
                    self.active.insert(id, spec.targets);
                }
                Change::Ended(id) => {
                    self.active.remove(&id);
                }
            }
        }
        fn wanted(&mut self, report: &mut (Outcome, usize)) -> BTreeMap<String, (String, u32)> {
            report.1 = self.applied;
            self.active
                .iter()
                .flat_map(|(id, targets)| targets.iter().map(move |t| (t.to_string(), *id as u32)))
                .map(|(k, v)| (k.clone(), (k, v)))
                .collect()
        }
        fn table(&self) -> &Fake {
            &self.table
        }
    }

    /// Changes queued together go into one reconciliation, whose report the handle's side
    /// reads; the thread ends with the sending side.
    #[test]
    fn queued_changes_make_one_reconciliation_and_its_report() {
        let (tx, rx) = mpsc::channel();
        let active = |id: u64, t: &str| Change::Active {
            id,
            client: "a".into(),
            prefixes: Vec::new(),
            spec: Box::new(MitigationSpec::new(id, vec![t.parse().unwrap()])),
        };
        tx.send(active(1, "198.51.100.0/28")).unwrap();
        tx.send(active(2, "198.51.100.16/28")).unwrap();
        tx.send(Change::Ended(1)).unwrap();
        drop(tx);
        let mirror = Mirror {
            table: Fake::default(),
            active: BTreeMap::new(),
            applied: 0,
        };
        let report = Mutex::new(Default::default());
        drive(mirror, rx, Duration::from_secs(3600), &report);
        let (outcome, applied) = *report.lock().unwrap();
        assert_eq!(applied, 3);
        assert_eq!(
            outcome,
            Outcome {
                wanted: 1,
                announced: 1,
                daemon_up: true,
                daemon_errors: 0,
                reconciliations: 1
            }
        );
    }

    /// A failed reconciliation counts, and keeps the count of routes announced before.
    #[test]
    fn a_failure_keeps_what_was_announced() {
        let ok = Outcome::after(&Outcome::default(), 3, &Ok(3));
        let failed = Outcome::after(&ok, 5, &Err("gobgp: connection refused".into()));
        assert_eq!(
            failed,
            Outcome {
                wanted: 5,
                announced: 3,
                daemon_up: false,
                daemon_errors: 1,
                reconciliations: 2
            }
        );
        assert!(Outcome::after(&failed, 5, &Ok(5)).daemon_up);
    }
}
