//! `dots-lab run SCENARIO.toml`: a scenario file to the lab that runs it. Traffic through
//! the lab's scrubber (`lab::run`), a chain of agents (a `[chain]` section: `lab::chain`) or
//! a scrubber fleet (a `[fleet]` section: `fleet::attack`). It sits above `lab` and `fleet`
//! because the fleet's lab is built on the lab's pieces.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::fleet::{attack::FleetScenario, report};
use crate::lab::{self, chain, plot, run, scenario::Scenario};
use crate::trafficgen::Backend;

#[derive(Args, Debug)]
pub struct LabArgs {
    /// A scenario file (default: the embedded examples/scenarios/reflection-syn-udp.toml).
    pub scenario: Option<PathBuf>,
    /// Where to write the plot (SVG): the rates over time; for a fleet scenario, the drop
    /// counters.
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
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub sender: Backend,
    /// The dots-agent binary that runs the server and the client (default: the one next to
    /// this dots-lab binary).
    #[arg(long)]
    pub agent: Option<PathBuf>,
}

/// What a scenario file describes.
enum Loaded {
    /// Traffic through the lab's scrubber, or through a chain of agents.
    Traffic(Box<Scenario>),
    Fleet(FleetScenario),
}

/// A scenario file is a fleet's when it has a `[fleet]` table.
fn parse(text: &str) -> Result<Loaded> {
    let table: toml::Table = toml::from_str(text).context("not a valid scenario")?;
    Ok(if table.contains_key("fleet") {
        Loaded::Fleet(FleetScenario::parse(text)?)
    } else {
        Loaded::Traffic(Box::new(Scenario::parse(text)?))
    })
}

pub fn run(a: LabArgs) -> Result<()> {
    let loaded = match &a.scenario {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            parse(&text).with_context(|| format!("scenario {}", p.display()))?
        }
        None => Loaded::Traffic(Box::new(
            Scenario::parse(lab::scenario::DEFAULT).context("the embedded scenario")?,
        )),
    };
    let json = a.json.as_deref();
    match loaded {
        Loaded::Fleet(f) if a.check => {
            println!(
                "scenario {:?}: a fleet of {} nodes, {} pps for {} s; ok",
                f.name, f.fleet.nodes, f.fleet.pps, f.fleet.seconds
            );
            Ok(())
        }
        Loaded::Fleet(f) => {
            if a.sender == Backend::Live {
                bail!("--sender live: the fleet scenario paces its attack through an AF_PACKET socket per node; leave --sender out");
            }
            let summary = crate::fleet::attack::run(&f, lab::agent_binary(a.agent.as_ref())?)?;
            let print = || report::print_summary(&summary);
            lab::report(&summary, &report::svg(&summary), print, &a.plot, json)
        }
        Loaded::Traffic(s) if a.check => {
            println!(
                "scenario {:?}: {} flows, {:.0} s; ok",
                s.name,
                s.traffic.len(),
                s.total_seconds()
            );
            Ok(())
        }
        Loaded::Traffic(scenario) => {
            let opts = run::LabOptions {
                scenario: *scenario,
                agent: lab::agent_binary(a.agent.as_ref())?,
                progress: true,
                sender: a.sender,
            };
            let sc = &opts.scenario;
            if sc.chain.is_some() {
                let summary = chain::run(&opts)?;
                let print = || chain::print_summary(&summary);
                lab::report(&summary, &chain::svg(sc, &summary), print, &a.plot, json)
            } else {
                let summary = run::run(&opts)?;
                let print = || run::print_summary(&summary);
                lab::report(&summary, &plot::svg(sc, &summary), print, &a.plot, json)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_section_makes_a_fleet_scenario() {
        let fleet = include_str!("../../../examples/scenarios/fleet.toml");
        assert!(matches!(parse(fleet), Ok(Loaded::Fleet(_))));
        let chain = include_str!("../../../examples/scenarios/chain.toml");
        assert!(matches!(parse(chain), Ok(Loaded::Traffic(s)) if s.chain.is_some()));
        let e = format!("{:#}", parse("name = \"x\"\n[fleet\n").err().unwrap());
        assert!(e.contains("not a valid scenario"), "{e}");
    }
}
