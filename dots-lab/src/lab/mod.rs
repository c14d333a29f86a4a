//! `dots-lab run`: a DDoS signalled and scrubbed in network namespaces, from a scenario
//! file, and `dots-lab bench`, the veth drop-rate benchmark.
//!
//! - [`scenario`]: the TOML scenario format and its checks.
//! - [`topology`]: namespaces, veth pairs, processes inside namespaces, cleanup.
//! - [`actors`]: the receiver, the guard and the generators a run starts.
//! - [`chain`]: a scenario's `[chain]`: the customer's gateway, the provider's recursive
//!   scrubber and the upstream scrubber, each hop measured.
//! - [`run`]: the scenario itself (server, guard, generators, receiver), progress, summary.
//! - [`plot`]: the SVG of the rates over time.
//! - [`bench`]: drop rates of our filter, an empty XDP_DROP, xdp-filter and nftables.
//! - [`divert`]: `dots-lab divert`, diversion through BGP and re-injection, the loop closed.

pub mod actors;
pub mod bench;
pub mod bench_rates;
pub mod bench_workloads;
pub mod chain;
pub mod divert;
pub mod plot;
pub mod run;
pub mod scenario;
pub mod topology;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct LabArgs {
    /// A scenario file (default: the embedded examples/scenarios/reflection-syn-udp.toml).
    pub scenario: Option<PathBuf>,
    /// Where to write the plot of the rates over time (SVG).
    #[arg(long, default_value = "lab.svg")]
    pub plot: PathBuf,
    /// Also write the summary (with the per-second samples) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Check the scenario file and exit.
    #[arg(long)]
    pub check: bool,
    /// How the generators send: XDP live frames, an AF_PACKET socket, or live frames where
    /// the kernel allows them (auto).
    #[arg(long, value_enum, default_value_t = crate::trafficgen::Backend::Auto)]
    pub sender: crate::trafficgen::Backend,
    /// The dots-agent binary that runs the server and the client (default: the one next to
    /// this dots-lab binary).
    #[arg(long)]
    pub agent: Option<PathBuf>,
}

/// The dots-agent binary to run: `--agent`, else `dots-agent` beside this executable (where
/// cargo puts both).
pub(crate) fn agent_binary(given: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--agent {}: no such file", p.display());
        }
        return Ok(p.clone());
    }
    let me = std::env::current_exe().context("locating the dots-lab binary")?;
    let beside = me.with_file_name("dots-agent");
    if !beside.is_file() {
        bail!(
            "no dots-agent binary beside {}: build it (cargo build --release -p dots-agent) or pass --agent PATH",
            me.display()
        );
    }
    Ok(beside)
}

pub fn cli(a: LabArgs) -> Result<()> {
    let scenario = match &a.scenario {
        Some(p) => scenario::Scenario::load(p)?,
        None => scenario::Scenario::parse(scenario::DEFAULT).context("the embedded scenario")?,
    };
    if a.check {
        println!(
            "scenario {:?}: {} flows, {:.0} s; ok",
            scenario.name,
            scenario.traffic.len(),
            scenario.total_seconds()
        );
        return Ok(());
    }
    let opts = run::LabOptions {
        scenario,
        agent: agent_binary(a.agent.as_ref())?,
        progress: true,
        sender: a.sender,
    };
    if opts.scenario.chain.is_some() {
        let summary = chain::run(&opts)?;
        std::fs::write(&a.plot, chain::svg(&opts.scenario, &summary))
            .with_context(|| format!("writing the plot to {}", a.plot.display()))?;
        chain::print_summary(&summary);
        println!("plot: {}", a.plot.display());
        if let Some(j) = &a.json {
            std::fs::write(j, serde_json::to_string_pretty(&summary)?)
                .with_context(|| format!("writing {}", j.display()))?;
        }
        return Ok(());
    }
    let summary = run::run(&opts)?;
    // Written here, not in run: the plot reads the run's summary, so run does not call it.
    std::fs::write(&a.plot, plot::svg(&opts.scenario, &summary))
        .with_context(|| format!("writing the plot to {}", a.plot.display()))?;
    run::print_summary(&summary);
    println!("plot: {}", a.plot.display());
    if let Some(j) = &a.json {
        std::fs::write(j, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", j.display()))?;
    }
    Ok(())
}
