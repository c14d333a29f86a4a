//! The signal channel's sessions, kept on the control thread: each a sans-IO
//! [`Session`] with its peer's identity, an [`Outbox`] to its transport, and its tracing
//! span. A transport opens one after its handshake, hands it the bytes it decrypts and
//! sends what comes back; what the clock makes due (notifications, heartbeats) goes to the
//! outbox, for all sessions in one pass a second.

use std::collections::HashMap;
use std::time::Instant;

use coap_lite::Packet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Control;
use crate::datapath::Mitigator;
use crate::engine::Engine;
use crate::metrics::SIGNAL;
use crate::signal::handler::{self, Peer};
use crate::signal::session::{Framing, Now, Observation, Reply, Role, Service, Session};

/// Who a (D)TLS peer is: its certificate's CN and its cuid (RFC 9132 §4.4.1.1).
#[derive(Clone, Debug)]
pub struct Identity {
    pub cn: String,
    pub cuid: String,
}

pub type SessionId = u64;

struct Entry {
    session: Session,
    /// The configured client (None: a valid certificate of nobody we serve: 4.01).
    client: Option<String>,
    cuid: String,
    outbox: Arc<Outbox>,
    span: tracing::Span,
}

#[derive(Default)]
pub(super) struct Sessions {
    next: SessionId,
    /// Boxed: the map keeps spare slots, and most sessions are idle.
    open: HashMap<SessionId, Box<Entry>>,
}

/// What a session sends unasked (notifications, heartbeats), waiting for its transport.
/// Lighter than a channel: most sessions are idle, and there may be tens of thousands.
#[derive(Default)]
pub struct Outbox {
    queue: Mutex<Vec<Vec<u8>>>,
    ready: Notify,
}

impl Outbox {
    fn push(&self, bytes: Vec<u8>) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(bytes);
        self.ready.notify_one();
    }

    /// What is waiting now (perhaps nothing).
    pub fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// What is waiting, once there is something.
    pub async fn next(&self) -> Vec<Vec<u8>> {
        loop {
            let waiting = self.take();
            if !waiting.is_empty() {
                return waiting;
            }
            self.ready.notified().await;
        }
    }
}

/// The engine as the service of one peer's session, counted for Prometheus.
struct Served<'a, M: Mitigator> {
    engine: &'a mut Engine<M>,
    peer: Peer<'a>,
}

impl<M: Mitigator> Service for Served<'_, M> {
    fn handle(&mut self, msg: &Packet, unix: u64) -> Reply {
        let started = Instant::now();
        let reply = match crate::upstream::request::admit(self.engine, &self.peer, msg) {
            Err(refused) => refused,
            Ok(()) => handler::handle(self.engine, &self.peer, msg, unix),
        };
        crate::upstream::request::after(self.engine, &self.peer, msg, &reply);
        SIGNAL.request(msg, &reply, started);
        reply
    }

    fn fingerprint(&mut self, obs: &Observation, unix: u64) -> Option<Vec<u8>> {
        handler::fingerprint(self.engine, obs, unix)
    }

    fn notification(
        &mut self,
        obs: &Observation,
        last: &mut Vec<u8>,
        periodic: bool,
        sequence: u32,
        unix: u64,
    ) -> Option<(Packet, bool)> {
        handler::notification(self.engine, obs, last, periodic, sequence, unix)
    }

    fn heartbeat_interval(&mut self) -> u64 {
        match self.peer.client {
            Some(client) => self.engine.heartbeat_interval(client, self.peer.cuid),
            None => 0,
        }
    }

    fn heartbeat_missed(&mut self) {
        SIGNAL.heartbeats_missed.inc();
    }

    fn unsendable(&mut self, _why: &str) {
        SIGNAL.unsendable.inc();
    }
}

fn random_message_id() -> u16 {
    let mut b = [0u8; 2];
    let _ = openssl::rand::rand_bytes(&mut b);
    u16::from_ne_bytes(b)
}

impl<M: Mitigator> Control<M> {
    /// A session for a peer whose handshake completed; returns its id and what to send
    /// first. `outbox` takes what the session sends unasked (notifications, heartbeats).
    pub fn open_session(
        &mut self,
        identity: Identity,
        framing: Framing,
        outbox: Arc<Outbox>,
        now: Instant,
    ) -> (SessionId, Vec<Vec<u8>>) {
        let client = self
            .engine
            .policy(&identity.cn)
            .is_some()
            .then(|| identity.cn.clone());
        if client.is_none() {
            tracing::info!("not a configured client: its requests get 4.01");
        }
        let mut session = Session::new(Role::Server, framing, now, random_message_id());
        let first = session.start();
        let id = self.sessions.next;
        self.sessions.next += 1;
        self.sessions.open.insert(
            id,
            Box::new(Entry {
                session,
                client,
                cuid: identity.cuid,
                outbox,
                span: tracing::Span::current(),
            }),
        );
        (id, first)
    }

    /// What arrived on a session; returns what to send, or Err with why the session ended.
    pub fn session_message(
        &mut self,
        id: SessionId,
        now: Now,
        bytes: &[u8],
    ) -> Result<Vec<Vec<u8>>, String> {
        let Some(e) = self.sessions.open.get_mut(&id) else {
            return Err("the session is closed".into());
        };
        let mut svc = Served {
            engine: &mut self.engine,
            peer: Peer {
                client: e.client.as_deref(),
                cuid: &e.cuid,
            },
        };
        let out = e.session.on_message(now, bytes, &mut svc);
        match e.session.closed() {
            Some(why) => {
                let why = why.to_string();
                self.sessions.open.remove(&id);
                Err(why)
            }
            None => Ok(out),
        }
    }

    pub fn close_session(&mut self, id: SessionId) {
        self.sessions.open.remove(&id);
    }

    /// How long a session may stay silent before its client would be declared lost, in
    /// seconds: heartbeat interval times missing-hb-allowed, the longer of its client's idle
    /// and mitigating settings (RFC 9132 §4.5; the RFC defaults for a certificate of no
    /// configured client); 0 with heartbeats off in both.
    pub fn session_silence_allowed(&self, id: SessionId) -> u64 {
        let Some(e) = self.sessions.open.get(&id) else {
            return 0;
        };
        let config = match &e.client {
            Some(client) => self.engine.config(client),
            None => crate::signal::session_config::SessionConfig::default(),
        };
        [&config.idle, &config.mitigating]
            .iter()
            .map(|set| set.heartbeat_interval() * set.missing_hb_allowed())
            .max()
            .unwrap_or(0)
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.open.len()
    }

    /// Runs every session's clock: what is due goes to its transport. Sessions whose
    /// transport has gone are dropped.
    pub fn tick_sessions(&mut self, now: Now) {
        let engine = &mut self.engine;
        self.sessions.open.retain(|_, e| {
            // The transport has gone (its task ended without closing the session).
            if Arc::strong_count(&e.outbox) == 1 {
                return false;
            }
            let _entered = e.span.enter();
            let mut svc = Served {
                engine: &mut *engine,
                peer: Peer {
                    client: e.client.as_deref(),
                    cuid: &e.cuid,
                },
            };
            for bytes in e.session.on_tick(now, &mut svc) {
                e.outbox.push(bytes);
            }
            true
        });
    }
}
