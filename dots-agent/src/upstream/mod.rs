//! Gateways and recursive signalling (draft-ietf-dots-architecture §2.2.3, §3.2.3): the
//! server's `[upstream]`, a DOTS server further up that accepted mitigations are carried to.
//! [`relay::Relay`] is the engine's [`crate::engine::escalation::Escalation`]: it maps each
//! downstream (cuid, mid) to a mid of the server's own upstream session and keeps the
//! mapping in the store; [`link`] is the one upstream client session (the project's DOTS
//! client, `client::Session`), which makes upstream what the relay wants and reports back.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::client::{ClientConfig, ClientTls, TransportChoice};

pub mod hop;
pub mod link;
pub mod relay;
pub mod request;
mod status;
pub mod telemetry;

/// When a request goes upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Escalate {
    /// Every accepted request (a gateway; a recursive server that always asks for help).
    #[default]
    Always,
    /// Only once this filter cannot hold it: measured or client-reported traffic above
    /// `capacity_pps` / `capacity_bps`, or a spec that does not fit (engine/escalation/triggers.rs).
    Exceeded,
    /// Never (a server that mitigates alone; `[upstream]` then only names the next hop).
    Never,
}

impl Escalate {
    /// As server.toml spells it.
    pub fn name(self) -> &'static str {
        match self {
            Escalate::Always => "always",
            Escalate::Exceeded => "exceeded",
            Escalate::Never => "never",
        }
    }
}

/// Which domain the gateway serves (RFC 9132 §4.4.1.2: a server-domain gateway adds cdid).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// A client-domain gateway: its clients' domain is its own.
    #[default]
    Client,
    /// A server-domain gateway: relayed requests name each client's domain (cdid).
    Server,
}

/// `[upstream]` in server.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// host:port of the next DOTS server's signal channel.
    pub server: String,
    /// The name its certificate must carry.
    pub server_name: String,
    /// Our client identity towards it, and the CA its certificate must chain to.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub transport: TransportChoice,
    #[serde(default)]
    pub domain: Domain,
    #[serde(default)]
    pub escalate: Escalate,
    /// How long a withdrawn request stays upstream after the downstream withdrawal
    /// (default: the `[signal] terminating_seconds` of this server).
    #[serde(default)]
    pub terminating_seconds: Option<u64>,
    /// With escalate = "exceeded": what this server's filter can hold, measured as the
    /// traffic to a mitigation's targets in scope (packets/s, bit/s).
    #[serde(default)]
    pub capacity_pps: Option<u64>,
    #[serde(default)]
    pub capacity_bps: Option<u64>,
}

impl UpstreamConfig {
    /// Relative paths are taken from `base` (the config file's directory).
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks what can be checked without the network. `gateway`: no datapath of its own.
    pub fn validate(&self, gateway: bool) -> Result<()> {
        if self
            .server
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            bail!(
                "[upstream] server {:?} is not host:port (e.g. \"192.0.2.1:4646\")",
                self.server
            );
        }
        if self.server_name.trim().is_empty() {
            bail!("[upstream] server_name is empty: give the name the upstream server's certificate carries");
        }
        for (what, p) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if !p.exists() {
                bail!(
                    "[upstream] {what}: {} does not exist (the upstream operator's CA, and a \
                     certificate and key it issued for this server)",
                    p.display()
                );
            }
        }
        match self.escalate {
            Escalate::Never if gateway => bail!(
                "[upstream] escalate = \"never\" with no [datapath] interfaces: a gateway \
                 mitigates nothing itself; use escalate = \"always\" or give interfaces"
            ),
            Escalate::Exceeded if gateway => bail!(
                "[upstream] escalate = \"exceeded\" with no [datapath] interfaces: a gateway \
                 measures no traffic; use escalate = \"always\""
            ),
            Escalate::Exceeded if self.capacity_pps.is_none() && self.capacity_bps.is_none() => {
                bail!(
                    "[upstream] escalate = \"exceeded\" needs capacity_pps or capacity_bps (what \
                     this server's filter can hold)"
                )
            }
            Escalate::Always | Escalate::Never
                if self.capacity_pps.is_some() || self.capacity_bps.is_some() =>
            {
                bail!(
                    "[upstream] capacity_pps and capacity_bps apply only with escalate = \"exceeded\""
                )
            }
            _ => {}
        }
        if self.capacity_pps == Some(0) || self.capacity_bps == Some(0) {
            bail!("[upstream] a capacity of 0 escalates everything: use escalate = \"always\"");
        }
        if self
            .terminating_seconds
            .is_some_and(|t| t > crate::engine::TERMINATING_MAX)
        {
            bail!(
                "[upstream] terminating_seconds is at most {}",
                crate::engine::TERMINATING_MAX
            );
        }
        Ok(())
    }

    /// How the relay decides what goes upstream.
    pub fn mode(&self) -> relay::Mode {
        match self.escalate {
            Escalate::Exceeded => relay::Mode::Exceeded {
                pps: self.capacity_pps,
                bps: self.capacity_bps,
            },
            _ => relay::Mode::Always,
        }
    }

    /// The DOTS client configuration of the upstream session.
    pub fn client(&self) -> ClientConfig {
        ClientConfig {
            server: self.server.clone(),
            transport: self.transport,
            server_name: self.server_name.clone(),
            tls: ClientTls {
                ca: self.ca.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::server::ServerConfig;

    /// Loads a server.toml with this `[upstream]` (and `[datapath]`) in a directory holding
    /// the files it names; the error's text.
    fn load_error(upstream: &str, datapath: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "server.pem", "server.key", "gw.pem", "gw.key"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            format!(
                "[signal]\nlisten = [\"127.0.0.1:4646\"]\n[tls]\nca = \"ca.pem\"\n\
                 cert = \"server.pem\"\nkey = \"server.key\"\n{datapath}\n[upstream]\n{upstream}"
            ),
        )
        .unwrap();
        match ServerConfig::load(&path) {
            Ok(c) => {
                let u = c.upstream.unwrap();
                assert_eq!(u.cert, dir.path().join("gw.pem"), "relative to the file");
                "ok".into()
            }
            Err(e) => format!("{e:#}"),
        }
    }

    const GOOD: &str = "server = \"192.0.2.1:4646\"\nserver_name = \"dots.example\"\n\
        ca = \"ca.pem\"\ncert = \"gw.pem\"\nkey = \"gw.key\"\n";

    #[test]
    fn the_issue_example_loads() {
        assert_eq!(load_error(GOOD, ""), "ok");
        let all =
            format!("{GOOD}transport = \"tls\"\ndomain = \"client\"\nescalate = \"always\"\n");
        assert_eq!(load_error(&all, ""), "ok");
        // A server-domain gateway (cdid).
        assert_eq!(
            load_error(&format!("{GOOD}domain = \"server\"\n"), ""),
            "ok"
        );
        let bad = load_error(&format!("{GOOD}domain = \"isp\"\n"), "");
        assert!(bad.contains("unknown variant `isp`"), "{bad}");
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                GOOD.replace("192.0.2.1:4646", "192.0.2.1"),
                "",
                "is not host:port",
            ),
            (GOOD.replace("gw.key", "nosuch.key"), "", "[upstream] key: "),
            (
                format!("{GOOD}escalate = \"never\"\n"),
                "",
                "a gateway mitigates nothing",
            ),
            (
                format!("{GOOD}escalate = \"sometimes\"\n"),
                "",
                "unknown variant `sometimes`",
            ),
            (
                format!("{GOOD}transport = \"quic\"\n"),
                "",
                "unknown variant `quic`",
            ),
            (
                format!("{GOOD}terminating_seconds = 301\n"),
                "",
                "at most 300",
            ),
            (format!("{GOOD}color = 1\n"), "", "unknown field `color`"),
            (
                format!("{GOOD}escalate = \"exceeded\"\ncapacity_pps = 5\n"),
                "",
                "a gateway measures no traffic",
            ),
            (
                format!("{GOOD}capacity_pps = 5\n"),
                "",
                "apply only with escalate = \"exceeded\"",
            ),
            (
                GOOD.replace("server_name = \"dots.example\"", "server_name = \" \""),
                "",
                "server_name is empty",
            ),
        ];
        for (upstream, datapath, want) in cases {
            let got = load_error(&upstream, datapath);
            assert!(got.contains(want), "{upstream}: {got}");
        }
        // With a datapath of its own, a server may keep its requests (escalate = never).
        let never = format!("{GOOD}escalate = \"never\"\n");
        assert_eq!(
            load_error(&never, "[datapath]\ninterfaces = [\"eth9\"]"),
            "ok"
        );
    }
}
