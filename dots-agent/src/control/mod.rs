//! The control plane's one writer. [`Control`] holds the engine, the data channel and the
//! signal channel's sessions; one thread owns it, and everything else (the DTLS and TLS
//! transports, the data channel's HTTPS requests, metrics scrapes) hands that thread work
//! through a [`ControlHandle`] and awaits the answer. So requests are applied one at a
//! time, in order, without locks, and a datapath update that takes time never blocks the
//! async runtime's threads. The same thread runs the clock once a second: the engine's,
//! the data channel's expiries, and every session's notifications and heartbeats.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::data::SharedData;
use crate::datapath::Mitigator;
use crate::engine::Engine;

mod data;
pub mod sessions;

/// How often the data channel's aliases and ACLs are checked for expiry.
const DATA_EXPIRY_EVERY: u64 = 60;

pub struct Control<M: Mitigator = Box<dyn Mitigator>> {
    pub engine: Engine<M>,
    /// The data channel's state; the engine asks it too (aliases, acl-list).
    pub data: SharedData,
    data_expired_at: u64,
    sessions: sessions::Sessions,
}

impl<M: Mitigator> Control<M> {
    /// `engine` must already ask `data` (`Engine::with_data_source`).
    pub fn new(engine: Engine<M>, data: SharedData) -> Self {
        Control {
            engine,
            data,
            data_expired_at: 0,
            sessions: Default::default(),
        }
    }

    /// Once a second: the engine's clock, lost sessions, and (each minute) the data
    /// channel's expiries. Returns (cuid, mid) of the mitigations that ended.
    pub fn tick(&mut self, now: u64) -> Vec<(String, u32)> {
        let ended = self.engine.tick(now);
        let lost = self.engine.detect_lost_sessions(now);
        crate::metrics::SIGNAL
            .sessions_lost
            .inc_by(lost.len() as u64);
        if now >= self.data_expired_at + DATA_EXPIRY_EVERY {
            self.data_expired_at = now;
            let due = self.data.lock().expire(now);
            for edit in due {
                let cuid = edit.cuid.clone();
                let r = self.apply(edit);
                if r.status >= 300 {
                    tracing::error!(cuid, "expiring aliases and ACLs: {:?}", r.body);
                }
            }
        }
        ended
    }
}

type Job = Box<dyn FnOnce(&mut Control) + Send>;

/// The control thread is gone (the server is shutting down).
#[derive(Debug, Error)]
#[error("the control plane has stopped")]
pub struct Stopped;

/// Hands work to the control thread; cheap to clone.
#[derive(Clone)]
pub struct ControlHandle {
    jobs: mpsc::Sender<Job>,
    /// Set by [`ControlHandle::shutdown`]: the thread ends after the job at hand.
    stopping: Arc<AtomicBool>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl ControlHandle {
    /// Starts the control thread; it ends when the last handle is dropped, or at
    /// [`ControlHandle::shutdown`].
    pub fn spawn(mut control: Control) -> std::io::Result<ControlHandle> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let second = Duration::from_secs(1);
                let mut next_tick = Instant::now() + second;
                while !stop.load(Ordering::SeqCst) {
                    let wait = next_tick.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(job) => {
                            // A job that panics loses its answer and its changes, not the
                            // control plane.
                            let run = std::panic::AssertUnwindSafe(|| job(&mut control));
                            if std::panic::catch_unwind(run).is_err() {
                                tracing::error!("a control-plane job panicked; undone");
                                control.engine.abandon();
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            next_tick += second;
                            let now = crate::clock::now();
                            for (cuid, mid) in control.tick(now.unix) {
                                tracing::info!(cuid, mid, "mitigation ended");
                            }
                            control.tick_sessions(now);
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(ControlHandle {
            jobs,
            stopping,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Stops the control thread after the job at hand and waits until it has ended, so
    /// that the engine, its datapath and its store (and their writer locks) are released
    /// when this returns. Later calls through any handle get [`Stopped`].
    /// Blocks the calling thread for as long as the job at hand takes.
    pub fn shutdown(&self) {
        let stop = self.stopping.clone();
        // A job wakes the thread; the flag ends its loop.
        let _ = self
            .jobs
            .send(Box::new(move |_| stop.store(true, Ordering::SeqCst)));
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    /// Runs `f` on the control thread (inside the caller's tracing span) and returns its
    /// result.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Control) -> R + Send + 'static,
    ) -> Result<R, Stopped> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move |c| {
            let _entered = span.enter();
            let _ = tx.send(f(c));
        });
        self.jobs.send(job).map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}
