//! BGP FlowSpec (RFC 8955, RFC 8956) through an existing BGP daemon, gobgpd: a DOTS server
//! announces its mitigations' rules to border routers and scrubber nodes ([`announce`]); a
//! scrubber node follows the rules its daemon learns into its own XDP filter ([`follow`]).
//!
//! - [`rule`]: one rule, its `gobgp` words, the ACL entries it becomes on a node.
//! - [`translate`]: a mitigation's datapath spec as rules, under the guard rails.
//! - [`gobgp`]: the local gobgpd through its command-line client, JSON read back.
//! - [`fleet`]: the nodes' drop counters, served by each node and summed through Prometheus.
//! - [`divert`]: diversion: the targets of active mitigations announced as unicast routes
//!   with this scrubber as next hop, re-injection checked.
//! - [`reconcile`]: the thread and table reconciliation the announcer and the diverter share.

pub mod announce;
pub mod divert;
pub mod fleet;
pub mod follow;
pub mod gobgp;
pub mod reconcile;
pub mod rule;
pub mod translate;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub use announce::Announcer;
pub use translate::GuardRails;

/// server.toml `[flowspec]`: absent, nothing is announced.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowspecConfig {
    /// The local gobgpd's gRPC address (`gobgpd --api-hosts`).
    #[serde(default = "default_api")]
    pub gobgp_api: String,
    /// The `gobgp` client program.
    #[serde(default = "default_program")]
    pub gobgp: PathBuf,
    #[serde(default = "default_per_client")]
    pub max_rules_per_client: usize,
    #[serde(default = "default_total")]
    pub max_rules_total: usize,
    /// No rule broader than these (destination prefix length).
    #[serde(default = "default_v4")]
    pub shortest_prefix_v4: u8,
    #[serde(default = "default_v6")]
    pub shortest_prefix_v6: u8,
    /// How often the daemon's table is compared with what should be announced (a
    /// restarted daemon has forgotten every rule).
    #[serde(default = "default_resync")]
    pub resync_seconds: u64,
    /// Prometheus (`http://host:port`) scraping the nodes: their drops are added to the
    /// status. Absent: the status counts this box only.
    #[serde(default)]
    pub prometheus: Option<String>,
    /// The scrape job of the nodes in Prometheus.
    #[serde(default = "default_job")]
    pub fleet_job: String,
    /// The longest time between two queries of the fleet's counts.
    #[serde(default = "default_fleet_query")]
    pub fleet_query_seconds: u64,
    /// How often Prometheus is asked whether it scraped a node since the last query (a
    /// cheap query); the counts are queried right after each scrape, so the status is as
    /// fresh as Prometheus.
    #[serde(default = "default_fleet_probe")]
    pub fleet_probe_ms: u64,
}

fn default_job() -> String {
    "dots-nodes".into()
}
fn default_fleet_query() -> u64 {
    5
}
fn default_fleet_probe() -> u64 {
    100
}

pub(crate) fn default_api() -> String {
    "127.0.0.1:50051".into()
}
pub(crate) fn default_program() -> PathBuf {
    "/usr/bin/gobgp".into()
}
fn default_per_client() -> usize {
    100
}
fn default_total() -> usize {
    1000
}
fn default_v4() -> u8 {
    24
}
fn default_v6() -> u8 {
    48
}
fn default_resync() -> u64 {
    5
}

impl FlowspecConfig {
    pub fn rails(&self) -> GuardRails {
        GuardRails {
            max_rules_per_client: self.max_rules_per_client,
            max_rules_total: self.max_rules_total,
            shortest_prefix_v4: self.shortest_prefix_v4,
            shortest_prefix_v6: self.shortest_prefix_v6,
        }
    }

    /// The daemon's client, from `gobgp_api` (`host:port`).
    pub fn gobgp(&self) -> Result<gobgp::Gobgp> {
        gobgp_client("[flowspec]", &self.gobgp_api, &self.gobgp)
    }

    /// What a start checks: values in range, the client program present.
    pub fn check(&self) -> Result<()> {
        if self.shortest_prefix_v4 == 0 || self.shortest_prefix_v4 > 32 {
            bail!(
                "[flowspec] shortest_prefix_v4 = {}: give 1 to 32",
                self.shortest_prefix_v4
            );
        }
        if self.shortest_prefix_v6 == 0 || self.shortest_prefix_v6 > 128 {
            bail!(
                "[flowspec] shortest_prefix_v6 = {}: give 1 to 128",
                self.shortest_prefix_v6
            );
        }
        if self.max_rules_per_client == 0 || self.max_rules_total == 0 {
            bail!("[flowspec] max_rules_per_client and max_rules_total must be at least 1");
        }
        if let Some(p) = &self.prometheus {
            if !p.starts_with("http://") {
                bail!("[flowspec] prometheus = {p:?}: give http://host:port");
            }
        }
        if self.resync_seconds == 0 || self.fleet_query_seconds == 0 {
            bail!("[flowspec] resync_seconds and fleet_query_seconds must be at least 1");
        }
        if !(10..=self.fleet_query_seconds.saturating_mul(1000)).contains(&self.fleet_probe_ms) {
            bail!(
                "[flowspec] fleet_probe_ms = {}: give 10 to fleet_query_seconds * 1000",
                self.fleet_probe_ms
            );
        }
        if !self.gobgp.is_file() {
            bail!(
                "[flowspec] gobgp = {}: no such program (apt-get install gobgpd, or set the path)",
                self.gobgp.display()
            );
        }
        self.gobgp().map(|_| ())
    }
}

/// The client of the gobgpd at `api` (`host:port`), for the config section `section`.
pub(crate) fn gobgp_client(
    section: &str,
    api: &str,
    program: &std::path::Path,
) -> Result<gobgp::Gobgp> {
    let (host, port) = api
        .rsplit_once(':')
        .with_context(|| format!("{section} gobgp_api {api:?}: give host:port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{section} gobgp_api {api:?}: the port is not a number"))?;
    Ok(gobgp::Gobgp {
        program: program.to_path_buf(),
        host: host.trim_matches(['[', ']']).to_string(),
        port,
    })
}
