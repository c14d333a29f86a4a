//! Diversion (server.toml `[diversion]`): while a DOTS mitigation is active, the scrubber
//! announces its targets as unicast routes (IPv4 and IPv6) through the local gobgpd, with
//! itself as next hop and tagged with a community, so that the border routers send the
//! targets' traffic through it (scrubbers announcing the same give ECMP). Scrubbed traffic
//! (XDP_PASS) leaves by a route the operator set up for re-injection (a GRE tunnel to the
//! customer, or a next hop that is not the border): a route is announced only while the
//! kernel's route to it leaves through one of `reinject_via`, since diverting a target whose
//! traffic would go back to the border loops it, and one without a route blackholes it.
//!
//! The engine tells the diverter what its store recorded ([`crate::engine::RuleAnnouncer`]);
//! its thread plans the routes under the guard rails and reconciles gobgpd's unicast tables
//! with them ([`super::reconcile`], shared with the FlowSpec announcer), and again every
//! `resync_seconds`, which re-announces them to a gobgpd that restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::gobgp::Gobgp;
use super::reconcile::{self, Change, Handle, Outcome, OutcomeNames, Table};
use crate::datapath::MitigationSpec;
use crate::engine::RuleAnnouncer;
use crate::metrics::Scrape;

/// The well-known NO_EXPORT community (RFC 1997).
const NO_EXPORT: u32 = 0xFFFF_FF01;

/// server.toml `[diversion]`: absent, nothing is diverted.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiversionConfig {
    /// The local gobgpd's gRPC address (`gobgpd --api-hosts`).
    #[serde(default = "super::default_api")]
    pub gobgp_api: String,
    #[serde(default = "super::default_program")]
    pub gobgp: PathBuf,
    /// This scrubber's addresses as the routes' next hop; a family without one is not
    /// diverted.
    #[serde(default)]
    pub next_hop_v4: Option<Ipv4Addr>,
    #[serde(default)]
    pub next_hop_v6: Option<Ipv6Addr>,
    /// `ASN:VALUE` on every diversion route; it also marks the routes this server owns in
    /// gobgpd (others are left alone).
    pub community: String,
    /// Adds NO_EXPORT, so the border routers keep the routes to themselves.
    #[serde(default)]
    pub no_export: bool,
    /// Announce targets broader than this as their more-specifics of this length (they win
    /// over the customer's own route by longest match).
    #[serde(default)]
    pub more_specific_v4: Option<u8>,
    #[serde(default)]
    pub more_specific_v6: Option<u8>,
    #[serde(default = "default_shortest_v4")]
    pub shortest_prefix_v4: u8,
    #[serde(default = "default_shortest_v6")]
    pub shortest_prefix_v6: u8,
    #[serde(default = "default_longest_v4")]
    pub longest_prefix_v4: u8,
    #[serde(default = "default_longest_v6")]
    pub longest_prefix_v6: u8,
    /// Routes announced at most (all clients); a mitigation is diverted whole or not at all.
    #[serde(default = "default_max_routes")]
    pub max_routes: usize,
    /// The interfaces scrubbed traffic may leave by (GRE tunnels to customers, a link to a
    /// clean next hop): never the one diverted traffic arrives on.
    pub reinject_via: Vec<String>,
    #[serde(default = "default_resync")]
    pub resync_seconds: u64,
}

fn default_shortest_v4() -> u8 {
    24
}
fn default_shortest_v6() -> u8 {
    48
}
fn default_longest_v4() -> u8 {
    32
}
fn default_longest_v6() -> u8 {
    128
}
fn default_max_routes() -> usize {
    64
}
fn default_resync() -> u64 {
    5
}

/// Why a target is not diverted (a metric label each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    OutsideClient,
    Length,
    NoNextHop,
    MaxRoutes,
    Reinjection,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::OutsideClient => "outside-client",
            Refusal::Length => "prefix-length",
            Refusal::NoNextHop => "no-next-hop",
            Refusal::MaxRoutes => "max-routes",
            Refusal::Reinjection => "no-reinjection-route",
        }
    }
}

/// The prefixes of one mitigation's targets to announce, and what was refused and why.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub prefixes: Vec<IpNet>,
    pub refused: Vec<(Refusal, String)>,
}

impl DiversionConfig {
    /// `community` as its 32-bit value; Err says what to write.
    fn community_value(&self) -> Result<u32> {
        let bad = || {
            anyhow::anyhow!(
                "[diversion] community = {:?}: give ASN:VALUE, each 0 to 65535 (e.g. \"64512:666\")",
                self.community
            )
        };
        let (hi, lo) = self.community.split_once(':').ok_or_else(bad)?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        Ok((hi as u32) << 16 | lo as u32)
    }

    /// The communities every route carries.
    pub fn communities(&self) -> Result<Vec<u32>> {
        let mut c = vec![self.community_value()?];
        if self.no_export {
            c.push(NO_EXPORT);
        }
        Ok(c)
    }

    /// What a config load checks (no system state): values in range and consistent.
    pub fn check(&self, datapath_interfaces: &[String]) -> Result<()> {
        self.community_value()?;
        if self.next_hop_v4.is_none() && self.next_hop_v6.is_none() {
            bail!("[diversion] give next_hop_v4 or next_hop_v6 (this scrubber's address towards the border routers)");
        }
        for (name, shortest, longest, more, max) in [
            (
                "v4",
                self.shortest_prefix_v4,
                self.longest_prefix_v4,
                self.more_specific_v4,
                32,
            ),
            (
                "v6",
                self.shortest_prefix_v6,
                self.longest_prefix_v6,
                self.more_specific_v6,
                128,
            ),
        ] {
            if shortest == 0 || shortest > longest || longest > max {
                bail!("[diversion] shortest_prefix_{name} = {shortest}, longest_prefix_{name} = {longest}: give 1 <= shortest <= longest <= {max}");
            }
            if let Some(m) = more {
                if m < shortest || m > longest {
                    bail!("[diversion] more_specific_{name} = {m}: give a length from shortest_prefix_{name} ({shortest}) to longest_prefix_{name} ({longest})");
                }
            }
        }
        if self.max_routes == 0 || self.resync_seconds == 0 {
            bail!("[diversion] max_routes and resync_seconds must be at least 1");
        }
        if datapath_interfaces.is_empty() {
            bail!("[diversion] needs [datapath] interfaces: without the XDP filter the scrubber would divert traffic it does not scrub");
        }
        if self.reinject_via.is_empty() {
            bail!("[diversion] reinject_via is empty: name the interfaces scrubbed traffic goes back to customers by (e.g. [\"gre-cust1\"]); see README \"Diversion\"");
        }
        if let Some(i) = self
            .reinject_via
            .iter()
            .find(|i| datapath_interfaces.contains(i))
        {
            bail!("[diversion] reinject_via names {i}, a [datapath] interface: diverted traffic arrives there, so scrubbed traffic sent back by it would loop; re-inject through a GRE tunnel or another link");
        }
        if !self.gobgp.is_file() {
            bail!(
                "[diversion] gobgp = {}: no such program (apt-get install gobgpd, or set the path)",
                self.gobgp.display()
            );
        }
        super::gobgp_client("[diversion]", &self.gobgp_api, &self.gobgp).map(|_| ())
    }

    /// What a start checks in the server's network namespace: the re-injection interfaces
    /// exist (Err says what to create); notes for client prefixes the kernel does not route
    /// through them (those are refused when a mitigation asks for them).
    pub fn preflight(&self, clients: &[(String, Vec<IpNet>)]) -> Result<Vec<String>> {
        for i in &self.reinject_via {
            let name = std::ffi::CString::new(i.as_str()).map_err(|_| {
                anyhow::anyhow!("[diversion] reinject_via {i:?}: not an interface name")
            })?;
            // SAFETY: a valid C string; if_nametoindex only reads it.
            if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
                bail!("[diversion] reinject_via {i}: no such interface here; create the re-injection tunnel first (e.g. ip link add {i} type gre local SCRUBBER remote CUSTOMER; ip link set {i} up; ip route add CUSTOMER-PREFIX dev {i}), see README \"Diversion\"");
            }
        }
        let mut notes = Vec::new();
        for (client, prefixes) in clients {
            for p in prefixes {
                if let Err(why) = self.reinjection(p) {
                    notes.push(format!("[diversion] {client} {p}: {why}; its mitigations are not diverted until that is fixed"));
                }
            }
        }
        Ok(notes)
    }

    /// Ok if the kernel sends traffic to `prefix` out through a `reinject_via` interface.
    fn reinjection(&self, prefix: &IpNet) -> Result<(), String> {
        let dev = egress_interface(prefix.network())?;
        if self.reinject_via.contains(&dev) {
            Ok(())
        } else {
            Err(format!(
                "the kernel routes it out of {dev}, not through reinject_via {:?}: diverting it would send scrubbed traffic back towards the border (a loop); add a route, e.g. ip route add {prefix} dev {}",
                self.reinject_via, self.reinject_via[0]
            ))
        }
    }

    /// The prefixes to announce for `targets` of a client owning `client_prefixes`.
    pub fn plan(&self, targets: &[IpNet], client_prefixes: &[IpNet]) -> Plan {
        let mut plan = Plan::default();
        for t in targets {
            let t = t.trunc();
            let (has_hop, shortest, longest, more) = match t {
                IpNet::V4(_) => (
                    self.next_hop_v4.is_some(),
                    self.shortest_prefix_v4,
                    self.longest_prefix_v4,
                    self.more_specific_v4,
                ),
                IpNet::V6(_) => (
                    self.next_hop_v6.is_some(),
                    self.shortest_prefix_v6,
                    self.longest_prefix_v6,
                    self.more_specific_v6,
                ),
            };
            let len = t.prefix_len();
            let announce_len = more.map_or(len, |m| m.max(len));
            let refused = if !has_hop {
                Some((
                    Refusal::NoNextHop,
                    format!("{t}: no next hop configured for its family"),
                ))
            } else if !client_prefixes.iter().any(|p| p.contains(&t)) {
                Some((
                    Refusal::OutsideClient,
                    format!("{t}: outside the client's prefixes"),
                ))
            } else if len < shortest || announce_len > longest {
                Some((
                    Refusal::Length,
                    format!(
                        "{t}: /{announce_len} announcements are outside /{shortest} to /{longest}"
                    ),
                ))
            } else if announce_len - len >= 32 || 1usize << (announce_len - len) > self.max_routes {
                Some((
                    Refusal::MaxRoutes,
                    format!(
                        "{t}: its /{announce_len} more-specifics would pass max_routes ({})",
                        self.max_routes
                    ),
                ))
            } else {
                None
            };
            match refused {
                Some(r) => plan.refused.push(r),
                None => plan
                    .prefixes
                    .extend(t.subnets(announce_len).into_iter().flatten()),
            }
        }
        plan
    }

    fn next_hop(&self, prefix: &IpNet) -> Option<IpAddr> {
        match prefix {
            IpNet::V4(_) => self.next_hop_v4.map(IpAddr::V4),
            IpNet::V6(_) => self.next_hop_v6.map(IpAddr::V6),
        }
    }
}

/// The interface the kernel sends packets to `addr` out of (`ip route get`, which applies
/// policy routing as forwarding does).
fn egress_interface(addr: IpAddr) -> Result<String, String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "route", "get", &addr.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running ip route get (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no route to it ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("ip -j route get {addr}: {e}"))?;
    v[0]["dev"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("ip route get {addr}: no interface (unreachable?)"))
}

/// One diversion route as announced.
#[derive(Clone, Debug, PartialEq)]
pub struct DivertRoute {
    pub prefix: IpNet,
    pub next_hop: IpAddr,
    /// Sorted.
    pub communities: Vec<u32>,
}

/// gobgpd's unicast tables (`global rib -a ipv4|ipv6`), as far as this server's routes go.
struct Unicast {
    gobgp: Gobgp,
    /// Routes carrying it are this server's.
    marker: u32,
}

fn family(prefix: &IpNet) -> &'static str {
    match prefix {
        IpNet::V4(_) => "ipv4",
        IpNet::V6(_) => "ipv6",
    }
}

impl Table for Unicast {
    type Route = DivertRoute;

    fn read(&self) -> Result<BTreeMap<String, DivertRoute>, String> {
        let mut out = BTreeMap::new();
        for fam in ["ipv4", "ipv6"] {
            let args = ["global", "rib", "-a", fam, "-j"].map(String::from);
            let text = self.gobgp.run(&args)?;
            for r in parse_unicast(&text)? {
                if r.communities.contains(&self.marker) {
                    out.insert(r.prefix.to_string(), r);
                }
            }
        }
        Ok(out)
    }

    fn add(&self, r: &DivertRoute) -> Result<(), String> {
        let communities: Vec<String> = r
            .communities
            .iter()
            .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
            .collect();
        let args = [
            "global",
            "rib",
            "-a",
            family(&r.prefix),
            "add",
            &r.prefix.to_string(),
            "nexthop",
            &r.next_hop.to_string(),
            "community",
            &communities.join(","),
        ]
        .map(String::from);
        self.gobgp.run(&args).map(|_| ())
    }

    fn del(&self, r: &DivertRoute) -> Result<(), String> {
        let args = [
            "global",
            "rib",
            "-a",
            family(&r.prefix),
            "del",
            &r.prefix.to_string(),
        ]
        .map(String::from);
        self.gobgp.run(&args).map(|_| ())
    }
}

/// `gobgp global rib -a ipv4|ipv6 -j`: the routes this daemon originates (learned ones
/// carry `neighbor-ip`), with next hop (attribute 3, or 14 for IPv6) and communities (8).
pub fn parse_unicast(text: &str) -> Result<Vec<DivertRoute>, String> {
    let v: Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("gobgp unicast table: {e}"))?;
    let obj = v.as_object().ok_or("gobgp unicast table: not an object")?;
    let mut out = Vec::new();
    for (key, paths) in obj {
        let Some(path) = paths
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["neighbor-ip"].is_null())
        else {
            continue;
        };
        let prefix: IpNet = key
            .parse()
            .map_err(|_| format!("gobgp unicast table: {key:?} is not a prefix"))?;
        let attrs = path["attrs"].as_array().cloned().unwrap_or_default();
        let next_hop = attrs
            .iter()
            .filter(|a| matches!(a["type"].as_u64(), Some(3) | Some(14)))
            .find_map(|a| a["nexthop"].as_str()?.parse::<IpAddr>().ok());
        let mut communities: Vec<u32> = attrs
            .iter()
            .filter(|a| a["type"].as_u64() == Some(8))
            .flat_map(|a| a["communities"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c.as_u64().and_then(|c| u32::try_from(c).ok()))
            .collect();
        communities.sort_unstable();
        if let Some(next_hop) = next_hop {
            out.push(DivertRoute {
                prefix,
                next_hop,
                communities,
            });
        }
    }
    Ok(out)
}

/// What the diverter last achieved, for metrics.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Routes wanted and announced, and how the daemon answered.
    pub daemon: Outcome,
    /// (client, reason) -> targets (or routes) refused.
    pub refused: BTreeMap<(String, &'static str), usize>,
}

/// The engine's side: sends changes to the thread.
pub struct Diverter(Handle<Report>);

struct Worker {
    config: DiversionConfig,
    table: Unicast,
    communities: Vec<u32>,
    /// By datapath id, oldest first: client and plan.
    mitigations: BTreeMap<u64, (String, Plan)>,
    /// What was refused at the last reconciliation (logged again only when it changes).
    logged: BTreeSet<String>,
}

impl Diverter {
    /// Starts the thread (it runs until the engine drops the diverter).
    pub fn start(config: &DiversionConfig) -> Result<Diverter> {
        let mut communities = config.communities()?;
        communities.sort_unstable();
        let worker = Worker {
            table: Unicast {
                gobgp: super::gobgp_client("[diversion]", &config.gobgp_api, &config.gobgp)?,
                marker: config.community_value()?,
            },
            communities,
            config: config.clone(),
            mitigations: BTreeMap::new(),
            logged: BTreeSet::new(),
        };
        let every = Duration::from_secs(config.resync_seconds);
        Ok(Diverter(Handle::start(worker, every)?))
    }

    pub fn report(&self) -> Report {
        self.0.report()
    }
}

impl RuleAnnouncer for Diverter {
    fn active(&mut self, id: u64, client: &str, prefixes: &[IpNet], spec: &MitigationSpec) {
        self.0.active(id, client, prefixes, spec);
    }

    fn ended(&mut self, id: u64) {
        self.0.ended(id);
    }

    fn metrics(&self) -> String {
        render(&self.report())
    }
}

impl reconcile::Report for Report {
    fn daemon(&mut self) -> &mut Outcome {
        &mut self.daemon
    }
}

impl reconcile::Worker for Worker {
    const NAME: &'static str = "diversion";
    type Table = Unicast;
    type Report = Report;

    fn apply(&mut self, change: Change) {
        match change {
            Change::Active {
                id,
                client,
                prefixes,
                spec,
            } => {
                let plan = self.config.plan(&spec.targets, &prefixes);
                self.mitigations.insert(id, (client, plan));
            }
            Change::Ended(id) => {
                self.mitigations.remove(&id);
            }
        }
    }

    fn table(&self) -> &Unicast {
        &self.table
    }

    /// The routes to announce: each mitigation's planned prefixes whose re-injection route
    /// exists, oldest mitigation first, unless they would pass `max_routes` (then none of
    /// that mitigation's).
    fn wanted(&mut self, report: &mut Report) -> BTreeMap<String, DivertRoute> {
        let mut out: BTreeMap<String, DivertRoute> = BTreeMap::new();
        let mut refusals: Vec<(String, Refusal, String)> = Vec::new();
        let mut checked: BTreeMap<IpNet, Result<(), String>> = BTreeMap::new();
        for (id, (client, plan)) in &self.mitigations {
            for (why, text) in &plan.refused {
                refusals.push((client.clone(), *why, format!("mitigation {id}: {text}")));
            }
            let mut routes = Vec::new();
            for p in &plan.prefixes {
                let ok = checked
                    .entry(*p)
                    .or_insert_with(|| self.config.reinjection(p));
                match (ok, self.config.next_hop(p)) {
                    (Ok(()), Some(next_hop)) => routes.push(DivertRoute {
                        prefix: *p,
                        next_hop,
                        communities: self.communities.clone(),
                    }),
                    (Err(e), _) => refusals.push((
                        client.clone(),
                        Refusal::Reinjection,
                        format!("mitigation {id}: {p}: {e}"),
                    )),
                    (Ok(()), None) => {}
                }
            }
            let new = routes
                .iter()
                .filter(|r| !out.contains_key(&r.prefix.to_string()))
                .count();
            if out.len() + new > self.config.max_routes {
                refusals.push((
                    client.clone(),
                    Refusal::MaxRoutes,
                    format!(
                        "mitigation {id}: its {} routes would pass max_routes ({})",
                        routes.len(),
                        self.config.max_routes
                    ),
                ));
                continue;
            }
            for r in routes {
                out.insert(r.prefix.to_string(), r);
            }
        }
        let mut now = BTreeSet::new();
        for (client, why, text) in refusals {
            *report
                .refused
                .entry((client.clone(), why.label()))
                .or_default() += 1;
            let line = format!("diversion: {client} {text}; not diverted");
            if !self.logged.contains(&line) {
                tracing::warn!("{line}");
            }
            now.insert(line);
        }
        self.logged = now;
        out
    }
}

const OUTCOME: OutcomeNames = OutcomeNames {
    wanted: (
        "dots_diversion_routes_wanted",
        "Diversion routes the active mitigations should announce",
    ),
    announced: (
        "dots_diversion_routes_announced",
        "Diversion routes of this server in gobgpd's tables at the last reconciliation",
    ),
    daemon_up: "dots_diversion_daemon_up",
    daemon_errors: "dots_diversion_daemon_errors_total",
};

fn render(r: &Report) -> String {
    let m = Scrape::default();
    r.daemon.expose(&m, &OUTCOME);
    let refused = m.gauge(
        "dots_diversion_refused",
        "Targets or routes of active mitigations not diverted, by reason",
        &["client", "reason"],
    );
    for ((client, reason), n) in &r.refused {
        refused
            .with_label_values(&[client.as_str(), reason])
            .set(*n as i64);
    }
    m.text()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> DiversionConfig {
        toml::from_str(&format!(
            "next_hop_v4 = \"192.0.2.2\"\ncommunity = \"64512:666\"\nreinject_via = [\"gre1\"]\ngobgp = \"/bin/sh\"\n{extra}"
        ))
        .unwrap()
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|p| p.parse().unwrap()).collect()
    }

    /// More-specifics, the client's prefixes, the lengths, the count and a family without
    /// next hop: each refusal named.
    #[test]
    fn plans_follow_the_guard_rails() {
        let c = config("more_specific_v4 = 25\nmax_routes = 4\nshortest_prefix_v4 = 22");
        let client = nets(&["198.51.100.0/22", "2001:db8:6401::/48"]);
        let plan = c.plan(&nets(&["198.51.100.0/24", "198.51.101.7/32"]), &client);
        assert_eq!(
            plan.prefixes,
            nets(&["198.51.100.0/25", "198.51.100.128/25", "198.51.101.7/32"])
        );
        assert!(plan.refused.is_empty());
        let plan = c.plan(
            &nets(&["203.0.113.0/24", "198.51.100.0/22", "2001:db8:6401::/64"]),
            &client,
        );
        assert!(plan.prefixes.is_empty());
        let why: Vec<Refusal> = plan.refused.iter().map(|r| r.0).collect();
        assert_eq!(
            why,
            [
                Refusal::OutsideClient,
                Refusal::MaxRoutes,
                Refusal::NoNextHop
            ]
        );
        let c = config("longest_prefix_v4 = 28");
        let plan = c.plan(&nets(&["198.51.100.10/32"]), &client);
        assert_eq!(plan.refused[0].0, Refusal::Length);
        assert!(plan.refused[0].1.contains("/24 to /28"), "{plan:?}");
    }

    #[test]
    fn config_mistakes_are_named() {
        let datapath = ["eth1".to_string()];
        let err =
            |extra: &str, dp: &[String]| format!("{:#}", config(extra).check(dp).unwrap_err());
        assert!(err("", &["gre1".into()]).contains("would loop"));
        assert!(err("", &[]).contains("needs [datapath] interfaces"));
        let bad: DiversionConfig = toml::from_str(
            "next_hop_v4 = \"192.0.2.2\"\ncommunity = \"70000:1\"\nreinject_via = [\"gre1\"]",
        )
        .unwrap();
        assert!(format!("{:#}", bad.check(&datapath).unwrap_err()).contains("ASN:VALUE"));
        assert!(err("more_specific_v4 = 8", &datapath).contains("more_specific_v4"));
        assert!(err("shortest_prefix_v6 = 0", &datapath).contains("shortest_prefix_v6"));
        let no_hop: DiversionConfig =
            toml::from_str("community = \"1:1\"\nreinject_via = [\"gre1\"]").unwrap();
        assert!(format!("{:#}", no_hop.check(&datapath).unwrap_err()).contains("next_hop"));
        let c = config("no_export = true");
        assert_eq!(c.communities().unwrap(), [64512 << 16 | 666, NO_EXPORT]);
    }

    /// The series README and the lab name, with their HELP and TYPE lines.
    #[test]
    fn metrics_name_the_routes_the_refusals_and_the_daemon() {
        let ok = Outcome::after(&Outcome::default(), 2, &Ok(2));
        let r = Report {
            daemon: Outcome::after(&ok, 3, &Err("gobgp: connection refused".into())),
            refused: [(("customer".to_string(), Refusal::Reinjection.label()), 1)].into(),
        };
        let text = render(&r);
        for line in [
            "# HELP dots_diversion_routes_wanted Diversion routes the active mitigations should announce",
            "# TYPE dots_diversion_routes_wanted gauge",
            "dots_diversion_routes_wanted 3",
            "# HELP dots_diversion_routes_announced Diversion routes of this server in gobgpd's tables at the last reconciliation",
            "dots_diversion_routes_announced 2",
            "dots_diversion_daemon_up 0",
            "# TYPE dots_diversion_daemon_errors_total counter",
            "dots_diversion_daemon_errors_total 1",
            "# HELP dots_diversion_refused Targets or routes of active mitigations not diverted, by reason",
            "# TYPE dots_diversion_refused gauge",
            "dots_diversion_refused{client=\"customer\",reason=\"no-reinjection-route\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    /// What gobgpd 3.10 printed here for routes added by `gobgp global rib -a ipv4|ipv6 add
    /// PREFIX nexthop ADDR community 64512:666,no-export`, and one added without community.
    #[test]
    fn gobgp_unicast_json_reads_back() {
        let v4 = r#"{"10.0.0.0/8":[{"nlri":{"prefix":"10.0.0.0/8"},"age":1796646580,"best":true,"attrs":[{"type":1,"value":2},{"type":3,"nexthop":"192.0.2.9"}],"stale":false}],"198.51.100.0/25":[{"nlri":{"prefix":"198.51.100.0/25"},"age":1796646580,"best":true,"attrs":[{"type":1,"value":2},{"type":8,"communities":[4227859098,4294967041]},{"type":3,"nexthop":"192.0.2.2"}],"stale":false}]}"#;
        let v6 = r#"{"2001:db8:6401::/48":[{"nlri":{"prefix":"2001:db8:6401::/48"},"age":1796646580,"best":true,"attrs":[{"type":1,"value":2},{"type":8,"communities":[4227859098]},{"type":14,"nexthop":"2001:db8:ff::2","afi":2,"safi":1,"value":[{"prefix":"2001:db8:6401::/48"}]}],"stale":false}]}"#;
        let r = parse_unicast(v4).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[1],
            DivertRoute {
                prefix: "198.51.100.0/25".parse().unwrap(),
                next_hop: "192.0.2.2".parse().unwrap(),
                communities: vec![4227859098, NO_EXPORT],
            }
        );
        let r = parse_unicast(v6).unwrap();
        assert_eq!(r[0].next_hop, "2001:db8:ff::2".parse::<IpAddr>().unwrap());
        assert!(parse_unicast("{\"x\": [{}]}").is_err());
        assert!(parse_unicast("[").is_err());
    }
}
