//! `dots-agent server`: run the DOTS server, check a configuration without starting
//! (`--check`), and reload a running server's clients (`server reload`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::preflight::{self, StartOptions};
use crate::server::ServerConfig;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    /// The server's configuration (server.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Run every check a start makes (configuration, certificates and key, interfaces,
    /// listen addresses free, store readable, nobody else using the store or the pinned
    /// filter), change nothing, and exit.
    #[arg(long)]
    pub check: bool,
    /// Set a store that is not valid aside (renamed *.bad-TIME) and start with an empty one;
    /// the mitigations it held are then removed from the filter.
    #[arg(long)]
    pub reset_store: bool,
    #[command(subcommand)]
    pub action: Option<ServerAction>,
}

#[derive(Subcommand, Debug)]
pub enum ServerAction {
    /// Make the running server re-read its clients and their policies (as SIGHUP does);
    /// a file that does not load is refused and the running configuration kept.
    Reload,
}

pub fn run(args: ServerArgs) -> Result<()> {
    let Some(path) = args.config else {
        bail!("give the server's configuration with --config FILE");
    };
    let config = ServerConfig::load(&path)?;
    let opts = StartOptions {
        reset_store: args.reset_store,
    };
    match args.action {
        Some(ServerAction::Reload) => reload(&config),
        None if args.check => check(&config, &opts),
        None => {
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(async {
                let stop = super::signal::stop_signal()?;
                crate::app::run_until_with(config, opts, async {
                    let signal = stop.await;
                    tracing::info!("{signal} received: stopping");
                })
                .await
            })?;
            tracing::info!("dots-agent server stopped");
            Ok(())
        }
    }
}

fn check(config: &ServerConfig, opts: &StartOptions) -> Result<()> {
    let checked = preflight::check(config, opts)?;
    preflight::check_ports(config)?;
    for note in &checked.notes {
        println!("note: {note}");
    }
    let s = &checked.snapshot;
    println!(
        "{}: ok ({} client(s); store {}: {} mitigation(s), {} operator mitigation(s); XDP on {}{})",
        config
            .source
            .as_deref()
            .unwrap_or(std::path::Path::new("?"))
            .display(),
        config.clients.len(),
        crate::store::file(&config.store.dir).display(),
        s.mitigations.len(),
        s.operator_mitigations.len(),
        match config.datapath.interfaces.is_empty() {
            true => "no interface (control plane only)".to_string(),
            false => config.datapath.interfaces.join(", "),
        },
        match &config.upstream {
            None => String::new(),
            Some(u) => format!(
                "; upstream {} ({}, escalate {}, {} relayed)",
                u.server,
                u.server_name,
                u.escalate.name(),
                s.upstream_mappings.len()
            ),
        }
    );
    Ok(())
}

fn reload(config: &ServerConfig) -> Result<()> {
    let dir = &config.store.dir;
    let socket = dir.join(crate::admin::SOCKET);
    if crate::datapath::lock::holder(dir).is_none() {
        bail!(
            "no server is running with the store at {} (nothing to reload)",
            dir.display()
        );
    }
    let v = crate::admin::call(&socket, &crate::admin::Request::Reload)?;
    let changes: crate::engine::PolicyChanges = serde_json::from_value(v)?;
    let list = |v: &[String]| match v.is_empty() {
        true => "none".to_string(),
        false => v.join(", "),
    };
    println!(
        "reloaded: clients added {}, changed {}, removed {}; {} active mitigation(s) installed again",
        list(&changes.added),
        list(&changes.changed),
        list(&changes.removed),
        changes.reinstalled
    );
    if !changes.removed.is_empty() {
        println!("removed clients' requests are refused from now on; their mitigations stay until they end or are withdrawn");
    }
    Ok(())
}
