use anyhow::Result;
use clap::{Parser, Subcommand};

use dots_lab::{cli, fleet, lab, proof};

/// dots-lab: the dots-agent's lab, traffic tools and benchmarks (root, network namespaces).
#[derive(Parser, Debug)]
#[command(name = "dots-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A DDoS signalled over DOTS and scrubbed by XDP, in network namespaces, from a scenario
    /// (runs the dots-agent binary for the server and the client).
    Run(cli::run::LabArgs),
    /// Packets per second the scrubber drops on a veth pair: our filter (with a realistic
    /// rule set), an empty XDP_DROP program, xdp-tools' xdp-filter, nftables netdev ingress.
    Bench(lab::bench::BenchArgs),
    /// kill -9 of the server, again and again, during a PUT/DELETE stream with XDP attached
    /// and an attack flowing: acknowledged vs restored, restart times, attack passed.
    Soak(proof::soak::SoakArgs),
    /// The signal channel under 30/50/70 % packet loss both ways (nftables): time to
    /// mitigate, heartbeats, Observe.
    Loss(proof::loss::LossArgs),
    /// 10,000 sessions, a handshake flood and a slow-connection flood at once: a real
    /// client's time to mitigate, the server's memory and descriptors.
    Bounds(proof::bounds::BoundsArgs),
    /// Diversion with the loop closed: a border router (bird2) learns the scrubber's
    /// diversion routes on a DOTS 2.01, scrubbed traffic goes back to the customer through a
    /// tunnel, the routes leave after the withdrawal; what the customer received, by path.
    Divert(lab::divert::DivertArgs),
    /// A scrubber fleet steered through BGP FlowSpec (gobgpd, dots-agent follow, bird2,
    /// Prometheus): `measure` prints how fast it follows, `attack` is its lab scenario.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Send, generate and count raw frames on an interface.
    #[command(subcommand)]
    Traffic(cli::traffic::TrafficCommand),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => cli::run::run(a),
        Command::Bench(b) => lab::bench::run(&b),
        Command::Traffic(c) => cli::traffic::run(c),
        Command::Soak(a) => proof::soak::run(&a),
        Command::Loss(a) => proof::loss::run(&a),
        Command::Bounds(a) => proof::bounds::run(&a),
        Command::Divert(a) => lab::divert::cli(a),
        Command::Fleet(c) => fleet::run(c),
    }
}
