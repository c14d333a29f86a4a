//! Scenario files: what traffic the lab sends in which phase, when the customer's guard asks
//! for mitigation, and the scrubber's filters for that customer. See
//! `examples/scenarios/*.toml`; the default one is embedded in the binary.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use serde::Deserialize;

use crate::trafficgen::{self, Protocol};
use dots_agent::datapath::{AclEntry, Countermeasures};

/// The scenario `dots-lab run` runs without an argument.
pub const DEFAULT: &str = include_str!("../../../examples/scenarios/reflection-syn-udp.toml");

/// The customer's network in the lab topology: traffic destinations must lie inside.
pub const CUSTOMER_PREFIXES: [&str; 2] = ["198.51.100.0/24", "2001:db8:6401::/48"];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub phases: Phases,
    pub guard: Guard,
    #[serde(default)]
    pub filters: Filters,
    #[serde(rename = "traffic")]
    pub traffic: Vec<Traffic>,
    /// A chain of agents instead of one scrubber (`[filters]` is then the provider's
    /// policy): see `lab/chain`.
    #[serde(default)]
    pub chain: Option<super::chain::ChainSpec>,
}

/// Seconds of each phase: legitimate only, attack, after the attack.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phases {
    pub legit_seconds: f64,
    pub attack_seconds: f64,
    pub recovery_seconds: f64,
}

/// The customer's DOTS client in threshold mode.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Received packets per second on the customer's interface that trigger the request.
    pub threshold_pps: u64,
    /// Withdraw once the attack has been gone this long.
    pub quiet_seconds: f64,
    #[serde(default = "default_lifetime")]
    pub lifetime: u32,
}

fn default_lifetime() -> u32 {
    600
}

/// The scrubber's policy for the customer (its `[[client]]` in server.toml).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    #[serde(default)]
    pub countermeasures: Option<Countermeasures>,
    #[serde(default)]
    pub acl: Vec<AclEntry>,
    /// How long a withdrawn mitigation keeps filtering (RFC 9132's terminating period).
    #[serde(default = "default_terminating")]
    pub terminating_seconds: u64,
}

fn default_terminating() -> u64 {
    2
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Legit,
    Attack,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    pub name: String,
    pub role: Role,
    pub sources: IpNet,
    pub destination: IpAddr,
    pub protocol: Protocol,
    #[serde(default = "default_sport")]
    pub source_port: u16,
    #[serde(default = "default_dport")]
    pub destination_port: u16,
    #[serde(default)]
    pub tcp_flags: Vec<String>,
    #[serde(default = "default_payload")]
    pub payload: usize,
    pub pps: u64,
}

fn default_sport() -> u16 {
    40000
}
fn default_dport() -> u16 {
    80
}
fn default_payload() -> usize {
    18
}

/// Upper bounds that keep a lab bounded in time and load.
const MAX_PHASE_SECONDS: f64 = 600.0;
const MAX_PPS: u64 = 20_000_000;
const MAX_FLOWS: usize = 16;

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Scenario> {
        let s: Scenario = toml::from_str(text).context("not a valid scenario")?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("legit_seconds", self.phases.legit_seconds),
            ("attack_seconds", self.phases.attack_seconds),
            ("recovery_seconds", self.phases.recovery_seconds),
            ("[guard] quiet_seconds", self.guard.quiet_seconds),
        ] {
            if !(0.0..=MAX_PHASE_SECONDS).contains(&v) {
                bail!("[phases] {what} = {v}: use 0 to {MAX_PHASE_SECONDS} seconds");
            }
        }
        if self.phases.attack_seconds < 1.0 {
            bail!("[phases] attack_seconds must be at least 1");
        }
        if self.guard.threshold_pps == 0 {
            bail!("[guard] threshold_pps must be positive");
        }
        if self.guard.lifetime == 0 {
            bail!("[guard] lifetime must be positive");
        }
        if self.filters.terminating_seconds > dots_agent::engine::TERMINATING_MAX {
            bail!(
                "[filters] terminating_seconds is at most {}",
                dots_agent::engine::TERMINATING_MAX
            );
        }
        if self.traffic.is_empty() || self.traffic.len() > MAX_FLOWS {
            bail!("give 1 to {MAX_FLOWS} [[traffic]] entries");
        }
        if !self.traffic.iter().any(|t| t.role == Role::Attack) {
            bail!("no [[traffic]] entry has role = \"attack\": nothing to mitigate");
        }
        let customer: Vec<IpNet> = CUSTOMER_PREFIXES
            .iter()
            .map(|p| p.parse().expect("constant prefix"))
            .collect();
        for (i, t) in self.traffic.iter().enumerate() {
            let at = format!("[[traffic]] {:?}", t.name);
            if t.name.is_empty() || t.name.len() > 24 {
                bail!("[[traffic]] #{}: name must be 1 to 24 characters", i + 1);
            }
            if self.traffic[..i].iter().any(|o| o.name == t.name) {
                bail!("{at}: the name is used twice");
            }
            if !customer.iter().any(|c| c.contains(&t.destination)) {
                bail!(
                    "{at}: destination {} is outside the lab's customer network ({})",
                    t.destination,
                    CUSTOMER_PREFIXES.join(", ")
                );
            }
            if customer.iter().any(|c| c.contains(&t.sources.network())) {
                bail!(
                    "{at}: sources {} are inside the customer network; use TEST-NET sources such as 192.0.2.0/24 or 203.0.113.0/24",
                    t.sources
                );
            }
            // The receiver tells flows apart by source: prefixes must not overlap.
            if let Some(o) = self.traffic[..i].iter().find(|o| {
                o.sources.contains(&t.sources.network()) || t.sources.contains(&o.sources.network())
            }) {
                bail!(
                    "{at}: sources {} overlap those of {:?} ({}); the receiver counts flows by source prefix",
                    t.sources,
                    o.name,
                    o.sources
                );
            }
            if t.pps == 0 || t.pps > MAX_PPS {
                bail!("{at}: pps must be 1 to {MAX_PPS}");
            }
            if t.protocol != Protocol::Tcp && !t.tcp_flags.is_empty() {
                bail!("{at}: tcp_flags only apply to protocol = \"tcp\"");
            }
            trafficgen::parse_tcp_flags(&t.tcp_flags).with_context(|| at.clone())?;
            self.flow(t, [0; 6], [0; 6])
                .template()
                .with_context(|| at.clone())?;
        }
        // The policy must compile into the datapath as the server will compile it.
        let mut spec = dots_agent::datapath::MitigationSpec::new(
            1,
            CUSTOMER_PREFIXES
                .iter()
                .map(|p| p.parse().expect("constant prefix"))
                .collect(),
        );
        spec.acl = self.filters.acl.clone();
        if let Some(c) = &self.filters.countermeasures {
            spec.countermeasures = c.clone();
        }
        dots_agent::datapath::compile::validate(&spec)
            .map_err(|e| anyhow::anyhow!("[filters]: {e}"))?;
        if let Some(chain) = &self.chain {
            chain.validate(self)?;
        }
        Ok(())
    }

    /// The generator's flow for a traffic entry.
    pub fn flow(&self, t: &Traffic, src_mac: [u8; 6], dst_mac: [u8; 6]) -> trafficgen::Flow {
        let flags = if t.tcp_flags.is_empty() {
            vec!["syn".to_string()]
        } else {
            t.tcp_flags.clone()
        };
        trafficgen::Flow {
            sources: t.sources,
            destination: t.destination,
            protocol: t.protocol,
            source_port: t.source_port,
            destination_port: t.destination_port,
            // Validated in `validate` (an unknown flag name is reported there).
            tcp_flags: trafficgen::parse_tcp_flags(&flags).unwrap_or(0),
            payload: t.payload,
            dst_mac,
            src_mac,
        }
    }

    pub fn total_seconds(&self) -> f64 {
        self.phases.legit_seconds + self.phases.attack_seconds + self.phases.recovery_seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            // A fleet's scenario is the fleet's to check (fleet/attack.rs).
            let fleet = std::fs::read_to_string(&p).is_ok_and(|t| t.contains("\n[fleet]\n"));
            if p.extension().is_some_and(|x| x == "toml") && !fleet {
                Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "ship at least two scenarios");
        assert!(Scenario::parse(DEFAULT).is_ok());
    }

    #[test]
    fn mistakes_are_named() {
        let err = |from: &str, to: &str| {
            format!(
                "{:#}",
                Scenario::parse(&DEFAULT.replacen(from, to, 1)).unwrap_err()
            )
        };
        assert!(err(
            "destination = \"198.51.100.10\"",
            "destination = \"192.0.2.99\""
        )
        .contains("outside the lab's customer network"));
        assert!(err("threshold_pps = ", "threshold_pps = 0 #").contains("threshold_pps"));
        assert!(err("legit_seconds", "legit_secs").contains("legit_secs"));
        assert!(err("protocol = \"udp\"", "protocol = \"sctp\"").contains("sctp"));
        assert!(
            err("sources = \"192.0.2.0/26\"", "sources = \"192.0.2.128/25\"").contains("overlap")
        );
        assert!(
            err("sources = \"192.0.2.0/26\"", "sources = \"192.0.2.1/26\"").contains("host bits")
        );
        assert!(
            err("tcp_flags = [\"syn\"]", "tcp_flags = [\"syn\", \"psh!\"]")
                .contains("unknown TCP flag")
        );
    }
}
