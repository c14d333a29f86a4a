//! `dots-lab divert`: diversion and re-injection with the loop closed, in namespaces of its
//! own (`ddiv<pid>-src|border|scr|cust`, TEST-NET and 2001:db8:: addresses only):
//!
//! ```text
//!  src (users, attackers) -- border (bird2) ------------------------------ customer
//!  203.0.113.1              203.0.113.2 | 203.0.113.5                      203.0.113.6
//!                                       | 192.0.2.1, 2001:db8:ff::1          198.51.100.10 (lo)
//!                                       |                                   tunnel end 192.0.2.10
//!                           scrubber (dots-agent server, XDP on s-bdr, gobgpd)
//!                           192.0.2.2, 2001:db8:ff::2; tunnel to the customer 192.0.2.9
//! ```
//!
//! The border routes 198.51.100.0/24 to the customer directly and peers (eBGP) with the
//! scrubber's gobgpd, installing what it learns in its kernel table. The scrubber routes
//! the customer's prefixes into a tunnel whose outer packets are addressed to the
//! customer's tunnel end (not diverted), so they cross the border without looping. The
//! tunnel is GRE where the kernel has it, else VXLAN (this project's kernel lacks GRE);
//! the agent only checks that the route leaves through it. Phases, each with the same
//! traffic (legitimate UDP, and NTP-reflection UDP from port 123 that the policy drops)
//! counted at the customer by the way it came: before the mitigation, during it (after
//! the 2.01 and the border's route to the scrubber), with gobgpd killed and restarted,
//! and after the withdrawal and the terminating period.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use coap_lite::RequestType;
use dots_agent::af_packet::{flow_of, PacketSocket};
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session, TransportChoice};
use dots_agent::datapath::XdpDatapath;
use dots_agent::signal::message::{self, Lifetime, Scope};
use serde::Serialize;

use super::topology::{install_signal_handlers, interrupted, Netns, Proc};

#[derive(Args, Debug)]
pub struct DivertArgs {
    /// Legitimate and attack packets sent in each phase (each kind).
    #[arg(long, default_value_t = 200)]
    pub packets: u32,
    /// The dots-agent binary (default: the one beside dots-lab).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Print the report as JSON too.
    #[arg(long)]
    pub json: bool,
}

const SERVER: &str = "192.0.2.2";
const SERVER_V6: &str = "2001:db8:ff::2";
const BORDER: &str = "192.0.2.1";
const SOURCE: &str = "203.0.113.1";
const CUSTOMER_END: &str = "203.0.113.6";
const TARGET: &str = "198.51.100.10";
const TUNNEL: &str = "tun-cust";
const TERMINATING: u64 = 3;
/// A prefix of the customer's without a re-injection route (the scrubber's kernel sends
/// it back to the border): its mitigation filters here but is not diverted.
const UNTUNNELLED: &str = "192.0.2.128/25";
const REFUSED_METRIC: &str =
    "dots_diversion_refused{client=\"customer\",reason=\"no-reinjection-route\"}";
const LEGIT_PORT: u16 = 40000;
const ATTACK_PORT: u16 = 123;
/// Longest wait for a route or a daemon; a bound, not a measurement.
const WAIT: Duration = Duration::from_secs(60);

/// What the customer received in one phase, by path and kind.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Delivered {
    pub direct_legit: u64,
    pub direct_attack: u64,
    pub tunnel_legit: u64,
    pub tunnel_attack: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    pub name: String,
    /// The border's route to the target (`ip route get`: "via ADDR dev IF").
    pub border_route: String,
    pub sent_each: u32,
    pub delivered: Delivered,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DivertReport {
    /// GRE or VXLAN.
    pub tunnel: String,
    pub phases: Vec<Phase>,
    /// The border's diversion routes after the 2.01 (`ip route show proto bird`).
    pub border_routes: Vec<String>,
    /// bird's view of one route (`birdc show route all`): next hop and communities.
    pub bird_route: String,
    pub answer_put: String,
    pub answer_delete: String,
    /// Packets the DOTS status counts as dropped at the end of the mitigation.
    pub status_dropped: u64,
    /// A mitigation of [`UNTUNNELLED`]: its answer, the refusal counted in /metrics, and
    /// whether the border got a route for it.
    pub untunnelled_answer: String,
    pub untunnelled_refused: f64,
    pub untunnelled_at_border: bool,
    /// What the server logged about diversion (its start check's notes, refusals).
    pub server_log: Vec<String>,
    /// From the DOTS 2.01 to the diversion route in the border's kernel table.
    pub divert_ms: u64,
    /// From a restarted gobgpd to the route back in the border's kernel.
    pub reannounce_ms: u64,
    /// From the 2.02 to the border's route gone (the terminating period included).
    pub withdraw_ms: u64,
}

/// The namespaces, daemons, pins and state: all removed on drop (in this order: processes,
/// then pins and files, then the namespaces).
struct Setup {
    procs: Vec<Proc>,
    dir: PathBuf,
    pins: PathBuf,
    src: Netns,
    border: Netns,
    scrubber: Netns,
    customer: Netns,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = XdpDatapath::purge(&self.pins);
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    crate::lab::topology::run(
        "ip",
        &[
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ],
    )?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

fn addrs(ns: &Netns, dev: &str, list: &[&str]) -> Result<()> {
    for a in list {
        let mut args = vec!["addr", "add", a, "dev", dev];
        if a.contains(':') {
            args.push("nodad");
        }
        ns.ip(&args)?;
    }
    Ok(())
}

impl Setup {
    fn build(agent: &std::path::Path) -> Result<(Setup, String)> {
        let pid = std::process::id();
        let tag = format!("ddiv{pid}");
        let dir = std::env::temp_dir().join(format!("dots-divert-{pid}"));
        std::fs::create_dir_all(&dir)?;
        let s = Setup {
            procs: Vec::new(),
            pins: PathBuf::from(format!("/sys/fs/bpf/dots-divert-{pid}")),
            src: Netns::create(format!("{tag}-src"))?,
            border: Netns::create(format!("{tag}-border"))?,
            scrubber: Netns::create(format!("{tag}-scr"))?,
            customer: Netns::create(format!("{tag}-cust"))?,
            dir,
        };
        veth(&s.src, "src0", &s.border, "b-src")?;
        veth(&s.border, "b-scr", &s.scrubber, "s-bdr")?;
        veth(&s.border, "b-cust", &s.customer, "c-bdr")?;
        addrs(&s.src, "src0", &["203.0.113.1/30"])?;
        addrs(&s.border, "b-src", &["203.0.113.2/30"])?;
        addrs(&s.border, "b-scr", &["192.0.2.1/29", "2001:db8:ff::1/64"])?;
        addrs(&s.scrubber, "s-bdr", &["192.0.2.2/29", "2001:db8:ff::2/64"])?;
        addrs(&s.border, "b-cust", &["203.0.113.5/30"])?;
        addrs(&s.customer, "c-bdr", &["203.0.113.6/30"])?;
        addrs(
            &s.customer,
            "lo",
            &["198.51.100.10/32", "2001:db8:6401::10/128"],
        )?;
        s.src
            .ip(&["route", "add", "default", "via", "203.0.113.2"])?;
        s.customer
            .ip(&["route", "add", "default", "via", "203.0.113.5"])?;
        s.scrubber.ip(&["route", "add", "default", "via", BORDER])?;
        // The customer's own route at the border: diversion has to beat it.
        s.border
            .ip(&["route", "add", "198.51.100.0/24", "via", CUSTOMER_END])?;
        for ns in [&s.border, &s.scrubber, &s.customer] {
            for (k, v) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ] {
                ns.sysctl(k, v)?;
            }
        }
        let tunnel = s.tunnel()?;
        // The scrubber's re-injection routes: the customer's prefixes into the tunnel.
        s.scrubber.ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.10",
            "dev",
            TUNNEL,
        ])?;
        s.scrubber.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:6401::/48",
            "via",
            "2001:db8:fe::2",
            "dev",
            TUNNEL,
        ])?;
        s.write_configs(agent)?;
        Ok((s, tunnel))
    }

    /// The re-injection tunnel between the scrubber and the customer: GRE (an L3 tunnel
    /// with Ethernet-less frames on AF_PACKET) if the kernel has it, else VXLAN.
    fn tunnel(&self) -> Result<String> {
        let gre = |ns: &Netns, local: &str, remote: &str| {
            ns.ip(&[
                "link", "add", TUNNEL, "type", "gre", "local", local, "remote", remote, "ttl", "64",
            ])
        };
        let kind = if gre(&self.scrubber, SERVER, CUSTOMER_END).is_ok() {
            gre(&self.customer, CUSTOMER_END, SERVER)?;
            "GRE"
        } else {
            let vxlan = |ns: &Netns, local: &str, remote: &str| {
                ns.ip(&[
                    "link", "add", TUNNEL, "type", "vxlan", "id", "100", "local", local, "remote",
                    remote, "dstport", "4789",
                ])
            };
            vxlan(&self.scrubber, SERVER, CUSTOMER_END)?;
            vxlan(&self.customer, CUSTOMER_END, SERVER)?;
            "VXLAN"
        };
        addrs(
            &self.scrubber,
            TUNNEL,
            &["192.0.2.9/30", "2001:db8:fe::1/64"],
        )?;
        addrs(
            &self.customer,
            TUNNEL,
            &["192.0.2.10/30", "2001:db8:fe::2/64"],
        )?;
        for ns in [&self.scrubber, &self.customer] {
            ns.ip(&["link", "set", TUNNEL, "up"])?;
            ns.sysctl(&format!("net.ipv4.conf.{TUNNEL}.rp_filter"), "0")?;
        }
        Ok(kind.into())
    }

    fn write_configs(&self, agent: &std::path::Path) -> Result<()> {
        super::harness::pki_init(
            agent,
            &self.dir,
            &[
                "--server-name",
                "dots.lab",
                "--server-ip",
                SERVER,
                "--client",
                "customer",
            ],
        )?;
        std::fs::write(
            self.dir.join("server.toml"),
            format!(
                "[signal]\nlisten = [\"{SERVER}:4646\"]\nterminating_seconds = {TERMINATING}\n\
                 [store]\ndir = \"store\"\n\
                 [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\n\
                 [datapath]\ninterfaces = [\"s-bdr\"]\nxdp_mode = \"auto\"\npin_root = \"{pins}\"\n\
                 [metrics]\nlisten = [\"127.0.0.1:9464\"]\n\
                 [diversion]\nnext_hop_v4 = \"{SERVER}\"\nnext_hop_v6 = \"{SERVER_V6}\"\n\
                 community = \"64512:666\"\nno_export = true\nmore_specific_v4 = 25\n\
                 reinject_via = [\"{TUNNEL}\"]\nresync_seconds = 1\n\
                 [[client]]\nname = \"customer\"\nprefixes = [\"198.51.100.0/24\", \"2001:db8:6401::/48\", \"{UNTUNNELLED}\"]\n",
                pins = self.pins.display()
            ),
        )?;
        std::fs::write(
            self.dir.join("gobgpd.toml"),
            format!(
                "[global.config]\n  as = 64512\n  router-id = \"{SERVER}\"\n  local-address-list = [\"{SERVER}\"]\n\
                 [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{BORDER}\"\n    peer-as = 64513\n\
                 \x20 [neighbors.timers.config]\n    connect-retry = 1\n\
                 \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n\
                 \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n"
            ),
        )?;
        // The border router: what it learns from the scrubber goes into its kernel table.
        std::fs::write(
            self.dir.join("bird.conf"),
            format!(
                "router id {BORDER};\nprotocol device {{ }}\n\
                 protocol kernel {{ ipv4 {{ export all; }}; }}\n\
                 protocol kernel {{ ipv6 {{ export all; }}; }}\n\
                 protocol bgp scrubber {{\n  local {BORDER} as 64513;\n  neighbor {SERVER} as 64512;\n\
                 \x20 connect retry time 1;\n  error wait time 1, 2;\n\
                 \x20 ipv4 {{ import all; export none; }};\n  ipv6 {{ import all; export none; }};\n}}\n"
            ),
        )?;
        Ok(())
    }

    fn start(
        &mut self,
        ns: Which,
        name: &'static str,
        program: &std::path::Path,
        args: &[&str],
    ) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let ns = match ns {
            Which::Border => &self.border,
            Which::Scrubber => &self.scrubber,
        };
        let child = ns
            .command(program)?
            .args(args)
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (scripts/setup.sh installs it)",
                    program.display()
                )
            })?;
        self.procs.push(Proc { name, child });
        Ok(())
    }

    fn start_gobgpd(&mut self) -> Result<()> {
        let conf = self.dir.join("gobgpd.toml");
        let conf = conf
            .to_str()
            .context("a UTF-8 temporary directory")?
            .to_string();
        self.start(
            Which::Scrubber,
            "gobgpd",
            std::path::Path::new("gobgpd"),
            &[
                "-f",
                &conf,
                "-p",
                "--api-hosts",
                "127.0.0.1:50051",
                "--pprof-disable",
            ],
        )
    }

    /// kill -9 (a crash, as far as its peers can tell), by its pid.
    fn kill(&mut self, name: &str) {
        for p in self.procs.iter_mut().filter(|p| p.name == name) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.procs.retain(|p| p.name != name);
    }

    fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    fn client(&self) -> ClientConfig {
        let pki = self.dir.join("pki");
        ClientConfig {
            server: format!("{SERVER}:4646"),
            transport: TransportChoice::Dtls,
            server_name: "dots.lab".into(),
            tls: ClientTls {
                ca: pki.join("ca.pem"),
                cert: pki.join("customer.pem"),
                key: pki.join("customer.key"),
            },
        }
    }

    /// The border's route to the target, as "via ADDR dev IF".
    fn border_route(&self) -> Result<String> {
        let out = self.border.ip(&["-j", "route", "get", TARGET])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(format!(
            "via {} dev {}",
            v[0]["gateway"].as_str().unwrap_or("-"),
            v[0]["dev"].as_str().unwrap_or("-")
        ))
    }

    /// Routes bird installed in the border's kernel (both families).
    fn bird_routes(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let text = self.border.ip(&[fam, "route", "show", "proto", "bird"])?;
            out.extend(text.lines().map(|l| l.trim().to_string()));
        }
        Ok(out)
    }

    /// Sends `n` legitimate and `n` attack datagrams from the source and counts what
    /// reaches the customer, by path.
    fn traffic(&self, name: &str, n: u32) -> Result<Phase> {
        let direct = count(&self.customer, "c-bdr", true)?;
        let tunnel = count(&self.customer, TUNNEL, self.tunnel_has_ethernet()?)?;
        std::thread::sleep(Duration::from_millis(300));
        self.src.run_in(move || -> Result<()> {
            let legit = UdpSocket::bind((SOURCE, LEGIT_PORT))?;
            let attack = UdpSocket::bind((SOURCE, ATTACK_PORT))?;
            for i in 0..n {
                legit.send_to(format!("legit {i}").as_bytes(), (TARGET, 443))?;
                attack.send_to(&[0u8; 200], (TARGET, 443))?;
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(())
        })??;
        let (dl, da) = direct
            .join()
            .map_err(|_| anyhow::anyhow!("the receiver panicked"))??;
        let (tl, ta) = tunnel
            .join()
            .map_err(|_| anyhow::anyhow!("the receiver panicked"))??;
        Ok(Phase {
            name: name.into(),
            border_route: self.border_route()?,
            sent_each: n,
            delivered: Delivered {
                direct_legit: dl,
                direct_attack: da,
                tunnel_legit: tl,
                tunnel_attack: ta,
            },
        })
    }

    fn tunnel_has_ethernet(&self) -> Result<bool> {
        Ok(self
            .customer
            .ip(&["-d", "link", "show", TUNNEL])?
            .contains("link/ether"))
    }
}

enum Which {
    Border,
    Scrubber,
}

/// Counts UDP datagrams to the target on `dev` of `ns` for 2.5 s: (legitimate, attack).
/// An L3 tunnel (GRE) hands AF_PACKET bare IP packets: an Ethernet header is put in front.
fn count(
    ns: &Netns,
    dev: &'static str,
    ethernet: bool,
) -> Result<std::thread::JoinHandle<Result<(u64, u64)>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || -> Result<(u64, u64)> {
        let sock = PacketSocket::open(dev).with_context(|| format!("AF_PACKET on {dev}"))?;
        sock.set_receive_timeout(Duration::from_millis(100))?;
        let _ = tx.send(());
        let target: std::net::IpAddr = TARGET.parse()?;
        let (mut legit, mut attack) = (0, 0);
        let mut buf = vec![0u8; 2048];
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(2500) {
            let off = if ethernet { 0 } else { 14 };
            let Some(r) = sock.recv(&mut buf[off..])? else {
                continue;
            };
            if r.outgoing {
                continue;
            }
            if !ethernet {
                buf[12..14].copy_from_slice(&[0x08, 0x00]);
            }
            let Some(f) = flow_of(&buf[..(r.len + off).min(buf.len())]) else {
                continue;
            };
            if f.dst == target && f.proto == 17 {
                match f.sport {
                    ATTACK_PORT => attack += 1,
                    LEGIT_PORT => legit += 1,
                    _ => {}
                }
            }
        }
        Ok((legit, attack))
    })?;
    rx.recv_timeout(Duration::from_secs(5))
        .context("the receiver did not start")?;
    Ok(h)
}

/// Polls `f` every 20 ms until it gives Some (bounded by [`WAIT`] and Ctrl-C).
fn wait<T>(what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if started.elapsed() > WAIT || interrupted() {
            bail!("{what}: not within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request on a fresh DTLS session from the customer: its code, and for a GET the
/// packets the status counts as dropped.
fn request(s: &Setup, method: RequestType, mid: u32, targets: &[&str]) -> Result<(String, u64)> {
    let cfg = s.client();
    let targets = targets
        .iter()
        .map(|t| t.parse().context("a target prefix"))
        .collect::<Result<Vec<_>>>()?;
    let body = (method == RequestType::Put)
        .then(|| message::encode_mitigation_request(&Scope::new(targets, Lifetime::Seconds(3600))));
    crate::proof::block_on(&s.customer, move || async move {
        let mut session = None;
        for _ in 0..100 {
            if let Ok(c) = Session::connect(&cfg).await {
                session = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut c = session.context("no DOTS session with the server within 20 s")?;
        let path = crate::proof::mitigate_path(c.cuid(), mid);
        let r = c.request(method, &path, body, false).await?;
        let mut dropped = 0;
        if method == RequestType::Get && code_text(&r) == "2.05" {
            let v = dots_agent::signal::diag::to_json(
                &dots_agent::signal::cbor::parse_response(&r.payload)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
            dropped = v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["pkts-dropped"]
                .as_u64()
                .unwrap_or(0);
        }
        Ok((code_text(&r), dropped))
    })?
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs the whole scenario; everything it made is removed when it returns.
pub fn run(args: &DivertArgs) -> Result<DivertReport> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this run needs root (network namespaces, XDP): run it with sudo");
    }
    install_signal_handlers();
    // Absolute: the processes start in the run's directory.
    let agent = std::fs::canonicalize(super::agent_binary(args.agent.as_ref())?)?;
    let (mut s, tunnel) = Setup::build(&agent)?;
    let mut report = DivertReport {
        tunnel,
        ..Default::default()
    };
    let dir = s.dir.clone();
    let path = |f: &str| {
        dir.join(f)
            .to_str()
            .map(String::from)
            .context("a UTF-8 path")
    };
    s.start_gobgpd()?;
    s.start(
        Which::Border,
        "bird",
        std::path::Path::new("bird"),
        &["-f", "-c", &path("bird.conf")?, "-s", &path("bird.ctl")?],
    )?;
    s.start(
        Which::Scrubber,
        "server",
        &agent,
        &["server", "--config", &path("server.toml")?],
    )?;
    let birdc = |what: &str| -> String {
        let mut a = vec![
            "-s".to_string(),
            path("bird.ctl").unwrap_or_default(),
            "show".into(),
        ];
        a.extend(what.split_whitespace().map(String::from));
        std::process::Command::new("birdc")
            .args(&a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    wait("the border's BGP session with the scrubber", || {
        Ok(birdc("protocols scrubber")
            .contains("Established")
            .then_some(()))
    })
    .with_context(|| s.log_tail("bird"))?;

    // The server answers (its XDP filter attached) before any traffic is counted.
    request(&s, RequestType::Get, 1, &[]).with_context(|| s.log_tail("server"))?;
    report.phases.push(s.traffic("before", args.packets)?);

    let (code, _) = request(
        &s,
        RequestType::Put,
        1,
        &["198.51.100.0/24", "2001:db8:6401::/48"],
    )
    .with_context(|| s.log_tail("server"))?;
    let asked = Instant::now();
    report.answer_put = code;
    wait("the diversion route in the border's kernel", || {
        Ok((s.bird_routes()?.len() >= 3).then_some(()))
    })
    .with_context(|| s.log_tail("server"))?;
    report.divert_ms = ms(asked.elapsed());
    report.border_routes = s.bird_routes()?;
    report.bird_route = birdc("route 198.51.100.0/25 all")
        .lines()
        .filter(|l| !l.starts_with("BIRD") && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    report.phases.push(s.traffic("mitigating", args.packets)?);

    // A target whose scrubbed traffic would go back to the border: filtered, not diverted.
    report.untunnelled_answer = request(&s, RequestType::Put, 2, &[UNTUNNELLED])?.0;
    report.untunnelled_refused = wait("the refusal counted in /metrics", || {
        let n = crate::proof::metric(&s.scrubber, REFUSED_METRIC)?;
        Ok((n > 0.0).then_some(n))
    })?;
    report.untunnelled_at_border = s.bird_routes()?.iter().any(|r| r.starts_with(UNTUNNELLED));
    request(&s, RequestType::Delete, 2, &[])?;

    // gobgpd killed -9 and restarted: it has forgotten the routes; the diverter announces
    // them again.
    s.kill("gobgpd");
    wait("the border without the scrubber's routes", || {
        Ok(s.bird_routes()?.is_empty().then_some(()))
    })?;
    let restarted = Instant::now();
    s.start_gobgpd()?;
    wait("the diversion route back after gobgpd's restart", || {
        Ok((s.bird_routes()?.len() >= 3).then_some(()))
    })
    .with_context(|| s.log_tail("server"))?;
    report.reannounce_ms = ms(restarted.elapsed());
    report
        .phases
        .push(s.traffic("gobgpd restarted", args.packets)?);
    report.status_dropped = request(&s, RequestType::Get, 1, &[])?.1;

    let (code, _) = request(&s, RequestType::Delete, 1, &[])?;
    let withdrawn = Instant::now();
    report.answer_delete = code;
    wait("the diversion route gone from the border", || {
        Ok(s.bird_routes()?.is_empty().then_some(()))
    })?;
    report.withdraw_ms = ms(withdrawn.elapsed());
    report.phases.push(s.traffic("withdrawn", args.packets)?);
    let log = std::fs::read_to_string(s.dir.join("server.log")).unwrap_or_default();
    report.server_log = log
        .lines()
        .filter(|l| l.contains("diversion"))
        .map(String::from)
        .collect();
    Ok(report)
}

pub fn print(r: &DivertReport) {
    println!("re-injection tunnel: {}", r.tunnel);
    println!(
        "mitigation request (198.51.100.0/24, 2001:db8:6401::/48): {}",
        r.answer_put
    );
    println!(
        "border's kernel routes from bird, {} ms after the 2.01:",
        r.divert_ms
    );
    for l in &r.border_routes {
        println!("  {l}");
    }
    println!("bird: {}", r.bird_route.replace('\n', "\n      "));
    println!(
        "gobgpd killed (-9) and restarted: routes announced again {} ms after the restart",
        r.reannounce_ms
    );
    println!(
        "withdrawal: {}; route gone from the border {} ms later (terminating period {TERMINATING} s, counted from the whole second of the withdrawal)",
        r.answer_delete, r.withdraw_ms
    );
    println!(
        "DOTS status before the withdrawal: {} packets dropped",
        r.status_dropped
    );
    println!(
        "mitigation of {UNTUNNELLED} (no re-injection route): {}; not diverted: {REFUSED_METRIC} {}; at the border: {}",
        r.untunnelled_answer,
        r.untunnelled_refused,
        if r.untunnelled_at_border { "yes" } else { "no" }
    );
    println!("server log:");
    for l in &r.server_log {
        println!("  {l}");
    }
    println!();
    println!(
        "{:<18} {:<28} {:>6} {:>12} {:>12} {:>12} {:>12}",
        "PHASE",
        "BORDER ROUTE TO .10",
        "SENT",
        "DIRECT LEGIT",
        "DIRECT ATT.",
        "TUNNEL LEGIT",
        "TUNNEL ATT."
    );
    for p in &r.phases {
        let d = &p.delivered;
        println!(
            "{:<18} {:<28} {:>6} {:>12} {:>12} {:>12} {:>12}",
            p.name,
            p.border_route,
            p.sent_each,
            d.direct_legit,
            d.direct_attack,
            d.tunnel_legit,
            d.tunnel_attack
        );
    }
    println!("(SENT: legitimate and attack datagrams each; counted at the customer by the way they came)");
}

pub fn cli(args: DivertArgs) -> Result<()> {
    let report = run(&args)?;
    print(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
