//! The composition root: the one place that assembles the server from server.toml. It
//! opens the store (one connection, the engine's journal), builds the datapath, the data
//! channel and the engine, restores what the store held, starts the control thread, then
//! binds the listeners: the signal channel (DTLS on UDP and TLS on TCP, on each address),
//! the data channel (HTTPS) and Prometheus.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use crate::control::{Control, ControlHandle};
use crate::data::{DataChannel, SharedData};
use crate::datapath::{
    LoadOptions, MemoryMitigator, Mitigator, XdpDatapath, DEFAULT_AMPLIFICATION_PORTS,
};
use crate::engine::Engine;
use crate::server::{self, ServerConfig};
use crate::store::Store;

/// The datapath the config asks for: XDP on its interfaces, or none (control plane only).
pub fn datapath(config: &ServerConfig) -> Result<Box<dyn Mitigator>> {
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

/// The control plane over `datapath`: the store's contents restored, the engine committing
/// to the store from now on.
pub fn control(config: &ServerConfig, datapath: Box<dyn Mitigator>) -> Result<Control> {
    let store = Store::open(&config.store.dir)?;
    let snapshot = store.snapshot()?;
    let prefixes: BTreeMap<String, Vec<ipnet::IpNet>> = config
        .clients
        .iter()
        .map(|c| (c.name.clone(), c.prefixes.clone()))
        .collect();
    let (channel, cleanup) = DataChannel::restore(prefixes, &snapshot.data_clients);
    let acls = channel.acl_entries();
    let data = SharedData::new(channel);
    let mut engine = Engine::new(datapath, config.policies())
        .with_terminating_period(config.signal.terminating_seconds)
        .with_attack_quiet(config.signal.attack_quiet_seconds)
        .with_redirect(config.signal.redirect.as_ref().map(|r| r.message()))
        .with_talker_drop(config.talker_drop_clients())
        .with_data_source(Box::new(data.clone()))
        .with_journal(Box::new(store));
    let restored = engine
        .restore(&snapshot, acls, cleanup, crate::clock::unix_now())
        .context("storing what the restart cleaned up")?;
    tracing::info!(
        "restored {restored} mitigation(s) from {}",
        config.store.dir.display()
    );
    Ok(Control::new(engine, data))
}

/// A server that runs: its control plane, the addresses it listens on, its listeners.
pub struct Running {
    pub control: ControlHandle,
    /// Each signal-channel address (TLS on TCP and DTLS on UDP, same port).
    pub signal: Vec<SocketAddr>,
    pub data: Vec<SocketAddr>,
    pub metrics: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The sockets of server.toml, bound before anything else: a port that is taken stops the
/// start before the datapath is touched, and a client that connects while the store is
/// restored waits in the socket's queue instead of being refused.
struct Sockets {
    metrics: Vec<tokio::net::TcpListener>,
    signal: Vec<(tokio::net::TcpListener, tokio::net::UdpSocket)>,
    data: Vec<tokio::net::TcpListener>,
}

async fn bind(config: &ServerConfig) -> Result<Sockets> {
    let mut sockets = Sockets {
        metrics: Vec::new(),
        signal: Vec::new(),
        data: Vec::new(),
    };
    for addr in &config.metrics.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (metrics)"))?;
        sockets.metrics.push(l);
    }
    for addr in &config.signal.listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (TCP)"))?;
        let bound = tcp.local_addr()?;
        let udp = tokio::net::UdpSocket::bind(bound)
            .await
            .with_context(|| format!("listening on {bound} (UDP)"))?;
        sockets.signal.push((tcp, udp));
    }
    for addr in config.data.iter().flat_map(|d| &d.listen) {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (data channel)"))?;
        sockets.data.push(l);
    }
    Ok(sockets)
}

/// Assembles the server over `datapath` and starts serving. A listen address with port 0
/// gets a free port; a signal address's UDP port is then its TCP port.
pub async fn start(config: &ServerConfig, datapath: Box<dyn Mitigator>) -> Result<Running> {
    start_with(config, move |_| Ok(datapath)).await
}

/// As [`start`], with the datapath built once the sockets are bound.
pub async fn start_with(
    config: &ServerConfig,
    datapath: impl FnOnce(&ServerConfig) -> Result<Box<dyn Mitigator>>,
) -> Result<Running> {
    let budget = server::limits::plan(config);
    let metrics = server::metrics::MetricsSettings::load(&config.metrics, budget.metrics)?;
    let sockets = bind(config).await?;
    let control = ControlHandle::spawn(control(config, datapath(config)?)?)
        .context("starting the control thread")?;
    let mut running = Running {
        control: control.clone(),
        signal: Vec::new(),
        data: Vec::new(),
        metrics: Vec::new(),
        tasks: Vec::new(),
    };
    for listener in sockets.metrics {
        let bound = listener.local_addr()?;
        tracing::info!(
            "Prometheus metrics on {}://{bound}/metrics",
            metrics.scheme()
        );
        running.metrics.push(bound);
        running.tasks.push(tokio::spawn(server::metrics::serve(
            listener,
            control.clone(),
            metrics.clone(),
        )));
    }
    let acceptor = Arc::new(server::acceptor(&config.tls)?);
    let dtls = server::DtlsSettings {
        ctx: server::dtls_context(&config.tls)?,
        idle: config
            .signal
            .dtls_idle_seconds
            .map(std::time::Duration::from_secs),
    };
    for (listener, socket) in sockets.signal {
        let bound = listener.local_addr()?;
        tracing::info!("signal channel: CoAP over TLS and over DTLS on {bound}");
        running.signal.push(bound);
        running.tasks.push(tokio::spawn(server::serve_tls(
            listener,
            acceptor.clone(),
            control.clone(),
            budget.signal_tls,
        )));
        running.tasks.push(tokio::spawn(server::serve_dtls(
            socket,
            dtls.clone(),
            control.clone(),
        )));
    }
    if !sockets.data.is_empty() {
        let acceptor = Arc::new(server::https::acceptor(&config.tls)?);
        let clients = Arc::new(
            config
                .clients
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>(),
        );
        for listener in sockets.data {
            let bound = listener.local_addr()?;
            tracing::info!("data channel: RESTCONF over HTTPS on {bound}");
            running.data.push(bound);
            running.tasks.push(tokio::spawn(server::https::serve(
                listener,
                acceptor.clone(),
                control.clone(),
                clients.clone(),
                budget.data,
            )));
        }
    }
    Ok(running)
}

/// Runs the server until `shutdown` completes.
pub async fn run_until(config: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let running = start_with(&config, datapath).await?;
    shutdown.await;
    tracing::info!("shutting down; XDP rules stay pinned and keep filtering");
    drop(running);
    Ok(())
}

/// Runs the server until interrupted (Ctrl-C / SIGINT).
pub async fn run(config: ServerConfig) -> Result<()> {
    run_until(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
