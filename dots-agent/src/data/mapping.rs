//! The data channel's ACLs mapped onto the datapath's ACL entries. Matches are read field
//! by field against one table per container ([`FIELDS`]): a field the YANG module does not
//! define is `unknown-element`; a field it defines but the XDP filter cannot match is
//! refused by name (never approximated). The capabilities document is derived from the
//! same table, so it cannot claim more than the mapping does.

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::model::{check_name, check_prefix, datapath_name, Acl, Activation, MAX_ACES_PER_ACL};
use super::restconf::{ErrorTag, RestconfError};
use crate::datapath::{
    AclAction, AclEntry, AclMatch, BitMatch, BitOperator, PortRange, Rate, RateLimit, ValueRange,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Acl {
    /// Validates the ACL and maps it onto datapath entries (in order). `allowed` are the
    /// client's prefixes: every destination network must lie inside one (else 403).
    pub fn entries(&self, allowed: &[IpNet]) -> Result<Vec<AclEntry>, RestconfError> {
        check_name("acl", &self.name)?;
        Activation::parse(self.activation_type.as_deref())?;
        let family = match self
            .acl_type
            .as_deref()
            .map(|t| t.rsplit(':').next().unwrap_or(t))
        {
            None => None,
            Some("ipv4-acl-type") => Some(Family::V4),
            Some("ipv6-acl-type") => Some(Family::V6),
            Some(other) => {
                return Err(RestconfError::invalid(format!(
                    "acl {:?}: type {other:?} is not supported (ipv4-acl-type or ipv6-acl-type)",
                    self.name
                )))
            }
        };
        if self.aces.ace.is_empty() {
            return Err(RestconfError::new(
                ErrorTag::MissingAttribute,
                format!("acl {:?} has no ace", self.name),
            ));
        }
        if self.aces.ace.len() > MAX_ACES_PER_ACL {
            return Err(RestconfError::invalid(format!(
                "acl {:?} has {} aces; at most {MAX_ACES_PER_ACL}",
                self.name,
                self.aces.ace.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(self.aces.ace.len());
        for ace in &self.aces.ace {
            check_name("ace", &ace.name)?;
            if !seen.insert(ace.name.as_str()) {
                return Err(RestconfError::invalid(format!(
                    "acl {:?}: ace name {:?} is used twice",
                    self.name, ace.name
                )));
            }
            let ctx = format!("acl {:?} ace {:?}", self.name, ace.name);
            let matches = map_matches(&ctx, family, ace.matches.as_ref())?;
            if let Some(d) = matches.destination {
                if !allowed.iter().any(|a| a.contains(&d)) {
                    return Err(RestconfError::new(
                        ErrorTag::AccessDenied,
                        format!("{ctx}: destination {d} is outside this client's prefixes"),
                    ));
                }
            }
            let action = map_actions(&ctx, &ace.actions)?;
            out.push(AclEntry {
                name: datapath_name(&self.name, &ace.name),
                matches,
                action,
            });
        }
        Ok(out)
    }
}

/// Per container: every YANG leaf, and whether the XDP filter can match it.
pub const FIELDS: &[(&str, &[(&str, bool)])] = &[
    (
        "ipv4",
        &[
            ("dscp", true),
            ("ecn", false),
            ("length", true),
            ("ttl", true),
            ("protocol", true),
            ("ihl", false),
            ("flags", false),
            ("offset", false),
            ("identification", false),
            ("destination-ipv4-network", true),
            ("source-ipv4-network", true),
            ("fragment", true),
        ],
    ),
    (
        "ipv6",
        &[
            ("dscp", true),
            ("ecn", false),
            ("length", true),
            ("ttl", true),
            ("protocol", true),
            ("destination-ipv6-network", true),
            ("source-ipv6-network", true),
            ("flow-label", false),
            ("fragment", true),
        ],
    ),
    (
        "tcp",
        &[
            ("sequence-number", false),
            ("acknowledgement-number", false),
            ("data-offset", false),
            ("reserved", false),
            ("flags", false),
            ("window-size", false),
            ("urgent-pointer", false),
            ("options", false),
            ("flags-bitmask", true),
            ("source-port-range-or-operator", true),
            ("destination-port-range-or-operator", true),
            // RFC 8519's spelling, used by some DOTS clients (e.g. go-dots).
            ("source-port", true),
            ("destination-port", true),
        ],
    ),
    (
        "udp",
        &[
            ("length", false),
            ("source-port-range-or-operator", true),
            ("destination-port-range-or-operator", true),
            ("source-port", true),
            ("destination-port", true),
        ],
    ),
    (
        "icmp",
        &[("type", true), ("code", true), ("rest-of-header", false)],
    ),
];

fn supported(container: &str, field: &str) -> Option<bool> {
    FIELDS
        .iter()
        .find(|(c, _)| *c == container)
        .and_then(|(_, f)| f.iter().find(|(n, _)| *n == field).map(|(_, s)| *s))
}

/// Capabilities (RFC 8783 §7.1), derived from [`FIELDS`] and the actions mapped below.
pub fn capabilities() -> Value {
    let cap = |container: &str, field: &str| supported(container, field).unwrap_or(false);
    let group = |container: &str, names: &[(&str, &str)]| {
        let mut m = Map::new();
        for (cap_name, field) in names {
            m.insert(cap_name.to_string(), Value::Bool(cap(container, field)));
        }
        Value::Object(m)
    };
    let l3 = |c: &str, v: u8| {
        let mut names: Vec<(&str, &str)> = vec![
            ("dscp", "dscp"),
            ("ecn", "ecn"),
            ("length", "length"),
            (if v == 4 { "ttl" } else { "hoplimit" }, "ttl"),
            ("protocol", "protocol"),
        ];
        if v == 4 {
            names.extend([
                ("ihl", "ihl"),
                ("flags", "flags"),
                ("offset", "offset"),
                ("identification", "identification"),
                ("source-prefix", "source-ipv4-network"),
                ("destination-prefix", "destination-ipv4-network"),
            ]);
        } else {
            names.extend([
                ("source-prefix", "source-ipv6-network"),
                ("destination-prefix", "destination-ipv6-network"),
                ("flow-label", "flow-label"),
            ]);
        }
        names.push(("fragment", "fragment"));
        group(c, &names)
    };
    let ports = |c: &str, extra: &[(&'static str, &'static str)]| {
        let mut names: Vec<(&str, &str)> = extra.to_vec();
        names.extend([
            ("source-port", "source-port-range-or-operator"),
            ("destination-port", "destination-port-range-or-operator"),
            ("port-range", "destination-port-range-or-operator"),
        ]);
        group(c, &names)
    };
    serde_json::json!({"ietf-dots-data-channel:capabilities": {
        "address-family": ["ipv4", "ipv6"],
        "forwarding-actions": ["accept", "drop"],
        "rate-limit": true,
        "transport-protocols": [1, 6, 17, 58],
        "ipv4": l3("ipv4", 4),
        "ipv6": l3("ipv6", 6),
        "tcp": ports("tcp", &[
            ("sequence-number", "sequence-number"),
            ("acknowledgement-number", "acknowledgement-number"),
            ("data-offset", "data-offset"),
            ("reserved", "reserved"),
            ("flags", "flags"),
            ("window-size", "window-size"),
            ("urgent-pointer", "urgent-pointer"),
            ("options", "options"),
            ("flags-bitmask", "flags-bitmask"),
        ]),
        "udp": ports("udp", &[("length", "length")]),
        "icmp": group("icmp", &[("type", "type"), ("code", "code"), ("rest-of-header", "rest-of-header")]),
    }})
}

/// Reads one container's fields, refusing unknown and unsupported ones by name.
fn fields<'a>(
    ctx: &str,
    container: &str,
    v: &'a Value,
) -> Result<&'a Map<String, Value>, RestconfError> {
    let m = v.as_object().ok_or_else(|| {
        RestconfError::invalid(format!("{ctx}: matches/{container} must be an object"))
    })?;
    for k in m.keys() {
        match supported(container, k) {
            None => {
                return Err(RestconfError::new(
                    ErrorTag::UnknownElement,
                    format!("{ctx}: {container} has no field {k:?}"),
                ))
            }
            Some(false) => {
                return Err(RestconfError::invalid(format!(
                    "{ctx}: {container} {k:?} cannot be matched by this server's datapath \
                     (see capabilities)"
                )))
            }
            Some(true) => {}
        }
    }
    Ok(m)
}

fn uint(ctx: &str, field: &str, v: &Value, max: u64) -> Result<u64, RestconfError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    n.filter(|n| *n <= max).ok_or_else(|| {
        RestconfError::invalid(format!(
            "{ctx}: {field} must be an integer 0..={max}, got {v}"
        ))
    })
}

fn network(ctx: &str, field: &str, v: &Value, family: Family) -> Result<IpNet, RestconfError> {
    let p: IpNet = v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
        RestconfError::invalid(format!("{ctx}: {field} must be a prefix, got {v}"))
    })?;
    let ok = matches!(
        (family, p),
        (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
    );
    if !ok {
        return Err(RestconfError::invalid(format!(
            "{ctx}: {field} {p} is of the wrong address family"
        )));
    }
    check_prefix(&p)?;
    Ok(p)
}

/// `not`, `match`, `any` as a space-separated bits value (RFC 8783 `operator`).
fn operator(ctx: &str, v: Option<&Value>) -> Result<(BitOperator, bool), RestconfError> {
    let Some(v) = v else {
        return Ok((BitOperator::Match, false));
    };
    let s = v
        .as_str()
        .ok_or_else(|| RestconfError::invalid(format!("{ctx}: operator must be a string")))?;
    let (mut not, mut m, mut any) = (false, false, false);
    for bit in s.split_whitespace() {
        match bit {
            "not" => not = true,
            "match" => m = true,
            "any" => any = true,
            other => {
                return Err(RestconfError::invalid(format!(
                    "{ctx}: operator bit {other:?} (known: not match any)"
                )))
            }
        }
    }
    if m && any {
        return Err(RestconfError::invalid(format!(
            "{ctx}: operator may not set both match and any"
        )));
    }
    Ok((
        if any {
            BitOperator::Any
        } else {
            BitOperator::Match
        },
        not,
    ))
}

fn port_match(ctx: &str, field: &str, v: &Value) -> Result<PortRange, RestconfError> {
    let m = v
        .as_object()
        .ok_or_else(|| RestconfError::invalid(format!("{ctx}: {field} must be an object")))?;
    let has = |k: &str| m.contains_key(k);
    for k in m.keys() {
        if !["lower-port", "upper-port", "operator", "port"].contains(&k.as_str()) {
            return Err(RestconfError::new(
                ErrorTag::UnknownElement,
                format!("{ctx}: {field} has no field {k:?}"),
            ));
        }
    }
    if has("lower-port") || has("upper-port") {
        if has("operator") || has("port") {
            return Err(RestconfError::invalid(format!(
                "{ctx}: {field}: give a range (lower-port, upper-port) or an operator and port, not both"
            )));
        }
        let (Some(l), Some(u)) = (m.get("lower-port"), m.get("upper-port")) else {
            return Err(RestconfError::new(
                ErrorTag::MissingAttribute,
                format!("{ctx}: {field}: a range needs lower-port and upper-port"),
            ));
        };
        let (l, u) = (
            uint(ctx, "lower-port", l, 65535)?,
            uint(ctx, "upper-port", u, 65535)?,
        );
        if l > u {
            return Err(RestconfError::invalid(format!(
                "{ctx}: {field}: lower-port {l} exceeds upper-port {u}"
            )));
        }
        return Ok(PortRange::new(l as u16, u as u16));
    }
    let port = m.get("port").ok_or_else(|| {
        RestconfError::new(
            ErrorTag::MissingAttribute,
            format!("{ctx}: {field} needs port"),
        )
    })?;
    let p = uint(ctx, "port", port, 65535)? as u16;
    match m.get("operator").map(|o| o.as_str().unwrap_or("?")).unwrap_or("eq") {
        "eq" => Ok(PortRange::single(p)),
        "lte" => Ok(PortRange::new(0, p)),
        "gte" => Ok(PortRange::new(p, 65535)),
        "neq" => Err(RestconfError::invalid(format!(
            "{ctx}: {field}: operator neq cannot be matched by this server's datapath (use two ACEs with ranges)"
        ))),
        other => Err(RestconfError::invalid(format!(
            "{ctx}: {field}: operator {other:?} (known: eq lte gte neq)"
        ))),
    }
}

const TCP_FLAG_BITS: [&str; 8] = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"];

fn map_matches(
    ctx: &str,
    acl_family: Option<Family>,
    matches: Option<&Map<String, Value>>,
) -> Result<AclMatch, RestconfError> {
    let mut out = AclMatch::default();
    let empty = Map::new();
    let matches = matches.unwrap_or(&empty);
    for k in matches.keys() {
        if !["ipv4", "ipv6", "tcp", "udp", "icmp"].contains(&k.as_str()) {
            let known = ["eth", "l2-l3-ipv4", "egress-interface", "ingress-interface"];
            return Err(if known.contains(&k.as_str()) {
                RestconfError::invalid(format!(
                    "{ctx}: {k} matches cannot be expressed by this server's datapath"
                ))
            } else {
                RestconfError::new(
                    ErrorTag::UnknownElement,
                    format!("{ctx}: no match container {k:?}"),
                )
            });
        }
    }
    let l3: Vec<&str> = ["ipv4", "ipv6"]
        .into_iter()
        .filter(|k| matches.contains_key(*k))
        .collect();
    let l4: Vec<&str> = ["tcp", "udp", "icmp"]
        .into_iter()
        .filter(|k| matches.contains_key(*k))
        .collect();
    if l3.len() > 1 || l4.len() > 1 {
        return Err(RestconfError::invalid(format!(
            "{ctx}: at most one of ipv4/ipv6 and one of tcp/udp/icmp"
        )));
    }
    let family = match (acl_family, l3.first()) {
        (Some(Family::V4), Some(&"ipv6")) | (Some(Family::V6), Some(&"ipv4")) => {
            return Err(RestconfError::invalid(format!(
                "{ctx}: {} matches in an ACL of the other type",
                l3[0]
            )))
        }
        (Some(f), _) => Some(f),
        (None, Some(&"ipv4")) => Some(Family::V4),
        (None, Some(_)) => Some(Family::V6),
        (None, None) => None,
    };
    let mut l3_protocol = None;
    if let Some(&c) = l3.first() {
        let f = family.expect("set from l3");
        let m = fields(ctx, c, &matches[c])?;
        for (k, v) in m {
            match k.as_str() {
                "dscp" => out.dscp = Some(uint(ctx, k, v, 63)? as u8),
                "length" => {
                    let l = uint(ctx, k, v, 65535)? as u16;
                    out.length = Some(ValueRange { min: l, max: l });
                }
                "ttl" => {
                    let t = uint(ctx, k, v, 255)? as u16;
                    out.ttl = Some(ValueRange { min: t, max: t });
                }
                "protocol" => l3_protocol = Some(uint(ctx, k, v, 255)? as u8),
                "source-ipv4-network" | "source-ipv6-network" => {
                    out.source = Some(network(ctx, k, v, f)?)
                }
                "destination-ipv4-network" | "destination-ipv6-network" => {
                    out.destination = Some(network(ctx, k, v, f)?)
                }
                "fragment" => {
                    let fm = v.as_object().ok_or_else(|| {
                        RestconfError::invalid(format!("{ctx}: fragment must be an object"))
                    })?;
                    if let Some(k) = fm.keys().find(|k| *k != "operator" && *k != "type") {
                        return Err(RestconfError::new(
                            ErrorTag::UnknownElement,
                            format!("{ctx}: fragment has no field {k:?}"),
                        ));
                    }
                    let (op, not) = operator(ctx, fm.get("operator"))?;
                    let ty = fm.get("type").and_then(Value::as_str).ok_or_else(|| {
                        RestconfError::new(
                            ErrorTag::MissingAttribute,
                            format!("{ctx}: fragment needs type (bits df isf ff lf)"),
                        )
                    })?;
                    let bits: Vec<String> = ty.split_whitespace().map(str::to_string).collect();
                    for b in &bits {
                        if !["df", "isf", "ff", "lf"].contains(&b.as_str()) {
                            return Err(RestconfError::invalid(format!(
                                "{ctx}: fragment type bit {b:?} (known: df isf ff lf)"
                            )));
                        }
                        if b == "df" && f == Family::V6 {
                            return Err(RestconfError::invalid(format!(
                                "{ctx}: fragment type df exists for IPv4 only"
                            )));
                        }
                    }
                    if bits.is_empty() {
                        return Err(RestconfError::invalid(format!(
                            "{ctx}: fragment type is empty"
                        )));
                    }
                    out.fragment = Some(BitMatch {
                        bits,
                        operator: op,
                        not,
                    });
                }
                _ => unreachable!("checked by fields()"),
            }
        }
    }
    // A typed ACL's entry without addresses still matches only its family: 0/0 says so.
    if out.source.is_none() && out.destination.is_none() {
        out.source = match family {
            Some(Family::V4) => Some("0.0.0.0/0".parse().expect("valid")),
            Some(Family::V6) => Some("::/0".parse().expect("valid")),
            None => None,
        };
    }
    let l4_protocol = match l4.first() {
        None => None,
        Some(&"tcp") => Some(6u8),
        Some(&"udp") => Some(17),
        Some(_) => match family {
            Some(Family::V4) => Some(1),
            Some(Family::V6) => Some(58),
            None => {
                return Err(RestconfError::invalid(format!(
                    "{ctx}: icmp matches need an ACL type or an ipv4/ipv6 match (ICMP or ICMPv6)"
                )))
            }
        },
    };
    out.protocol = match (l3_protocol, l4_protocol) {
        (Some(a), Some(b)) if a != b => {
            return Err(RestconfError::invalid(format!(
                "{ctx}: protocol {a} contradicts the {} match",
                l4[0]
            )))
        }
        (a, b) => a.or(b),
    };
    if let Some(&c) = l4.first() {
        let m = fields(ctx, c, &matches[c])?;
        for (k, v) in m {
            match k.as_str() {
                "source-port-range-or-operator" | "source-port" => {
                    out.source_port = Some(port_match(ctx, k, v)?)
                }
                "destination-port-range-or-operator" | "destination-port" => {
                    out.destination_port = Some(port_match(ctx, k, v)?)
                }
                "type" => out.icmp_type = Some(uint(ctx, k, v, 255)? as u8),
                "code" => out.icmp_code = Some(uint(ctx, k, v, 255)? as u8),
                "flags-bitmask" => {
                    let fm = v.as_object().ok_or_else(|| {
                        RestconfError::invalid(format!("{ctx}: flags-bitmask must be an object"))
                    })?;
                    if let Some(k) = fm.keys().find(|k| *k != "operator" && *k != "bitmask") {
                        return Err(RestconfError::new(
                            ErrorTag::UnknownElement,
                            format!("{ctx}: flags-bitmask has no field {k:?}"),
                        ));
                    }
                    let (op, not) = operator(ctx, fm.get("operator"))?;
                    let mask = fm.get("bitmask").ok_or_else(|| {
                        RestconfError::new(
                            ErrorTag::MissingAttribute,
                            format!("{ctx}: flags-bitmask needs bitmask"),
                        )
                    })?;
                    let mask = uint(ctx, "bitmask", mask, 0xff)?;
                    if mask == 0 {
                        return Err(RestconfError::invalid(format!(
                            "{ctx}: flags-bitmask bitmask 0 tests nothing"
                        )));
                    }
                    let bits = (0..8)
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| TCP_FLAG_BITS[i].to_string())
                        .collect();
                    out.tcp_flags = Some(BitMatch {
                        bits,
                        operator: op,
                        not,
                    });
                }
                _ => unreachable!("checked by fields()"),
            }
        }
    }
    Ok(out)
}

fn map_actions(ctx: &str, actions: &Map<String, Value>) -> Result<AclAction, RestconfError> {
    if let Some(k) = actions
        .keys()
        .find(|k| *k != "forwarding" && *k != "rate-limit")
    {
        return Err(if k == "logging" {
            RestconfError::invalid(format!("{ctx}: logging actions are not supported"))
        } else {
            RestconfError::new(ErrorTag::UnknownElement, format!("{ctx}: no action {k:?}"))
        });
    }
    let forwarding = actions
        .get("forwarding")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            RestconfError::new(
                ErrorTag::MissingAttribute,
                format!("{ctx}: actions need forwarding"),
            )
        })?;
    let forwarding = forwarding.rsplit(':').next().unwrap_or(forwarding);
    let rate = actions.get("rate-limit");
    match (forwarding, rate) {
        ("drop", None) => Ok(AclAction::Drop),
        ("accept", None) => Ok(AclAction::Accept),
        ("accept", Some(r)) => {
            let text = match r {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
            let whole: Option<u64> = whole.parse().ok();
            let frac_zero = frac.len() <= 2 && frac.chars().all(|c| c == '0');
            match whole {
                Some(w) if w >= 1 && frac_zero => Ok(AclAction::RateLimit(
                    RateLimit::BytesPerSecond(Rate::new(w)),
                )),
                Some(_) if !frac_zero && frac.chars().all(|c| c.is_ascii_digit()) => {
                    Err(RestconfError::invalid(format!(
                        "{ctx}: rate-limit {text}: the datapath limits in whole bytes per second"
                    )))
                }
                _ => Err(RestconfError::invalid(format!(
                    "{ctx}: rate-limit must be a positive decimal of bytes per second, got {r}"
                ))),
            }
        }
        (_, Some(_)) => Err(RestconfError::invalid(format!(
            "{ctx}: rate-limit goes with forwarding accept only"
        ))),
        ("reject", None) => Err(RestconfError::invalid(format!(
            "{ctx}: forwarding reject is not supported (accept or drop)"
        ))),
        (other, None) => Err(RestconfError::invalid(format!(
            "{ctx}: forwarding {other:?} (accept or drop)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::model::*;
    use serde_json::json;

    fn acl(v: Value) -> Acl {
        serde_json::from_value(v).unwrap()
    }

    fn allowed() -> Vec<IpNet> {
        vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8:6401::/48".parse().unwrap(),
        ]
    }

    #[test]
    fn the_rfc_example_maps_onto_entries() {
        let a = acl(json!({
            "name": "sample-ipv4-acl", "type": "ipv4-acl-type",
            "activation-type": "activate-when-mitigating",
            "aces": {"ace": [
                {"name": "rule1", "matches": {"ipv4": {
                    "destination-ipv4-network": "198.51.100.0/24",
                    "source-ipv4-network": "192.0.2.0/24"}},
                 "actions": {"forwarding": "drop"}},
                {"name": "rule2", "matches": {
                    "ipv4": {"destination-ipv4-network": "198.51.100.0/24"},
                    "udp": {"destination-port-range-or-operator": {"operator": "eq", "port": 53}}},
                 "actions": {"forwarding": "accept", "rate-limit": "20.00"}}
            ]}
        }));
        let e = a.entries(&allowed()).unwrap();
        assert_eq!(e[0].name, "sample-ipv4-acl/rule1");
        assert_eq!(e[0].matches.source, Some("192.0.2.0/24".parse().unwrap()));
        assert_eq!(e[0].action, AclAction::Drop);
        assert_eq!(e[1].matches.protocol, Some(17));
        assert_eq!(e[1].matches.destination_port, Some(PortRange::single(53)));
        assert_eq!(
            e[1].action,
            AclAction::RateLimit(RateLimit::BytesPerSecond(Rate::new(20)))
        );
        assert_eq!(a.activation(), Activation::WhenMitigating);
    }

    #[test]
    fn every_supported_field_maps_and_typed_acls_keep_their_family() {
        let a = acl(
            json!({"name": "all", "type": "ipv6-acl-type", "activation-type": "immediate",
            "aces": {"ace": [
                {"name": "frag", "matches": {"ipv6": {"dscp": 10, "length": 100, "ttl": 64,
                    "fragment": {"operator": "not match", "type": "isf"}},
                    "tcp": {"flags-bitmask": {"operator": "any", "bitmask": 6},
                            "source-port-range-or-operator": {"lower-port": 1000, "upper-port": 2000},
                            "destination-port-range-or-operator": {"operator": "gte", "port": 1024}}},
                 "actions": {"forwarding": "drop"}},
                {"name": "ping", "matches": {"icmp": {"type": 128, "code": 0}},
                 "actions": {"forwarding": "ietf-access-control-list:accept"}}
            ]}}),
        );
        let e = a.entries(&allowed()).unwrap();
        let m = &e[0].matches;
        assert_eq!(
            m.source,
            Some("::/0".parse().unwrap()),
            "family pinned by the type"
        );
        assert_eq!((m.dscp, m.protocol), (Some(10), Some(6)));
        assert_eq!(m.ttl, Some(ValueRange { min: 64, max: 64 }));
        assert_eq!(
            m.fragment,
            Some(BitMatch {
                bits: vec!["isf".into()],
                operator: BitOperator::Match,
                not: true
            })
        );
        assert_eq!(
            m.tcp_flags,
            Some(BitMatch {
                bits: vec!["syn".into(), "rst".into()],
                operator: BitOperator::Any,
                not: false
            })
        );
        assert_eq!(m.source_port, Some(PortRange::new(1000, 2000)));
        assert_eq!(m.destination_port, Some(PortRange::new(1024, 65535)));
        // RFC 8519's spelling of the port containers means the same.
        let spelled = acl(json!({"name": "x", "aces": {"ace": [{"name": "r",
            "matches": {"udp": {"destination-port": {"operator": "eq", "port": 53}}},
            "actions": {"forwarding": "drop"}}]}}));
        assert_eq!(
            spelled.entries(&allowed()).unwrap()[0]
                .matches
                .destination_port,
            Some(PortRange::single(53))
        );
        assert_eq!(
            (e[1].matches.protocol, e[1].matches.icmp_type),
            (Some(58), Some(128))
        );
        assert_eq!(e[1].action, AclAction::Accept);
        assert_eq!(a.activation(), Activation::Immediate);
    }

    #[test]
    fn what_the_datapath_cannot_do_is_refused_by_name() {
        let refuse = |matches: Value, actions: Value| {
            let a = acl(
                json!({"name": "x", "aces": {"ace": [{"name": "r", "matches": matches, "actions": actions}]}}),
            );
            a.entries(&allowed()).unwrap_err()
        };
        let drop = json!({"forwarding": "drop"});
        let e = refuse(json!({"ipv4": {"ecn": 1}}), drop.clone());
        assert_eq!(e.tag, ErrorTag::InvalidValue);
        assert!(
            e.message.contains("\"ecn\" cannot be matched"),
            "{}",
            e.message
        );
        let e = refuse(json!({"ipv4": {"colour": 1}}), drop.clone());
        assert_eq!(e.tag, ErrorTag::UnknownElement);
        let e = refuse(
            json!({"udp": {"destination-port-range-or-operator": {"operator": "neq", "port": 53}}}),
            drop.clone(),
        );
        assert!(e.message.contains("neq"));
        let e = refuse(json!({"tcp": {"flags": "syn"}}), drop.clone());
        assert!(e.message.contains("\"flags\" cannot be matched"));
        assert!(refuse(json!({}), json!({"forwarding": "reject"}))
            .message
            .contains("reject"));
        assert!(refuse(
            json!({}),
            json!({"forwarding": "drop", "rate-limit": "10.00"})
        )
        .message
        .contains("accept only"));
        assert!(refuse(
            json!({}),
            json!({"forwarding": "accept", "rate-limit": "10.50"})
        )
        .message
        .contains("whole bytes"));
        assert_eq!(refuse(json!({}), json!({})).tag, ErrorTag::MissingAttribute);
        let e = refuse(
            json!({"ipv4": {"destination-ipv4-network": "203.0.113.0/24"}}),
            drop.clone(),
        );
        assert_eq!((e.tag, e.status()), (ErrorTag::AccessDenied, 403));
        let e = refuse(
            json!({"ipv4": {"destination-ipv4-network": "198.51.100.7/24"}}),
            drop.clone(),
        );
        assert!(e.message.contains("host bits"));
        let e = refuse(json!({"ipv4": {}, "ipv6": {}}), drop);
        assert!(e.message.contains("at most one"));
    }

    #[test]
    fn capabilities_follow_the_field_table() {
        let c = capabilities();
        let c = &c["ietf-dots-data-channel:capabilities"];
        assert_eq!(c["ipv4"]["ttl"], true);
        assert_eq!(c["ipv4"]["ecn"], false);
        assert_eq!(c["ipv6"]["hoplimit"], true);
        assert_eq!(c["ipv6"]["flow-label"], false);
        assert_eq!(c["tcp"]["flags-bitmask"], true);
        assert_eq!(c["tcp"]["flags"], false);
        assert_eq!(c["udp"]["port-range"], true);
        assert_eq!(c["icmp"]["rest-of-header"], false);
        assert_eq!(c["forwarding-actions"], json!(["accept", "drop"]));
    }

    #[test]
    fn long_names_get_a_stable_datapath_name() {
        let long = "a".repeat(64);
        let n = datapath_name(&long, "rule");
        assert_eq!(n.len(), 16);
        assert_eq!(n, datapath_name(&long, "rule"));
        assert_ne!(n, datapath_name(&long, "rule2"));
        assert_ne!(datapath_name("a/b", "c"), datapath_name("a", "b/c"));
    }

    #[test]
    fn aliases_are_checked() {
        let a: Alias = serde_json::from_value(json!({"name": "https1", "target-protocol": [6],
            "target-prefix": ["2001:db8:6401::1/128"], "target-port-range": [{"lower-port": 443}]}))
        .unwrap();
        assert!(a.validate().is_ok());
        let bad: Alias = serde_json::from_value(
            json!({"name": "x", "target-port-range": [{"lower-port": 443}]}),
        )
        .unwrap();
        assert_eq!(bad.validate().unwrap_err().tag, ErrorTag::MissingAttribute);
        let bad: Alias =
            serde_json::from_value(json!({"name": "x", "target-prefix": ["198.51.100.1/24"]}))
                .unwrap();
        assert!(bad.validate().is_err());
    }
}
