//! `dots-agent server` and `dots-agent client`: the signal channel from the command line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use coap_lite::RequestType;
use ipnet::IpNet;
use serde_json::Value;

use super::exit::{usage, Exit};
use super::show;
use crate::client::{code_text, is_success, ClientConfig, Session};
use crate::datapath::PortRange;
use crate::signal::message::{self, Lifetime, Scope};
use crate::signal::session_config;

/// `dots-agent client`: what every client subcommand shares.
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// The client's configuration: server address and name, certificates (client.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Print each response as one JSON object on one line ({"code": "2.05", "body": {...}}).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the server: for each transport's handshake (auto tries DTLS,
    /// then TLS) and for each answer.
    #[arg(long, global = true, default_value = "10", value_parser = parse_timeout)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: ClientCommand,
}

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
        /// What the client sees now: the attack still arrives, or it is mitigated.
        #[arg(long, value_enum)]
        attack_status: AttackStatus,
        /// Attack traffic that still reaches you, in megabit/s (RFC 9244 efficacy
        /// telemetry, total-attack-traffic).
        #[arg(long)]
        attack_mbps: Option<u64>,
    },
    /// Show this client's mitigations (GET mitigate), or one.
    Status {
        /// Only this mitigation (default: all of this client's).
        #[arg(long)]
        mid: Option<u32>,
    },
    /// Follow the mitigations (GET with Observe): prints every notification, and while a
    /// mitigation is active its status with the drop counters every --interval seconds;
    /// waits for one that does not exist yet; heartbeats keep the session, broken sessions
    /// are reopened with backoff.
    Watch {
        /// Only this mitigation (default: all of this client's).
        #[arg(long)]
        mid: Option<u32>,
        /// Stop after this many seconds (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        /// Send a heartbeat after this many quiet seconds (the RFC 9132 default is 30).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=240))]
        heartbeat_every: u64,
        /// While a mitigation is active (status 1-5), read its status this often between
        /// notifications, in seconds (0: notifications only).
        #[arg(long, default_value = "5", value_parser = parse_interval)]
        interval: Duration,
    },
    /// Withdraw a mitigation (DELETE mitigate).
    Withdraw {
        /// The mitigation to withdraw (an unknown mid is answered 2.02 all the same).
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
    /// Runs until stopped (Ctrl-C, SIGTERM) unless --max-seconds; prints one JSON event per
    /// line.
    Guard {
        /// The interface whose receive rate is watched (the protected network's uplink).
        #[arg(short, long)]
        interface: String,
        /// Received packets per second that trigger a request.
        #[arg(long)]
        threshold_pps: u64,
        /// Target prefix to protect (repeatable).
        #[arg(long = "target", required = true)]
        targets: Vec<IpNet>,
        /// The mitigation id the guard requests and withdraws.
        #[arg(long, default_value_t = 1)]
        mid: u32,
        /// Lifetime of the request in seconds (a guard stopped mid-attack leaves it to run
        /// out).
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u32).range(1..))]
        lifetime: u32,
        /// Withdraw once the attack has been gone this many seconds.
        #[arg(long, default_value = "10", value_parser = parse_seconds)]
        quiet_seconds: Duration,
        /// Sampling interval in seconds.
        #[arg(long, default_value = "0.5", value_parser = parse_seconds)]
        sample_seconds: Duration,
        /// Stop after this many seconds, withdrawing first if needed (default: run until
        /// stopped).
        #[arg(long, value_parser = parse_seconds)]
        max_seconds: Option<Duration>,
        /// Exit after the first withdrawal.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Show the limits and current values (or one configuration by sid).
    Get {
        /// The configuration this client set (default: the server's limits and values).
        #[arg(long)]
        sid: Option<u32>,
    },
    /// Set parameters (a new, higher sid each time you change them).
    Set {
        /// Session configuration id: higher than the last one set.
        #[arg(long)]
        sid: u32,
        /// Set the idle configuration instead of the mitigating one.
        #[arg(long)]
        idle: bool,
        /// Seconds between heartbeats (0 disables them).
        #[arg(long)]
        heartbeat_interval: Option<u16>,
        /// Heartbeats that may go unanswered before the session is lost.
        #[arg(long)]
        missing_hb_allowed: Option<u16>,
        /// Retransmissions of a confirmable message (DTLS).
        #[arg(long)]
        max_retransmit: Option<u16>,
        /// Seconds before the first retransmission (DTLS), two decimals.
        #[arg(long, value_parser = parse_hundredths)]
        ack_timeout: Option<u64>,
        /// Random factor applied to --ack-timeout (DTLS), two decimals.
        #[arg(long, value_parser = parse_hundredths)]
        ack_random_factor: Option<u64>,
        /// Bytes per second a peer may send to one that does not answer.
        #[arg(long)]
        probing_rate: Option<u16>,
    },
    /// Back to the server's defaults.
    Delete {
        /// The configuration to remove.
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
    #[arg(long, default_value = "3600", allow_hyphen_values = true, value_parser = parse_lifetime)]
    lifetime: Lifetime,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AttackStatus {
    UnderAttack,
    Mitigated,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        let mut scope = Scope::new(self.targets.clone(), self.lifetime);
        scope.target_port_range = self.ports.clone();
        scope.target_protocol = self.protocols.clone();
        scope.alias_name = self.aliases.clone();
        scope
    }
}

fn parse_lifetime(s: &str) -> std::result::Result<Lifetime, String> {
    match s.parse::<i64>() {
        Ok(-1) => Ok(Lifetime::Indefinite),
        Ok(n) if n > 0 && n <= u32::MAX as i64 => Ok(Lifetime::Seconds(n as u32)),
        _ => Err(format!(
            "{s}: use a positive number of seconds or -1 (until withdrawn); withdraw to end one"
        )),
    }
}

/// Seconds as a decimal number within `range`.
fn seconds_in(
    s: &str,
    range: std::ops::RangeInclusive<f64>,
) -> std::result::Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if range.contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s}: use a number of seconds between {} and {}",
            range.start(),
            range.end()
        )),
    }
}

fn parse_seconds(s: &str) -> std::result::Result<Duration, String> {
    seconds_in(s, 0.01..=86_400.0)
}

fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    seconds_in(s, 0.1..=3_600.0)
}

fn parse_interval(s: &str) -> std::result::Result<Duration, String> {
    seconds_in(s, 0.0..=86_400.0)
}

/// A decimal with two digits (RFC 9132 decimal64 fraction-digits 2) as hundredths.
fn parse_hundredths(s: &str) -> std::result::Result<u64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1_000_000.0).contains(&v) => Ok((v * 100.0).round() as u64),
        _ => Err(format!(
            "{s}: use a number between 0 and 1000000 (two decimals)"
        )),
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

/// Takes over SIGINT (Ctrl-C) and SIGTERM (systemd, kill) at once, so that one arriving
/// before the future is first polled is not fatal; the future gives the name of the first.
/// Needs the runtime's context.
pub fn stop_signal() -> Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}

pub fn run_client(args: ClientArgs) -> Result<Exit> {
    let ClientArgs {
        config,
        json,
        timeout,
        command: cmd,
    } = args;
    let cfg = ClientConfig::load(&config)?;
    if let ClientCommand::Data(args) = cmd {
        return super::data::run(cfg, json, timeout, args);
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
        let opts = crate::client::guard::GuardOptions {
            interface,
            threshold_pps,
            quiet: quiet_seconds,
            targets,
            mid,
            lifetime,
            sample: sample_seconds,
            max: max_seconds,
            once,
            timeout,
        };
        rt.block_on(async {
            let stop = stop_signal()?;
            crate::client::guard::run(&cfg, &opts, stop).await
        })?;
        return Ok(Exit::Ok);
    }
    rt.block_on(async move {
        if let ClientCommand::Watch {
            mid,
            seconds,
            heartbeat_every,
            interval,
        } = &cmd
        {
            let deadline = (*seconds > 0).then(|| Instant::now() + Duration::from_secs(*seconds));
            let w = Watcher {
                cfg: &cfg,
                mid: *mid,
                deadline,
                heartbeat_every: Duration::from_secs(*heartbeat_every),
                interval: *interval,
                json,
                timeout,
                started: Instant::now(),
            };
            return w.run().await;
        }
        let mut s = Session::connect_within(&cfg, timeout).await?;
        let cuid = format!("cuid={}", s.cuid());
        let mitigate = |mid: u32| vec!["mitigate".to_string(), cuid.clone(), format!("mid={mid}")];
        let (method, path, body, efficacy) = match &cmd {
            ClientCommand::Mitigate {
                scope,
                on_signal_loss,
            } => {
                let mut sc = scope.scope();
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
                let mut sc = scope.scope();
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
            ClientCommand::Status { mid } => {
                (RequestType::Get, status_path(&cuid, *mid), None, false)
            }
            ClientCommand::Withdraw { mid } => (RequestType::Delete, mitigate(*mid), None, false),
            ClientCommand::Config(c) => return session_config_command(&mut s, c, json).await,
            ClientCommand::Telemetry(t) => {
                let r = super::telemetry::run(&mut s, t).await?;
                return Ok(show::response(&r, json));
            }
            ClientCommand::Watch { .. } | ClientCommand::Guard { .. } | ClientCommand::Data(_) => {
                unreachable!("handled above")
            }
        };
        let resp = s.request(method, &path, body, efficacy).await?;
        Ok(show::response(&resp, json))
    })
}

/// `mitigate/cuid=C[/mid=N]`.
fn status_path(cuid: &str, mid: Option<u32>) -> Vec<String> {
    let mut p = vec!["mitigate".to_string(), cuid.to_string()];
    p.extend(mid.map(|m| format!("mid={m}")));
    p
}

/// `client watch`: what to follow, how often, and where output goes.
struct Watcher<'a> {
    cfg: &'a ClientConfig,
    mid: Option<u32>,
    deadline: Option<Instant>,
    heartbeat_every: Duration,
    /// How often to read the status while a mitigation is active (zero: never).
    interval: Duration,
    json: bool,
    timeout: Duration,
    started: Instant,
}

/// Statuses during which the filter holds the targets and the counters move (RFC 9132
/// §4.4.2: in progress, mitigated, attack stopped, exceeded capability, terminating).
fn any_active(resp: &coap_lite::Packet) -> bool {
    show::body_json(resp)
        .and_then(|b| {
            b["ietf-dots-signal-channel:mitigation-scope"]["scope"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .any(|s| matches!(s["status"].as_u64(), Some(1..=5)))
                })
        })
        .unwrap_or(false)
}

impl Watcher<'_> {
    /// Follows notifications until the deadline, reconnecting with exponential backoff
    /// (1 s doubling to 60 s) when the session breaks.
    async fn run(&self) -> Result<Exit> {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.once().await {
                Ok(exit) => return Ok(exit),
                Err(e) => {
                    if self.deadline.is_some_and(|d| Instant::now() + backoff >= d) {
                        return Err(e);
                    }
                    eprintln!("watch: {e:#}; reconnecting in {} s", backoff.as_secs());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Prints one response: a JSON line with when and why it came, or a line for people
    /// prefixed with the seconds since the watch started.
    fn print(&self, resp: &coap_lite::Packet, source: &str) {
        if self.json {
            let mut v = show::json_of(resp);
            if let Value::Object(o) = &mut v {
                o.insert("source".into(), source.into());
                o.insert("unix_ms".into(), crate::client::guard::unix_ms().into());
            }
            println!("{v}");
        } else {
            let at = self.started.elapsed().as_secs_f64();
            println!("[{at:7.1} s] {}", show::human(resp));
        }
    }

    async fn once(&self) -> Result<Exit> {
        let mut s = Session::connect_within(self.cfg, self.timeout).await?;
        let path = status_path(&format!("cuid={}", s.cuid()), self.mid);
        let (mut first, mut token) = s.observe(&path).await?;
        self.print(&first, "response");
        // Nothing to follow yet (4.04: no mitigation, or not this mid): ask again on the same
        // session (which keeps it alive) and observe once there is something.
        while code_text(&first) == "4.04" {
            let wait = if self.interval.is_zero() {
                self.heartbeat_every
            } else {
                self.interval
            };
            if let Some(d) = self.deadline {
                if Instant::now() + wait >= d {
                    tokio::time::sleep(d.saturating_duration_since(Instant::now())).await;
                    return Ok(Exit::Ok);
                }
            }
            tokio::time::sleep(wait).await;
            let r = s.request(RequestType::Get, &path, None, false).await?;
            if is_success(&r) {
                (first, token) = s.observe(&path).await?;
                self.print(&first, "response");
            } else if code_text(&r) != "4.04" {
                self.print(&r, "poll");
                return Ok(show::exit_of(&r));
            }
        }
        if !is_success(&first) {
            return Ok(show::exit_of(&first));
        }
        let mut active = any_active(&first);
        let mut last_sent = Instant::now();
        let mut last_poll = Instant::now();
        loop {
            let now = Instant::now();
            let mut wake = last_sent + self.heartbeat_every;
            let polling = active && !self.interval.is_zero();
            if polling {
                wake = wake.min(last_poll + self.interval);
            }
            if let Some(d) = self.deadline {
                if now >= d {
                    return Ok(Exit::Ok);
                }
                wake = wake.min(d);
            }
            match s
                .notification(&token, wake.saturating_duration_since(now))
                .await?
            {
                Some(n) => {
                    active = any_active(&n);
                    last_poll = Instant::now();
                    self.print(&n, "notification");
                }
                None if polling && Instant::now() >= last_poll + self.interval => {
                    let r = s.request(RequestType::Get, &path, None, false).await?;
                    active = any_active(&r);
                    last_sent = Instant::now();
                    last_poll = last_sent;
                    self.print(&r, "poll");
                }
                // Quiet for a heartbeat interval: tell the server we are here.
                None if Instant::now() >= last_sent + self.heartbeat_every => {
                    let r = s.heartbeat().await?;
                    last_sent = Instant::now();
                    if !is_success(&r) {
                        anyhow::bail!("heartbeat answered {}", code_text(&r));
                    }
                }
                None => {}
            }
        }
    }
}

async fn session_config_command(s: &mut Session, c: &ConfigCommand, json: bool) -> Result<Exit> {
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
            let values: Vec<(u64, u64)> = [
                (33, heartbeat_interval.map(u64::from)),
                (37, missing_hb_allowed.map(u64::from)),
                (38, max_retransmit.map(u64::from)),
                (39, *ack_timeout),
                (40, *ack_random_factor),
                (50, probing_rate.map(u64::from)),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
            if values.is_empty() {
                return Err(usage(
                    "name at least one parameter to set (e.g. --heartbeat-interval 60)",
                ));
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
    Ok(show::response(&r, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_when_parsed() {
        assert_eq!(parse_lifetime("-1"), Ok(Lifetime::Indefinite));
        assert_eq!(parse_lifetime("60"), Ok(Lifetime::Seconds(60)));
        assert!(parse_lifetime("0").unwrap_err().contains("positive"));
        assert!(parse_lifetime("-2").is_err());
        assert_eq!(parse_hundredths("2.5"), Ok(250));
        assert!(parse_hundredths("-1").is_err());
        assert!(parse_timeout("0").is_err());
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert!(parse_port_range("90-80").is_err());
    }
}
