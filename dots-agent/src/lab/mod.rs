//! `dots-agent lab`: a DDoS signalled and scrubbed in network namespaces, from a scenario
//! file, and `dots-agent lab bench`, the veth drop-rate benchmark.
//!
//! - [`scenario`]: the TOML scenario format and its checks.
//! - [`topology`]: namespaces, veth pairs, processes inside namespaces, cleanup.
//! - [`run`]: the scenario itself (server, guard, generators, receiver), progress, summary.
//! - [`plot`]: the SVG of the rates over time.
//! - [`bench`]: drop rates of our filter, an empty XDP_DROP, xdp-filter and nftables.

pub mod bench;
pub mod plot;
pub mod run;
pub mod scenario;
pub mod topology;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

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
    #[command(subcommand)]
    pub command: Option<LabCommand>,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Packets per second the scrubber drops on a veth pair: our filter (with a realistic
    /// rule set), an empty XDP_DROP program, xdp-tools' xdp-filter, nftables netdev ingress.
    Bench(bench::BenchArgs),
}

pub fn cli(a: LabArgs) -> Result<()> {
    if let Some(LabCommand::Bench(b)) = a.command {
        return bench::run(&b);
    }
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
        agent: std::env::current_exe().context("locating the dots-agent binary")?,
        plot: Some(a.plot.clone()),
        progress: true,
        sender: a.sender,
    };
    let summary = run::run(&opts)?;
    run::print_summary(&summary);
    println!("plot: {}", a.plot.display());
    if let Some(j) = &a.json {
        std::fs::write(j, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", j.display()))?;
    }
    Ok(())
}
