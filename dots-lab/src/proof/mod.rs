//! Hostile-conditions runs of the dots-agent server binary (bench-style commands: they print
//! figures; they are not CI tests): `dots-lab soak` (kill -9 during a PUT/DELETE stream with
//! XDP attached and an attack flowing), `dots-lab loss` (the signal channel under packet
//! loss), `dots-lab bounds` (sessions, handshake and slow-connection floods at once).
//!
//! Each builds the lab's three namespaces (`dproof<pid>-inet|scr|cust`, TEST-NET addresses
//! only), runs the server in the scrubber namespace with XDP on `scr-in`, and removes
//! namespaces, pins, processes and its state directory when it ends, also on Ctrl-C.
//!
//! - [`soak`], [`loss`], [`bounds`]: the three runs;
//! - here: the scratch space, the server process, the client's configuration, the
//!   process's memory and descriptors, /metrics, and summaries of samples.

pub mod bounds;
pub mod loss;
pub mod soak;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session, TransportChoice};
use dots_agent::datapath::XdpDatapath;
use dots_agent::signal::message::{self, Lifetime, Scope};

use crate::lab::topology::{self, interrupted, Netns, Topology};

/// The signal channel's address and port (the scrubber's customer-side address).
pub const SIGNAL_PORT: u16 = 4646;
pub const DATA_PORT: u16 = 4443;
pub const METRICS: &str = "127.0.0.1:9464";
pub const CLIENT: &str = "customer";

/// The namespaces, the server's state and pins: all removed on drop.
pub struct Scratch {
    pub topo: Topology,
    pub dir: PathBuf,
    pub pins: PathBuf,
    pub agent: PathBuf,
}

impl Scratch {
    /// Namespaces, certificates (`dots-agent pki init`, as a user makes them) and the
    /// server's configuration with `extra` appended to its `[signal]` table.
    pub fn new(agent: PathBuf, client_policy: &str, signal_extra: &str) -> Result<Scratch> {
        Self::with_sections("proof", agent, client_policy, signal_extra, "")
    }

    /// As [`Scratch::new`], named `d<tag><pid>` (namespaces), `dots-<tag>-<pid>` (state and
    /// pins), with whole `sections` (e.g. `[flowspec]`) added to server.toml.
    pub fn with_sections(
        tag: &str,
        agent: PathBuf,
        client_policy: &str,
        signal_extra: &str,
        sections: &str,
    ) -> Result<Scratch> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("this run needs root (network namespaces, XDP): run it with sudo");
        }
        topology::install_signal_handlers();
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("dots-{tag}-{pid}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let s = Scratch {
            topo: Topology::build(&format!("d{tag}{pid}"))?,
            dir,
            pins: PathBuf::from(format!("/sys/fs/bpf/dots-{tag}-{pid}")),
            agent,
        };
        let pki = std::process::Command::new(&s.agent)
            .args(["pki", "init", "--dir"])
            .arg(s.dir.join("pki"))
            .args([
                "--server-name",
                "dots.lab",
                "--server-ip",
                topology::SERVER_V4,
            ])
            .args(["--client", CLIENT])
            .output()
            .with_context(|| format!("running {} pki init", s.agent.display()))?;
        if !pki.status.success() {
            bail!(
                "dots-agent pki init: {}",
                String::from_utf8_lossy(&pki.stderr)
            );
        }
        let config = format!(
            "[signal]\nlisten = [\"{v4}:{SIGNAL_PORT}\"]\n{signal_extra}\n\
             [data]\nlisten = [\"{v4}:{DATA_PORT}\"]\n\
             [metrics]\nlisten = [\"{METRICS}\"]\n\
             [store]\ndir = \"store\"\n\
             [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\n\
             [datapath]\ninterfaces = [\"{scr_in}\"]\nxdp_mode = \"auto\"\npin_root = \"{pins}\"\n\
             {sections}\n\
             [[client]]\nname = \"{CLIENT}\"\nprefixes = [\"198.51.100.0/24\", \"2001:db8:6401::/48\"]\n\
             allow_indefinite = true\n{client_policy}\n",
            v4 = topology::SERVER_V4,
            scr_in = topology::SCR_IN,
            pins = s.pins.display(),
        );
        std::fs::write(s.dir.join("server.toml"), config)?;
        Ok(s)
    }

    pub fn client(&self, transport: TransportChoice) -> ClientConfig {
        let pki = self.dir.join("pki");
        ClientConfig {
            server: format!("{}:{SIGNAL_PORT}", topology::SERVER_V4),
            transport,
            server_name: "dots.lab".into(),
            tls: ClientTls {
                ca: pki.join("ca.pem"),
                cert: pki.join(format!("{CLIENT}.pem")),
                key: pki.join(format!("{CLIENT}.key")),
            },
        }
    }

    /// Starts `dots-agent server` in the scrubber namespace (log: server.log, appended).
    /// `nofile`: the soft descriptor limit it starts with (None: ours).
    pub fn start_server(&self, nofile: Option<u64>) -> Result<Server> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let mut cmd = self.topo.scrubber.command(&self.agent)?;
        cmd.args(["server", "--config"])
            .arg(self.dir.join("server.toml"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(n) = nofile {
            // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                    lim.rlim_cur = n.min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().context("starting dots-agent server")?;
        Ok(Server {
            child,
            started: Instant::now(),
        })
    }

    /// The last lines of the server's log (for error messages).
    pub fn server_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = XdpDatapath::purge(&self.pins);
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server process: killed (SIGKILL, by its pid) and reaped on drop.
pub struct Server {
    pub child: Child,
    pub started: Instant,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill9();
        }
    }
}

/// Runs `f` on a single-threaded runtime on a thread inside `ns`.
pub fn block_on<T: Send + 'static, F: std::future::Future<Output = T>>(
    ns: &Netns,
    f: impl FnOnce() -> F + Send + 'static,
) -> Result<T> {
    ns.run_in(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(f())
    })
}

/// Waits until the server answers a heartbeat over TLS (a bound socket alone does not
/// count); the time since it was started, or None after `budget`.
pub async fn until_answering(
    cfg: ClientConfig,
    started: Instant,
    budget: Duration,
) -> Option<Duration> {
    let cfg = ClientConfig {
        transport: TransportChoice::Tls,
        ..cfg
    };
    while started.elapsed() < budget && !interrupted() {
        let attempt = async {
            let mut s = Session::connect(&cfg).await?;
            s.heartbeat().await
        };
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            if code_text(&r) == "2.04" {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

pub fn mitigate_path(cuid: &str, mid: u32) -> Vec<String> {
    vec![
        "mitigate".into(),
        format!("cuid={cuid}"),
        format!("mid={mid}"),
    ]
}

/// PUT a mitigation of `target`; the response code text.
pub async fn put(s: &mut Session, mid: u32, target: ipnet::IpNet) -> Result<String> {
    let body =
        message::encode_mitigation_request(&Scope::new(vec![target], Lifetime::Seconds(3600)));
    let path = mitigate_path(s.cuid(), mid);
    let r = s
        .request(RequestType::Put, &path, Some(body), false)
        .await?;
    Ok(code_text(&r))
}

pub async fn delete(s: &mut Session, mid: u32) -> Result<String> {
    let path = mitigate_path(s.cuid(), mid);
    let r = s.request(RequestType::Delete, &path, None, false).await?;
    Ok(code_text(&r))
}

/// The client's mitigations as a GET of all of them shows them: (mid, status).
pub async fn held(s: &mut Session) -> Result<Vec<(u32, u64)>> {
    let path = vec!["mitigate".into(), format!("cuid={}", s.cuid())];
    let r = s.request(RequestType::Get, &path, None, false).await?;
    match code_text(&r).as_str() {
        "2.05" => {}
        "4.04" => return Ok(Vec::new()),
        other => bail!("GET of all mitigations: {other}"),
    }
    let v = dots_agent::signal::diag::to_json(
        &dots_agent::signal::cbor::parse_response(&r.payload)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let scopes = v["ietf-dots-signal-channel:mitigation-scope"]["scope"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(scopes
        .iter()
        .filter_map(|s| Some((s["mid"].as_u64()? as u32, s["status"].as_u64().unwrap_or(0))))
        .collect())
}

/// Statuses of a mitigation whose rules are in force (RFC 9132 §4.4.2: 1-4).
pub fn in_force(status: u64) -> bool {
    (1..=4).contains(&status)
}

/// Resident memory (KiB) and open descriptors of a process.
pub fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// GET /metrics from the server (in the scrubber namespace): the value of each sample
/// whose line starts with `name` (labels included), summed.
pub fn metric(ns: &Netns, name: &'static str) -> Result<f64> {
    let text = ns.run_in(|| -> Result<String> {
        let mut c =
            std::net::TcpStream::connect_timeout(&METRICS.parse()?, Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        Ok(out)
    })??;
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// `p50 / p99 / max` of samples, or "none".
pub fn summary(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "none".into();
    }
    let mut s = samples.to_vec();
    s.sort();
    let at = |p: f64| s[((s.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "p50 {} / p99 {} / max {}",
        human(at(0.5)),
        human(at(0.99)),
        human(*s.last().expect("not empty"))
    )
}

pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Wall-clock nanoseconds (what the attack frames carry and the receiver compares).
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A small deterministic generator for the runs' random choices (seeded from the clock
/// and printed, so a run can be repeated with `--seed`).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    /// xorshift64*: plenty for picking mids and delays.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Where the dots-agent binary is: `--agent`, else beside this executable.
pub fn agent(given: Option<&PathBuf>) -> Result<PathBuf> {
    crate::lab::agent_binary(given)
}
