//! `dots-agent server`: the DOTS server's I/O around the protocol core: CoAP over DTLS on UDP
//! and over TLS on TCP (RFC 8323), both with mutual X.509 authentication, on each listen
//! address; the engine; the store.

pub mod config;
mod dtls;
mod tls;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::sync::Mutex;

pub use config::ServerConfig;
pub use dtls::{context as dtls_context, serve_dtls};
pub use tls::{acceptor, serve_tls};

use crate::datapath::{
    LoadOptions, MemoryMitigator, Mitigator, XdpDatapath, DEFAULT_AMPLIFICATION_PORTS,
};
use crate::signal::engine::Engine;

pub type SharedEngine = Arc<Mutex<Engine<Box<dyn Mitigator>>>>;

/// Who a (D)TLS peer is: its certificate's CN, its cuid, and whether it is a configured
/// client (a valid certificate of an unconfigured one gets 4.01 on every request).
pub(crate) struct Identity {
    pub cn: String,
    pub cuid: String,
    pub configured: bool,
}

impl Identity {
    pub(crate) async fn of(ssl: &openssl::ssl::SslRef, engine: &SharedEngine) -> Result<Identity> {
        let cert = ssl.peer_certificate().context("no client certificate")?;
        let cn = crate::pki::common_name(&cert).unwrap_or_default();
        let cuid = crate::pki::cuid(&cert)?;
        let configured = engine.lock().await.policy(&cn).is_some();
        Ok(Identity {
            cn,
            cuid,
            configured,
        })
    }

    pub(crate) fn client(&self) -> Option<&str> {
        self.configured.then_some(self.cn.as_str())
    }
}

/// How often an observed mitigation is re-sent even without a status change (its counters
/// move while it is active).
pub(crate) const PERIODIC_NOTIFY: std::time::Duration = std::time::Duration::from_secs(30);

/// An observation (RFC 7641), the fingerprint of what was last sent for it, and when.
type Watched = (
    crate::signal::handler::Observation,
    Vec<u8>,
    std::time::Instant,
);

#[derive(Default)]
pub(crate) struct Observations {
    list: Vec<Watched>,
    sequence: u32,
}

impl Observations {
    pub(crate) async fn apply(
        &mut self,
        obs: crate::signal::handler::Observation,
        register: bool,
        engine: &SharedEngine,
    ) {
        self.list.retain(|(o, _, _)| o.token != obs.token);
        if register {
            let sent = crate::signal::handler::fingerprint(&*engine.lock().await, &obs, now())
                .unwrap_or_default();
            self.list.push((obs, sent, std::time::Instant::now()));
        }
    }

    /// Notifications due now (status changed, or the periodic one); ends observations
    /// whose mitigation is gone, after telling the client.
    pub(crate) async fn due(&mut self, engine: &SharedEngine) -> Vec<coap_lite::Packet> {
        let e = engine.lock().await;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (i, (obs, last, sent)) in self.list.iter_mut().enumerate() {
            let periodic = sent.elapsed() >= PERIODIC_NOTIFY;
            self.sequence = self.sequence.wrapping_add(1);
            if let Some((p, ended)) =
                crate::signal::handler::notification(&*e, obs, last, periodic, self.sequence, now())
            {
                *sent = std::time::Instant::now();
                out.push(p);
                if ended {
                    gone.push(i);
                }
            }
        }
        for i in gone.into_iter().rev() {
            self.list.remove(i);
        }
        out
    }
}

/// When to send the session's own heartbeats, and whether the client's arrive.
pub(crate) struct Heartbeats {
    sent: std::time::Instant,
    client_seen: Option<std::time::Instant>,
    counter: u32,
}

impl Heartbeats {
    pub(crate) fn new() -> Self {
        Heartbeats {
            sent: std::time::Instant::now(),
            client_seen: None,
            counter: 0,
        }
    }

    pub(crate) fn client_heartbeat(&mut self) {
        self.client_seen = Some(std::time::Instant::now());
    }

    /// A PUT /hb to send now, if the client's heartbeat interval has passed since the last.
    pub(crate) async fn due(
        &mut self,
        engine: &SharedEngine,
        id: &Identity,
    ) -> Option<coap_lite::Packet> {
        let client = id.client()?;
        let interval = engine.lock().await.heartbeat_interval(client, &id.cuid);
        if interval == 0 || self.sent.elapsed() < std::time::Duration::from_secs(interval) {
            return None;
        }
        // Nothing from the client since our last heartbeat, a whole interval ago: missed.
        if self.client_seen.is_none_or(|t| t < self.sent) && self.counter > 0 {
            crate::metrics::SIGNAL.heartbeats_missed.inc();
        }
        self.sent = std::time::Instant::now();
        self.counter = self.counter.wrapping_add(1);
        let window = std::time::Duration::from_secs(2 * interval);
        let theirs_arrive = self.client_seen.is_some_and(|t| t.elapsed() <= window);
        let mut token = b"hb".to_vec();
        token.extend_from_slice(&self.counter.to_be_bytes());
        Some(crate::signal::handler::heartbeat_request(
            token,
            theirs_arrive,
        ))
    }
}

/// Loads the CA that client certificates must chain to, and our certificate and key, and
/// requires a client certificate (mutual authentication).
pub(crate) fn load_credentials(
    b: &mut openssl::ssl::SslContextBuilder,
    tls: &config::Tls,
) -> Result<()> {
    b.set_ca_file(&tls.ca)
        .with_context(|| format!("loading CA {}", tls.ca.display()))?;
    b.set_certificate_chain_file(&tls.cert)
        .with_context(|| format!("loading {}", tls.cert.display()))?;
    b.set_private_key_file(&tls.key, openssl::ssl::SslFiletype::PEM)
        .with_context(|| format!("loading {}", tls.key.display()))?;
    b.check_private_key()
        .context("the server key does not match its certificate")?;
    b.set_verify(
        openssl::ssl::SslVerifyMode::PEER | openssl::ssl::SslVerifyMode::FAIL_IF_NO_PEER_CERT,
    );
    Ok(())
}

/// Seconds since the epoch (the engine's clock).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The datapath the config asks for: XDP on its interfaces, or none (control plane only).
pub fn mitigator(config: &ServerConfig) -> Result<Box<dyn Mitigator>> {
    let d = &config.datapath;
    if d.interfaces.is_empty() {
        tracing::warn!("no [datapath] interfaces: running the control plane without XDP");
        return Ok(Box::new(MemoryMitigator::new()));
    }
    let mut dp =
        XdpDatapath::load(&LoadOptions::new(&d.pin_root)).context("loading the XDP datapath")?;
    dp.set_amplification_ports(
        d.amplification_ports
            .as_deref()
            .unwrap_or(DEFAULT_AMPLIFICATION_PORTS),
    )?;
    for iface in &d.interfaces {
        let out = dp.attach(iface, d.xdp_mode)?;
        if let Some(why) = out.fallback {
            tracing::warn!("{iface}: {why}");
        }
        tracing::info!("XDP filter on {iface} ({} mode)", out.mode);
    }
    Ok(Box::new(dp))
}

/// Once a second: expires lifetimes and terminating periods, and detects lost sessions.
pub fn spawn_ticker(engine: SharedEngine) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            every.tick().await;
            let mut e = engine.lock().await;
            for (cuid, mid) in e.tick(now()) {
                tracing::info!("mitigation {mid} of {cuid} ended");
            }
            let lost = e.detect_lost_sessions(now());
            crate::metrics::SIGNAL
                .sessions_lost
                .inc_by(lost.len() as u64);
        }
    })
}

/// Runs the server until interrupted (Ctrl-C / SIGINT).
pub async fn run(config: ServerConfig) -> Result<()> {
    run_until(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Runs the server until `shutdown` completes.
pub async fn run_until(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let store = crate::store::Store::open(&config.store.dir)?;
    // The data channel's ACLs ride on the datapath through a layer the engine installs into.
    let data = crate::data::https::prepare(&config, mitigator(&config)?)?;
    let (engine, restored) = Engine::new(data.mitigator, config.policies())
        .with_terminating_period(config.signal.terminating_seconds)
        .with_attack_quiet(config.signal.attack_quiet_seconds)
        .with_redirect(config.signal.redirect.as_ref().map(|r| r.message()))
        .with_talker_drop(config.talker_drop_clients())
        .with_data_channel(data.link)
        .with_store(store, now())?;
    tracing::info!(
        "restored {restored} mitigation(s) from {}",
        config.store.dir.display()
    );
    data.acl_handle.sync_all();
    let engine: SharedEngine = Arc::new(Mutex::new(engine));
    let acceptor = Arc::new(acceptor(&config.tls)?);
    spawn_ticker(engine.clone());
    let mut tasks = Vec::new();
    for addr in &config.metrics.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (metrics)"))?;
        tracing::info!("Prometheus metrics on http://{addr}/metrics");
        tasks.push(tokio::spawn(crate::metrics::serve(
            listener,
            engine.clone(),
            config.metrics.per_mitigation_limit,
        )));
    }
    for addr in &config.signal.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (TCP)"))?;
        tracing::info!("signal channel: CoAP over TLS on {addr}");
        tasks.push(tokio::spawn(serve_tls(
            listener,
            acceptor.clone(),
            engine.clone(),
        )));
    }
    let dtls = dtls_context(&config.tls)?;
    for addr in &config.signal.listen {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (UDP)"))?;
        tracing::info!("signal channel: CoAP over DTLS on {addr}");
        tasks.push(tokio::spawn(serve_dtls(
            socket,
            dtls.clone(),
            engine.clone(),
        )));
    }
    tasks.extend(crate::data::https::start(&config, data.channel).await?);
    shutdown.await;
    tracing::info!("shutting down; XDP rules stay pinned and keep filtering");
    for t in tasks {
        t.abort();
    }
    Ok(())
}
