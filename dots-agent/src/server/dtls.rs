//! CoAP over DTLS 1.2 (RFC 9132 §7) on one UDP socket: a dispatcher keyed by peer address,
//! one task per peer, each running OpenSSL's DTLS over an in-memory datagram transport.
//!
//! Cookie exchange is on: a ClientHello without a valid cookie (an HMAC of the peer's
//! address under a per-process secret) only draws a HelloVerifyRequest, smaller than the
//! hello, so a spoofed source gains no amplification. Half-open handshakes are bounded in
//! number and time. A ClientHello from a peer with an established session replaces it (a
//! client that restarted on the same address and port).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use coap_lite::{MessageType, Packet};
use openssl::error::ErrorStack;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslStream,
    SslVersion,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::{now, Heartbeats, Identity, Observations};
use crate::control::ControlHandle;
use crate::dtls_io::{handle_timeout, Datagrams};
use crate::metrics::SIGNAL;
use crate::signal::handler::{self, Peer, Reply};

/// Datagrams are kept under the IPv6 minimum path MTU (RFC 9132 §7.3).
const MTU: u32 = 1200;
/// Sessions (established or in handshake) served at once.
const MAX_PEERS: usize = 20_000;
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(600);
/// Answers remembered per session for duplicate detection.
const DEDUP: usize = 16;

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
                tokio::spawn(async move {
                    if let Err(e) = session(from, rx, &socket, &ctx, control).await {
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
    let id = Identity::of(s.ssl(), &control).await?;
    let _counted = SIGNAL.session("dtls");
    let client = id.client();
    tracing::info!(
        "DTLS session from {peer}: client {:?} (cuid {}){}",
        id.cn,
        id.cuid,
        if id.configured {
            ""
        } else {
            ": not configured"
        }
    );
    let mut message_id: u16 = openssl_rand_u16();
    let mut observations = Observations::default();
    let mut heartbeats = Heartbeats::new();
    // Recent answers by request message id: a retransmitted request gets the same answer
    // again instead of being processed twice (RFC 7252 §4.5).
    let mut answered: VecDeque<(u16, Vec<u8>)> = VecDeque::with_capacity(DEDUP);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
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
                loop {
                    match s.ssl_read(&mut buf) {
                        Ok(n) => {
                            let Ok(req) = Packet::from_bytes(&buf[..n]) else { continue };
                            let is_request = matches!(req.header.code, coap_lite::MessageClass::Request(_));
                            if is_request {
                                if let Some((_, again)) = answered.iter().find(|(m, _)| *m == req.header.message_id) {
                                    let _ = s.ssl_write(again);
                                    continue;
                                }
                            }
                            let (who, cuid) = (client.map(str::to_string), id.cuid.clone());
                            let started = Instant::now();
                            let (req, reply) = control.run(move |c| {
                                let peer = Peer { client: who.as_deref(), cuid: &cuid };
                                let reply = handler::handle(&mut c.engine, &peer, &req, now());
                                (req, reply)
                            }).await?;
                            SIGNAL.request(&req, &reply, started);
                            let mut resp = match reply {
                                Reply::Heartbeat { response, .. } => {
                                    heartbeats.client_heartbeat();
                                    response
                                }
                                Reply::Response(p) => p,
                                Reply::Observe { response, observation, register } => {
                                    observations.apply(observation, register, &control).await?;
                                    response
                                }
                                Reply::Silence => continue,
                            };
                            if req.header.get_type() == MessageType::Confirmable {
                                // Piggybacked on the acknowledgement.
                                resp.header.set_type(MessageType::Acknowledgement);
                                resp.header.message_id = req.header.message_id;
                            } else {
                                resp.header.set_type(MessageType::NonConfirmable);
                                message_id = message_id.wrapping_add(1);
                                resp.header.message_id = message_id;
                            }
                            if let Ok(bytes) = resp.to_bytes() {
                                let _ = s.ssl_write(&bytes);
                                if answered.len() == DEDUP {
                                    answered.pop_front();
                                }
                                answered.push_back((req.header.message_id, bytes));
                            }
                        }
                        Err(e) if e.code() == ErrorCode::WANT_READ => break,
                        Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                            flush(socket, peer, &mut s).await;
                            return Ok(());
                        }
                        Err(e) => {
                            flush(socket, peer, &mut s).await;
                            return Err(anyhow::anyhow!("DTLS: {e}"));
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if last_heard.elapsed() > IDLE {
                    return Ok(()); // nothing heard for long: the session is gone
                }
                // Notifications and heartbeats are NON (RFC 9132 §4.4.2.1, §4.7).
                let mut out = observations.due(&control).await?;
                out.extend(heartbeats.due(&control, &id).await?);
                for mut p in out {
                    p.header.set_type(MessageType::NonConfirmable);
                    message_id = message_id.wrapping_add(1);
                    p.header.message_id = message_id;
                    if let Ok(bytes) = p.to_bytes() {
                        let _ = s.ssl_write(&bytes);
                    }
                }
            }
        }
        flush(socket, peer, &mut s).await;
    }
}

fn openssl_rand_u16() -> u16 {
    let mut b = [0u8; 2];
    let _ = openssl::rand::rand_bytes(&mut b);
    u16::from_ne_bytes(b)
}
