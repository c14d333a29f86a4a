//! The composition root: the one place that assembles the server from server.toml. A start
//! first checks everything it can without changing anything ([`crate::preflight`]), binds
//! the sockets and builds the TLS contexts; only then does it touch state: the datapath
//! (the pinned filter's writer lock, XDP attached to every interface or to none), the store
//! (its writer lock, one connection, the engine's journal), the data channel and the engine,
//! restores what the store held, starts the control thread, the listeners (the signal
//! channel's DTLS on UDP and TLS on TCP on each address, the data channel's HTTPS,
//! Prometheus) and the control socket (reload, operator mitigations).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use crate::admin::{self, Reply, Request};
use crate::control::{Control, ControlHandle};
use crate::data::{DataChannel, SharedData};
use crate::datapath::{
    LoadOptions, MemoryMitigator, Mitigator, XdpDatapath, DEFAULT_AMPLIFICATION_PORTS,
};
use crate::engine::journal::Snapshot;
use crate::engine::Engine;
use crate::preflight::{self, StartOptions};
use crate::server::{self, ServerConfig};
use crate::store::Store;
use crate::upstream::relay::{Desired, Relay};
use crate::upstream::Escalate;
use tokio::sync::watch;

/// The datapath the config asks for: XDP on its interfaces (all or none), or none
/// (control plane only). A datapath this call pinned afresh is removed again if attaching
/// fails, so a failed start leaves no pins behind.
pub fn datapath(config: &ServerConfig) -> Result<Box<dyn Mitigator>> {
    if config.datapath.interfaces.is_empty() {
        tracing::warn!("no [datapath] interfaces: running the control plane without XDP");
        return Ok(Box::new(MemoryMitigator::new()));
    }
    xdp_datapath(&config.datapath)
}

/// The pinned XDP filter on the interfaces of a `[datapath]` section (server or node).
pub fn xdp_datapath(d: &server::config::Datapath) -> Result<Box<dyn Mitigator>> {
    let fresh = !XdpDatapath::is_pinned(&d.pin_root);
    let mut dp =
        XdpDatapath::load(&LoadOptions::new(&d.pin_root)).context("loading the XDP datapath")?;
    let attached = dp
        .set_amplification_ports(
            d.amplification_ports
                .as_deref()
                .unwrap_or(DEFAULT_AMPLIFICATION_PORTS),
        )
        .and_then(|()| dp.attach_all(&d.interfaces, d.xdp_mode));
    match attached {
        Ok(outcomes) => {
            for out in outcomes {
                if let Some(why) = &out.fallback {
                    tracing::warn!("{}: {why}", out.interface);
                }
                match out.replaced {
                    true => tracing::info!(
                        "XDP filter on {} (already attached; program replaced)",
                        out.interface
                    ),
                    false => tracing::info!("XDP filter on {} ({} mode)", out.interface, out.mode),
                }
            }
            Ok(Box::new(dp))
        }
        Err(e) => {
            drop(dp);
            if fresh {
                let _ = XdpDatapath::purge(&d.pin_root);
            }
            Err(e).context("attaching the XDP filter")
        }
    }
}

/// The control plane over `datapath` and `store`: what the store held restored, the engine
/// committing to the store from now on.
pub fn control(
    config: &ServerConfig,
    datapath: Box<dyn Mitigator>,
    store: Store,
    snapshot: &Snapshot,
) -> Result<(Control, Option<watch::Receiver<Desired>>)> {
    let mut upstream = None;
    let (mut channel, cleanup) = DataChannel::restore(prefixes(config), &snapshot.data_clients);
    // A gateway's data channel does not relay ACLs (501), having no filter to apply them.
    channel.set_gateway(config.upstream.is_some() && config.datapath.interfaces.is_empty());
    let acls = channel.acl_entries();
    let data = SharedData::new(channel);
    let mut engine = Engine::new(datapath, config.policies())
        .with_terminating_period(config.signal.terminating_seconds)
        .with_attack_quiet(config.signal.attack_quiet_seconds)
        .with_redirect(config.signal.redirect.as_ref().map(|r| r.message()))
        .with_talker_drop(config.talker_drop_clients())
        .with_cdid_gateways(config.cdid_gateways())
        .with_data_source(Box::new(data.clone()))
        .with_journal(Box::new(store));
    let relaying = config
        .upstream
        .as_ref()
        .filter(|u| u.escalate != Escalate::Never);
    if let Some(u) = relaying {
        let terminating = u
            .terminating_seconds
            .unwrap_or(config.signal.terminating_seconds);
        let gateway = config.datapath.interfaces.is_empty();
        let (relay, desired) = Relay::restore(
            &snapshot.upstream_mappings,
            gateway,
            u.mode(),
            terminating,
            crate::clock::unix_now(),
        );
        let listen: Vec<String> = config.signal.listen.iter().map(|a| a.to_string()).collect();
        let here = format!("the DOTS gateway on {}", listen.join(", "));
        let relay = relay
            .named(here)
            .towards(format!("the DOTS server at {}", u.server))
            .server_domain(u.domain == crate::upstream::Domain::Server);
        engine = engine.with_escalation(Box::new(relay));
        upstream = Some(desired);
    }
    let restored = engine
        .restore(snapshot, acls, cleanup, crate::clock::unix_now())
        .context("storing what the restart cleaned up")?;
    if let Some(fs) = &config.flowspec {
        engine.add_announcer(Box::new(crate::flowspec::Announcer::start(fs)?));
    }
    if let Some(d) = &config.diversion {
        engine.add_announcer(Box::new(crate::flowspec::divert::Diverter::start(d)?));
    }
    tracing::info!(
        "restored {restored} mitigation(s) from {}",
        config.store.dir.display()
    );
    Ok((Control::new(engine, data), upstream))
}

fn prefixes(config: &ServerConfig) -> BTreeMap<String, Vec<ipnet::IpNet>> {
    config
        .clients
        .iter()
        .map(|c| (c.name.clone(), c.prefixes.clone()))
        .collect()
}

/// A server that runs: its control plane, the addresses it listens on, its listeners.
pub struct Running {
    pub control: ControlHandle,
    /// Each signal-channel address (TLS on TCP and DTLS on UDP, same port).
    pub signal: Vec<SocketAddr>,
    pub data: Vec<SocketAddr>,
    pub metrics: Vec<SocketAddr>,
    /// The control socket (`dots-agent server reload`, operator mitigations).
    pub admin: PathBuf,
    /// The configured clients' names, for the data channel (replaced at a reload).
    pub client_names: server::https::ClientNames,
    tasks: Vec<JoinHandle<()>>,
}

/// Dropping it stops the listeners and the control thread, and waits until the engine,
/// the datapath and the store are released (their writer locks with them), so that a
/// server started next (a restart in the same process) finds them free.
impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.control.shutdown();
        let _ = std::fs::remove_file(&self.admin);
    }
}

/// The sockets of server.toml, bound before anything is touched: a port that is taken
/// stops the start before the datapath is touched, and a client that connects while the
/// store is restored waits in the socket's queue instead of being refused.
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
    start_with(config, &StartOptions::default(), move |_| Ok(datapath)).await
}

/// As [`start`], with the datapath built once everything is checked and the sockets are
/// bound.
pub async fn start_with(
    config: &ServerConfig,
    opts: &StartOptions,
    datapath: impl FnOnce(&ServerConfig) -> Result<Box<dyn Mitigator>>,
) -> Result<Running> {
    let checked = preflight::check(config, opts)?;
    for note in &checked.notes {
        tracing::warn!("{note}");
    }
    let budget = server::limits::plan(config);
    let metrics = server::metrics::MetricsSettings::load(&config.metrics, budget.metrics)?;
    let sockets = bind(config).await?;
    let acceptor = Arc::new(server::acceptor(&config.tls)?);
    let dtls = server::DtlsSettings {
        ctx: server::dtls_context(&config.tls)?,
        idle: config
            .signal
            .dtls_idle_seconds
            .map(std::time::Duration::from_secs),
    };
    let https = match sockets.data.is_empty() {
        true => None,
        false => Some(Arc::new(server::https::acceptor(&config.tls)?)),
    };
    // From here on, state changes.
    let dir = &config.store.dir;
    if checked.reset_store {
        let aside = crate::store::set_aside(dir)?;
        tracing::warn!(
            "--reset-store: the store was set aside as {}",
            aside.display()
        );
    }
    let datapath = datapath(config)?;
    let store = Store::open(dir)?;
    let snapshot = match checked.reset_store {
        true => Snapshot::default(),
        false => store.snapshot()?,
    };
    let (control_plane, upstream) = control(config, datapath, store, &snapshot)?;
    let control = ControlHandle::spawn(control_plane).context("starting the control thread")?;
    server::heap::spawn_trimmer();
    let mut running = Running {
        control: control.clone(),
        signal: Vec::new(),
        data: Vec::new(),
        metrics: Vec::new(),
        admin: dir.join(admin::SOCKET),
        client_names: Arc::new(std::sync::RwLock::new(client_names(config))),
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
    if let Some(acceptor) = https {
        let clients = running.client_names.clone();
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
    if let (Some(u), Some(desired)) = (&config.upstream, upstream) {
        tracing::info!("upstream: {} ({})", u.server, u.server_name);
        running.tasks.push(tokio::spawn(crate::upstream::link::run(
            u.client(),
            desired,
            control.clone(),
        )));
    }
    let listener = admin::bind(dir)?;
    let reloader = Reloader {
        control: control.clone(),
        source: config.source.clone(),
        names: running.client_names.clone(),
    };
    running
        .tasks
        .push(tokio::spawn(admin::serve(listener, move |req| {
            answer(reloader.clone(), req)
        })));
    Ok(running)
}

/// A control-socket request, answered on the control thread.
async fn answer(reloader: Reloader, req: Request) -> Reply {
    let control = reloader.control.clone();
    let result: Result<serde_json::Value> = match req {
        Request::Reload => reloader.reload().await,
        Request::OperatorAdd { specs } => control
            .run(move |c| c.engine.operator_add(specs))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(refused))
            .and_then(|v| Ok(serde_json::to_value(v)?)),
        Request::OperatorRemove { id } => control
            .run(move |c| c.engine.operator_remove(id))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(refused))
            .map(|c| serde_json::json!(c.map(|c| (c.in_scope.packets, c.dropped_total().packets)))),
        Request::OperatorList => control
            .run(|c| c.engine.operator_list())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|v| Ok(serde_json::to_value(v)?)),
        Request::Names => control
            .run(|c| {
                let e = &c.engine;
                e.mitigator()
                    .installed()
                    .into_iter()
                    .map(|raw| (raw, e.describe(raw)))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|v| Ok(serde_json::to_value(v)?)),
    };
    match result {
        Ok(v) => Reply::Ok(v),
        Err(e) => Reply::Error(format!("{e:#}")),
    }
}

fn refused(r: crate::engine::Refusal) -> anyhow::Error {
    use crate::engine::Refusal::*;
    match r {
        BadRequest(d) | Forbidden(d) | NotFound(d) | Unavailable(d) | Unprocessable(d) => {
            anyhow::anyhow!(d)
        }
        Conflict { diagnostic, .. } | HeldByOther { diagnostic, .. } => {
            anyhow::anyhow!(diagnostic)
        }
    }
}

fn client_names(config: &ServerConfig) -> Vec<String> {
    config.clients.iter().map(|c| c.name.clone()).collect()
}

/// What a reload needs: the control thread, the file the server was started from, the
/// data channel's client names.
#[derive(Clone)]
pub struct Reloader {
    control: ControlHandle,
    source: Option<PathBuf>,
    names: server::https::ClientNames,
}

impl Reloader {
    /// Re-reads server.toml and applies its clients and their policies; a file that does
    /// not load, or policies that cannot be installed, are refused and the running ones
    /// kept. Sections other than `[[client]]` need a restart (they are not applied).
    pub async fn reload(&self) -> Result<serde_json::Value> {
        let path = self
            .source
            .clone()
            .context("this server was not started from a config file")?;
        let config = ServerConfig::load(&path).context("the running configuration is kept")?;
        let (policies, drop, prefixes) = (
            config.policies(),
            config.talker_drop_clients(),
            prefixes(&config),
        );
        let gateways = config.cdid_gateways();
        let changes = self
            .control
            .run(move |c| {
                let r = c.engine.reload_policies(policies, drop);
                if r.is_ok() {
                    c.data.lock().set_prefixes(prefixes);
                    c.engine.set_cdid_gateways(gateways);
                }
                r
            })
            .await?
            .map_err(|r| refused(r).context("the running configuration is kept"))?;
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = client_names(&config);
        tracing::info!(
            added = ?changes.added,
            changed = ?changes.changed,
            removed = ?changes.removed,
            reinstalled = changes.reinstalled,
            "reloaded the clients of {}",
            path.display()
        );
        Ok(serde_json::to_value(changes)?)
    }
}

/// Runs the server until `shutdown` completes.
pub async fn run_until(config: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    run_until_with(config, StartOptions::default(), shutdown).await
}

/// Runs the server until `shutdown` completes; SIGHUP reloads the clients.
pub async fn run_until_with(
    config: ServerConfig,
    opts: StartOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let running = start_with(&config, &opts, datapath).await?;
    let reloader = Reloader {
        control: running.control.clone(),
        source: config.source.clone(),
        names: running.client_names.clone(),
    };
    let hup = tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(e) = reloader.reload().await {
                tracing::error!("SIGHUP: reload refused: {e:#}");
            }
        }
    });
    shutdown.await;
    hup.abort();
    tracing::info!("shutting down; XDP rules stay pinned and keep filtering");
    drop(running);
    Ok(())
}
