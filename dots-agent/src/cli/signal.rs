//! `dots-agent server` and `dots-agent client`: the signal channel from the command line.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use coap_lite::RequestType;
use ipnet::IpNet;

use crate::client::{code_text, ClientConfig, Session};
use crate::datapath::PortRange;
use crate::signal::message::{self, Lifetime, Scope};

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Ask for mitigation of targets (PUT mitigate).
    Mitigate {
        /// Mitigation id; must grow with each new request of this client.
        #[arg(long)]
        mid: u32,
        /// Target prefix (repeatable).
        #[arg(long = "target", required = true)]
        targets: Vec<IpNet>,
        /// Destination port or range LOW-HIGH (repeatable).
        #[arg(long = "port", value_parser = parse_port_range)]
        ports: Vec<PortRange>,
        /// IP protocol number (repeatable).
        #[arg(long = "protocol")]
        protocols: Vec<u8>,
        /// Seconds; -1 asks for "until withdrawn".
        #[arg(long, default_value_t = 3600, allow_hyphen_values = true)]
        lifetime: i64,
        /// Arm the request for signal loss only (trigger-mitigation false).
        #[arg(long)]
        on_signal_loss: bool,
    },
    /// Show this client's mitigations (GET mitigate), or one.
    Status {
        #[arg(long)]
        mid: Option<u32>,
    },
    /// Withdraw a mitigation (DELETE mitigate).
    Withdraw {
        #[arg(long)]
        mid: u32,
    },
}

fn parse_port_range(s: &str) -> std::result::Result<PortRange, String> {
    let parse = |t: &str| {
        t.parse::<u16>()
            .map_err(|_| format!("{t:?} is not a port number"))
    };
    match s.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if hi < lo {
                return Err(format!("port range {s}: the upper port is below the lower"));
            }
            Ok(PortRange::new(lo, hi))
        }
        None => Ok(PortRange::single(parse(s)?)),
    }
}

pub fn run_server(config: PathBuf) -> Result<()> {
    let cfg = crate::server::ServerConfig::load(&config)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(crate::server::run(cfg))
}

pub fn run_client(config: PathBuf, json: bool, cmd: ClientCommand) -> Result<()> {
    let cfg = ClientConfig::load(&config)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let mut s = Session::connect(&cfg).await?;
        let cuid = format!("cuid={}", s.cuid());
        let (method, path, body) = match &cmd {
            ClientCommand::Mitigate {
                mid,
                targets,
                ports,
                protocols,
                lifetime,
                on_signal_loss,
            } => {
                let lifetime = match *lifetime {
                    -1 => Lifetime::Indefinite,
                    n if n > 0 && n <= u32::MAX as i64 => Lifetime::Seconds(n as u32),
                    n => bail!("--lifetime {n}: use a positive number of seconds or -1"),
                };
                let mut scope = Scope::new(targets.clone(), lifetime);
                scope.target_port_range = ports.clone();
                scope.target_protocol = protocols.clone();
                scope.trigger_mitigation = !on_signal_loss;
                let body = message::encode_mitigation_request(&scope);
                (
                    RequestType::Put,
                    vec!["mitigate".into(), cuid, format!("mid={mid}")],
                    Some(body),
                )
            }
            ClientCommand::Status { mid } => {
                let mut p = vec!["mitigate".to_string(), cuid];
                if let Some(m) = mid {
                    p.push(format!("mid={m}"));
                }
                (RequestType::Get, p, None)
            }
            ClientCommand::Withdraw { mid } => (
                RequestType::Delete,
                vec!["mitigate".into(), cuid, format!("mid={mid}")],
                None,
            ),
        };
        let resp = s.request(method, &path, body, false).await?;
        let code = code_text(&resp);
        let raw: u8 = resp.header.code.into();
        let ok = raw >> 5 == 2;
        let body_text = if resp.payload.is_empty() {
            String::new()
        } else if matches!(
            resp.get_content_format(),
            Some(coap_lite::ContentFormat::ApplicationDotsCbor)
        ) {
            match crate::signal::cbor::parse(&resp.payload) {
                Ok(v) => crate::signal::diag::to_json(&v).to_string(),
                Err(e) => format!("(undecodable CBOR: {e})"),
            }
        } else {
            String::from_utf8_lossy(&resp.payload).into_owned()
        };
        if json {
            println!("{}", serde_json::json!({"code": code, "body": body_text}));
        } else {
            println!("{code} {body_text}");
        }
        if !ok {
            std::process::exit(2);
        }
        Ok(())
    })
}
