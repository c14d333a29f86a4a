//! The data channel's HTTPS server: TLS with mutual X.509 authentication (the signal
//! channel's CA and certificates), HTTP/1.1 with bounded heads and bodies, requests handed
//! to [`DataChannel::handle`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use openssl::ssl::{AlpnError, Ssl, SslAcceptor, SslMethod};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;

use crate::control::ControlHandle;
use crate::data::restconf::{self, ErrorTag, RestconfError};
use crate::data::service::{Peer, Request, Response};

/// Largest request head and body accepted (413 beyond; a whole client's ACLs fit easily).
pub const MAX_HEAD: usize = 16 * 1024;
pub const MAX_BODY: usize = 512 * 1024;
/// A connection idle this long between requests (or mid-request) is closed.
const IDLE: Duration = Duration::from_secs(60);
const MAX_HEADERS: usize = 64;
/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 1024;

pub fn acceptor(tls: &crate::server::config::Tls) -> Result<SslAcceptor> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    super::load_credentials(&mut b, tls)?;
    b.set_alpn_select_callback(|_, offered| {
        openssl::ssl::select_next_proto(b"\x08http/1.1", offered).ok_or(AlpnError::NOACK)
    });
    Ok(b.build())
}

/// Serves until the task is dropped; `clients` are the configured client names.
pub async fn serve(
    listener: TcpListener,
    acceptor: Arc<SslAcceptor>,
    control: ControlHandle,
    clients: Arc<Vec<String>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("data channel accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, control, clients) = (acceptor.clone(), control.clone(), clients.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(tcp, &acceptor, control, &clients).await {
                tracing::info!("data channel {peer}: {e:#}");
            }
            drop(slot);
        });
    }
}

async fn connection(
    tcp: TcpStream,
    acceptor: &SslAcceptor,
    control: ControlHandle,
    clients: &[String],
) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut s = SslStream::new(Ssl::new(acceptor.context())?, tcp)?;
    tokio::time::timeout(Duration::from_secs(10), Pin::new(&mut s).accept())
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake failed")?;
    let cert = s
        .ssl()
        .peer_certificate()
        .context("no client certificate")?;
    let cn = crate::pki::common_name(&cert).unwrap_or_default();
    let cuid = crate::pki::cuid(&cert)?;
    let client = clients.contains(&cn).then_some(cn.as_str());
    let peer = Peer {
        client,
        cuid: &cuid,
    };
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some(req) = tokio::time::timeout(IDLE, read_request(&mut s, &mut buf))
            .await
            .unwrap_or(Ok(None))?
        else {
            return Ok(());
        };
        let (status, content_type, body, close) = match req {
            Err((e, close)) => (e.status(), restconf::MEDIA_TYPE, json(&e.body()), close),
            Ok(r) => {
                let (status, ct, body) = respond(&control, &peer, &r).await?;
                (status, ct, body, r.close)
            }
        };
        write_response(&mut s, status, content_type, &body, close).await?;
        if close {
            let _ = s.shutdown().await;
            return Ok(());
        }
    }
}

fn json(v: &serde_json::Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// One parsed request.
pub struct HttpRequest {
    pub method: String,
    pub target: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub close: bool,
}

async fn respond(
    control: &ControlHandle,
    peer: &Peer<'_>,
    r: &HttpRequest,
) -> Result<(u16, &'static str, Vec<u8>)> {
    let (path, query) = match r.target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (r.target.clone(), None),
    };
    if path == "/.well-known/host-meta" {
        return Ok(match r.method.as_str() {
            "GET" => (
                200,
                "application/xrd+xml",
                restconf::host_meta().into_bytes(),
            ),
            m => {
                let e = RestconfError::new(
                    ErrorTag::OperationNotSupported,
                    format!("{m} on host-meta"),
                );
                (e.status(), restconf::MEDIA_TYPE, json(&e.body()))
            }
        });
    }
    if !r.body.is_empty() {
        let ok = r.content_type.as_deref().is_some_and(|t| {
            let t = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            t == restconf::MEDIA_TYPE || t == "application/json"
        });
        if !ok {
            let e = RestconfError::new(
                ErrorTag::UnsupportedMedia,
                format!(
                    "request bodies are {} (got {:?})",
                    restconf::MEDIA_TYPE,
                    r.content_type
                ),
            );
            return Ok((e.status(), restconf::MEDIA_TYPE, json(&e.body())));
        }
    }
    let (method, body) = (r.method.clone(), r.body.clone());
    let (client, cuid) = (peer.client.map(str::to_string), peer.cuid.to_string());
    let Response { status, body } = control
        .run(move |c| {
            let peer = Peer {
                client: client.as_deref(),
                cuid: &cuid,
            };
            let req = Request {
                method: &method,
                path: &path,
                query: query.as_deref(),
                body: &body,
            };
            c.data_request(&peer, &req, crate::clock::unix_now())
        })
        .await?;
    Ok((
        status,
        restconf::MEDIA_TYPE,
        body.map(|b| json(&b)).unwrap_or_default(),
    ))
}

/// Reads one request. Ok(None): the peer closed between requests. Ok(Some(Err)): a request
/// that gets an error response (and, if `true`, the connection closes after it).
pub async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<std::result::Result<HttpRequest, (RestconfError, bool)>>> {
    let mut chunk = [0u8; 8192];
    let head_len = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => break n,
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                let err = RestconfError::new(
                    ErrorTag::MalformedMessage,
                    format!("bad HTTP request: {e}"),
                );
                return Ok(Some(Err((err, true))));
            }
        }
        if buf.len() > MAX_HEAD {
            let err = RestconfError::new(
                ErrorTag::TooBig,
                format!("request head over {MAX_HEAD} bytes"),
            );
            return Ok(Some(Err((err, true))));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            anyhow::bail!("connection closed mid-request");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(buf)?;
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("").to_string();
    let mut close = req.version == Some(0);
    let (mut length, mut content_type, mut chunked) = (None, None, false);
    let mut expect_continue = false;
    let mut bad_length = false;
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" => match value.parse::<usize>() {
                Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => bad_length = true,
            },
            "content-type" => content_type = Some(value),
            "transfer-encoding" => chunked = true,
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                close |= v.split(',').any(|t| t.trim() == "close");
            }
            _ => {}
        }
    }
    buf.drain(..head_len);
    if bad_length {
        let err = RestconfError::new(ErrorTag::MalformedMessage, "bad Content-Length");
        return Ok(Some(Err((err, true))));
    }
    if chunked {
        let err = RestconfError::new(
            ErrorTag::MalformedMessage,
            "Transfer-Encoding is not supported: send the body with Content-Length",
        );
        return Ok(Some(Err((err, true))));
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        let err = RestconfError::new(
            ErrorTag::TooBig,
            format!("request body over {MAX_BODY} bytes"),
        );
        return Ok(Some(Err((err, true))));
    }
    // curl waits a second for this before sending bodies over 1 KiB.
    if expect_continue && buf.len() < length {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        s.flush().await?;
    }
    while buf.len() < length {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("connection closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..length).collect();
    Ok(Some(Ok(HttpRequest {
        method,
        target,
        content_type,
        body,
        close,
    })))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        503 => "Service Unavailable",
        _ => "",
    }
}

async fn write_response<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) -> Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if status == 405 {
        head.push_str("Allow: GET, POST, PUT, DELETE\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    head.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "\r\n"
    });
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> Option<std::result::Result<HttpRequest, (RestconfError, bool)>> {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 20);
        theirs.write_all(raw).await.unwrap();
        drop(theirs);
        let mut buf = Vec::new();
        read_request(&mut ours, &mut buf).await.unwrap()
    }

    #[tokio::test]
    async fn expect_100_continue_is_answered() {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs
            .write_all(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .await
            .unwrap();
        let server = tokio::spawn(async move {
            let mut buf = Vec::new();
            let r = read_request(&mut ours, &mut buf).await.unwrap();
            r.unwrap().unwrap_or_else(|_| panic!("parsed")).body
        });
        let mut interim = [0u8; 25];
        theirs.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        theirs.write_all(b"{}").await.unwrap();
        assert_eq!(server.await.unwrap(), b"{}");
    }

    #[tokio::test]
    async fn requests_are_bounded_and_framed() {
        let ok = parse(b"PUT /x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/yang-data+json\r\nContent-Length: 2\r\n\r\n{}").await;
        let r = ok.unwrap().unwrap_or_else(|_| panic!("parsed"));
        assert_eq!(
            (
                r.method.as_str(),
                r.target.as_str(),
                r.body.as_slice(),
                r.close
            ),
            ("PUT", "/x?a=1", &b"{}"[..], false)
        );
        let big = format!(
            "POST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let (e, close) = parse(big.as_bytes()).await.unwrap().err().unwrap();
        assert_eq!((e.status(), close), (413, true));
        let (e, _) = parse(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap()
            .err()
            .unwrap();
        assert_eq!(e.status(), 400);
        let (e, _) = parse(b"\x01\x02 garbage\r\n\r\n")
            .await
            .unwrap()
            .err()
            .unwrap();
        assert_eq!(e.status(), 400);
        let (e, _) = parse(b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
            .await
            .unwrap()
            .err()
            .unwrap();
        assert_eq!(e.status(), 400);
        assert!(parse(b"").await.is_none());
        let r = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!());
        assert!(r.close);
    }
}
