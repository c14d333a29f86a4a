//! A DDoS signalled and scrubbed in network namespaces, from a scenario file (`dots-lab
//! run`, dispatched in `crate::cli::run`), and `dots-lab bench`, the veth drop-rate
//! benchmark.
//!
//! - [`scenario`]: the TOML scenario format and its checks.
//! - [`topology`]: namespaces, veth pairs, processes inside namespaces, cleanup.
//! - [`actors`]: the receiver, the guard and the generators a run starts.
//! - [`chain`]: a scenario's `[chain]`: the customer's gateway, the provider's recursive
//!   scrubber and the upstream scrubber, each hop measured.
//! - [`run`]: the scenario itself (server, guard, generators, receiver), progress, summary.
//! - [`harness`]: what `run` and `chain` share around their topologies (state, certificates,
//!   a filter's counter, flows by role, the guard's events, the end, the flow table).
//! - [`plot`]: the SVG charts (the rates over time; also the fleet's drop counters).
//! - [`bench`]: drop rates of our filter, an empty XDP_DROP, xdp-filter and nftables.
//! - [`divert`]: `dots-lab divert`, diversion through BGP and re-injection, the loop closed.

pub mod actors;
pub mod bench;
pub mod bench_rates;
pub mod bench_workloads;
pub mod chain;
pub mod divert;
pub mod harness;
pub mod plot;
pub mod run;
pub mod scenario;
pub mod topology;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

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

/// How every lab run ends: the plot written, the summary printed (`print`), where the plot
/// is, and the summary as JSON where asked.
pub fn report<S: serde::Serialize>(
    summary: &S,
    svg: &str,
    print: impl FnOnce(),
    plot: &Path,
    json: Option<&Path>,
) -> Result<()> {
    std::fs::write(plot, svg).with_context(|| format!("writing the plot to {}", plot.display()))?;
    print();
    println!("plot: {}", plot.display());
    if let Some(j) = json {
        std::fs::write(j, serde_json::to_string_pretty(summary)?)
            .with_context(|| format!("writing {}", j.display()))?;
    }
    Ok(())
}
