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
    /// Certificates for a lab: a CA, a server and clients.
    #[command(subcommand)]
    Pki(cli::pki::PkiCommand),
    /// Run the DOTS server (signal and data channels; XDP datapath per its config);
    /// `--check` checks without starting, `server reload` re-reads its clients.
    Server(cli::server::ServerArgs),
    /// The server's store: check it, back it up (also while the server runs).
    #[command(subcommand)]
    Store(cli::store::StoreCommand),
    /// Talk to a DOTS server as a DOTS client.
    Client {
        #[arg(long)]
        config: std::path::PathBuf,
        /// Print the response as JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: cli::signal::ClientCommand,
    },
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
        Command::Pki(c) => cli::pki::run(c),
        Command::Server(args) => cli::server::run(args),
        Command::Store(c) => cli::store::run(c),
        Command::Client {
            config,
            json,
            command,
        } => cli::signal::run_client(config, json, command),
    }
}
