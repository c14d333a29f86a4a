//! The DOTS client's signal channel over TLS (RFC 8323 framing): connect with the client
//! certificate, exchange CSMs, send requests, read responses.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coap_lite::{CoapOption, ContentFormat, MessageClass, Packet, RequestType};
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::pki;
use crate::signal::coap_tcp::{self, Frame};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// host:port of the DOTS server's signal channel.
    pub server: String,
    /// The name the server's certificate must carry.
    pub server_name: String,
    pub tls: ClientTls,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<ClientConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut c: ClientConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid client config", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.tls.ca, &mut c.tls.cert, &mut c.tls.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }
}

pub struct Session {
    stream: SslStream<TcpStream>,
    buf: Vec<u8>,
    next_token: u32,
    cuid: String,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl Session {
    pub async fn connect(cfg: &ClientConfig) -> Result<Session> {
        let mut b = SslConnector::builder(SslMethod::tls_client())?;
        b.set_ca_file(&cfg.tls.ca)
            .with_context(|| format!("loading CA {}", cfg.tls.ca.display()))?;
        b.set_certificate_chain_file(&cfg.tls.cert)
            .with_context(|| format!("loading {}", cfg.tls.cert.display()))?;
        b.set_private_key_file(&cfg.tls.key, SslFiletype::PEM)
            .with_context(|| format!("loading {}", cfg.tls.key.display()))?;
        b.set_verify(SslVerifyMode::PEER);
        b.set_alpn_protos(b"\x04coap")?;
        let connector = b.build();
        let cert = X509::from_pem(&std::fs::read(&cfg.tls.cert)?)?;
        let cuid = pki::cuid(&cert)?;
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(&cfg.server))
            .await
            .with_context(|| format!("connecting to {} timed out", cfg.server))?
            .with_context(|| format!("connecting to {}", cfg.server))?;
        let _ = tcp.set_nodelay(true);
        let ssl = connector.configure()?.into_ssl(&cfg.server_name)?;
        let mut stream = SslStream::new(ssl, tcp)?;
        tokio::time::timeout(TIMEOUT, Pin::new(&mut stream).connect())
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake failed (is the server's certificate from our CA and for server_name?)")?;
        stream.write_all(&coap_tcp::csm()).await?;
        Ok(Session {
            stream,
            buf: Vec::new(),
            next_token: 1,
            cuid,
        })
    }

    pub fn cuid(&self) -> &str {
        &self.cuid
    }

    /// Sends a request on `.well-known/dots/<path>` and waits for its response.
    pub async fn request(
        &mut self,
        method: RequestType,
        path: &[String],
        body: Option<Vec<u8>>,
        efficacy: bool,
    ) -> Result<Packet> {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(method);
        let token = self.next_token.to_be_bytes().to_vec();
        self.next_token = self.next_token.wrapping_add(1);
        p.set_token(token.clone());
        for s in [".well-known", "dots"]
            .iter()
            .map(|s| s.to_string())
            .chain(path.iter().cloned())
        {
            p.add_option(CoapOption::UriPath, s.into_bytes());
        }
        if efficacy {
            p.add_option(CoapOption::IfMatch, Vec::new());
        }
        if let Some(b) = body {
            p.set_content_format(ContentFormat::ApplicationDotsCbor);
            p.payload = b;
        }
        self.stream.write_all(&coap_tcp::encode(&p)?).await?;
        tokio::time::timeout(TIMEOUT, self.response(&token))
            .await
            .context("no response within 10 s")?
    }

    async fn response(&mut self, token: &[u8]) -> Result<Packet> {
        let mut chunk = [0u8; 4096];
        loop {
            while let Some((frame, used)) = coap_tcp::decode(&self.buf)? {
                self.buf.drain(..used);
                match frame {
                    Frame::Message(p) if p.get_token() == token => return Ok(p),
                    Frame::Signal {
                        code: coap_tcp::PING,
                        token: t,
                        ..
                    } => self.stream.write_all(&coap_tcp::pong(&t)).await?,
                    _ => {}
                }
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// "2.01" style text of a response code.
pub fn code_text(p: &Packet) -> String {
    let raw: u8 = match p.header.code {
        MessageClass::Response(r) => MessageClass::Response(r).into(),
        other => other.into(),
    };
    format!("{}.{:02}", raw >> 5, raw & 0x1f)
}
