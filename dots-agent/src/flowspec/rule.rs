//! One FlowSpec rule (RFC 8955 for IPv4, RFC 8956 for IPv6) as this agent announces and
//! learns it: what it matches, what it does, its `gobgp` command-line form, and the
//! datapath's ACL entries it becomes on a node that follows the fleet.

use std::fmt;

use ipnet::IpNet;

use crate::datapath::{
    AclAction, AclEntry, AclMatch, BitMatch, BitOperator, PortRange, Rate, RateLimit, ValueRange,
};

/// What a rule does with the traffic it matches (RFC 8955 §7.3 traffic-rate-bytes; rate 0
/// is discard).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FlowAction {
    Discard,
    /// Bytes per second, the whole rule's traffic together.
    RateBytes(f32),
}

/// The match of one rule; an empty list or `None` matches anything. Lists are alternatives
/// (any of them), as FlowSpec's OR-ed items.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowMatch {
    pub destination: Option<IpNet>,
    pub source: Option<IpNet>,
    pub protocols: Vec<u8>,
    pub destination_ports: Vec<PortRange>,
    pub source_ports: Vec<PortRange>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub tcp_flags: Option<BitMatch>,
    pub length: Option<ValueRange>,
    pub dscp: Option<u8>,
    pub fragment: Option<BitMatch>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FlowRule {
    pub matches: FlowMatch,
    pub action: FlowAction,
}

/// TCP flag names as the datapath's BitMatch spells them, with gobgp's letter and the bit.
const TCP_FLAGS: [(&str, &str, u64); 8] = [
    ("fin", "F", 0x01),
    ("syn", "S", 0x02),
    ("rst", "R", 0x04),
    ("psh", "P", 0x08),
    ("ack", "A", 0x10),
    ("urg", "U", 0x20),
    ("ece", "E", 0x40),
    ("cwr", "C", 0x80),
];
/// Fragment bits (RFC 8955 §4.2.2.12): datapath name, gobgp word, bit.
const FRAGMENT_BITS: [(&str, &str, u64); 4] = [
    ("df", "dont-fragment", 0x01),
    ("isf", "is-fragment", 0x02),
    ("ff", "first-fragment", 0x04),
    ("lf", "last-fragment", 0x08),
];

impl FlowMatch {
    /// The family of the rule (from its destination; rules without one are never made).
    pub fn is_ipv6(&self) -> bool {
        matches!(self.destination, Some(IpNet::V6(_)))
    }

    /// The arguments after `match` of `gobgp global rib -a ipvN-flowspec add|del match`,
    /// in a fixed order, so the same match is always the same words.
    pub fn gobgp_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(d) = self.destination {
            a.extend(["destination".into(), d.to_string()]);
        }
        if let Some(s) = self.source {
            a.extend(["source".into(), s.to_string()]);
        }
        if !self.protocols.is_empty() {
            a.push("protocol".into());
            a.extend(self.protocols.iter().map(|p| format!("=={p}")));
        }
        let ports = |name: &str, a: &mut Vec<String>, ranges: &[PortRange]| {
            if !ranges.is_empty() {
                a.push(name.into());
                a.extend(ranges.iter().map(|r| range_item(r.lower, r.upper())));
            }
        };
        ports("destination-port", &mut a, &self.destination_ports);
        ports("source-port", &mut a, &self.source_ports);
        if let Some(t) = self.icmp_type {
            a.extend(["icmp-type".into(), format!("=={t}")]);
        }
        if let Some(c) = self.icmp_code {
            a.extend(["icmp-code".into(), format!("=={c}")]);
        }
        if let Some(f) = &self.tcp_flags {
            a.push("tcp-flags".into());
            a.extend(bit_items(f, &TCP_FLAGS));
        }
        if let Some(l) = self.length {
            a.extend(["packet-length".into(), range_item(l.min, l.max)]);
        }
        if let Some(d) = self.dscp {
            a.extend(["dscp".into(), format!("=={d}")]);
        }
        if let Some(f) = &self.fragment {
            a.push("fragment".into());
            a.extend(bit_items(f, &FRAGMENT_BITS));
        }
        a
    }
}

impl FlowAction {
    pub fn gobgp_args(&self) -> Vec<String> {
        match self {
            FlowAction::Discard => vec!["discard".into()],
            FlowAction::RateBytes(r) => vec!["rate-limit".into(), format!("{r}")],
        }
    }

    /// What a node's filter does with it.
    pub fn acl_action(&self) -> AclAction {
        match *self {
            FlowAction::RateBytes(r) if r >= 1.0 => {
                AclAction::RateLimit(RateLimit::BytesPerSecond(Rate::new(r as u64)))
            }
            _ => AclAction::Drop,
        }
    }
}

fn range_item(lower: u16, upper: u16) -> String {
    if lower == upper {
        format!("=={lower}")
    } else {
        format!(">={lower}&<={upper}")
    }
}

/// A bit test as gobgp items: all bits set (`=S&=A`), any set (`S A`), not all set
/// (`!=S !=A`), none set (`!S&!A`).
fn bit_items(m: &BitMatch, names: &[(&str, &str, u64)]) -> Vec<String> {
    let letters: Vec<&str> = m
        .bits
        .iter()
        .filter_map(|b| names.iter().find(|(n, _, _)| n == b).map(|(_, l, _)| *l))
        .collect();
    let (prefix, joiner) = match (m.operator, m.not) {
        (BitOperator::Match, false) => ("=", "&"),
        (BitOperator::Any, false) => ("", " "),
        (BitOperator::Match, true) => ("!=", " "),
        (BitOperator::Any, true) => ("!", "&"),
    };
    let joined: Vec<String> = letters.iter().map(|l| format!("{prefix}{l}")).collect();
    match joiner {
        "&" => vec![joined.join("&")],
        _ => joined,
    }
}

/// The canonical text of a rule: its match words, `then`, its action words. Two rules are
/// the same announcement exactly when their keys are equal.
impl fmt::Display for FlowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} then {}",
            self.matches.gobgp_args().join(" "),
            self.action.gobgp_args().join(" ")
        )
    }
}

/// A numeric component as RFC 8955 encodes it: (operator byte, value) items.
pub type Items = [(u8, u64)];

const OP_END: u8 = 0x80;
const OP_AND: u8 = 0x40;
const OP_LT: u8 = 0x04;
const OP_GT: u8 = 0x02;
const OP_EQ: u8 = 0x01;
const OP_NOT: u8 = 0x02;
const OP_MATCH: u8 = 0x01;

/// Numeric items as inclusive ranges: each AND-ed group of comparisons must describe one
/// range (`==v`, `>=a&<=b`, `>a`, `<b`, ...); groups are alternatives. Err for what a range
/// list cannot say (`!=`, an empty group).
pub fn ranges_of(items: &Items, max: u64) -> Result<Vec<(u64, u64)>, String> {
    let mut out = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for (i, &(op, value)) in items.iter().enumerate() {
        let (lo, hi) = match op & (OP_LT | OP_GT | OP_EQ) {
            OP_EQ => (value, value),
            x if x == OP_GT | OP_EQ => (value, max),
            OP_GT => (value.saturating_add(1), max),
            x if x == OP_LT | OP_EQ => (0, value),
            OP_LT if value > 0 => (0, value - 1),
            other => {
                return Err(format!(
                    "numeric operator {other:#x} on {value} is not a range"
                ))
            }
        };
        let and = op & OP_AND != 0 && i > 0;
        current = match (current, and) {
            (Some((a, b)), true) => Some((a.max(lo), b.min(hi))),
            (Some(done), false) => {
                out.push(done);
                Some((lo, hi))
            }
            (None, _) => Some((lo, hi)),
        };
        if op & OP_END != 0 {
            break;
        }
    }
    out.extend(current);
    match out.iter().find(|(a, b)| a > b) {
        Some((a, b)) => Err(format!("range {a}..{b} matches nothing")),
        None => Ok(out),
    }
}

/// Bitmask items (tcp-flags, fragment) as one of the four tests a BitMatch can hold.
pub fn bits_of(items: &Items, names: &[(&str, &str, u64)]) -> Result<BitMatch, String> {
    let first = items.first().ok_or("an empty bitmask component")?.0;
    let all_and = items.iter().skip(1).all(|(op, _)| op & OP_AND != 0);
    let all_or = items.iter().skip(1).all(|(op, _)| op & OP_AND == 0);
    let same_op = items
        .iter()
        .all(|(op, _)| op & (OP_NOT | OP_MATCH) == first & (OP_NOT | OP_MATCH));
    let single = items.len() == 1;
    let (operator, not) = match (first & OP_MATCH != 0, first & OP_NOT != 0) {
        (true, false) if same_op && all_and => (BitOperator::Match, false),
        (false, false) if same_op && (all_or || single) => (BitOperator::Any, false),
        (true, true) if same_op && (all_or || single) => (BitOperator::Match, true),
        (false, true) if same_op && all_and => (BitOperator::Any, true),
        _ => return Err("a mix of bitmask tests the filter cannot hold".into()),
    };
    let mask = items.iter().fold(0, |m, (_, v)| m | v);
    // A multi-bit item means "all of these" under match and "any of these" otherwise,
    // which is what AND-ed / OR-ed single bits mean too.
    if !single && items.iter().any(|(_, v)| v.count_ones() != 1) {
        return Err("multi-bit items in a list".into());
    }
    let bits: Vec<String> = names
        .iter()
        .filter(|(_, _, b)| mask & b != 0)
        .map(|(n, _, _)| n.to_string())
        .collect();
    if mask & !names.iter().fold(0, |m, (_, _, b)| m | b) != 0 {
        return Err(format!("unknown bits in {mask:#x}"));
    }
    Ok(BitMatch {
        bits,
        operator,
        not,
    })
}

pub fn tcp_flags_of(items: &Items) -> Result<BitMatch, String> {
    bits_of(items, &TCP_FLAGS)
}

pub fn fragment_of(items: &Items) -> Result<BitMatch, String> {
    bits_of(items, &FRAGMENT_BITS)
}

/// At most this many ACL entries from one rule (protocols x destination ports x source
/// ports); a rule that needs more is refused rather than approximated.
pub const MAX_EXPANSION: usize = 16;

impl FlowRule {
    /// The datapath's ACL entries for this rule (a FlowSpec list of protocols or ports
    /// becomes one entry per combination), named `prefix-N`.
    pub fn acl_entries(&self, prefix: &str) -> Result<Vec<AclEntry>, String> {
        let m = &self.matches;
        let protos: Vec<Option<u8>> = opt_list(&m.protocols);
        let dports: Vec<Option<PortRange>> = opt_list(&m.destination_ports);
        let sports: Vec<Option<PortRange>> = opt_list(&m.source_ports);
        let n = protos.len() * dports.len() * sports.len();
        if n > MAX_EXPANSION {
            return Err(format!(
                "{n} protocol/port combinations; at most {MAX_EXPANSION} are installed per rule"
            ));
        }
        let mut out = Vec::with_capacity(n);
        for p in &protos {
            for d in &dports {
                for s in &sports {
                    out.push(AclEntry {
                        name: format!("{prefix}-{}", out.len()),
                        matches: AclMatch {
                            source: m.source,
                            destination: m.destination,
                            protocol: *p,
                            source_port: *s,
                            destination_port: *d,
                            tcp_flags: m.tcp_flags.clone(),
                            icmp_type: m.icmp_type,
                            icmp_code: m.icmp_code,
                            fragment: m.fragment.clone(),
                            length: m.length,
                            ttl: None,
                            dscp: m.dscp,
                        },
                        action: self.action.acl_action(),
                    });
                }
            }
        }
        Ok(out)
    }
}

fn opt_list<T: Copy>(v: &[T]) -> Vec<Option<T>> {
    if v.is_empty() {
        vec![None]
    } else {
        v.iter().copied().map(Some).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> FlowRule {
        FlowRule {
            matches: FlowMatch {
                destination: Some("203.0.113.10/32".parse().unwrap()),
                protocols: vec![6, 17],
                destination_ports: vec![PortRange::new(8000, 8080), PortRange::single(53)],
                tcp_flags: Some(BitMatch {
                    bits: vec!["syn".into(), "ack".into()],
                    operator: BitOperator::Any,
                    not: true,
                }),
                ..Default::default()
            },
            action: FlowAction::RateBytes(125000.0),
        }
    }

    #[test]
    fn gobgp_words_are_canonical() {
        assert_eq!(
            rule().to_string(),
            "destination 203.0.113.10/32 protocol ==6 ==17 destination-port >=8000&<=8080 ==53 \
             tcp-flags !S&!A then rate-limit 125000"
        );
    }

    #[test]
    fn numeric_items_become_ranges_or_are_refused() {
        // ==53 OR >=100&<=200, as gobgp encodes it.
        assert_eq!(
            ranges_of(&[(0x01, 53), (0x03, 100), (0xc5, 200)], 65535).unwrap(),
            vec![(53, 53), (100, 200)]
        );
        assert!(
            ranges_of(&[(0x86, 80)], 65535).is_err(),
            "!= is not a range"
        );
        assert!(ranges_of(&[(0x03, 200), (0xc5, 100)], 65535).is_err());
    }

    #[test]
    fn bit_items_round_trip() {
        for (op, not) in [
            (BitOperator::Match, false),
            (BitOperator::Any, false),
            (BitOperator::Match, true),
            (BitOperator::Any, true),
        ] {
            let m = BitMatch {
                bits: vec!["syn".into(), "ack".into()],
                operator: op,
                not,
            };
            // Encode as RFC 8955 items the way the words say.
            let flag = |o: u8| o | if not { OP_NOT } else { 0 };
            let base = if op == BitOperator::Match {
                OP_MATCH
            } else {
                0
            };
            let and = matches!(
                (op, not),
                (BitOperator::Match, false) | (BitOperator::Any, true)
            );
            let items = [
                (flag(base), 0x02),
                (flag(base) | OP_END | if and { OP_AND } else { 0 }, 0x10),
            ];
            assert_eq!(tcp_flags_of(&items).unwrap(), m, "{op:?} not={not}");
        }
    }

    #[test]
    fn lists_expand_to_entries_and_too_many_are_refused() {
        let e = rule().acl_entries("fs-1").unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[3].name, "fs-1-3");
        assert_eq!(e[3].matches.protocol, Some(17));
        let mut big = rule();
        big.matches.source_ports = (1..=5).map(PortRange::single).collect();
        assert!(big
            .acl_entries("x")
            .unwrap_err()
            .contains("20 protocol/port"));
    }
}
