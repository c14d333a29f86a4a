//! CoAP over DTLS 1.2 (RFC 9132 §7) on one UDP socket: a dispatcher keyed by peer address,
//! one task per peer, each running OpenSSL's DTLS over an in-memory datagram transport.
//!
//! Cookie exchange is on: a ClientHello without a valid cookie (an HMAC of the peer's
//! address under a per-process secret) only draws a HelloVerifyRequest, smaller than the
//! hello, so a spoofed source gains no amplification. Half-open handshakes are bounded in
//! number and time. A ClientHello from a peer with an established session replaces it (a
//! client that restarted on the same address and port).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use openssl::error::ErrorStack;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslStream,
    SslVersion,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::control::sessions::{Outbox, SessionId};
use crate::control::ControlHandle;
use crate::dtls_io::{handle_timeout, Datagrams};
use crate::metrics::SIGNAL;
use crate::signal::session::Framing;
use tracing::Instrument;

/// Datagrams are kept under the IPv6 minimum path MTU (RFC 9132 §7.3).
const MTU: u32 = 1200;
/// Sessions (established or in handshake) served at once.
const MAX_PEERS: usize = 20_000;
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(600);

fn peer_index() -> openssl::ex_data::Index<Ssl, SocketAddr> {
    static INDEX: OnceLock<openssl::ex_data::Index<Ssl, SocketAddr>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("an OpenSSL ex_data index"))
}

fn cookie(secret: &[u8; 32], peer: &SocketAddr) -> Result<Vec<u8>, ErrorStack> {
    let key = openssl::pkey::PKey::hmac(secret)?;
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key)?;
    signer.update(peer.to_string().as_bytes())?;
    signer.sign_to_vec()
}

pub fn context(tls: &super::config::Tls) -> Result<SslContext> {
    let mut b = SslContextBuilder::new(SslMethod::dtls_server())?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    super::load_credentials(&mut b, tls)?;
    b.set_options(SslOptions::COOKIE_EXCHANGE | SslOptions::NO_QUERY_MTU);
    // Idle sessions give their record buffers back (most sessions are idle most of the time).
    b.set_mode(SslMode::RELEASE_BUFFERS);
    let mut secret = [0u8; 32];
    openssl::rand::rand_bytes(&mut secret)?;
    b.set_cookie_generate_cb(move |ssl, out| {
        let peer = ssl
            .ex_data(peer_index())
            .copied()
            .ok_or_else(ErrorStack::get)?;
        let c = cookie(&secret, &peer)?;
        let n = c.len().min(out.len());
        out[..n].copy_from_slice(&c[..n]);
        Ok(n)
    });
    b.set_cookie_verify_cb(move |ssl, offered| {
        let Some(peer) = ssl.ex_data(peer_index()).copied() else {
            return false;
        };
        cookie(&secret, &peer)
            .map(|c| {
                openssl::memcmp::eq(&c[..c.len().min(offered.len())], offered)
                    && c.len() == offered.len()
            })
            .unwrap_or(false)
    });
    Ok(b.build())
}

type Peers = Arc<StdMutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// Is this datagram a DTLS ClientHello starting a new session (epoch 0, handshake type 1)?
fn is_client_hello(d: &[u8]) -> bool {
    d.len() > 13 && d[0] == 22 && d[3] == 0 && d[4] == 0 && d[13] == 1
}

pub async fn serve_dtls(socket: UdpSocket, ctx: SslContext, control: ControlHandle) {
    let socket = Arc::new(socket);
    let peers: Peers = Arc::new(StdMutex::new(HashMap::new()));
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("DTLS socket: {e}");
                continue;
            }
        };
        let datagram = buf[..n].to_vec();
        let existing = peers.lock().expect("peers lock").get(&from).cloned();
        let sender = match existing {
            // A live session gets everything, new hellos included (during the handshake
            // that is the hello with the cookie; afterwards the session ends itself and the
            // client's retransmitted hello starts a new one).
            Some(tx) if !tx.is_closed() => tx,
            _ => {
                if !is_client_hello(&datagram) {
                    continue; // not a session we know, not a new one: drop
                }
                if peers.lock().expect("peers lock").len() >= MAX_PEERS {
                    tracing::warn!(
                        "DTLS: {MAX_PEERS} sessions in use, ignoring a hello from {from}"
                    );
                    continue;
                }
                let (tx, rx) = mpsc::channel(64);
                peers.lock().expect("peers lock").insert(from, tx.clone());
                let (socket, ctx, control, peers) =
                    (socket.clone(), ctx.clone(), control.clone(), peers.clone());
                let span = tracing::info_span!(
                    "session",
                    transport = "dtls",
                    peer = %from,
                    client = tracing::field::Empty,
                    cuid = tracing::field::Empty
                );
                tokio::spawn(async move {
                    if let Err(e) = session(from, rx, &socket, &ctx, control)
                        .instrument(span)
                        .await
                    {
                        tracing::info!("DTLS {from}: {e:#}");
                    }
                    let mut map = peers.lock().expect("peers lock");
                    if map.get(&from).is_some_and(|t| t.is_closed()) {
                        map.remove(&from);
                    }
                });
                tx
            }
        };
        if sender.try_send(datagram).is_err() {
            tracing::debug!("DTLS {from}: session queue full, datagram dropped");
        }
    }
}

async fn flush(socket: &UdpSocket, peer: SocketAddr, s: &mut SslStream<Datagrams>) {
    for d in std::mem::take(&mut s.get_mut().outbox) {
        let _ = socket.send_to(&d, peer).await;
    }
}

async fn session(
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    socket: &UdpSocket,
    ctx: &SslContext,
    control: ControlHandle,
) -> Result<()> {
    let mut ssl = Ssl::new(ctx)?;
    ssl.set_mtu(MTU)?;
    ssl.set_ex_data(peer_index(), peer);
    let mut s = SslStream::new(ssl, Datagrams::default())?;
    let started = Instant::now();
    // Handshake: feed datagrams, send flights, retransmit on timeouts.
    loop {
        match s.accept() {
            Ok(()) => break,
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {}
            Err(e) => {
                flush(socket, peer, &mut s).await;
                SIGNAL.handshake_failed("dtls");
                return Err(anyhow::anyhow!("handshake: {e}"));
            }
        }
        flush(socket, peer, &mut s).await;
        let Some(left) = HANDSHAKE_TIME.checked_sub(started.elapsed()) else {
            SIGNAL.handshake_failed("dtls");
            anyhow::bail!("handshake timed out");
        };
        match tokio::time::timeout(left.min(Duration::from_secs(1)), rx.recv()).await {
            Ok(Some(d)) => s.get_mut().inbox.push_back(d),
            Ok(None) => return Ok(()),
            Err(_) => handle_timeout(&mut s),
        }
    }
    flush(socket, peer, &mut s).await;
    let id = super::identity(s.ssl())?;
    let span = tracing::Span::current();
    span.record("client", id.cn.as_str());
    span.record("cuid", id.cuid.as_str());
    let _counted = SIGNAL.session("dtls");
    tracing::info!("DTLS session established");
    let outbox = Arc::new(Outbox::default());
    let unasked = outbox.clone();
    let (sid, _) = control
        .run(move |c| c.open_session(id, Framing::Datagram, outbox, Instant::now()))
        .await?;
    let result = shovel(&mut s, &mut rx, &unasked, sid, socket, peer, &control).await;
    let _ = control.run(move |c| c.close_session(sid)).await;
    result
}

/// Moves bytes between the socket's datagrams (through DTLS) and the session on the
/// control thread, until the peer leaves, starts a new session, or falls silent.
async fn shovel(
    s: &mut SslStream<Datagrams>,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    unasked: &Outbox,
    sid: SessionId,
    socket: &UdpSocket,
    peer: SocketAddr,
    control: &ControlHandle,
) -> Result<()> {
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            d = rx.recv() => {
                let Some(d) = d else { return Ok(()) };
                last_heard = Instant::now();
                if is_client_hello(&d) {
                    // The client restarted on the same address: the dispatcher starts afresh.
                    return Ok(());
                }
                s.get_mut().inbox.push_back(d);
                // Allocated per datagram, not per session: an idle session holds no read buffer.
                let mut buf = vec![0u8; 16_384];
                let mut plain = Vec::new();
                loop {
                    match s.ssl_read(&mut buf) {
                        Ok(n) => plain.push(buf[..n].to_vec()),
                        Err(e) if e.code() == ErrorCode::WANT_READ => break,
                        Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                            flush(socket, peer, s).await;
                            return Ok(());
                        }
                        Err(e) => {
                            flush(socket, peer, s).await;
                            return Err(anyhow::anyhow!("DTLS: {e}"));
                        }
                    }
                }
                if !plain.is_empty() {
                    let replies = control
                        .run(move |c| {
                            let now = crate::clock::now();
                            let mut out = Vec::new();
                            for p in plain {
                                out.extend(c.session_message(sid, now, &p)?);
                            }
                            Ok::<_, String>(out)
                        })
                        .await?
                        .map_err(anyhow::Error::msg)?;
                    for r in replies {
                        let _ = s.ssl_write(&r);
                    }
                }
            }
            waiting = unasked.next() => {
                for bytes in waiting {
                    let _ = s.ssl_write(&bytes);
                }
            }
            _ = tokio::time::sleep_until((last_heard + IDLE).into()) => {
                return Ok(()); // nothing heard for long: the session is gone
            }
        }
        flush(socket, peer, s).await;
    }
}
