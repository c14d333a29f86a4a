//! The DOTS client's signal channel: DTLS (CoAP over UDP; requests sent NON and repeated
//! until answered) or TLS (RFC 8323 framing), with the client certificate; `auto` tries
//! DTLS first and falls back to TLS. The CoAP session (tokens, message ids, retransmission,
//! block-wise bodies, the answers to the server's heartbeats) is `signal::session`; this
//! module moves its bytes over the (D)TLS link.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coap_lite::{CoapOption, ContentFormat, MessageClass, Packet, RequestType};
use openssl::ssl::{
    ErrorCode, Ssl, SslConnector, SslContextBuilder, SslFiletype, SslMethod, SslOptions,
    SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_openssl::SslStream;

pub mod guard;
pub(crate) mod refusal;
mod unreachable;
use unreachable::{neither, secs};
pub use unreachable::{Unanswered, Unreachable};

use crate::dtls_io::{handle_timeout, Datagrams};
use crate::pki;
use crate::signal::session as proto;
use crate::signal::session_config::{self, ConfigSet, SessionConfig};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// host:port of the DOTS server's signal channel.
    pub server: String,
    /// dtls, tls, or auto (DTLS first, TLS if DTLS does not answer; the default).
    #[serde(default)]
    pub transport: TransportChoice,
    /// The name the server's certificate must carry.
    pub server_name: String,
    pub tls: ClientTls,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    #[default]
    Auto,
    Dtls,
    Tls,
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

/// The (D)TLS link under a session: it sends what the session produces and hands it what
/// arrives.
enum Link {
    Tls {
        stream: SslStream<TcpStream>,
    },
    Dtls {
        socket: UdpSocket,
        stream: openssl::ssl::SslStream<Datagrams>,
    },
}

impl Link {
    async fn send(&mut self, messages: Vec<Vec<u8>>) -> Result<()> {
        match self {
            Link::Tls { stream } => {
                for m in messages {
                    stream.write_all(&m).await?;
                }
            }
            Link::Dtls { socket, stream } => {
                for m in messages {
                    stream.ssl_write(&m).context("DTLS write")?;
                }
                send_all(socket, stream).await?;
            }
        }
        Ok(())
    }

    /// What arrives next: a piece of the stream, or the plaintexts of a datagram.
    async fn recv(&mut self) -> Result<Vec<Vec<u8>>> {
        match self {
            Link::Tls { stream } => {
                let mut chunk = vec![0u8; 16_384];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("the server closed the connection");
                }
                chunk.truncate(n);
                Ok(vec![chunk])
            }
            Link::Dtls { socket, stream } => {
                let mut buf = vec![0u8; 65_535];
                let n = socket.recv(&mut buf).await?;
                stream.get_mut().inbox.push_back(buf[..n].to_vec());
                let mut out = Vec::new();
                loop {
                    match stream.ssl_read(&mut buf) {
                        Ok(n) => out.push(buf[..n].to_vec()),
                        Err(e) if e.code() == ErrorCode::WANT_READ => break,
                        Err(e) => bail!("DTLS: {e}"),
                    }
                }
                Ok(out)
            }
        }
    }
}

impl Drop for Link {
    /// A DTLS server keeps a session until the client says close_notify or falls silent
    /// for the server's idle bound: a client that goes says so.
    fn drop(&mut self) {
        if let Link::Dtls { socket, stream } = self {
            let _ = stream.shutdown();
            for d in std::mem::take(&mut stream.get_mut().outbox) {
                let _ = socket.try_send(&d);
            }
        }
    }
}

/// What the client answers to the server's requests: 2.04 to its heartbeats (RFC 9132
/// §4.7), 4.04 otherwise (a client serves no other resource).
#[derive(Default)]
struct Answers {
    heartbeats: u32,
}

impl proto::Service for Answers {
    fn handle(&mut self, req: &Packet, _unix: u64) -> proto::Reply {
        if !matches!(req.header.code, MessageClass::Request(_)) {
            return proto::Reply::Silence;
        }
        let hb = req.get_option(CoapOption::UriPath).is_some_and(|l| {
            l.iter()
                .map(|s| s.as_slice())
                .eq([b".well-known".as_slice(), b"dots", b"hb"])
        });
        let mut p = Packet::new();
        p.set_token(req.get_token().to_vec());
        p.header.code = MessageClass::Response(if hb {
            coap_lite::ResponseType::Changed
        } else {
            coap_lite::ResponseType::NotFound
        });
        if hb {
            self.heartbeats += 1;
        }
        proto::Reply::Response(p)
    }
}

pub struct Session {
    link: Link,
    /// The CoAP session over the link.
    proto: proto::Session,
    /// Our answers to the server's requests, and the heartbeats it sent.
    answers: Answers,
    cuid: String,
    /// The session configuration in force (RFC defaults until the server tells us).
    config: SessionConfig,
    /// Mitigations this session created and has not withdrawn: while any exist the
    /// mitigating set applies, otherwise the idle one (RFC 9132 §4.5).
    active: std::collections::BTreeSet<u32>,
    /// The provisioned server, and the one in use (they differ after a redirect).
    provisioned: ClientConfig,
    current: ClientConfig,
    /// When to go back to the provisioned server after a redirect (RFC 9132 §4.6).
    redirected_until: Option<std::time::Instant>,
    /// Servers contacted and when: a redirect to one contacted within REDIRECT_MEMORY is
    /// ignored (no redirect loops).
    contacted: Vec<(String, std::time::Instant)>,
    /// How long to wait for a handshake per transport, and for each answer.
    timeout: Duration,
}

/// RFC 9132 §4.6: redirects to a server contacted this recently are ignored.
const REDIRECT_MEMORY: Duration = Duration::from_secs(300);

/// How long the client waits for a handshake (per transport) and for each answer, unless
/// told otherwise (`--timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// NON requests over DTLS are repeated until answered (RFC 9132 §4.4.1): at most this
/// often, at least four times within the timeout.
const REPEAT: Duration = Duration::from_secs(2);
const REPEATS: u32 = 4;

/// A random byte (for the retransmission timeout's random factor).
/// Resources whose requests are CON over DTLS: the session configuration (RFC 9132 §4.5)
/// and the telemetry setup (RFC 9244 §7); the rest are NON, repeated.
fn is_confirmable(resource: &str) -> bool {
    matches!(resource, "config" | "tm-setup")
}

fn random_byte() -> u8 {
    let mut b = [0u8; 1];
    let _ = openssl::rand::rand_bytes(&mut b);
    b[0]
}

impl Session {
    pub async fn connect(cfg: &ClientConfig) -> Result<Session> {
        Session::connect_within(cfg, DEFAULT_TIMEOUT).await
    }

    /// Connects, waiting at most `timeout` for each transport's handshake and, later, for
    /// each answer.
    pub async fn connect_within(cfg: &ClientConfig, timeout: Duration) -> Result<Session> {
        let cert = X509::from_pem(
            &std::fs::read(&cfg.tls.cert)
                .with_context(|| format!("reading {}", cfg.tls.cert.display()))?,
        )?;
        let cuid = pki::cuid(&cert)?;
        let mut link = connect_link(cfg, timeout).await?;
        let proto = start(&mut link).await?;
        Ok(Session {
            link,
            proto,
            answers: Answers::default(),
            cuid,
            config: SessionConfig::default(),
            active: Default::default(),
            provisioned: cfg.clone(),
            current: cfg.clone(),
            redirected_until: None,
            contacted: vec![(cfg.server.clone(), std::time::Instant::now())],
            timeout,
        })
    }

    /// The server this session talks to (host:port), and the name its certificate carries.
    pub fn server(&self) -> (&str, &str) {
        (&self.current.server, &self.current.server_name)
    }

    /// Moves the session to another server: a fresh link, nothing negotiated yet.
    async fn move_to(&mut self, cfg: ClientConfig) -> Result<()> {
        self.link = connect_link(&cfg, self.timeout).await?;
        self.proto = start(&mut self.link).await?;
        self.config = SessionConfig::default();
        self.active.clear();
        let now = std::time::Instant::now();
        self.contacted
            .retain(|(_, t)| t.elapsed() < REDIRECT_MEMORY);
        self.contacted.push((cfg.server.clone(), now));
        self.current = cfg;
        Ok(())
    }

    /// Follows a redirect (a 5.03 naming an alternate server, RFC 9132 §4.6) unless it
    /// leads to a server contacted in the last five minutes. Returns whether it moved.
    async fn follow_redirect(&mut self, r: &Packet) -> Result<bool> {
        if r.header.code != MessageClass::Response(coap_lite::ResponseType::ServiceUnavailable) {
            return Ok(false);
        }
        let Ok(to) = crate::signal::message::decode_redirect(&r.payload) else {
            return Ok(false);
        };
        let port = self
            .provisioned
            .server
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(4646);
        let server = match to.alt_server_record.first() {
            Some(ip) => std::net::SocketAddr::new(*ip, port).to_string(),
            None => format!("{}:{port}", to.alt_server),
        };
        if self
            .contacted
            .iter()
            .any(|(s, t)| *s == server && t.elapsed() < REDIRECT_MEMORY)
        {
            tracing::warn!("ignoring a redirect to {server}: contacted in the last 5 minutes");
            return Ok(false);
        }
        let max_age = r
            .get_option(CoapOption::MaxAge)
            .and_then(|v| v.front())
            .map(|b| b.iter().fold(0u64, |acc, x| acc << 8 | *x as u64))
            .unwrap_or(60);
        tracing::info!(
            "redirected to {} at {server} for {max_age} s",
            to.alt_server
        );
        let cfg = ClientConfig {
            server,
            server_name: to.alt_server,
            ..self.provisioned.clone()
        };
        self.move_to(cfg).await?;
        self.redirected_until = (max_age < u32::MAX as u64)
            .then(|| std::time::Instant::now() + Duration::from_secs(max_age));
        Ok(true)
    }

    /// Back to the provisioned server once a redirect has expired, unless mitigations
    /// are active (not in the middle of an attack).
    async fn return_if_redirect_expired(&mut self) -> Result<()> {
        if self
            .redirected_until
            .is_some_and(|t| std::time::Instant::now() >= t)
            && self.active.is_empty()
        {
            self.redirected_until = None;
            let home = self.provisioned.clone();
            tracing::info!("redirect expired: back to {}", home.server);
            self.move_to(home).await?;
        }
        Ok(())
    }

    /// The session parameters in force now: the mitigating set while this session has
    /// active mitigations, else the idle one.
    pub fn parameters(&self) -> &ConfigSet {
        if self.active.is_empty() {
            &self.config.idle
        } else {
            &self.config.mitigating
        }
    }

    /// Learns what a successful response means for the session's parameters: a GET /config
    /// tells them, a PUT /config sets them, mitigations come and go.
    fn learn(&mut self, method: RequestType, path: &[String], body: Option<&[u8]>, r: &Packet) {
        if !is_success(r) {
            return;
        }
        match (path.first().map(String::as_str), method) {
            (Some("config"), RequestType::Get) => {
                match session_config::decode_response(&r.payload) {
                    Ok(c) => self.config = c,
                    Err(e) => tracing::warn!("the server's session configuration: {e}"),
                }
            }
            (Some("config"), RequestType::Put) => {
                if let Some(Ok(c)) = body.map(|b| session_config::decode_put(b, &self.config)) {
                    self.config = c;
                }
            }
            (Some("config"), RequestType::Delete) => self.config = SessionConfig::default(),
            (Some("mitigate"), m @ (RequestType::Put | RequestType::Delete)) => {
                let mid = path
                    .iter()
                    .find_map(|s| s.strip_prefix("mid=")?.parse::<u32>().ok());
                if let Some(mid) = mid {
                    if m == RequestType::Put {
                        self.active.insert(mid);
                    } else {
                        self.active.remove(&mid);
                    }
                }
            }
            _ => {}
        }
    }

    pub fn cuid(&self) -> &str {
        &self.cuid
    }

    /// "dtls" or "tls".
    pub fn transport(&self) -> &'static str {
        match self.link {
            Link::Tls { .. } => "tls",
            Link::Dtls { .. } => "dtls",
        }
    }

    /// GET with Observe 0 on `.well-known/dots/<path>`: returns the first response and the
    /// token that later notifications carry (see [`Session::notification`]).
    pub async fn observe(&mut self, path: &[String]) -> Result<(Packet, Vec<u8>)> {
        self.return_if_redirect_expired().await?;
        let (mut token, mut r) = self
            .send(RequestType::Get, path, None, false, Some(0), &[])
            .await?;
        if self.follow_redirect(&r).await? {
            (token, r) = self
                .send(RequestType::Get, path, None, false, Some(0), &[])
                .await?;
        }
        Ok((r, token))
    }

    /// The next notification for an observation, or None if none came within `wait`.
    pub async fn notification(&mut self, token: &[u8], wait: Duration) -> Result<Option<Packet>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = self.proto.notification(token) {
                return Ok(Some(p));
            }
            if !self.exchange(deadline).await.map_err(|e| self.broken(e))? {
                return Ok(None);
            }
        }
    }

    /// Moves bytes until something arrives (true) or `deadline` passes (false), running
    /// the session's timers on the way.
    async fn exchange(&mut self, deadline: tokio::time::Instant) -> Result<bool> {
        let timer = self
            .proto
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .map_or(deadline, |t| t.min(deadline));
        tokio::select! {
            got = self.link.recv() => {
                let mut out = Vec::new();
                for bytes in got? {
                    out.extend(self.proto.on_message(crate::clock::now(), &bytes, &mut self.answers));
                }
                if let Some(why) = self.proto.closed() {
                    bail!("the session ended: {why}");
                }
                self.link.send(out).await?;
                Ok(true)
            }
            _ = tokio::time::sleep_until(timer) => {
                let out = self.proto.on_tick(crate::clock::now(), &mut self.answers);
                self.link.send(out).await?;
                Ok(tokio::time::Instant::now() < deadline)
            }
        }
    }

    /// How many heartbeats the server has sent on this session (each answered with 2.04).
    pub fn server_heartbeats(&self) -> u32 {
        self.answers.heartbeats
    }

    /// PUT /hb with peer-hb-status true (RFC 9132 §4.7).
    pub async fn heartbeat(&mut self) -> Result<Packet> {
        let body = crate::signal::message::encode_heartbeat(true);
        self.request(RequestType::Put, &["hb".to_string()], Some(body), false)
            .await
    }

    /// Sends a request on `.well-known/dots/<path>` and waits for its response.
    pub async fn request(
        &mut self,
        method: RequestType,
        path: &[String],
        body: Option<Vec<u8>>,
        efficacy: bool,
    ) -> Result<Packet> {
        self.request_with(method, path, body, efficacy, &[]).await
    }

    /// The same with more options (a relay's Hop-Limit, RFC 8768).
    pub async fn request_with(
        &mut self,
        method: RequestType,
        path: &[String],
        body: Option<Vec<u8>>,
        efficacy: bool,
        options: &[(CoapOption, Vec<u8>)],
    ) -> Result<Packet> {
        self.return_if_redirect_expired().await?;
        let sent = body.clone();
        let (_, mut r) = self
            .send(method, path, body, efficacy, None, options)
            .await?;
        if self.follow_redirect(&r).await? {
            (_, r) = self
                .send(method, path, sent.clone(), efficacy, None, options)
                .await?;
        }
        self.learn(method, path, sent.as_deref(), &r);
        Ok(r)
    }

    /// Sends a request and waits for its answer; returns its token too.
    async fn send(
        &mut self,
        method: RequestType,
        path: &[String],
        body: Option<Vec<u8>>,
        efficacy: bool,
        observe: Option<u32>,
        options: &[(CoapOption, Vec<u8>)],
    ) -> Result<(Vec<u8>, Packet)> {
        let mut p = Packet::new();
        for (o, v) in options {
            p.add_option(*o, v.clone());
        }
        p.header.code = MessageClass::Request(method);
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
        if let Some(o) = observe {
            p.set_observe_value(o);
        }
        if let Some(b) = body {
            p.set_content_format(ContentFormat::ApplicationDotsCbor);
            p.payload = b;
        }
        let delivery = match &self.link {
            Link::Tls { .. } => proto::Delivery::Once { wait: self.timeout },
            // Idle-time requests are CON (RFC 9132 §4.5, and RFC 9244 §7 for tm-setup):
            // retransmitted with the same message id, the timeout doubling from
            // ACK_TIMEOUT x a random factor, as negotiated in the session configuration.
            Link::Dtls { .. } if path.first().is_some_and(|p| is_confirmable(p)) => {
                let (first, retransmits) =
                    session_config::retransmission(self.parameters(), random_byte());
                proto::Delivery::Confirmable { first, retransmits }
            }
            Link::Dtls { .. } => {
                let every = REPEAT
                    .min(self.timeout / REPEATS)
                    .max(Duration::from_millis(100));
                proto::Delivery::Repeated {
                    every,
                    times: (self.timeout.as_secs_f64() / every.as_secs_f64()).ceil() as u32,
                }
            }
        };
        let (token, out) = self.proto.request(crate::clock::now(), p, delivery);
        self.link.send(out).await.map_err(|e| self.broken(e))?;
        loop {
            match self.proto.response(&token) {
                Some(Ok(r)) => return Ok((token, r)),
                Some(Err(why)) => return Err(self.broken(anyhow::anyhow!(why))),
                None => {}
            }
            // The session's own timer gives up; this bound only guards against a stall.
            let bound = tokio::time::Instant::now() + 4 * self.timeout;
            match self.exchange(bound).await {
                Ok(true) => {}
                Ok(false) => return Err(self.broken(anyhow::anyhow!("no answer"))),
                Err(e) => return Err(self.broken(e)),
            }
        }
    }

    /// The session broke or the server stopped answering: Unreachable (try again later).
    fn broken(&self, e: anyhow::Error) -> anyhow::Error {
        let transport = match self.link {
            Link::Tls { .. } => "TLS",
            Link::Dtls { .. } => "DTLS",
        };
        Unreachable::new(
            &self.current.server,
            transport,
            Unanswered::Other(format!("{e:#}")),
        )
        .into()
    }
}

/// Our certificate and key, and the CA the server's certificate must chain to.
pub(crate) fn load_credentials(b: &mut SslContextBuilder, tls: &ClientTls) -> Result<()> {
    b.set_ca_file(&tls.ca)
        .with_context(|| format!("loading CA {}", tls.ca.display()))?;
    b.set_certificate_chain_file(&tls.cert)
        .with_context(|| format!("loading {}", tls.cert.display()))?;
    b.set_private_key_file(&tls.key, SslFiletype::PEM)
        .with_context(|| format!("loading {}", tls.key.display()))?;
    b.set_verify(SslVerifyMode::PEER);
    Ok(())
}

/// A (D)TLS link to the configured server, by the configured transport.
async fn connect_link(cfg: &ClientConfig, timeout: Duration) -> Result<Link> {
    Ok(match cfg.transport {
        TransportChoice::Tls => connect_tls(cfg, timeout).await?,
        TransportChoice::Dtls => connect_dtls(cfg, timeout).await?,
        TransportChoice::Auto => match connect_dtls(cfg, timeout).await {
            Ok(l) => l,
            Err(dtls) => {
                tracing::info!("DTLS failed ({dtls:#}); trying TLS");
                connect_tls(cfg, timeout)
                    .await
                    .map_err(|tls| neither(dtls, tls))?
            }
        },
    })
}

/// A TCP connection to `server` within `timeout`; failures to reach it are Unreachable.
pub(crate) async fn tcp_connect(
    server: &str,
    transport: &'static str,
    timeout: Duration,
) -> Result<TcpStream> {
    let unreachable = |why| anyhow::Error::new(Unreachable::new(server, transport, why));
    match tokio::time::timeout(timeout, TcpStream::connect(server)).await {
        Err(_) => Err(unreachable(Unanswered::NoAnswer(timeout))),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(unreachable(Unanswered::Refused))
        }
        Ok(Err(e)) => Err(unreachable(Unanswered::Other(e.to_string()))),
        Ok(Ok(tcp)) => Ok(tcp),
    }
}

async fn connect_tls(cfg: &ClientConfig, timeout: Duration) -> Result<Link> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    load_credentials(&mut b, &cfg.tls)?;
    b.set_alpn_protos(b"\x04coap")?;
    let connector = b.build();
    let tcp = tcp_connect(&cfg.server, "TLS", timeout).await?;
    let _ = tcp.set_nodelay(true);
    let ssl = connector.configure()?.into_ssl(&cfg.server_name)?;
    let mut stream = SslStream::new(ssl, tcp)?;
    let handshake = tokio::time::timeout(timeout, Pin::new(&mut stream).connect())
        .await
        .map_err(|_| {
            Unreachable::new(
                &cfg.server,
                "TLS",
                Unanswered::Other(format!(
                    "connected, but the TLS handshake did not finish within {}",
                    secs(timeout)
                )),
            )
        })?;
    if let Err(e) = handshake {
        let failure = crate::tls_failure::Failure::of(&e, stream.ssl());
        return Err(refusal::explain(cfg, &cfg.server, "TLS", &failure));
    }
    // With TLS 1.3 the server checks our certificate after our side of the handshake has
    // completed; its refusal arrives before its first bytes (its CSM), so wait for those.
    if stream.ssl().version2() == Some(SslVersion::TLS1_3) {
        let mut first = [0u8; 1];
        if let Ok(Err(e)) =
            tokio::time::timeout(timeout, Pin::new(&mut stream).peek(&mut first)).await
        {
            let failure = crate::tls_failure::Failure::of(&e, stream.ssl());
            return Err(refusal::explain(cfg, &cfg.server, "TLS", &failure));
        }
    }
    Ok(Link::Tls { stream })
}

async fn connect_dtls(cfg: &ClientConfig, timeout: Duration) -> Result<Link> {
    let mut b = SslContextBuilder::new(SslMethod::dtls_client())?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    load_credentials(&mut b, &cfg.tls)?;
    b.set_options(SslOptions::NO_QUERY_MTU);
    let ctx = b.build();
    let mut ssl = Ssl::new(&ctx)?;
    ssl.set_mtu(1200)?;
    ssl.set_hostname(&cfg.server_name)?;
    ssl.param_mut().set_host(&cfg.server_name)?;
    let addr = tokio::net::lookup_host(&cfg.server)
        .await
        .with_context(|| format!("resolving {}", cfg.server))?
        .next()
        .with_context(|| format!("{} resolves to no address", cfg.server))?;
    let socket = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .await?;
    socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut stream = openssl::ssl::SslStream::new(ssl, Datagrams::default())?;
    let started = std::time::Instant::now();
    let mut answered = false;
    let unreachable = |why| anyhow::Error::new(Unreachable::new(&cfg.server, "DTLS", why));
    loop {
        match stream.connect() {
            Ok(()) => break,
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {}
            Err(e) => {
                let _ = send_all(&socket, &mut stream).await;
                let failure = crate::tls_failure::Failure::of(&e, stream.ssl());
                return Err(refusal::explain(cfg, &cfg.server, "DTLS", &failure));
            }
        }
        send_all(&socket, &mut stream).await?;
        let Some(left) = timeout.checked_sub(started.elapsed()) else {
            return Err(unreachable(if answered {
                Unanswered::Other(format!(
                    "the handshake did not finish within {}",
                    secs(timeout)
                ))
            } else {
                Unanswered::NoAnswer(timeout)
            }));
        };
        let mut buf = vec![0u8; 65_535];
        match tokio::time::timeout(left.min(Duration::from_secs(1)), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                answered = true;
                stream.get_mut().inbox.push_back(buf[..n].to_vec())
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(unreachable(Unanswered::Refused))
            }
            Ok(Err(e)) => return Err(unreachable(Unanswered::Other(e.to_string()))),
            Err(_) => handle_timeout(&mut stream),
        }
    }
    send_all(&socket, &mut stream).await?;
    Ok(Link::Dtls { socket, stream })
}

/// A client session over a fresh link, its first bytes (a stream's CSM) sent.
async fn start(link: &mut Link) -> Result<proto::Session> {
    let framing = match link {
        Link::Tls { .. } => proto::Framing::Stream,
        Link::Dtls { .. } => proto::Framing::Datagram,
    };
    let mut b = [0u8; 2];
    openssl::rand::rand_bytes(&mut b)?;
    let mut session = proto::Session::new(
        proto::Role::Client,
        framing,
        std::time::Instant::now(),
        u16::from_ne_bytes(b),
    );
    link.send(session.start()).await?;
    Ok(session)
}

async fn send_all(
    socket: &UdpSocket,
    stream: &mut openssl::ssl::SslStream<Datagrams>,
) -> Result<()> {
    for d in std::mem::take(&mut stream.get_mut().outbox) {
        socket.send(&d).await.context("sending a datagram")?;
    }
    Ok(())
}

/// A 2.xx response?
pub fn is_success(p: &Packet) -> bool {
    let raw: u8 = p.header.code.into();
    raw >> 5 == 2
}

/// "2.01" style text of a response code.
pub fn code_text(p: &Packet) -> String {
    let raw: u8 = match p.header.code {
        MessageClass::Response(r) => MessageClass::Response(r).into(),
        other => other.into(),
    };
    format!("{}.{:02}", raw >> 5, raw & 0x1f)
}
