use anyhow::Result;
use clap::{Parser, Subcommand};

use dots_agent::cli;

/// dots-agent: an XDP DDoS scrubber steered by DOTS.
#[derive(Parser, Debug)]
#[command(name = "dots-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The XDP datapath on its own: attach, detach, status, mitigations from files.
    #[command(subcommand)]
    Xdp(cli::xdp::XdpCommand),
    /// Send and count raw frames on an interface (for labs and tests).
    #[command(subcommand)]
    Traffic(cli::traffic::TrafficCommand),
    /// Certificates for a lab: a CA, a server and clients.
    #[command(subcommand)]
    Pki(cli::pki::PkiCommand),
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
        Command::Xdp(c) => cli::xdp::run(c),
        Command::Traffic(c) => cli::traffic::run(c),
        Command::Pki(c) => cli::pki::run(c),
    }
}
