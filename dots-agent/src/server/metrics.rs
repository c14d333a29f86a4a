//! `GET /metrics` over HTTP/1.1 (hyper): the exposition of `crate::metrics`, rendered on
//! the control thread at each scrape. Optionally over TLS (with client certificates from
//! a CA of its own) and behind a bearer token, as Prometheus' `tls_config` and
//! `authorization` scrape settings provide. Bounded like every listener: connections at
//! once, the TLS handshake, the request head, and the whole connection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::control::ControlHandle;
use crate::metrics::render;

const HANDSHAKE_TIME: Duration = Duration::from_secs(10);
/// A request head must arrive within this (also how long an idle connection is kept).
const HEAD_TIME: Duration = Duration::from_secs(10);
/// A connection lasts at most this (a scraper that stops reading is let go).
const CONNECTION_TIME: Duration = Duration::from_secs(60);
const MAX_HEAD: usize = 16 * 1024;

/// How the endpoint is served, from `[metrics]`.
#[derive(Clone)]
pub struct MetricsSettings {
    pub per_mitigation_limit: usize,
    pub max_connections: usize,
    tls: Option<Arc<SslAcceptor>>,
    /// The whole `Authorization` header value scrapers must send.
    authorization: Option<Arc<Vec<u8>>>,
}

impl MetricsSettings {
    /// Loads the certificates and the token `[metrics]` names.
    pub fn load(config: &super::config::Metrics, max_connections: usize) -> Result<Self> {
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(acceptor(t)?)),
            None => None,
        };
        let authorization = match &config.bearer_token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path).with_context(|| {
                    format!("[metrics] bearer_token_file: reading {}", path.display())
                })?;
                let token = token.trim();
                if token.is_empty() || token.chars().any(|c| c.is_whitespace()) {
                    bail!(
                        "[metrics] bearer_token_file {}: the token must be one non-empty word",
                        path.display()
                    );
                }
                Some(Arc::new(format!("Bearer {token}").into_bytes()))
            }
            None => None,
        };
        Ok(MetricsSettings {
            per_mitigation_limit: config.per_mitigation_limit,
            max_connections,
            tls,
            authorization,
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

fn acceptor(t: &super::config::MetricsTls) -> Result<SslAcceptor> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_certificate_chain_file(&t.cert)
        .with_context(|| format!("[metrics.tls] cert: loading {}", t.cert.display()))?;
    b.set_private_key_file(&t.key, SslFiletype::PEM)
        .with_context(|| format!("[metrics.tls] key: loading {}", t.key.display()))?;
    b.check_private_key()
        .context("[metrics.tls] the key does not match the certificate")?;
    if let Some(ca) = &t.client_ca {
        b.set_ca_file(ca)
            .with_context(|| format!("[metrics.tls] client_ca: loading {}", ca.display()))?;
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(b.build())
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, control: ControlHandle, settings: MetricsSettings) {
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    while let Some((slot, tcp, peer)) =
        super::limits::accept(&listener, &slots, "metrics accept").await
    {
        let (control, settings) = (control.clone(), settings.clone());
        tokio::spawn(async move {
            let served = tokio::time::timeout(CONNECTION_TIME, async {
                match &settings.tls {
                    None => serve_http(tcp, control, settings.clone()).await,
                    Some(acceptor) => {
                        let ssl = super::peer_ssl(acceptor.context(), peer)?;
                        let mut s = tokio_openssl::SslStream::new(ssl, tcp)?;
                        let handshake = tokio::time::timeout(
                            HANDSHAKE_TIME,
                            std::pin::Pin::new(&mut s).accept(),
                        )
                        .await
                        .context("TLS handshake timed out")?;
                        if let Err(e) = handshake {
                            super::log_handshake_failure("metrics TLS", peer, s.ssl(), &e);
                            bail!("TLS handshake failed");
                        }
                        serve_http(s, control, settings.clone()).await
                    }
                }
            })
            .await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics {peer}: {e:#}"),
                Err(_) => tracing::debug!("metrics {peer}: connection time is up"),
            }
            drop(slot);
        });
    }
}

async fn serve_http<I>(io: I, control: ControlHandle, settings: MetricsSettings) -> Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (control, settings) = (control.clone(), settings.clone());
        async move { answer(req, &control, &settings).await }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIME)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .await?;
    Ok(())
}

fn reply(code: StatusCode, body: &str) -> hyper::http::Result<Response<Full<Bytes>>> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
}

/// Does the request carry the configured token (compared in constant time)?
fn authorized<B>(req: &Request<B>, wanted: &[u8]) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.len() == wanted.len() && openssl::memcmp::eq(v.as_bytes(), wanted))
}

async fn answer<B>(
    req: Request<B>,
    control: &ControlHandle,
    settings: &MetricsSettings,
) -> hyper::http::Result<Response<Full<Bytes>>> {
    if let Some(wanted) = &settings.authorization {
        if !authorized(&req, wanted) {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "/metrics needs Authorization: Bearer <the token of [metrics] bearer_token_file>\n",
            )?;
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return Ok(r);
        }
    }
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "metrics are at /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "/metrics takes GET\n");
    }
    let limit = settings.per_mitigation_limit;
    let text = control
        .run(move |c| render(&c.engine, crate::clock::unix_now(), limit))
        .await;
    let Ok(text) = text else {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "stopping\n");
    };
    Response::builder()
        .header("content-type", prometheus::TEXT_FORMAT)
        .body(Full::new(Bytes::from(text)))
}
