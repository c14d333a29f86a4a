//! What a mitigation asks of the datapath, independent of how the XDP maps hold it.
//!
//! These types are what the DOTS engine hands to a [`super::Mitigator`] and what a lab
//! writes in a TOML or JSON file for `dots-agent xdp mitigation add`.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One mitigation: a set of destination prefixes and the rules applied to traffic to them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MitigationSpec {
    /// The owner's identifier (the DOTS engine uses its own mitigation key).
    pub id: u64,
    /// Destination prefixes (IPv4 and/or IPv6). A prefix belongs to one mitigation at a time.
    pub targets: Vec<IpNet>,
    /// IP protocols in scope; empty means any.
    #[serde(default)]
    pub protocols: Vec<u8>,
    /// Destination port ranges in scope; empty means any port.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// Sources always let through (checked first).
    #[serde(default)]
    pub accept_list: Vec<IpNet>,
    /// Sources always dropped.
    #[serde(default)]
    pub drop_list: Vec<IpNet>,
    /// Ordered ACL entries: the first match decides.
    #[serde(default)]
    pub acl: Vec<AclEntry>,
    #[serde(default)]
    pub countermeasures: Countermeasures,
}

impl MitigationSpec {
    /// A mitigation of these targets with no rules yet (everything else empty or off).
    pub fn new(id: u64, targets: Vec<IpNet>) -> Self {
        MitigationSpec {
            id,
            targets,
            protocols: Vec::new(),
            ports: Vec::new(),
            accept_list: Vec::new(),
            drop_list: Vec::new(),
            acl: Vec::new(),
            countermeasures: Countermeasures::default(),
        }
    }
}

/// An inclusive port range; `upper` absent means the single port `lower`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub lower: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<u16>,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            lower: port,
            upper: None,
        }
    }
    pub fn new(lower: u16, upper: u16) -> Self {
        PortRange {
            lower,
            upper: Some(upper),
        }
    }
    pub fn upper(&self) -> u16 {
        self.upper.unwrap_or(self.lower)
    }
}

/// A rate: `rate` units per second, with bursts of up to `burst` units (default: a tenth
/// of a second's worth, at least one packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub rate: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

impl Rate {
    pub fn new(rate: u64) -> Self {
        Rate { rate, burst: None }
    }
}

/// Built-in countermeasures, each switchable per mitigation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Countermeasures {
    /// Drop UDP whose source port is a well-known amplification port (the datapath's
    /// configurable port set).
    #[serde(default)]
    pub amplification: bool,
    /// Drop non-first IP fragments.
    #[serde(default)]
    pub fragments: bool,
    /// Per-source packet-rate limit (packets/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pps: Option<Rate>,
    /// Per-source TCP SYN limit (SYNs/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_pps: Option<Rate>,
    /// Scope-wide byte-rate cap (bytes/s), e.g. the client's pipe capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_bps: Option<Rate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    /// Unique within the mitigation; counters follow the name across rule-set updates.
    pub name: String,
    #[serde(default)]
    pub matches: AclMatch,
    pub action: AclAction,
}

/// Match fields; an absent field matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<BitMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// Fragment facts: bits `df`, `isf` (is a fragment), `ff` (first), `lf` (last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment: Option<BitMatch>,
    /// IPv4 total length / IPv6 payload length, inclusive range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<ValueRange>,
    /// TTL / hop limit, inclusive range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<ValueRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dscp: Option<u8>,
}

/// `(value & bits) == bits` (operator `match`) or `(value & bits) != 0` (`any`), possibly
/// negated. Bits are given by name: TCP `fin syn rst psh ack urg ece cwr`; fragment
/// `df isf ff lf`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitMatch {
    pub bits: Vec<String>,
    #[serde(default)]
    pub operator: BitOperator,
    #[serde(default)]
    pub not: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BitOperator {
    #[default]
    Match,
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueRange {
    pub min: u16,
    pub max: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AclAction {
    Accept,
    Drop,
    /// Accept up to this rate, drop beyond it.
    RateLimit(RateLimit),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateLimit {
    BytesPerSecond(Rate),
    PacketsPerSecond(Rate),
}
