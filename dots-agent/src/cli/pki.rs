//! `dots-agent pki init`: certificates for a lab.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Write a CA, a server certificate and client certificates (PEM) into a directory.
    Init {
        /// Where to write them (created; refused if it already holds a CA).
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
            for f in &w.files {
                println!("wrote {}", f.display());
            }
            for c in &clients {
                let pem = std::fs::read(dir.join(format!("{c}.pem")))?;
                let cert = openssl::x509::X509::from_pem(&pem)?;
                println!("client {c}: cuid {}", crate::pki::cuid(&cert)?);
            }
            Ok(())
        }
    }
}
