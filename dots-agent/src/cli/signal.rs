//! `dots-agent server` and `dots-agent client`: the signal channel from the command line.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use coap_lite::RequestType;
use ipnet::IpNet;

use crate::client::{code_text, is_success, ClientConfig, Session};
use crate::datapath::PortRange;
use crate::signal::message::{self, Lifetime, Scope};
use crate::signal::session_config;
use std::time::{Duration, Instant};

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
        /// Attack traffic that still reaches you, in megabit/s (RFC 9244 efficacy
        /// telemetry, total-attack-traffic).
        #[arg(long)]
        attack_mbps: Option<u64>,
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
        /// Send a heartbeat after this many quiet seconds (the RFC 9132 default is 30).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=240))]
        heartbeat_every: u64,
    },
    /// Withdraw a mitigation (DELETE mitigate).
    Withdraw {
        #[arg(long)]
        mid: u32,
    },
    /// Session configuration (RFC 9132 §4.5): get, set or reset.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Telemetry (RFC 9244): setup, pipe capacity, baselines and reports measured here.
    #[command(subcommand)]
    Telemetry(super::telemetry::TelemetryCommand),
    /// The data channel (RFC 8783): registration, aliases, ACLs, capabilities.
    Data(super::data::DataArgs),
    /// Threshold-triggered mitigation: watch an interface's receive rate, request mitigation
    /// when it crosses the threshold, withdraw when the attack has been gone for a while.
    /// Prints one JSON event per line.
    Guard {
        #[arg(short, long)]
        interface: String,
        /// Received packets per second that trigger a request.
        #[arg(long)]
        threshold_pps: u64,
        /// Target prefix to protect (repeatable).
        #[arg(long = "target", required = true)]
        targets: Vec<IpNet>,
        #[arg(long, default_value_t = 1)]
        mid: u32,
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u32).range(1..))]
        lifetime: u32,
        /// Withdraw once the attack has been gone this many seconds.
        #[arg(long, default_value_t = 10.0)]
        quiet_seconds: f64,
        /// Sampling interval in seconds.
        #[arg(long, default_value_t = 0.5)]
        sample_seconds: f64,
        /// Stop after this many seconds (withdrawing first if needed).
        #[arg(long, default_value_t = 3600.0)]
        max_seconds: f64,
        /// Exit after the first withdrawal.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Show the limits and current values (or one configuration by sid).
    Get {
        #[arg(long)]
        sid: Option<u32>,
    },
    /// Set parameters (a new, higher sid each time you change them).
    Set {
        #[arg(long)]
        sid: u32,
        /// Set the idle configuration instead of the mitigating one.
        #[arg(long)]
        idle: bool,
        #[arg(long)]
        heartbeat_interval: Option<u16>,
        #[arg(long)]
        missing_hb_allowed: Option<u16>,
        #[arg(long)]
        max_retransmit: Option<u16>,
        /// Seconds, two decimals.
        #[arg(long)]
        ack_timeout: Option<f64>,
        #[arg(long)]
        ack_random_factor: Option<f64>,
        #[arg(long)]
        probing_rate: Option<u16>,
    },
    /// Back to the server's defaults.
    Delete {
        #[arg(long)]
        sid: u32,
    },
}

#[derive(clap::Args, Debug)]
pub struct ScopeArgs {
    /// Mitigation id; must grow with each new request of this client.
    #[arg(long)]
    mid: u32,
    /// Target prefix (repeatable).
    #[arg(long = "target", required_unless_present = "aliases")]
    targets: Vec<IpNet>,
    /// Alias name created over the data channel (repeatable); its targets are added.
    #[arg(long = "alias")]
    aliases: Vec<String>,
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
        scope.alias_name = self.aliases.clone();
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
    rt.block_on(crate::app::run(cfg))
}

pub fn run_client(config: PathBuf, json: bool, cmd: ClientCommand) -> Result<()> {
    let cfg = ClientConfig::load(&config)?;
    if let ClientCommand::Data(args) = cmd {
        return super::data::run(cfg, json, args);
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    if let ClientCommand::Guard {
        interface,
        threshold_pps,
        targets,
        mid,
        lifetime,
        quiet_seconds,
        sample_seconds,
        max_seconds,
        once,
    } = cmd
    {
        let secs = |v: f64, what: &str| {
            if !(0.01..=86_400.0).contains(&v) {
                bail!("{what} {v}: use a number of seconds between 0.01 and 86400");
            }
            Ok(Duration::from_secs_f64(v))
        };
        let opts = crate::client::guard::GuardOptions {
            interface,
            threshold_pps,
            quiet: secs(quiet_seconds, "--quiet-seconds")?,
            targets,
            mid,
            lifetime,
            sample: secs(sample_seconds, "--sample-seconds")?,
            max: secs(max_seconds, "--max-seconds")?,
            once,
        };
        return rt.block_on(crate::client::guard::run(&cfg, &opts));
    }
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
                attack_mbps,
            } => {
                let mut sc = scope.scope()?;
                if let Some(mbps) = attack_mbps {
                    let unit = crate::signal::telemetry::Unit::from_code(8).expect("megabit-ps");
                    sc.efficacy_attack = vec![(
                        unit,
                        crate::signal::telemetry::Stats {
                            current: Some(*mbps),
                            ..Default::default()
                        },
                    )];
                }
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
            ClientCommand::Config(_)
            | ClientCommand::Telemetry(_)
            | ClientCommand::Guard { .. } => (RequestType::Get, Vec::new(), None, false),
            ClientCommand::Data(_) => bail!("the data channel is served above"),
        };
        if let ClientCommand::Watch {
            seconds,
            heartbeat_every,
            ..
        } = &cmd
        {
            drop(s);
            let deadline = (*seconds > 0).then(|| Instant::now() + Duration::from_secs(*seconds));
            let every = Duration::from_secs(*heartbeat_every);
            return watch(&cfg, &path[2..], deadline, every, json).await;
        }
        if let ClientCommand::Config(c) = &cmd {
            return session_config_command(&mut s, c, json).await;
        }
        if let ClientCommand::Telemetry(t) = &cmd {
            let r = super::telemetry::run(&mut s, t).await?;
            if !print_response(&r, json) {
                std::process::exit(2);
            }
            return Ok(());
        }
        let resp = s.request(method, &path, body, efficacy).await?;
        let ok = print_response(&resp, json);
        if !ok {
            std::process::exit(2);
        }
        Ok(())
    })
}

/// Follows notifications until the deadline, keeping the session alive with heartbeats
/// and reconnecting with exponential backoff (1 s doubling to 60 s) when it breaks.
async fn watch(
    cfg: &ClientConfig,
    rest: &[String],
    deadline: Option<Instant>,
    every: Duration,
    json: bool,
) -> Result<()> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match watch_once(cfg, rest, deadline, every, json).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                if deadline.is_some_and(|d| Instant::now() + backoff >= d) {
                    return Err(e);
                }
                eprintln!("watch: {e:#}; reconnecting in {} s", backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

async fn watch_once(
    cfg: &ClientConfig,
    rest: &[String],
    deadline: Option<Instant>,
    every: Duration,
    json: bool,
) -> Result<()> {
    let mut s = Session::connect(cfg).await?;
    let mut path = vec!["mitigate".to_string(), format!("cuid={}", s.cuid())];
    path.extend(rest.iter().cloned());
    let (first, token) = s.observe(&path).await?;
    print_response(&first, json);
    loop {
        let wait = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(w) => w.min(every),
                None => return Ok(()),
            },
            None => every,
        };
        match s.notification(&token, wait).await? {
            Some(n) => {
                print_response(&n, json);
            }
            // Quiet for a heartbeat interval: tell the server we are here.
            None => {
                let r = s.heartbeat().await?;
                if !is_success(&r) {
                    bail!("heartbeat answered {}", code_text(&r));
                }
            }
        }
    }
}

async fn session_config_command(s: &mut Session, c: &ConfigCommand, json: bool) -> Result<()> {
    let (method, sid, body) = match c {
        ConfigCommand::Get { sid } => (RequestType::Get, *sid, None),
        ConfigCommand::Delete { sid } => (RequestType::Delete, Some(*sid), None),
        ConfigCommand::Set {
            sid,
            idle,
            heartbeat_interval,
            missing_hb_allowed,
            max_retransmit,
            ack_timeout,
            ack_random_factor,
            probing_rate,
        } => {
            let mut values = Vec::new();
            if let Some(v) = heartbeat_interval {
                values.push((33, *v as u64));
            }
            if let Some(v) = missing_hb_allowed {
                values.push((37, *v as u64));
            }
            if let Some(v) = max_retransmit {
                values.push((38, *v as u64));
            }
            if let Some(v) = ack_timeout {
                values.push((39, hundredths(*v, "--ack-timeout")?));
            }
            if let Some(v) = ack_random_factor {
                values.push((40, hundredths(*v, "--ack-random-factor")?));
            }
            if let Some(v) = probing_rate {
                values.push((50, *v as u64));
            }
            if values.is_empty() {
                bail!("name at least one parameter to set (e.g. --heartbeat-interval 60)");
            }
            (
                RequestType::Put,
                Some(*sid),
                Some(session_config::encode_put(*idle, &values)),
            )
        }
    };
    let mut path = vec!["config".to_string()];
    if let Some(sid) = sid {
        path.push(format!("sid={sid}"));
    }
    let r = s.request(method, &path, body, false).await?;
    if !print_response(&r, json) {
        std::process::exit(2);
    }
    Ok(())
}

fn hundredths(v: f64, what: &str) -> Result<u64> {
    if !(0.0..=1_000_000.0).contains(&v) {
        bail!("{what} {v} is out of range");
    }
    Ok((v * 100.0).round() as u64)
}

/// Prints a response as "code body" (or JSON); returns whether it was a success (2.xx).
fn print_response(resp: &coap_lite::Packet, json: bool) -> bool {
    let code = code_text(resp);
    let ok = is_success(resp);
    let body_text = if resp.payload.is_empty() {
        String::new()
    } else if matches!(
        resp.get_content_format(),
        Some(coap_lite::ContentFormat::ApplicationDotsCbor)
    ) {
        match crate::signal::cbor::parse_response(&resp.payload) {
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
