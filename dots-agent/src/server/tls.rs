//! CoAP over TLS (RFC 8323) with mutual X.509 authentication: one task per connection,
//! frames in, engine calls, frames out.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use openssl::ssl::{AlpnError, Ssl, SslAcceptor, SslMethod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;

use super::{now, Heartbeats, Identity, Observations};
use crate::control::ControlHandle;
use crate::metrics::SIGNAL;
use crate::signal::coap_tcp::{self, Frame};
use crate::signal::handler::{self, Peer, Reply};

/// A connection with nothing received for this long is closed.
const IDLE: Duration = Duration::from_secs(600);

pub fn acceptor(tls: &super::config::Tls) -> Result<SslAcceptor> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    super::load_credentials(&mut b, tls)?;
    b.set_alpn_select_callback(|_, offered| {
        openssl::ssl::select_next_proto(b"\x04coap", offered).ok_or(AlpnError::NOACK)
    });
    Ok(b.build())
}

pub async fn serve_tls(listener: TcpListener, acceptor: Arc<SslAcceptor>, control: ControlHandle) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let control = control.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(tcp, &acceptor, control).await {
                tracing::info!("{peer}: {e:#}");
            }
        });
    }
}

async fn connection(tcp: TcpStream, acceptor: &SslAcceptor, control: ControlHandle) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let ssl = Ssl::new(acceptor.context())?;
    let mut s = SslStream::new(ssl, tcp)?;
    let handshake = tokio::time::timeout(Duration::from_secs(10), Pin::new(&mut s).accept()).await;
    if !matches!(handshake, Ok(Ok(()))) {
        SIGNAL.handshake_failed("tls");
    }
    handshake
        .context("TLS handshake timed out")?
        .context("TLS handshake failed")?;
    let id = Identity::of(s.ssl(), &control).await?;
    let _counted = SIGNAL.session("tls");
    let client = id.client();
    tracing::info!(
        "TLS session from client {:?} (cuid {}){}",
        id.cn,
        id.cuid,
        if id.configured {
            ""
        } else {
            ": not configured"
        }
    );
    s.write_all(&coap_tcp::csm()).await?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut observations = Observations::default();
    let mut heartbeats = Heartbeats::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_heard = std::time::Instant::now();
    loop {
        tokio::select! {
            n = s.read(&mut chunk) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                last_heard = std::time::Instant::now();
                buf.extend_from_slice(&chunk[..n]);
                while let Some((frame, used)) = coap_tcp::decode(&buf)? {
                    buf.drain(..used);
                    match frame {
                        Frame::Signal { code: coap_tcp::PING, token, .. } => s.write_all(&coap_tcp::pong(&token)).await?,
                        Frame::Signal { code: coap_tcp::RELEASE | coap_tcp::ABORT, .. } => return Ok(()),
                        Frame::Signal { .. } => {} // CSM, Pong: nothing to answer
                        Frame::Message(req) => {
                            let (who, cuid) = (client.map(str::to_string), id.cuid.clone());
                            let started = std::time::Instant::now();
                            let (req, reply) = control.run(move |c| {
                                let peer = Peer { client: who.as_deref(), cuid: &cuid };
                                let reply = handler::handle(&mut c.engine, &peer, &req, now());
                                (req, reply)
                            }).await?;
                            SIGNAL.request(&req, &reply, started);
                            match reply {
                                Reply::Heartbeat { response, .. } => {
                                    heartbeats.client_heartbeat();
                                    s.write_all(&coap_tcp::encode(&response)?).await?
                                }
                                Reply::Response(p) => s.write_all(&coap_tcp::encode(&p)?).await?,
                                Reply::Observe { response, observation, register } => {
                                    observations.apply(observation, register, &control).await?;
                                    s.write_all(&coap_tcp::encode(&response)?).await?
                                }
                                Reply::Silence => {}
                            }
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if last_heard.elapsed() > IDLE {
                    return Ok(()); // idle timeout
                }
                let mut out = observations.due(&control).await?;
                out.extend(heartbeats.due(&control, &id).await?);
                for p in out {
                    s.write_all(&coap_tcp::encode(&p)?).await?;
                }
            }
        }
    }
}
