//! The fleet's network, built around the lab's three namespaces (`crate::proof::Scratch`:
//! internet, scrubber with the DOTS server, customer with its DOTS client):
//!
//! ```text
//!             scrubber ns: dots-agent server, gobgpd (route reflector), Prometheus
//!   bgp-n0 203.0.113.1/30 ... bgp-nI 203.0.113.(4I+1)/30        bgp-b 203.0.113.253/30
//!     |                          |                                 |
//!   node 0: uplink .2        node I: uplink .(4I+2)            border: uplink .254
//!   gobgpd, dots-agent follow, gobgpd, ...                     bird2 (AS 64513)
//!   XDP on in0  <-- to-n0 ... to-nI -- internet ns (the attack generator)
//! ```
//!
//! Every node's gobgpd is a route-reflector client of the server's (iBGP, AS 64512); the
//! border router is an eBGP peer. Prometheus scrapes each node's /metrics on its BGP
//! address. Everything is removed on drop: processes (by pid), pins, namespaces.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use dots_agent::af_packet::PacketSocket;
use dots_agent::datapath::{Mitigator, XdpDatapath};
use dots_agent::flowspec::follow::mitigation_id;
use ipnet::IpNet;

use super::daemons::{self, Bird, Daemon, Neighbor};
use crate::lab::topology::{interrupted, Netns};
use crate::packet::PacketSpec;
use crate::proof::{Scratch, Server};

pub const RR_AS: u32 = 64512;
pub const BORDER_AS: u32 = 64513;
pub const PROMETHEUS: &str = "127.0.0.1:9090";
const BORDER_RR: &str = "203.0.113.253";
const BORDER_UP: &str = "203.0.113.254";
/// Node i's addresses use 203.0.113.(4i+1) and (4i+2), below the border's /30.
pub const MAX_NODES: usize = 60;

/// The server's end and the node's end of node `i`'s BGP link.
pub fn link(i: usize) -> (String, String) {
    (
        format!("203.0.113.{}", 4 * i + 1),
        format!("203.0.113.{}", 4 * i + 2),
    )
}

/// A scrubber node: its namespace, gobgpd, `dots-agent follow` and pinned filter.
pub struct Node {
    pub index: usize,
    pub follower: Daemon,
    pub bgp: Daemon,
    pub ns: Netns,
    pub pins: PathBuf,
    pub config: PathBuf,
    dir: PathBuf,
    agent: PathBuf,
    /// How many times it was started again after a kill.
    starts: u32,
}

/// Node `i`'s gobgpd, a route-reflector client of the server's; `start` numbers its
/// config and log (a restart does not overwrite the killed one's).
fn node_gobgpd(ns: &Netns, dir: &Path, i: usize, start: u32) -> Result<Daemon> {
    let (rr_end, node_end) = link(i);
    daemons::gobgpd(
        &ns.path(),
        dir,
        &format!("node{i}.{start}"),
        RR_AS,
        &[&node_end],
        &[Neighbor {
            address: &rr_end,
            asn: RR_AS,
            rr_client: false,
        }],
    )
}

/// Node `i`'s `dots-agent follow`, its log `follow<i>.<start>.log` at level info (it names
/// each prefix installed and removed, with the time).
fn node_follower(
    ns: &Netns,
    dir: &Path,
    agent: &Path,
    config: &Path,
    i: usize,
    start: u32,
) -> Result<Daemon> {
    Daemon::start(
        &ns.path(),
        "/usr/bin/env",
        &[
            "RUST_LOG=info",
            agent.to_str().context("a UTF-8 path")?,
            "follow",
            "--config",
            config.to_str().context("a UTF-8 path")?,
        ],
        &follower_log(dir, i, start),
    )
}

/// The prefixes a follower's log names with `what` ("follow: PREFIX installed (N rules)"),
/// each at its first line at or after `after`.
fn logged_in(text: &str, what: &str, after: SystemTime) -> HashMap<IpNet, SystemTime> {
    let mut out = HashMap::new();
    for line in text.lines() {
        // The message follows the target `dots_agent::flowspec::follow:`, itself ending in
        // "follow: ": the last occurrence starts the message.
        let Some(message) = line.rsplit("follow: ").next() else {
            continue;
        };
        let mut words = message.split_whitespace();
        let (Some(prefix), Some(verb)) = (words.next(), words.next()) else {
            continue;
        };
        if verb != what {
            continue;
        }
        if let (Ok(p), Some(t)) = (prefix.parse::<IpNet>(), log_time(line)) {
            if t >= after {
                out.entry(p).or_insert(t);
            }
        }
    }
    out
}

fn follower_log(dir: &Path, i: usize, start: u32) -> PathBuf {
    dir.join(format!("follow{i}.{start}.log"))
}

/// The time of a log line the agent wrote (`2026-12-07T13:02:53.326806Z  INFO ...`).
pub fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let field = t.next()?;
    let (sec, frac) = field.split_once('.').unwrap_or((field, ""));
    let sec: u64 = sec.parse().ok()?;
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm): no date crate is
    // a dependency here for one conversion.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + h * 3600 + min * 60 + sec;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

impl Node {
    /// kill -9 of the node's control plane: its follower and its gobgpd. The pinned filter
    /// stays, as after any crash of the processes.
    pub fn kill9(&mut self) {
        self.follower.kill();
        self.bgp.kill();
    }

    pub fn restart(&mut self) -> Result<()> {
        self.starts += 1;
        let (i, n) = (self.index, self.starts);
        self.bgp = node_gobgpd(&self.ns, &self.dir, i, n)?;
        self.follower = node_follower(&self.ns, &self.dir, &self.agent, &self.config, i, n)?;
        Ok(())
    }

    /// The datapath ids the node's pinned filter holds live, read from its pinned maps (what
    /// the XDP program looks up), not from the follower.
    pub fn installed(&self) -> Result<HashSet<u64>> {
        let dp = XdpDatapath::open_pinned(&self.pins)
            .map_err(|e| anyhow::anyhow!("node {}'s pins: {e}", self.index))?;
        Ok(dp.installed().into_iter().collect())
    }

    /// Packets the node's filter dropped for the follower's mitigation of `target`.
    pub fn dropped(&self, target: &IpNet) -> Result<u64> {
        let dp = XdpDatapath::open_pinned(&self.pins)
            .map_err(|e| anyhow::anyhow!("node {}'s pins: {e}", self.index))?;
        Ok(dp
            .counters(mitigation_id(target))
            .map_err(|e| anyhow::anyhow!("node {}'s counters: {e}", self.index))?
            .map_or(0, |c| c.dropped_total().packets))
    }

    /// When the follower logged each prefix "installed" or "removed" (`what`; written when
    /// its datapath's install or removal had returned), the first time at or after `after`.
    pub fn logged(&self, what: &str, after: SystemTime) -> HashMap<IpNet, SystemTime> {
        let log = follower_log(&self.dir, self.index, self.starts);
        logged_in(
            &std::fs::read_to_string(log).unwrap_or_default(),
            what,
            after,
        )
    }

    /// Whether the node's filter holds a rule for `target` (see [`Node::installed`]).
    pub fn holds(&self, ids: &HashSet<u64>, target: &IpNet) -> bool {
        ids.contains(&mitigation_id(target))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        let _ = XdpDatapath::detach(&self.pins, "in0");
        let _ = XdpDatapath::purge(&self.pins);
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// The whole fleet. Fields drop in order: processes first, then namespaces and pins.
pub struct Fleet {
    pub server: Option<Server>,
    pub prometheus: Daemon,
    pub border: Bird,
    pub rr: Daemon,
    pub nodes: Vec<Node>,
    pub border_ns: Netns,
    pub scratch: Scratch,
}

/// server.toml's `[flowspec]` for the fleet: the local gobgpd, Prometheus asked every
/// second, rule limits above what a run announces.
pub fn flowspec_section(max_rules: usize) -> String {
    format!(
        "[flowspec]\nmax_rules_per_client = {max_rules}\nmax_rules_total = {max_rules}\n\
         shortest_prefix_v4 = 24\nshortest_prefix_v6 = 48\nresync_seconds = 5\n\
         prometheus = \"http://{PROMETHEUS}\"\nfleet_query_seconds = 1\n"
    )
}

/// What each mitigation of a run asks: NTP reflection dropped (one FlowSpec discard rule).
pub const CLIENT_POLICY: &str = r#"acl = [{ name = "ntp", matches = { protocol = 17, source_port = { lower = 123 } }, action = "drop" }]"#;

impl Fleet {
    /// Builds the namespaces and starts every daemon but the DOTS server; returns once every
    /// BGP session is established (at most 60 s).
    pub fn build(agent: PathBuf, n: usize, max_rules: usize) -> Result<Fleet> {
        if n == 0 || n > MAX_NODES {
            bail!("--nodes {n}: give 1 to {MAX_NODES}");
        }
        let scratch = Scratch::with_sections(
            "fleet",
            agent.clone(),
            CLIENT_POLICY,
            "terminating_seconds = 0",
            &flowspec_section(max_rules),
        )?;
        let pid = std::process::id();
        let scr = &scratch.topo.scrubber;
        let dir = scratch.dir.clone();
        let mut nodes = Vec::new();
        for i in 0..n {
            let ns = Netns::create(format!("dfleet{pid}-n{i}"))?;
            let (rr_end, node_end) = link(i);
            let bgp_if = format!("bgp-n{i}");
            let to_node = format!("to-n{i}");
            run_ip(&[
                "link", "add", &bgp_if, "netns", &scr.name, "type", "veth", "peer", "name",
                "uplink", "netns", &ns.name,
            ])?;
            run_ip(&[
                "link",
                "add",
                &to_node,
                "netns",
                &scratch.topo.inet.name,
                "type",
                "veth",
                "peer",
                "name",
                "in0",
                "address",
                &node_mac(i),
                "netns",
                &ns.name,
            ])?;
            scr.ip(&["addr", "add", &format!("{rr_end}/30"), "dev", &bgp_if])?;
            scr.ip(&["link", "set", &bgp_if, "up"])?;
            ns.ip(&["addr", "add", &format!("{node_end}/30"), "dev", "uplink"])?;
            ns.ip(&["link", "set", "uplink", "up"])?;
            ns.ip(&["link", "set", "in0", "up"])?;
            scratch.topo.inet.ip(&["link", "set", &to_node, "up"])?;
            let pins = PathBuf::from(format!("/sys/fs/bpf/dots-fleet-{pid}-n{i}"));
            let config = dir.join(format!("node{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[datapath]\ninterfaces = [\"in0\"]\nxdp_mode = \"auto\"\npin_root = \"{}\"\n\
                     [flowspec]\npoll_seconds = 10\nhold_seconds = 90\n\
                     [metrics]\nlisten = [\"{node_end}:9500\"]\n",
                    pins.display()
                ),
            )?;
            let node = Node {
                index: i,
                bgp: node_gobgpd(&ns, &dir, i, 0)?,
                follower: node_follower(&ns, &dir, &agent, &config, i, 0)?,
                starts: 0,
                ns,
                pins,
                config,
                dir: dir.clone(),
                agent: agent.clone(),
            };
            nodes.push(node);
        }
        let border_ns = Netns::create(format!("dfleet{pid}-border"))?;
        run_ip(&[
            "link",
            "add",
            "bgp-b",
            "netns",
            &scr.name,
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            &border_ns.name,
        ])?;
        scr.ip(&["addr", "add", &format!("{BORDER_RR}/30"), "dev", "bgp-b"])?;
        scr.ip(&["link", "set", "bgp-b", "up"])?;
        border_ns.ip(&["addr", "add", &format!("{BORDER_UP}/30"), "dev", "uplink"])?;
        border_ns.ip(&["link", "set", "uplink", "up"])?;

        let links: Vec<(String, String)> = (0..n).map(link).collect();
        let mut locals: Vec<&str> = links.iter().map(|(s, _)| s.as_str()).collect();
        locals.push(BORDER_RR);
        let mut neighbors: Vec<Neighbor> = links
            .iter()
            .map(|(_, node)| Neighbor {
                address: node,
                asn: RR_AS,
                rr_client: true,
            })
            .collect();
        neighbors.push(Neighbor {
            address: BORDER_UP,
            asn: BORDER_AS,
            rr_client: false,
        });
        let rr = daemons::gobgpd(&scr.path(), &dir, "rr", RR_AS, &locals, &neighbors)?;
        let border = daemons::bird(
            &border_ns.path(),
            &dir,
            BORDER_UP,
            BORDER_AS,
            BORDER_RR,
            RR_AS,
        )?;
        let targets: Vec<String> = links.iter().map(|(_, a)| format!("'{a}:9500'")).collect();
        let prometheus = daemons::prometheus(
            &scr.path(),
            &dir,
            PROMETHEUS,
            &format!(
                "  - job_name: dots-nodes\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let fleet = Fleet {
            server: None,
            prometheus,
            border,
            rr,
            nodes,
            border_ns,
            scratch,
        };
        let started = Instant::now();
        loop {
            let up = daemons::established(&fleet.scratch.topo.scrubber.path()).unwrap_or(0);
            if up == n + 1 && fleet.border.established() {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) || interrupted() {
                bail!(
                    "{up} of {} BGP sessions of the route reflector established after {:?} (logs in {})",
                    n + 1,
                    started.elapsed(),
                    fleet.scratch.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(fleet)
    }

    /// Starts the DOTS server and waits until it answers (at most 30 s).
    pub fn start_server(&mut self) -> Result<()> {
        let server = self.scratch.start_server(None)?;
        let started = server.started;
        self.server = Some(server);
        let cfg = self
            .scratch
            .client(dots_agent::client::TransportChoice::Tls);
        let up = crate::proof::block_on(&self.scratch.topo.customer, move || {
            crate::proof::until_answering(cfg, started, Duration::from_secs(30))
        })?;
        if up.is_none() {
            bail!(
                "the DOTS server did not answer within 30 s:\n{}",
                self.scratch.server_log_tail()
            );
        }
        Ok(())
    }

    /// Sends `count` NTP-reflection packets (UDP from port 123) to node `i`'s XDP
    /// interface, round robin over `targets`, at `pps`; returns how many were sent.
    pub fn attack(&self, i: usize, targets: &[IpNet], count: u64, pps: u64) -> Result<u64> {
        let frames: Vec<Vec<u8>> = targets
            .iter()
            .map(|t| {
                let (src, dst) = match t.addr() {
                    std::net::IpAddr::V4(a) => ("192.0.2.77".to_string(), a.to_string()),
                    std::net::IpAddr::V6(a) => ("2001:db8:100::77".to_string(), a.to_string()),
                };
                let mut spec = PacketSpec::udp(&src, &dst, 123, 4444);
                spec.dst_mac = mac_bytes(i);
                spec.build()
            })
            .collect();
        let iface = format!("to-n{i}");
        self.scratch.topo.inet.run_in(move || -> Result<u64> {
            let sock =
                PacketSocket::open(&iface).with_context(|| format!("a socket on {iface}"))?;
            Ok(crate::trafficgen::socket::send_paced(
                &sock,
                &frames,
                count,
                pps,
                Duration::from_secs(60),
            )?)
        })?
    }

    pub fn dir(&self) -> &Path {
        &self.scratch.dir
    }
}

fn node_mac(i: usize) -> String {
    let m = mac_bytes(i);
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn mac_bytes(i: usize) -> [u8; 6] {
    [0x02, 0x00, 0x5e, 0x00, 0x10, i as u8 + 1]
}

fn run_ip(args: &[&str]) -> Result<()> {
    crate::lab::topology::run("ip", args).map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_log_lines_give_their_wall_clock_time() {
        let t =
            super::log_time("2026-12-07T13:02:53.326806Z  INFO dots_agent::flowspec::follow: x")
                .unwrap();
        let since = t.duration_since(std::time::UNIX_EPOCH).unwrap();
        // date -u -d 2026-12-07T13:02:53Z +%s
        assert_eq!(since.as_secs(), 1_796_648_573);
        assert_eq!(since.subsec_micros(), 326_806);
        assert!(super::log_time("no time here").is_none());
    }

    #[test]
    fn a_follower_log_names_what_it_installed_and_removed() {
        let log = "2026-12-07T13:25:40.913241Z  INFO dots_agent::flowspec::follow: follow: 2001:db8:6401::384/128 installed (1 rules)\n\
                   2026-12-07T13:25:41.000000Z  INFO dots_agent::flowspec::follow: follow: 198.51.100.20/32 removed\n\
                   2026-12-07T13:25:42.000000Z  WARN dots_agent::flowspec::follow: follow: not installed: x";
        let early = super::log_time("2026-12-07T13:00:00Z x").unwrap();
        let installed = super::logged_in(log, "installed", early);
        let v6: ipnet::IpNet = "2001:db8:6401::384/128".parse().unwrap();
        assert_eq!(installed.len(), 1);
        assert_eq!(installed[&v6], super::log_time(log).unwrap());
        assert_eq!(super::logged_in(log, "removed", early).len(), 1);
        let late = super::log_time("2026-12-07T14:00:00Z x").unwrap();
        assert!(super::logged_in(log, "installed", late).is_empty());
    }
}
