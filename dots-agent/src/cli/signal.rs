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
        #[command(flatten)]
        scope: ScopeArgs,
        /// Arm the request for signal loss only (trigger-mitigation false).
        #[arg(long)]
        on_signal_loss: bool,
    },
    /// Tell the server how its mitigation works (PUT with an empty If-Match); repeat the
    /// mitigation's fields as they were requested.
    Efficacy {
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, value_enum)]
        attack_status: AttackStatus,
    },
    /// Show this client's mitigations (GET mitigate), or one.
    Status {
        #[arg(long)]
        mid: Option<u32>,
    },
    /// Follow status notifications (GET with Observe) until interrupted or --seconds pass.
    Watch {
        #[arg(long)]
        mid: Option<u32>,
        /// Stop after this many seconds (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
    },
    /// Withdraw a mitigation (DELETE mitigate).
    Withdraw {
        #[arg(long)]
        mid: u32,
    },
}

#[derive(clap::Args, Debug)]
pub struct ScopeArgs {
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
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AttackStatus {
    UnderAttack,
    Mitigated,
}

impl ScopeArgs {
    fn scope(&self) -> Result<Scope> {
        let lifetime = match self.lifetime {
            -1 => Lifetime::Indefinite,
            n if n > 0 && n <= u32::MAX as i64 => Lifetime::Seconds(n as u32),
            n => bail!("--lifetime {n}: use a positive number of seconds or -1"),
        };
        let mut scope = Scope::new(self.targets.clone(), lifetime);
        scope.target_port_range = self.ports.clone();
        scope.target_protocol = self.protocols.clone();
        Ok(scope)
    }
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
        let mitigate = |mid: u32| vec!["mitigate".to_string(), cuid.clone(), format!("mid={mid}")];
        let (method, path, body, efficacy) = match &cmd {
            ClientCommand::Mitigate {
                scope,
                on_signal_loss,
            } => {
                let mut sc = scope.scope()?;
                sc.trigger_mitigation = !on_signal_loss;
                (
                    RequestType::Put,
                    mitigate(scope.mid),
                    Some(message::encode_mitigation_request(&sc)),
                    false,
                )
            }
            ClientCommand::Efficacy {
                scope,
                attack_status,
            } => {
                let mut sc = scope.scope()?;
                sc.attack_status = Some(match attack_status {
                    AttackStatus::UnderAttack => 1,
                    AttackStatus::Mitigated => 2,
                });
                (
                    RequestType::Put,
                    mitigate(scope.mid),
                    Some(message::encode_mitigation_request(&sc)),
                    true,
                )
            }
            ClientCommand::Status { mid } | ClientCommand::Watch { mid, .. } => {
                let mut p = vec!["mitigate".to_string(), cuid.clone()];
                if let Some(m) = mid {
                    p.push(format!("mid={m}"));
                }
                (RequestType::Get, p, None, false)
            }
            ClientCommand::Withdraw { mid } => (RequestType::Delete, mitigate(*mid), None, false),
        };
        if let ClientCommand::Watch { seconds, .. } = &cmd {
            let (first, token) = s.observe(&path).await?;
            print_response(&first, json);
            let deadline = (*seconds > 0)
                .then(|| std::time::Instant::now() + std::time::Duration::from_secs(*seconds));
            loop {
                let wait = match deadline {
                    Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                        Some(w) => w,
                        None => return Ok(()),
                    },
                    None => std::time::Duration::from_secs(3600),
                };
                if let Some(n) = s.notification(&token, wait).await? {
                    print_response(&n, json);
                }
            }
        }
        let resp = s.request(method, &path, body, efficacy).await?;
        let ok = print_response(&resp, json);
        if !ok {
            std::process::exit(2);
        }
        Ok(())
    })
}

/// Prints a response as "code body" (or JSON); returns whether it was a success (2.xx).
fn print_response(resp: &coap_lite::Packet, json: bool) -> bool {
    let code = code_text(resp);
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
    ok
}
