//! server.toml: what the DOTS server listens on, its certificates, its datapath and the
//! clients it serves. Relative paths are taken from the config file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use serde::Deserialize;

use crate::datapath::{AclEntry, AttachMode, Countermeasures, Rate, DEFAULT_PIN_ROOT};
use crate::engine::ClientPolicy;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub signal: Signal,
    pub tls: Tls,
    #[serde(default)]
    pub store: Store,
    #[serde(default)]
    pub datapath: Datapath,
    /// The data channel (RFC 8783); absent: no data channel.
    #[serde(default)]
    pub data: Option<Data>,
    #[serde(default, rename = "client")]
    pub clients: Vec<Client>,
    #[serde(default)]
    pub metrics: Metrics,
    /// The next DOTS server up (a gateway, a recursive server); absent: none.
    #[serde(default)]
    pub upstream: Option<crate::upstream::UpstreamConfig>,
    /// BGP FlowSpec announcements of accepted mitigations; absent: off.
    #[serde(default)]
    pub flowspec: Option<crate::flowspec::FlowspecConfig>,
    /// Diversion of active mitigations' targets through this scrubber (BGP); absent: off.
    #[serde(default)]
    pub diversion: Option<crate::flowspec::divert::DiversionConfig>,
    /// The file it was loaded from (what a reload reads again).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Prometheus exposition (`GET /metrics`); off unless addresses are given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Mitigations with series of their own (those that dropped most); the rest are summed
    /// per client under mid "other", so series stay bounded.
    #[serde(default = "default_per_mitigation_limit")]
    pub per_mitigation_limit: usize,
    /// HTTPS instead of HTTP; with `client_ca`, scrapers must present a certificate from it.
    #[serde(default)]
    pub tls: Option<MetricsTls>,
    /// A file holding the token scrapers must send (`Authorization: Bearer <token>`).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Connections served at once per address (at most an eighth of the descriptors).
    #[serde(default = "default_metrics_connections")]
    pub max_connections: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

fn default_per_mitigation_limit() -> usize {
    1000
}

fn default_metrics_connections() -> usize {
    64
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: Vec::new(),
            per_mitigation_limit: default_per_mitigation_limit(),
            tls: None,
            bearer_token_file: None,
            max_connections: default_metrics_connections(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    /// Each address serves CoAP over DTLS on UDP and CoAP over TLS on TCP.
    pub listen: Vec<SocketAddr>,
    /// How long a withdrawn mitigation keeps filtering (RFC 9132 4.4.4: 120 s, at most 300).
    #[serde(default = "default_terminating")]
    pub terminating_seconds: u64,
    /// Seconds without drops, after some, before a mitigation reports attack-stopped (3).
    #[serde(default = "default_attack_quiet")]
    pub attack_quiet_seconds: u64,
    /// Send every client to another server instead (RFC 9132 §4.6), e.g. for maintenance.
    #[serde(default)]
    pub redirect: Option<SignalRedirect>,
    /// A DTLS session from which nothing arrives this long ends (default: as long as its
    /// client may stay silent before it is declared lost, heartbeat interval times
    /// missing-hb-allowed).
    #[serde(default)]
    pub dtls_idle_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRedirect {
    /// The alternate server's name (its certificate must carry it).
    pub alt_server: String,
    /// Its addresses, so that clients need not resolve the name.
    #[serde(default)]
    pub alt_server_record: Vec<std::net::IpAddr>,
    /// How long clients should use it (Max-Age); default: until redirected again.
    #[serde(default = "default_redirect_max_age")]
    pub max_age: u32,
}

fn default_redirect_max_age() -> u32 {
    u32::MAX
}

impl SignalRedirect {
    pub fn message(&self) -> (crate::signal::message::Redirect, u32) {
        (
            crate::signal::message::Redirect {
                alt_server: self.alt_server.clone(),
                alt_server_record: self.alt_server_record.clone(),
            },
            self.max_age,
        )
    }
}

fn default_attack_quiet() -> u64 {
    crate::engine::ATTACK_QUIET_DEFAULT
}

fn default_terminating() -> u64 {
    crate::engine::TERMINATING_DEFAULT
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// HTTPS (RESTCONF) addresses, with the same certificates as the signal channel.
    pub listen: Vec<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub dir: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            dir: "/var/lib/dots-agent".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Datapath {
    /// Interfaces to attach the XDP filter to; empty: run the control plane without XDP.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default = "default_mode")]
    pub xdp_mode: AttachMode,
    #[serde(default = "default_pin_root")]
    pub pin_root: PathBuf,
    /// UDP source ports of the amplification countermeasure (default: the well-known set).
    #[serde(default)]
    pub amplification_ports: Option<Vec<u16>>,
}

fn default_mode() -> AttachMode {
    AttachMode::Auto
}

fn default_pin_root() -> PathBuf {
    DEFAULT_PIN_ROOT.into()
}

impl Default for Datapath {
    fn default() -> Self {
        Datapath {
            interfaces: Vec::new(),
            xdp_mode: AttachMode::Auto,
            pin_root: default_pin_root(),
            amplification_ports: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Matched to the subject CN of the client's certificate.
    pub name: String,
    /// Targets this client may ask mitigation for.
    pub prefixes: Vec<IpNet>,
    /// The mitigation policy for this client (default: see [`default_countermeasures`]).
    #[serde(default)]
    pub countermeasures: Option<Countermeasures>,
    /// ACL entries applied to this client's mitigations (as in a mitigation file's [[acl]]).
    #[serde(default)]
    pub acl: Vec<AclEntry>,
    #[serde(default)]
    pub allow_indefinite: bool,
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: u32,
    /// Drop the top talkers this client reports in pre-mitigation telemetry (RFC 9244).
    #[serde(default)]
    pub drop_top_talkers: bool,
    /// A server-domain DOTS gateway trusted to name its clients' domain (cdid, RFC 9132
    /// §4.4.1.2); a cdid from any other client is refused (4.03).
    #[serde(default)]
    pub gateway: bool,
}

fn default_max_lifetime() -> u32 {
    86_400
}

/// What a scrubber operator expects by default: UDP from well-known amplification ports
/// dropped, per-source packet and SYN limits on, no scope-wide cap (telemetry sets that).
pub fn default_countermeasures() -> Countermeasures {
    Countermeasures {
        amplification: true,
        fragments: false,
        source_pps: Some(Rate {
            rate: 10_000,
            burst: Some(20_000),
        }),
        syn_pps: Some(Rate {
            rate: 100,
            burst: Some(200),
        }),
        scope_bps: None,
    }
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<ServerConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut c: ServerConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid server config", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut c.tls.ca,
            &mut c.tls.cert,
            &mut c.tls.key,
            &mut c.store.dir,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let m = &mut c.metrics;
        let metrics_paths = m.tls.iter_mut().flat_map(|t| {
            [Some(&mut t.cert), Some(&mut t.key), t.client_ca.as_mut()]
                .into_iter()
                .flatten()
        });
        for p in metrics_paths.chain(m.bearer_token_file.as_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(u) = c.upstream.as_mut() {
            u.resolve(base);
        }
        c.validate()
            .with_context(|| format!("in {}", path.display()))?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        if let Some(fs) = &self.flowspec {
            fs.check()?;
        }
        if let Some(d) = &self.diversion {
            d.check(&self.datapath.interfaces)?;
        }
        if self.signal.terminating_seconds > crate::engine::TERMINATING_MAX {
            bail!(
                "[signal] terminating_seconds is at most {}",
                crate::engine::TERMINATING_MAX
            );
        }
        if let Some(r) = &self.signal.redirect {
            if r.alt_server.trim().is_empty() {
                bail!("[signal.redirect] alt_server is empty: give the alternate server's name");
            }
        }
        if self.signal.attack_quiet_seconds == 0 {
            bail!("[signal] attack_quiet_seconds must be at least 1");
        }
        if self.signal.dtls_idle_seconds == Some(0) {
            bail!("[signal] dtls_idle_seconds must be at least 1");
        }
        if self.metrics.max_connections == 0 {
            bail!("[metrics] max_connections must be at least 1");
        }
        if self.signal.listen.is_empty() {
            bail!("[signal] listen is empty: give at least one address, e.g. \"[::]:4646\"");
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.clients {
            if c.name == crate::engine::OPERATOR_CLIENT {
                bail!(
                    "client name {:?} is reserved for the operator's own mitigations",
                    c.name
                );
            }
            if !names.insert(&c.name) {
                bail!("client {:?} is configured twice", c.name);
            }
            if c.prefixes.is_empty() {
                bail!(
                    "client {:?} has no prefixes: it could not ask for any mitigation",
                    c.name
                );
            }
            for p in &c.prefixes {
                if p.addr() != p.network() {
                    bail!(
                        "client {:?}: prefix {p} has host bits set (use {})",
                        c.name,
                        p.trunc()
                    );
                }
            }
            if c.max_lifetime == 0 {
                bail!("client {:?}: max_lifetime must be positive", c.name);
            }
        }
        if let Some(u) = &self.upstream {
            u.validate(self.datapath.interfaces.is_empty())?;
        }
        for (what, p) in [
            ("ca", &self.tls.ca),
            ("cert", &self.tls.cert),
            ("key", &self.tls.key),
        ] {
            if !p.exists() {
                bail!(
                    "[tls] {what}: {} does not exist (dots-agent pki init makes a lab set)",
                    p.display()
                );
            }
        }
        Ok(())
    }

    /// Clients whose reported top talkers are dropped.
    pub fn talker_drop_clients(&self) -> Vec<String> {
        self.clients
            .iter()
            .filter(|c| c.drop_top_talkers)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Clients trusted to supply cdid (`gateway = true`).
    pub fn cdid_gateways(&self) -> Vec<String> {
        self.clients
            .iter()
            .filter(|c| c.gateway)
            .map(|c| c.name.clone())
            .collect()
    }

    pub fn policies(&self) -> Vec<ClientPolicy> {
        self.clients
            .iter()
            .map(|c| ClientPolicy {
                name: c.name.clone(),
                prefixes: c.prefixes.clone(),
                countermeasures: c
                    .countermeasures
                    .clone()
                    .unwrap_or_else(default_countermeasures),
                acl: c.acl.clone(),
                allow_indefinite: c.allow_indefinite,
                max_lifetime: c.max_lifetime,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        for f in ["ca.pem", "server.pem", "server.key"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let p = dir.join("server.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = r#"
[signal]
listen = ["[::]:4646"]
[tls]
ca = "ca.pem"
cert = "server.pem"
key = "server.key"
[store]
dir = "/var/lib/dots-agent"
[datapath]
interfaces = ["eth1"]
xdp_mode = "auto"
[[client]]
name = "client-a"
prefixes = ["203.0.113.0/24", "2001:db8:6401::/48"]
"#;

    #[test]
    fn the_issue_example_loads_with_operator_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = ServerConfig::load(&write(dir.path(), GOOD)).unwrap();
        assert_eq!(c.tls.ca, dir.path().join("ca.pem"));
        assert_eq!(c.datapath.interfaces, vec!["eth1"]);
        let p = &c.policies()[0];
        assert!(p.countermeasures.amplification && p.countermeasures.syn_pps.is_some());
        assert!(p.countermeasures.scope_bps.is_none());
    }

    #[test]
    fn mistakes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = |t: &str| {
            format!(
                "{:#}",
                ServerConfig::load(&write(dir.path(), t)).unwrap_err()
            )
        };
        assert!(err(&GOOD.replace("203.0.113.0/24", "203.0.113.9/24")).contains("host bits"));
        assert!(err(&GOOD.replace("xdp_mode", "xdp_mood")).contains("xdp_mood"));
        assert!(err(&GOOD.replace("\"[::]:4646\"", "")).contains("listen is empty"));
        assert!(err(&GOOD.replace("server.key\"", "missing.key\""))
            .contains("missing.key does not exist"));
        assert!(err(&format!(
            "{GOOD}\n[[client]]\nname = \"client-a\"\nprefixes = [\"192.0.2.0/24\"]\n"
        ))
        .contains("twice"));
        assert!(err(&format!("{GOOD}gateway = \"yes\"\n")).contains("invalid type"));
        let gw = ServerConfig::load(&write(dir.path(), &format!("{GOOD}gateway = true\n")));
        assert_eq!(gw.unwrap().cdid_gateways(), vec!["client-a"]);
        let redirect = |body: &str| {
            GOOD.replace(
                "[tls]",
                &format!("attack_quiet_seconds = 30\n[signal.redirect]\n{body}\n[tls]"),
            )
        };
        assert!(err(&redirect("alt_server = \"\"")).contains("alt_server is empty"));
        assert!(
            err(&GOOD.replace("[tls]", "attack_quiet_seconds = 0\n[tls]"))
                .contains("attack_quiet_seconds must be at least 1")
        );
        assert!(
            err(&redirect("alt_server = \"a\"\nalt_server_record = [\"x\"]"))
                .contains("alt_server_record")
        );
        let c = ServerConfig::load(&write(
            dir.path(),
            &redirect("alt_server = \"dots2.example\"\nalt_server_record = [\"2001:db8::7\"]"),
        ))
        .unwrap();
        let (to, max_age) = c.signal.redirect.unwrap().message();
        assert_eq!(
            (
                to.alt_server.as_str(),
                max_age,
                c.signal.attack_quiet_seconds
            ),
            ("dots2.example", u32::MAX, 30)
        );
    }
}
