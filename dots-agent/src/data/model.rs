//! The `ietf-dots-data-channel` JSON model (RFC 8783 §4, on RFC 8519's ACL groupings):
//! aliases and ACLs as clients send them, their limits and their views. Pure: no I/O. Their
//! mapping onto the datapath's ACL entries is `mapping`.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::restconf::{ErrorTag, RestconfError};
use crate::datapath::compile::name_hash;

/// Minutes an alias or ACL lives without a refresh (RFC 8783 §6.1, §7.2: at least a week).
pub const DEFAULT_LIFETIME_MINUTES: u64 = 10080;
/// Bounds on what one client may hold (hostile clients must not exhaust memory).
pub const MAX_ALIASES: usize = 256;
pub const MAX_ACLS: usize = 64;
pub const MAX_ACES_PER_ACL: usize = 256;
pub const MAX_TARGETS_PER_ALIAS: usize = 256;
pub const MAX_NAME: usize = 64;

/// An alias (RFC 8783 §6): a named set of targets for `alias-name` in mitigation requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Alias {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_prefix: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_port_range: Vec<TargetPortRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_protocol: Vec<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_fqdn: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_uri: Vec<String>,
    /// Read-only: remaining minutes (ignored in requests, filled in responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_lifetime: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TargetPortRange {
    pub lower_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_port: Option<u16>,
}

impl Alias {
    /// Checks names, prefixes and ranges; `pending-lifetime` from the client is dropped.
    pub fn validate(mut self) -> Result<Alias, RestconfError> {
        check_name("alias", &self.name)?;
        let n = self.target_prefix.len()
            + self.target_fqdn.len()
            + self.target_uri.len()
            + self.target_port_range.len();
        if self.target_prefix.is_empty()
            && self.target_fqdn.is_empty()
            && self.target_uri.is_empty()
        {
            return Err(RestconfError::new(
                ErrorTag::MissingAttribute,
                format!(
                    "alias {:?} needs at least one target-prefix, target-fqdn or target-uri",
                    self.name
                ),
            ));
        }
        if n > MAX_TARGETS_PER_ALIAS {
            return Err(RestconfError::invalid(format!(
                "alias {:?} has {n} targets; at most {MAX_TARGETS_PER_ALIAS}",
                self.name
            )));
        }
        for p in &self.target_prefix {
            check_prefix(p)?;
        }
        for r in &self.target_port_range {
            if r.upper_port.is_some_and(|u| u < r.lower_port) {
                return Err(RestconfError::invalid(format!(
                    "alias {:?}: upper-port {} is below lower-port {}",
                    self.name,
                    r.upper_port.unwrap_or(0),
                    r.lower_port
                )));
            }
        }
        for t in self.target_fqdn.iter().chain(&self.target_uri) {
            if t.is_empty() || t.len() > 255 {
                return Err(RestconfError::invalid(format!(
                    "alias {:?}: target-fqdn/target-uri values must be 1 to 255 characters",
                    self.name
                )));
            }
        }
        self.pending_lifetime = None;
        Ok(self)
    }
}

/// An ACL as the client sent it (validated), kept to echo back and to rebuild entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Acl {
    pub name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub acl_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_type: Option<String>,
    /// Read-only: remaining minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_lifetime: Option<i64>,
    pub aces: Aces,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aces {
    pub ace: Vec<Ace>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ace {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Map<String, Value>>,
    pub actions: Map<String, Value>,
    /// Read-only: matched-packets / matched-octets from the XDP counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<Value>,
}

/// When an ACL is enforced (RFC 8783 §7.2, RFC 9133).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Only while the client has an active mitigation (the YANG default).
    WhenMitigating,
    Immediate,
    /// Stored, not enforced.
    Deactivate,
}

impl Activation {
    pub fn parse(s: Option<&str>) -> Result<Activation, RestconfError> {
        match s.map(|s| s.rsplit(':').next().unwrap_or(s)) {
            None | Some("activate-when-mitigating") => Ok(Activation::WhenMitigating),
            Some("immediate") => Ok(Activation::Immediate),
            Some("deactivate") => Ok(Activation::Deactivate),
            Some(other) => Err(RestconfError::invalid(format!(
                "activation-type {other:?}: use activate-when-mitigating, immediate or deactivate"
            ))),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Activation::WhenMitigating => "activate-when-mitigating",
            Activation::Immediate => "immediate",
            Activation::Deactivate => "deactivate",
        }
    }
}

impl Acl {
    pub fn activation(&self) -> Activation {
        Activation::parse(self.activation_type.as_deref()).unwrap_or(Activation::WhenMitigating)
    }

    /// Copy for a response: read-only data filled in, as `content` asks.
    pub fn view(
        &self,
        pending_minutes: i64,
        stats: &dyn Fn(&str) -> (u64, u64),
        content: Content,
    ) -> Value {
        let mut acl = self.clone();
        if content != Content::Config {
            acl.pending_lifetime = Some(pending_minutes);
            for ace in &mut acl.aces.ace {
                let (p, o) = stats(&datapath_name(&self.name, &ace.name));
                ace.statistics = Some(serde_json::json!({
                    "matched-packets": p.to_string(),
                    "matched-octets": o.to_string(),
                }));
            }
        }
        if content == Content::NonConfig {
            return serde_json::json!({
                "name": acl.name,
                "pending-lifetime": pending_minutes,
                "aces": {"ace": acl.aces.ace.iter().map(|a| serde_json::json!({
                    "name": a.name, "statistics": a.statistics})).collect::<Vec<_>>()},
            });
        }
        serde_json::to_value(acl).unwrap_or(Value::Null)
    }
}

/// RESTCONF `content` query parameter (RFC 8040 §4.8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    All,
    Config,
    NonConfig,
}

/// The name the datapath counts an entry under: `acl/ace` when it fits its 64 characters
/// and neither name holds a `/` (which could make two pairs look alike), else a hash of
/// both (names are unique per client, so entries stay distinct).
pub fn datapath_name(acl: &str, ace: &str) -> String {
    let joined = format!("{acl}/{ace}");
    if joined.len() <= 64 && !acl.contains('/') && !ace.contains('/') {
        joined
    } else {
        format!("{:016x}", name_hash(&format!("{acl}\u{0}{ace}")))
    }
}

pub(super) fn check_name(what: &str, name: &str) -> Result<(), RestconfError> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(|c| c.is_control()) {
        return Err(RestconfError::invalid(format!(
            "{what} name {name:?} must be 1 to {MAX_NAME} printable characters"
        )));
    }
    Ok(())
}

pub(super) fn check_prefix(p: &IpNet) -> Result<(), RestconfError> {
    if *p != p.trunc() {
        return Err(RestconfError::invalid(format!(
            "prefix {p} has host bits set: use {}",
            p.trunc()
        )));
    }
    Ok(())
}
