//! CoAP over DTLS 1.2 (RFC 9132 §7) on one UDP socket: a dispatcher keyed by peer address,
//! one task per association, each running OpenSSL's DTLS over an in-memory datagram
//! transport.
//!
//! The front door is stateless (RFC 6347 §4.2.1): every ClientHello goes to one listening
//! OpenSSL object (`DTLSv1_listen`), which answers a hello without a valid cookie with a
//! HelloVerifyRequest, smaller than the hello, and keeps nothing. Only a hello whose cookie
//! proves the sender receives at its address gets an OpenSSL object, a task and a peer
//! slot, and those are bounded in number and time. A spoofed source therefore costs one
//! HMAC and one small datagram, and cannot fill anything.
//!
//! A hello from the address of a live session does not touch it (RFC 6347 §4.2.8): the old
//! association stays until a new handshake from that address, begun with a valid cookie,
//! completes; then the new one replaces it (a client that restarted on the same port).
//! A session from which nothing arrives for its idle bound ends (see [`idle_bound`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslStream};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::dtls_cookie::{self, set_peer};
use crate::control::sessions::{Outbox, SessionId};
use crate::control::ControlHandle;
use crate::dtls_io::{handle_timeout, listen, Datagrams};
use crate::metrics::SIGNAL;
use crate::signal::session::Framing;

pub use super::dtls_cookie::context;

/// Datagrams are kept under the IPv6 minimum path MTU (RFC 9132 §7.3).
const MTU: u32 = 1200;
/// Established sessions served at once.
const MAX_SESSIONS: usize = 20_000;
/// Handshakes in progress after a valid cookie (each holds an OpenSSL object and a task
/// for at most HANDSHAKE_TIME). A spoofer cannot get here; a real peer flooding gets this.
const MAX_HANDSHAKES: usize = 1024;
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);
/// A session of a client with heartbeats off, or of a certificate we serve nobody for.
const IDLE_MAX: Duration = Duration::from_secs(600);
/// Datagrams waiting for one association's task.
const QUEUE: usize = 64;
/// The socket's receive buffer: bursts of hellos are answered, not dropped by the kernel.
const RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// The idle bound of a session: `configured` if the operator set one, else the silence
/// after which its client would be declared lost anyway (`allowed`: heartbeat interval
/// times missing-hb-allowed, 450 s at the RFC 9132 defaults), so that a lossy link under
/// attack does not cost a live client its session earlier; [`IDLE_MAX`] with heartbeats
/// off.
pub fn idle_bound(configured: Option<Duration>, allowed: u64) -> Duration {
    match (configured, allowed) {
        (Some(d), _) => d,
        (None, 0) => IDLE_MAX,
        (None, s) => Duration::from_secs(s),
    }
}

/// Who holds an address: its live session, and a handshake that may replace it.
#[derive(Default)]
struct Slot {
    live: Option<mpsc::Sender<Vec<u8>>>,
    handshake: Option<mpsc::Sender<Vec<u8>>>,
}

#[derive(Default)]
struct Table {
    slots: HashMap<SocketAddr, Slot>,
    live: usize,
    handshakes: usize,
}

impl Table {
    /// Registers a handshake for `from`, if within the bounds.
    fn start_handshake(
        &mut self,
        from: SocketAddr,
        tx: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), &'static str> {
        if self.handshakes >= MAX_HANDSHAKES {
            return Err("handshakes in progress at their bound");
        }
        let slot = self.slots.entry(from).or_default();
        if slot.live.is_none() && self.live >= MAX_SESSIONS {
            return Err("sessions at their bound");
        }
        if slot.handshake.replace(tx).is_none() {
            self.handshakes += 1;
        }
        Ok(())
    }

    /// The handshake of `tx` completed: it becomes `from`'s session, and the session it
    /// replaces (if any) is told to end (its channel closes).
    fn promote(&mut self, from: SocketAddr, tx: mpsc::Sender<Vec<u8>>) -> bool {
        let Some(slot) = self.slots.get_mut(&from) else {
            return false;
        };
        if !slot.handshake.as_ref().is_some_and(|h| h.same_channel(&tx)) {
            return false; // superseded by a newer handshake from the same address
        }
        slot.handshake = None;
        self.handshakes -= 1;
        if slot.live.replace(tx).is_none() {
            self.live += 1;
        }
        true
    }

    /// The association of `tx` has ended: its place is freed (if still its own).
    fn end(&mut self, from: SocketAddr, tx: &mpsc::Sender<Vec<u8>>) {
        let Some(slot) = self.slots.get_mut(&from) else {
            return;
        };
        if slot.handshake.as_ref().is_some_and(|h| h.same_channel(tx)) {
            slot.handshake = None;
            self.handshakes -= 1;
        }
        if slot.live.as_ref().is_some_and(|l| l.same_channel(tx)) {
            slot.live = None;
            self.live -= 1;
        }
        if slot.live.is_none() && slot.handshake.is_none() {
            self.slots.remove(&from);
        }
    }
}

type Peers = Arc<StdMutex<Table>>;

fn lock(peers: &Peers) -> std::sync::MutexGuard<'_, Table> {
    peers.lock().unwrap_or_else(|p| p.into_inner())
}

/// Is this datagram a DTLS ClientHello (handshake record, epoch 0, handshake type 1)?
fn is_client_hello(d: &[u8]) -> bool {
    d.len() > 13 && d[0] == 22 && d[3] == 0 && d[4] == 0 && d[13] == 1
}

/// A record of epoch 0 (the handshake's plaintext flights)?
fn is_epoch_zero(d: &[u8]) -> bool {
    d.len() > 4 && d[3] == 0 && d[4] == 0
}

/// A server-side stream ready to listen (or to run a handshake) for `peer`.
fn fresh_stream(ctx: &SslContext) -> Result<SslStream<Datagrams>> {
    let mut ssl = Ssl::new(ctx)?;
    ssl.set_mtu(MTU)?;
    ssl.set_accept_state();
    dtls_cookie::init_peer(&mut ssl);
    Ok(SslStream::new(ssl, Datagrams::default())?)
}

fn enlarge_receive_buffer(socket: &UdpSocket) {
    let fd = socket.as_raw_fd();
    let size = RECEIVE_BUFFER;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on our own socket with a c_int option value.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// What the signal channel's DTLS side needs besides its socket.
#[derive(Clone)]
pub struct DtlsSettings {
    pub ctx: SslContext,
    /// `[signal] dtls_idle_seconds`; None: as long as its client may stay silent.
    pub idle: Option<Duration>,
}

pub async fn serve_dtls(socket: UdpSocket, settings: DtlsSettings, control: ControlHandle) {
    enlarge_receive_buffer(&socket);
    let socket = Arc::new(socket);
    let peers: Peers = Arc::default();
    let mut front = match fresh_stream(&settings.ctx) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("DTLS: no listening object: {e:#}");
            return;
        }
    };
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("DTLS socket: {e}");
                continue;
            }
        };
        let datagram = &buf[..n];
        if is_client_hello(datagram) {
            // A hello from a peer whose new handshake is under way is its retransmission.
            let pending = lock(&peers)
                .slots
                .get(&from)
                .and_then(|s| s.handshake.clone());
            if let Some(tx) = pending {
                let _ = tx.try_send(datagram.to_vec());
                continue;
            }
            set_peer(front.ssl(), from);
            front.get_mut().inbox.push_back(datagram.to_vec());
            let verified = match listen(&mut front) {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!("DTLS {from}: hello refused: {e}");
                    false
                }
            };
            for d in std::mem::take(&mut front.get_mut().outbox) {
                let _ = socket.send_to(&d, from).await;
            }
            if !verified {
                continue;
            }
            // A valid cookie: this stream now holds the peer's hello; a fresh one listens.
            let next = match fresh_stream(&settings.ctx) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("DTLS: no listening object: {e:#}");
                    continue;
                }
            };
            let stream = std::mem::replace(&mut front, next);
            let (tx, rx) = mpsc::channel(QUEUE);
            if let Err(why) = lock(&peers).start_handshake(from, tx.clone()) {
                tracing::warn!("DTLS: {why}, a handshake from {from} is not started");
                continue;
            }
            let task = Association {
                peer: from,
                socket: socket.clone(),
                control: control.clone(),
                peers: peers.clone(),
                idle: settings.idle,
            };
            let span = tracing::info_span!(
                "session",
                transport = "dtls",
                peer = %from,
                client = tracing::field::Empty,
                cuid = tracing::field::Empty
            );
            tokio::spawn(task.run(stream, tx, rx).instrument(span));
            continue;
        }
        // Anything else belongs to an association of this address, or to nobody.
        let (handshake, live) = match lock(&peers).slots.get(&from) {
            Some(s) => (s.handshake.clone(), s.live.clone()),
            None => continue,
        };
        // Records of epoch 1 and later may be the new handshake's (its Finished) or the
        // live session's; each side silently discards what it cannot authenticate.
        if let Some(h) = &handshake {
            let _ = h.try_send(datagram.to_vec());
        }
        // Plaintext (epoch 0) records go to the new handshake alone while one runs.
        let for_live = handshake.is_none() || !is_epoch_zero(datagram);
        if let Some(l) = live.filter(|_| for_live) {
            if l.try_send(datagram.to_vec()).is_err() {
                tracing::debug!("DTLS {from}: session queue full, datagram dropped");
            }
        }
    }
}

async fn flush(socket: &UdpSocket, peer: SocketAddr, s: &mut SslStream<Datagrams>) {
    for d in std::mem::take(&mut s.get_mut().outbox) {
        let _ = socket.send_to(&d, peer).await;
    }
}

/// One association: a handshake begun with a valid cookie, then its session.
struct Association {
    peer: SocketAddr,
    socket: Arc<UdpSocket>,
    control: ControlHandle,
    peers: Peers,
    idle: Option<Duration>,
}

impl Association {
    async fn run(
        self,
        mut s: SslStream<Datagrams>,
        tx: mpsc::Sender<Vec<u8>>,
        mut rx: mpsc::Receiver<Vec<u8>>,
    ) {
        let result = match self.handshake(&mut s, &mut rx).await {
            Ok(()) => {
                // Only the table holds our sender from here: when a newer association
                // replaces us, our channel closes and we end.
                if lock(&self.peers).promote(self.peer, tx.clone()) {
                    let weak = tx.downgrade();
                    drop(tx);
                    let r = self.session(&mut s, &mut rx).await;
                    if let Some(tx) = weak.upgrade() {
                        lock(&self.peers).end(self.peer, &tx);
                    }
                    r
                } else {
                    lock(&self.peers).end(self.peer, &tx);
                    Ok(())
                }
            }
            Err(e) => {
                lock(&self.peers).end(self.peer, &tx);
                Err(e)
            }
        };
        if let Err(e) = result {
            tracing::info!("DTLS {}: {e:#}", self.peer);
        }
    }

    /// Feeds datagrams, sends flights, retransmits on timeouts, within HANDSHAKE_TIME.
    async fn handshake(
        &self,
        s: &mut SslStream<Datagrams>,
        rx: &mut mpsc::Receiver<Vec<u8>>,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            match s.accept() {
                Ok(()) => break,
                Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                }
                Err(e) => {
                    flush(&self.socket, self.peer, s).await;
                    SIGNAL.handshake_failed("dtls");
                    super::log_handshake_failure("DTLS", self.peer, s.ssl(), &e);
                    anyhow::bail!("handshake failed");
                }
            }
            flush(&self.socket, self.peer, s).await;
            let Some(left) = HANDSHAKE_TIME.checked_sub(started.elapsed()) else {
                SIGNAL.handshake_failed("dtls");
                anyhow::bail!("handshake timed out");
            };
            match tokio::time::timeout(left.min(Duration::from_secs(1)), rx.recv()).await {
                Ok(Some(d)) => s.get_mut().inbox.push_back(d),
                Ok(None) => anyhow::bail!("handshake abandoned"),
                Err(_) => handle_timeout(s),
            }
        }
        flush(&self.socket, self.peer, s).await;
        Ok(())
    }

    async fn session(
        &self,
        s: &mut SslStream<Datagrams>,
        rx: &mut mpsc::Receiver<Vec<u8>>,
    ) -> Result<()> {
        let id = super::identity(s.ssl())?;
        let span = tracing::Span::current();
        span.record("client", id.cn.as_str());
        span.record("cuid", id.cuid.as_str());
        let _counted = SIGNAL.session("dtls");
        tracing::info!("DTLS session established");
        let outbox = Arc::new(Outbox::default());
        let unasked = outbox.clone();
        let (sid, allowed) = self
            .control
            .run(move |c| {
                let (sid, _) = c.open_session(id, Framing::Datagram, outbox, Instant::now());
                (sid, c.session_silence_allowed(sid))
            })
            .await?;
        let idle = idle_bound(self.idle, allowed);
        let result = self.shovel(s, rx, &unasked, sid, idle).await;
        let _ = self.control.run(move |c| c.close_session(sid)).await;
        if let Ok(Ended::Idle(d)) = &result {
            tracing::info!("DTLS session ended: nothing heard for {} s", d.as_secs());
        }
        result.map(|_| ())
    }

    /// Moves bytes between the socket's datagrams (through DTLS) and the session on the
    /// control thread, until the peer leaves, is replaced, or falls silent.
    async fn shovel(
        &self,
        s: &mut SslStream<Datagrams>,
        rx: &mut mpsc::Receiver<Vec<u8>>,
        unasked: &Outbox,
        sid: SessionId,
        mut idle: Duration,
    ) -> Result<Ended> {
        let (socket, peer, control) = (&*self.socket, self.peer, &self.control);
        let configured = self.idle;
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                d = rx.recv() => {
                    let Some(d) = d else { return Ok(Ended::Replaced) };
                    s.get_mut().inbox.push_back(d);
                    // Allocated per datagram, not per session: an idle session holds no
                    // read buffer.
                    let mut buf = vec![0u8; 16_384];
                    let mut plain = Vec::new();
                    loop {
                        match s.ssl_read(&mut buf) {
                            Ok(n) => plain.push(buf[..n].to_vec()),
                            Err(e) if e.code() == ErrorCode::WANT_READ => break,
                            Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                                flush(socket, peer, s).await;
                                return Ok(Ended::Closed);
                            }
                            Err(e) => {
                                flush(socket, peer, s).await;
                                return Err(anyhow::anyhow!("DTLS: {e}"));
                            }
                        }
                    }
                    if plain.is_empty() {
                        // Nothing authentic (a forged or stale record): not a sign of life.
                        continue;
                    }
                    last_heard = Instant::now();
                    let (replies, allowed) = control
                        .run(move |c| {
                            let now = crate::clock::now();
                            let mut out = Vec::new();
                            for p in plain {
                                out.extend(c.session_message(sid, now, &p)?);
                            }
                            Ok::<_, String>((out, c.session_silence_allowed(sid)))
                        })
                        .await?
                        .map_err(anyhow::Error::msg)?;
                    idle = idle_bound(configured, allowed);
                    for r in replies {
                        let _ = s.ssl_write(&r);
                    }
                }
                waiting = unasked.next() => {
                    for bytes in waiting {
                        let _ = s.ssl_write(&bytes);
                    }
                }
                _ = tokio::time::sleep_until((last_heard + idle).into()) => {
                    return Ok(Ended::Idle(idle));
                }
            }
            flush(socket, peer, s).await;
        }
    }
}

/// How a session ended without an error.
enum Ended {
    /// The peer sent close_notify.
    Closed,
    /// A new handshake from the same address completed.
    Replaced,
    /// Nothing authentic arrived for this long.
    Idle(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_bound_follows_the_heartbeats() {
        assert_eq!(idle_bound(None, 30 * 15), Duration::from_secs(450));
        assert_eq!(idle_bound(None, 0), IDLE_MAX);
        assert_eq!(
            idle_bound(Some(Duration::from_secs(5)), 30),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn the_table_keeps_the_live_session_until_the_new_one_completes() {
        let mut t = Table::default();
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let (old, mut old_rx) = mpsc::channel(1);
        t.start_handshake(a, old.clone()).unwrap();
        assert!(t.promote(a, old.clone()));
        drop(old);
        assert_eq!((t.live, t.handshakes), (1, 0));
        // A new handshake from the same address: the old session is still there.
        let (new, _new_rx) = mpsc::channel(1);
        t.start_handshake(a, new.clone()).unwrap();
        assert!(t.slots[&a].live.is_some());
        assert_eq!((t.live, t.handshakes), (1, 1));
        assert!(old_rx.try_recv().is_err() && !old_rx.is_closed());
        // It completes: the old session's channel closes.
        assert!(t.promote(a, new.clone()));
        assert!(old_rx.is_closed());
        assert_eq!((t.live, t.handshakes), (1, 0));
        t.end(a, &new);
        assert!(t.slots.is_empty());
        assert_eq!((t.live, t.handshakes), (0, 0));
    }

    #[test]
    fn handshakes_are_bounded() {
        let mut t = Table::default();
        let mut keep = Vec::new();
        for i in 0..MAX_HANDSHAKES {
            let (tx, rx) = mpsc::channel(1);
            keep.push(rx);
            let a = SocketAddr::from(([192, 0, 2, 1], i as u16 + 1));
            t.start_handshake(a, tx).unwrap();
        }
        let (tx, _rx) = mpsc::channel(1);
        assert!(t
            .start_handshake("192.0.2.2:1".parse().unwrap(), tx)
            .is_err());
    }
}
