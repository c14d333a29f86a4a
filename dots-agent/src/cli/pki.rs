//! `dots-agent pki init|add-client`: certificates for a lab, and more clients later.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Write a CA, a server certificate and client certificates (PEM) into a directory.
    Init {
        /// Where to write them (created if needed; refused if it already holds a CA).
        #[arg(long)]
        dir: PathBuf,
        /// The server's DNS name (certificate CN and subjectAltName).
        #[arg(long)]
        server_name: String,
        /// Server IP addresses to add to its subjectAltName (repeatable).
        #[arg(long = "server-ip")]
        server_ips: Vec<IpAddr>,
        /// A DOTS client to issue a certificate for; its name is the certificate CN (repeatable).
        #[arg(long = "client", required = true)]
        clients: Vec<String>,
    },
    /// Issue certificates for more clients from the CA in a directory `pki init` made (its
    /// ca.pem and ca.key); add each to server.toml as a [[client]] and reload the server.
    AddClient {
        /// The directory holding ca.pem and ca.key; NAME.pem and NAME.key are written there.
        #[arg(long)]
        dir: PathBuf,
        /// The new client's name, its certificate CN (repeatable).
        #[arg(long = "client", required = true)]
        clients: Vec<String>,
    },
}

fn print_written(dir: &std::path::Path, files: &[PathBuf], clients: &[String]) -> Result<()> {
    for f in files {
        println!("wrote {}", f.display());
    }
    for c in clients {
        let pem = std::fs::read(dir.join(format!("{c}.pem")))?;
        let cert = openssl::x509::X509::from_pem(&pem)?;
        println!("client {c}: cuid {}", crate::pki::cuid(&cert)?);
    }
    Ok(())
}

pub fn run(cmd: PkiCommand) -> Result<()> {
    match cmd {
        PkiCommand::Init {
            dir,
            server_name,
            server_ips,
            clients,
        } => {
            let w = crate::pki::init(&dir, &server_name, &server_ips, &clients)?;
            print_written(&dir, &w.files, &clients)
        }
        PkiCommand::AddClient { dir, clients } => {
            let w = crate::pki::add_clients(&dir, &clients)?;
            print_written(&dir, &w.files, &clients)
        }
    }
}
