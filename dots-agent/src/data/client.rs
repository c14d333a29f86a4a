//! The data channel's HTTPS client: one request per connection (HTTP/1.1, hyper), the
//! client certificate of client.toml, the server certificate checked against the CA and
//! `server_name`.

use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::Request;
use openssl::ssl::{SslConnector, SslMethod};
use tokio_openssl::SslStream;

use super::restconf::MEDIA_TYPE;
use crate::client::{ClientConfig, Unanswered, Unreachable, DEFAULT_TIMEOUT};

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

/// Sends one request to `server` (host:port) over HTTP/1.1 (hyper) and returns the
/// response.
pub async fn request(
    cfg: &ClientConfig,
    server: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<HttpResponse> {
    request_within(cfg, server, method, path, body, DEFAULT_TIMEOUT).await
}

/// The same, waiting at most `timeout` for the connection, the handshake and the answer
/// (each); a server that cannot be reached or does not answer is [`Unreachable`].
pub async fn request_within(
    cfg: &ClientConfig,
    server: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    crate::client::load_credentials(&mut b, &cfg.tls)?;
    b.set_alpn_protos(b"\x08http/1.1")?;
    let connector = b.build();
    let tcp = crate::client::tcp_connect(server, "HTTPS", timeout).await?;
    let no_answer = |what: &str| {
        Unreachable::new(
            server,
            "HTTPS",
            Unanswered::Other(format!("{what} within {} s", timeout.as_secs_f64())),
        )
    };
    let ssl = connector.configure()?.into_ssl(&cfg.server_name)?;
    let mut s = SslStream::new(ssl, tcp)?;
    let handshake = tokio::time::timeout(timeout, Pin::new(&mut s).connect())
        .await
        .map_err(|_| no_answer("connected, but the TLS handshake did not finish"))?;
    if let Err(e) = handshake {
        let failure = crate::tls_failure::Failure::of(&e, s.ssl());
        return Err(crate::client::refusal::explain(
            cfg, server, "TLS", &failure,
        ));
    }
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, cfg.server_name.as_str())
        .header(ACCEPT, MEDIA_TYPE);
    if body.is_some() {
        req = req.header(CONTENT_TYPE, MEDIA_TYPE);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .context("building the request")?;
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await?;
        tokio::spawn(conn);
        let r = sender.send_request(req).await?;
        let status = r.status().as_u16();
        let body = Limited::new(r.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the response: {e}"))?
            .to_bytes()
            .to_vec();
        anyhow::Ok(HttpResponse { status, body })
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| no_answer("no answer to the request"))?;
    answer.map_err(
        |e| match e.chain().find_map(crate::tls_failure::peer_refusal_in) {
            Some(refusal) => crate::client::refusal::explain(cfg, server, "TLS", &refusal),
            None => e,
        },
    )
}
