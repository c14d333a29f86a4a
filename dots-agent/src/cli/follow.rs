//! `dots-agent follow --config node.toml`: a scrubber node that installs the FlowSpec rules
//! its local gobgpd learns into its XDP filter, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::flowspec::follow::{self, FollowConfig};

#[derive(Args, Debug)]
pub struct FollowArgs {
    /// The node's configuration: [datapath] as in server.toml, [flowspec] the local gobgpd.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: FollowArgs) -> Result<()> {
    let Some(path) = args.config else {
        bail!("give the node's configuration with --config FILE");
    };
    let config = FollowConfig::load(&path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    let signals = rt.block_on(async { super::signal::stop_signal() })?;
    let flag = stop.clone();
    std::thread::spawn(move || {
        let signal = rt.block_on(signals);
        tracing::info!("{signal} received: stopping");
        flag.store(true, Ordering::SeqCst);
    });
    let dp = crate::app::xdp_datapath(&config.datapath)?;
    tracing::info!(
        "following gobgpd at {} into the XDP filter on {}",
        config.flowspec.gobgp_api,
        config.datapath.interfaces.join(", ")
    );
    follow::run(&config, dp, &|| stop.load(Ordering::SeqCst))?;
    tracing::info!("dots-agent follow stopped (the pinned filter keeps its rules)");
    Ok(())
}
