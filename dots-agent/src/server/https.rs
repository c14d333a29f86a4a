//! The data channel's HTTPS listener: TLS with mutual X.509 authentication (the signal
//! channel's CA and certificates), then HTTP/1.1 or HTTP/2, as the client's ALPN offers, by
//! hyper. Every input is bounded: connections served at once, TLS handshake time, request
//! heads (size and time), bodies (size and time), concurrent HTTP/2 streams, and idle
//! connections. Each request goes to the control plane (`Control::data_request`), in a
//! tracing span of its own.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use openssl::ssl::{AlpnError, SslAcceptor, SslMethod};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;
use tracing::Instrument;

use crate::control::ControlHandle;
use crate::data::restconf::{self, ErrorTag, RestconfError};
use crate::data::service::{Peer, Request as DataRequest, Response as DataResponse};

/// Largest request head and body accepted (413 beyond; a whole client's ACLs fit easily).
pub const MAX_HEAD: usize = 16 * 1024;
pub const MAX_BODY: usize = 512 * 1024;
/// How much of a body over MAX_BODY is read (and dropped) before the 413, so that the
/// client hears it rather than a reset; beyond, the connection or stream is dropped.
const DRAIN: usize = 2 * MAX_BODY;
const MAX_HEADERS: usize = 64;
/// A request head must arrive within this (also how long an idle HTTP/1.1 connection is
/// kept), and its body within this once the head is in.
const HEAD_TIME: Duration = Duration::from_secs(30);
const BODY_TIME: Duration = Duration::from_secs(30);
/// A connection with nothing read or written for this long is closed (HTTP/2 included).
const IDLE: Duration = Duration::from_secs(60);
/// Connections served at once unless the descriptor budget allows fewer; more wait in the
/// kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 1024;
/// Requests in flight on one HTTP/2 connection.
const MAX_STREAMS: u32 = 32;

pub fn acceptor(tls: &crate::server::config::Tls) -> Result<SslAcceptor> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    super::load_credentials(&mut b, tls)?;
    b.set_alpn_select_callback(|_, offered| {
        openssl::ssl::select_next_proto(b"\x02h2\x08http/1.1", offered).ok_or(AlpnError::NOACK)
    });
    Ok(b.build())
}

/// Who is asking: the configured client whose certificate it is (None: valid, but not
/// configured) and the cuid of its certificate.
#[derive(Clone, Debug)]
pub struct Who {
    pub client: Option<String>,
    pub cuid: String,
}

/// The configured client names; a reload of server.toml replaces them.
pub type ClientNames = Arc<std::sync::RwLock<Vec<String>>>;

/// Serves until the task is dropped, at most `max_connections` at once; `clients` are the
/// configured client names.
pub async fn serve(
    listener: TcpListener,
    acceptor: Arc<SslAcceptor>,
    control: ControlHandle,
    clients: ClientNames,
    max_connections: usize,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    while let Some((slot, tcp, peer)) =
        super::limits::accept(&listener, &slots, "data channel accept").await
    {
        let (acceptor, control, clients) = (acceptor.clone(), control.clone(), clients.clone());
        let span = tracing::info_span!(
            "data",
            peer = %peer,
            client = tracing::field::Empty,
            cuid = tracing::field::Empty
        );
        tokio::spawn(
            async move {
                if let Err(e) = connection(tcp, peer, &acceptor, control, &clients).await {
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
    clients: &ClientNames,
) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut s = SslStream::new(super::peer_ssl(acceptor.context(), peer)?, tcp)?;
    match tokio::time::timeout(Duration::from_secs(10), Pin::new(&mut s).accept()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            super::log_handshake_failure("data channel TLS", peer, s.ssl(), &e);
            anyhow::bail!("TLS handshake failed");
        }
        Err(_) => anyhow::bail!("TLS handshake timed out"),
    }
    let cert = s
        .ssl()
        .peer_certificate()
        .context("no client certificate")?;
    let cn = crate::pki::common_name(&cert).unwrap_or_default();
    let who = Who {
        client: clients.read().is_ok_and(|c| c.contains(&cn)).then_some(cn),
        cuid: crate::pki::cuid(&cert)?,
    };
    let span = tracing::Span::current();
    span.record(
        "client",
        who.client.as_deref().unwrap_or("(not configured)"),
    );
    span.record("cuid", who.cuid.as_str());
    serve_http(s, who, control).await
}

/// Serves HTTP/1.1 or HTTP/2 (by its preface) on an established stream until the peer
/// closes it or it falls idle.
pub async fn serve_http<I>(io: I, who: Who, control: ControlHandle) -> Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Activity {
        inner: io,
        started,
        last: last.clone(),
    });
    let who = Arc::new(who);
    let service = hyper::service::service_fn(move |req| {
        let (who, control) = (who.clone(), control.clone());
        async move { Ok::<_, Infallible>(respond(req, &who, &control).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIME)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32)
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(IDLE / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            r = conn.as_mut() => return r.map_err(|e| anyhow::anyhow!("HTTP: {e}")),
            _ = every.tick() => {
                let idle = started.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if idle >= IDLE {
                    conn.as_mut().graceful_shutdown();
                    // A peer that does not finish what it started is not waited for.
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                    return Ok(());
                }
            }
        }
    }
}

/// Notes when the stream last moved, for the idle timeout (hyper has none for HTTP/2).
struct Activity<I> {
    inner: I,
    started: Instant,
    /// Milliseconds after `started`.
    last: Arc<AtomicU64>,
}

impl<I> Activity<I> {
    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Activity<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Activity<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn reply(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let empty = body.is_empty();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !empty {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if status == 405 {
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, POST, PUT, DELETE"));
    }
    r
}

enum BodyError {
    TooBig,
    Broken(hyper::Error),
}

/// A request body of at most MAX_BODY bytes. A longer one is read on (and dropped) up to
/// DRAIN bytes before it is refused.
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, BodyError> {
    let (mut kept, mut seen) = (Vec::new(), 0usize);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(BodyError::Broken)?.into_data() else {
            continue; // trailers
        };
        seen += data.len();
        if seen <= MAX_BODY {
            kept.extend_from_slice(&data);
        } else if seen > DRAIN {
            break;
        }
    }
    if seen > MAX_BODY {
        return Err(BodyError::TooBig);
    }
    Ok(kept)
}

fn json(v: &serde_json::Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

fn error(e: RestconfError) -> Response<Full<Bytes>> {
    reply(e.status(), restconf::MEDIA_TYPE, json(&e.body()))
}

/// One request: bounded, checked, then answered by the control plane.
async fn respond(
    req: Request<Incoming>,
    who: &Who,
    control: &ControlHandle,
) -> Response<Full<Bytes>> {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    async move {
        let r = answer(req, who, control).await;
        tracing::debug!(status = r.status().as_u16(), "answered");
        r
    }
    .instrument(span)
    .await
}

async fn answer(
    req: Request<Incoming>,
    who: &Who,
    control: &ControlHandle,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    if path == "/.well-known/host-meta" {
        return match method.as_str() {
            "GET" => reply(
                200,
                "application/xrd+xml",
                restconf::host_meta().into_bytes(),
            ),
            m => error(RestconfError::new(
                ErrorTag::OperationNotSupported,
                format!("{m} on host-meta"),
            )),
        };
    }
    // Refused before the body is read: a client waiting for 100 Continue sends nothing.
    // Over HTTP/2 a body of a sane size is read first, so that the client gets the 413
    // rather than a reset stream.
    let too_big = || {
        RestconfError::new(
            ErrorTag::TooBig,
            format!("request body over {MAX_BODY} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let http2 = parts.version == hyper::Version::HTTP_2;
    if declared.is_some_and(|n| n > MAX_BODY as u64 && (!http2 || n > DRAIN as u64)) {
        return error(too_big());
    }
    let body = match tokio::time::timeout(BODY_TIME, read_body(body)).await {
        Ok(Ok(b)) => b,
        Ok(Err(BodyError::TooBig)) => return error(too_big()),
        Ok(Err(BodyError::Broken(e))) => {
            return error(RestconfError::new(
                ErrorTag::MalformedMessage,
                format!("the request body: {e}"),
            ))
        }
        Err(_) => {
            return error(RestconfError::new(
                ErrorTag::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIME.as_secs()
                ),
            ))
        }
    };
    if !body.is_empty() {
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let ok = content_type.as_deref().is_some_and(|t| {
            let t = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            t == restconf::MEDIA_TYPE || t == "application/json"
        });
        if !ok {
            return error(RestconfError::new(
                ErrorTag::UnsupportedMedia,
                format!(
                    "request bodies are {} (got {content_type:?})",
                    restconf::MEDIA_TYPE
                ),
            ));
        }
    }
    let (client, cuid) = (who.client.clone(), who.cuid.clone());
    let answered = control
        .run(move |c| {
            let peer = Peer {
                client: client.as_deref(),
                cuid: &cuid,
            };
            let req = DataRequest {
                method: &method,
                path: &path,
                query: query.as_deref(),
                body: &body,
            };
            c.data_request(&peer, &req, crate::clock::unix_now())
        })
        .await;
    match answered {
        Ok(DataResponse { status, body }) => reply(
            status,
            restconf::MEDIA_TYPE,
            body.map(|b| json(&b)).unwrap_or_default(),
        ),
        Err(stopped) => error(RestconfError::new(
            ErrorTag::OperationFailed,
            stopped.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::control::Control;
    use crate::data::{DataChannel, SharedData};
    use crate::datapath::{MemoryMitigator, Mitigator};
    use crate::engine::Engine;

    fn control() -> ControlHandle {
        let data = SharedData::new(DataChannel::new(
            [("a".to_string(), vec!["198.51.100.0/24".parse().unwrap()])].into(),
        ));
        let engine = Engine::new(
            Box::new(MemoryMitigator::new()) as Box<dyn Mitigator>,
            Vec::new(),
        )
        .with_data_source(Box::new(data.clone()));
        ControlHandle::spawn(Control::new(engine, data)).unwrap()
    }

    /// The server on one end of an in-memory stream; the other end is the client's.
    fn connect() -> tokio::io::DuplexStream {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let who = Who {
            client: Some("a".into()),
            cuid: "cuid-a".into(),
        };
        tokio::spawn(serve_http(ours, who, control()));
        theirs
    }

    /// Sends raw bytes and reads until the server closes the stream.
    async fn exchange(raw: &[u8]) -> String {
        let mut s = connect();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn expect_100_continue_is_answered() {
        let mut s = connect();
        s.write_all(b"PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Type: application/yang-data+json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut interim = [0u8; 25];
        s.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(b"{}").await.unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.unwrap();
        assert!(rest.starts_with("HTTP/1.1 404"), "{rest}");
    }

    #[tokio::test]
    async fn requests_are_bounded_and_framed() {
        let r = exchange(b"PUT /x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/yang-data+json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}").await;
        assert!(r.starts_with("HTTP/1.1 404"), "routed, and not found: {r}");
        assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
        let big = format!(
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            MAX_BODY + 1
        );
        let r = exchange(big.as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 413") && r.contains("too-big"),
            "{r}"
        );
        // A chunked body is read (hyper decodes it), within the same limit.
        let mut chunked = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..9 {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(&chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let r = exchange(&chunked).await;
        assert!(
            r.starts_with("HTTP/1.1 413") && r.contains("too-big"),
            "{r}"
        );
        let r = exchange(b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n2\r\nab\r\n0\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 415"),
            "a small chunked body is read: {r}"
        );
        let r = exchange(b"\x01\x02 garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let r = exchange(
            b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let head = format!(
            "GET /x HTTP/1.1\r\nHost: h\r\nX-Long: {}\r\n\r\n",
            "y".repeat(MAX_HEAD)
        );
        let r = exchange(head.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 431"), "a head over the limit: {r}");
        // A peer that leaves without a request gets nothing, and the connection ends.
        let mut s = connect();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn http2_is_spoken_when_the_client_starts_it() {
        let io = TokioIo::new(connect());
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("{}/capabilities", restconf::DOTS_DATA))
            .header("host", "h")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = sender.send_request(req).await.unwrap();
        assert_eq!(
            (r.version(), r.status()),
            (hyper::Version::HTTP_2, StatusCode::OK)
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("capabilities"));
    }
}
