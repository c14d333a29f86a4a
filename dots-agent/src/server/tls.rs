//! CoAP over TLS (RFC 8323) with mutual X.509 authentication: one task per connection, a
//! byte shovel between the TLS stream and its session on the control thread.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use openssl::ssl::{AlpnError, SslAcceptor, SslMethod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;

use tracing::Instrument;

use crate::control::sessions::{Outbox, SessionId};
use crate::control::ControlHandle;
use crate::metrics::SIGNAL;
use crate::signal::session::Framing;

/// A connection with nothing received for this long is closed.
const IDLE: Duration = Duration::from_secs(600);
/// The TLS handshake must complete within this.
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);

pub fn acceptor(tls: &super::config::Tls) -> Result<SslAcceptor> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    super::load_credentials(&mut b, tls)?;
    b.set_alpn_select_callback(|_, offered| {
        openssl::ssl::select_next_proto(b"\x04coap", offered).ok_or(AlpnError::NOACK)
    });
    Ok(b.build())
}

/// Serves until the task is dropped, at most `max_connections` at once (more wait in the
/// kernel's accept queue).
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: Arc<SslAcceptor>,
    control: ControlHandle,
    max_connections: usize,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    while let Some((slot, tcp, peer)) = super::limits::accept(&listener, &slots, "accept").await {
        let acceptor = acceptor.clone();
        let control = control.clone();
        let span = tracing::info_span!(
            "session",
            transport = "tls",
            peer = %peer,
            client = tracing::field::Empty,
            cuid = tracing::field::Empty
        );
        tokio::spawn(
            async move {
                if let Err(e) = connection(tcp, peer, &acceptor, control).await {
                    tracing::info!("{e:#}");
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
}

async fn connection(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: &SslAcceptor,
    control: ControlHandle,
) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let ssl = super::peer_ssl(acceptor.context(), peer)?;
    let mut s = SslStream::new(ssl, tcp)?;
    match tokio::time::timeout(HANDSHAKE_TIME, Pin::new(&mut s).accept()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            SIGNAL.handshake_failed("tls");
            super::log_handshake_failure("TLS", peer, s.ssl(), &e);
            anyhow::bail!("TLS handshake failed");
        }
        Err(_) => {
            SIGNAL.handshake_failed("tls");
            anyhow::bail!("TLS handshake timed out");
        }
    }
    let id = super::identity(s.ssl())?;
    let span = tracing::Span::current();
    span.record("client", id.cn.as_str());
    span.record("cuid", id.cuid.as_str());
    let _counted = SIGNAL.session("tls");
    tracing::info!("TLS session established");
    let outbox = Arc::new(Outbox::default());
    let unasked = outbox.clone();
    let (sid, first) = control
        .run(move |c| c.open_session(id, Framing::Stream, outbox, Instant::now()))
        .await?;
    let result = async {
        for f in first {
            s.write_all(&f).await?;
        }
        shovel(&mut s, &unasked, sid, &control).await
    }
    .await;
    let _ = control.run(move |c| c.close_session(sid)).await;
    result
}

/// Moves bytes between the TLS stream and the session on the control thread, until the
/// peer leaves, releases the session, or falls silent.
async fn shovel(
    s: &mut SslStream<TcpStream>,
    unasked: &Outbox,
    sid: SessionId,
    control: &ControlHandle,
) -> Result<()> {
    let mut chunk = [0u8; 4096];
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            n = s.read(&mut chunk) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                last_heard = Instant::now();
                let bytes = chunk[..n].to_vec();
                let replies = control
                    .run(move |c| c.session_message(sid, crate::clock::now(), &bytes))
                    .await?;
                match replies {
                    Ok(replies) => {
                        for r in replies {
                            s.write_all(&r).await?;
                        }
                    }
                    Err(why) => {
                        tracing::info!("session ended: {why}");
                        return Ok(());
                    }
                }
            }
            waiting = unasked.next() => {
                for bytes in waiting {
                    s.write_all(&bytes).await?;
                }
            }
            _ = tokio::time::sleep_until((last_heard + IDLE).into()) => return Ok(()),
        }
    }
}
