use std::io::IsTerminal;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use dots_agent::cli;
use dots_agent::cli::exit::Exit;

/// dots-agent: an XDP DDoS scrubber steered by DOTS.
///
/// Exit status: 0 done, 1 error, 2 usage, 3 refused by the server (CoAP 4.xx, HTTP 4xx),
/// 4 server error (5.xx) or server unreachable.
#[derive(Parser, Debug)]
#[command(name = "dots-agent", version, about, long_about)]
struct Cli {
    /// Log lines as text (coloured on a terminal only) or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The XDP datapath on its own: attach, detach, status, mitigations from files.
    #[command(subcommand)]
    Xdp(cli::xdp::XdpCommand),
    /// Certificates for a lab: a CA, a server and clients.
    #[command(subcommand)]
    Pki(cli::pki::PkiCommand),
    /// Run the DOTS server (signal and data channels; XDP datapath per its config) until
    /// SIGINT or SIGTERM; `--check` checks without starting, `server reload` re-reads its
    /// clients.
    Server(cli::server::ServerArgs),
    /// The server's store: check it, back it up (also while the server runs).
    #[command(subcommand)]
    Store(cli::store::StoreCommand),
    /// Talk to a DOTS server as a DOTS client.
    Client(cli::signal::ClientArgs),
    /// Run a scrubber node without DOTS listeners: install the BGP FlowSpec rules the
    /// local gobgpd learns into the XDP filter, until SIGINT or SIGTERM.
    Follow(cli::follow::FollowArgs),
}

/// Logs go to stderr; RUST_LOG filters them (default: info).
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Colour codes only for a person at a terminal (and not with NO_COLOR): a log
        // file or journald gets plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Server(_) | Command::Follow(_)) {
        // A command whose output goes into `| head` ends quietly when the reader leaves, as
        // Unix tools do, rather than panicking in println!. The server keeps Rust's default
        // (SIGPIPE ignored): its sockets must never kill it.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logging(cli.log_format);
    let exit = match run(cli.command) {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("error: {e:#}");
            cli::exit::status_of(&e)
        }
    };
    std::process::exit(exit as i32);
}

fn run(command: Command) -> Result<Exit> {
    match command {
        Command::Xdp(c) => cli::xdp::run(c).map(|()| Exit::Ok),
        Command::Pki(c) => cli::pki::run(c).map(|()| Exit::Ok),
        Command::Server(args) => cli::server::run(args).map(|()| Exit::Ok),
        Command::Store(c) => cli::store::run(c).map(|()| Exit::Ok),
        Command::Client(args) => cli::signal::run_client(args),
        Command::Follow(args) => cli::follow::run(args).map(|()| Exit::Ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag and argument of every subcommand says what it is for in --help.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "dots-agent", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
        Cli::command().debug_assert();
    }
}
