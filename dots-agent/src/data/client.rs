//! The data channel's HTTPS client: one request per connection, the client certificate of
//! client.toml, the server certificate checked against the CA and `server_name`.

use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use openssl::ssl::{SslConnector, SslMethod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::restconf::MEDIA_TYPE;
use crate::client::ClientConfig;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response accepted.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The cuid of the client certificate in `cfg` (RFC 9132 §4.4.1.1: from its public key).
pub fn cuid_of(cfg: &ClientConfig) -> Result<String> {
    let pem = std::fs::read(&cfg.tls.cert)
        .with_context(|| format!("reading {}", cfg.tls.cert.display()))?;
    crate::pki::cuid(&openssl::x509::X509::from_pem(&pem)?)
}

/// Sends one request to `server` (host:port) and returns the response.
pub async fn request(
    cfg: &ClientConfig,
    server: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<HttpResponse> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    crate::client::load_credentials(&mut b, &cfg.tls)?;
    b.set_alpn_protos(b"\x08http/1.1")?;
    let connector = b.build();
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(server))
        .await
        .with_context(|| format!("connecting to {server} timed out"))?
        .with_context(|| format!("connecting to {server}"))?;
    let ssl = connector.configure()?.into_ssl(&cfg.server_name)?;
    let mut s = SslStream::new(ssl, tcp)?;
    tokio::time::timeout(TIMEOUT, Pin::new(&mut s).connect())
        .await
        .context("TLS handshake timed out")?
        .context(
            "TLS handshake failed (is the server's certificate from our CA and for server_name?)",
        )?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: {MEDIA_TYPE}\r\nConnection: close\r\n",
        cfg.server_name
    );
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: {MEDIA_TYPE}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    if let Some(b) = body {
        s.write_all(b).await?;
    }
    s.flush().await?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut chunk))
            .await
            .context("the server did not answer in time")?;
        let n = match n {
            Ok(n) => n,
            // Servers that close without close_notify: take what arrived.
            Err(_) if !raw.is_empty() => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_RESPONSE {
            bail!("response over {MAX_RESPONSE} bytes");
        }
        if let Some(r) = complete(&raw)? {
            return Ok(r);
        }
    }
    complete(&raw)?.context("the server closed the connection before a complete response")
}

/// A full response in `raw`, if there is one (Content-Length framing).
fn complete(raw: &[u8]) -> Result<Option<HttpResponse>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(raw).context("malformed HTTP response")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let length = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    if raw.len() < head + length {
        return Ok(None);
    }
    Ok(Some(HttpResponse {
        status: r.code.unwrap_or(0),
        body: raw[head..head + length].to_vec(),
    }))
}
