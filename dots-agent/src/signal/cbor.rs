//! CBOR for the DOTS signal channel (RFC 9132 §6): integer map keys, comprehension rules,
//! decimal fractions, and a strict reader that turns every malformed input into an error
//! with a diagnostic a client can act on (the 4.00 payload), never a panic.

use std::net::IpAddr;

use ciborium::value::{Integer, Value};
use ipnet::IpNet;
use thiserror::Error;

/// Largest signal-channel body we parse (CoAP over UDP stays under the 1280-byte path MTU;
/// over TCP bodies can be larger, but a mitigation request is never near this).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest response body a client parses.
pub const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Nesting deeper than this is not a DOTS message.
const MAX_DEPTH: usize = 16;

/// RFC 9132 Table 5 (keys 1-51) and RFC 9133 (52, 53): names for diagnostics.
pub fn key_name(key: u64) -> Option<&'static str> {
    Some(match key {
        1 => "ietf-dots-signal-channel:mitigation-scope",
        2 => "scope",
        3 => "cdid",
        4 => "cuid",
        5 => "mid",
        6 => "target-prefix",
        7 => "target-port-range",
        8 => "lower-port",
        9 => "upper-port",
        10 => "target-protocol",
        11 => "target-fqdn",
        12 => "target-uri",
        13 => "alias-name",
        14 => "lifetime",
        15 => "mitigation-start",
        16 => "status",
        17 => "conflict-information",
        18 => "conflict-status",
        19 => "conflict-cause",
        20 => "retry-timer",
        21 => "conflict-scope",
        22 => "acl-list",
        23 => "acl-name",
        24 => "acl-type",
        25 => "bytes-dropped",
        26 => "bps-dropped",
        27 => "pkts-dropped",
        28 => "pps-dropped",
        29 => "attack-status",
        30 => "ietf-dots-signal-channel:signal-config",
        31 => "sid",
        32 => "mitigating-config",
        33 => "heartbeat-interval",
        34 => "max-value",
        35 => "min-value",
        36 => "current-value",
        37 => "missing-hb-allowed",
        38 => "max-retransmit",
        39 => "ack-timeout",
        40 => "ack-random-factor",
        41 => "max-value-decimal",
        42 => "min-value-decimal",
        43 => "current-value-decimal",
        44 => "idle-config",
        45 => "trigger-mitigation",
        46 => "ietf-dots-signal-channel:redirected-signal",
        47 => "alt-server",
        48 => "alt-server-record",
        49 => "ietf-dots-signal-channel:heartbeat",
        50 => "probing-rate",
        51 => "peer-hb-status",
        52 => "activation-type",
        53 => "ietf-dots-signal-control:acl-list",
        _ => return None,
    })
}

/// Keys a receiver must understand (RFC 9132 §6, §10.6.1.1): every key outside the
/// comprehension-optional ranges 128-255 and 16384-65535. That includes 0 and keys above
/// 65535, which the registry never assigns: ignoring them would accept a body whose meaning
/// we cannot know.
pub fn comprehension_required(key: u64) -> bool {
    !((128..=255).contains(&key) || (16384..=65535).contains(&key))
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CborError {
    #[error("body of {0} bytes is over the {1}-byte limit")]
    TooLarge(usize, usize),
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("{0} bytes after the CBOR item")]
    Trailing(usize),
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("unknown comprehension-required key(s) {0:?}")]
    UnknownKeys(Vec<u64>),
    #[error("{0} is not allowed here")]
    NotAllowed(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{what}: expected {expected}")]
    Type {
        what: String,
        expected: &'static str,
    },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

/// A target prefix as RFC 9132 §4.4.1.1 allows it: a valid prefix, not loopback,
/// multicast or (IPv4) broadcast.
pub fn parse_target_prefix(text: &str) -> Result<IpNet, CborError> {
    let net: IpNet = text
        .parse()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| invalid_value(6, format!("{text:?} is not an IP prefix")))?;
    let a = net.network();
    let bad = match a {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_multicast() || v4.is_broadcast() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_multicast() || v6.is_unspecified(),
    };
    if bad || net.prefix_len() == 0 {
        return Err(invalid_value(
            6,
            format!("{text} is a loopback, multicast, broadcast or unspecified range"),
        ));
    }
    Ok(net)
}

fn invalid_value(key: u64, why: impl Into<String>) -> CborError {
    let name = key_name(key).unwrap_or("value");
    CborError::Invalid {
        what: format!("{name} ({key})"),
        why: why.into(),
    }
}

/// Parses exactly one CBOR item of a request, within size and depth limits.
pub fn parse(body: &[u8]) -> Result<Value, CborError> {
    parse_within(body, MAX_BODY)
}

/// Parses a server's response: the status of every mitigation of a client (4,096 with
/// their telemetry) is far larger than any request, and arrives in blocks.
pub fn parse_response(body: &[u8]) -> Result<Value, CborError> {
    parse_within(body, MAX_RESPONSE)
}

fn parse_within(body: &[u8], limit: usize) -> Result<Value, CborError> {
    if body.len() > limit {
        return Err(CborError::TooLarge(body.len(), limit));
    }
    let mut rest = body;
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_DEPTH).map_err(
        |e| match e {
            ciborium::de::Error::RecursionLimitExceeded => CborError::TooDeep,
            other => CborError::Malformed(format!("{other:?}")),
        },
    )?;
    if !rest.is_empty() {
        return Err(CborError::Trailing(rest.len()));
    }
    // RFC 9132 §10.5 registers tag 271 for a DOTS signal-channel object: the body may
    // announce itself with it (it is the same map).
    match v {
        Value::Tag(DOTS_SIGNAL_TAG, inner) => Ok(*inner),
        v => Ok(v),
    }
}

/// The CBOR tag of a DOTS signal-channel object (RFC 9132 §10.5).
pub const DOTS_SIGNAL_TAG: u64 = 271;

pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).expect("writing CBOR to a Vec cannot fail");
    out
}

fn label(key: u64) -> String {
    match key_name(key) {
        Some(n) => format!("{n} ({key})"),
        None => format!("key {key}"),
    }
}

/// A CBOR map with integer keys, read field by field; `finish` reports what was left.
pub struct Fields {
    entries: Vec<(u64, Value)>,
    context: &'static str,
}

impl Fields {
    pub fn new(v: Value, context: &'static str) -> Result<Fields, CborError> {
        let Value::Map(pairs) = v else {
            return Err(CborError::Type {
                what: context.into(),
                expected: "a map",
            });
        };
        let mut entries = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let key = match k {
                Value::Integer(i) => u64::try_from(i128::from(i)).ok(),
                _ => None,
            };
            let Some(key) = key else {
                return Err(CborError::Type {
                    what: format!("a key in {context}"),
                    expected: "an unsigned integer key",
                });
            };
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(CborError::Invalid {
                    what: label(key),
                    why: "appears twice".into(),
                });
            }
            entries.push((key, v));
        }
        Ok(Fields { entries, context })
    }

    pub fn take(&mut self, key: u64) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| *k == key)?;
        Some(self.entries.remove(i).1)
    }

    pub fn require(&mut self, key: u64, name: &'static str) -> Result<Value, CborError> {
        self.take(key).ok_or(CborError::Missing(name))
    }

    /// Errors on unknown comprehension-required keys and on known keys that have no place
    /// here; ignores the rest (comprehension-optional extensions).
    pub fn finish(self) -> Result<(), CborError> {
        let mut unknown = Vec::new();
        for (k, _) in &self.entries {
            if key_name(*k).is_some() {
                return Err(CborError::NotAllowed(format!(
                    "{} in {}",
                    label(*k),
                    self.context
                )));
            }
            if comprehension_required(*k) {
                unknown.push(*k);
            }
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(CborError::UnknownKeys(unknown))
        }
    }
}

pub fn as_u64(v: Value, what: u64) -> Result<u64, CborError> {
    match v {
        Value::Integer(i) => u64::try_from(i128::from(i)).map_err(|_| CborError::Invalid {
            what: label(what),
            why: "is negative".into(),
        }),
        _ => Err(CborError::Type {
            what: label(what),
            expected: "an unsigned integer",
        }),
    }
}

pub fn as_i64(v: Value, what: u64) -> Result<i64, CborError> {
    match v {
        Value::Integer(i) => i64::try_from(i128::from(i)).map_err(|_| CborError::Invalid {
            what: label(what),
            why: "out of range".into(),
        }),
        _ => Err(CborError::Type {
            what: label(what),
            expected: "an integer",
        }),
    }
}

pub fn as_u32(v: Value, what: u64) -> Result<u32, CborError> {
    let n = as_u64(v, what)?;
    u32::try_from(n).map_err(|_| CborError::Invalid {
        what: label(what),
        why: format!("{n} exceeds 2^32-1"),
    })
}

pub fn as_bool(v: Value, what: u64) -> Result<bool, CborError> {
    match v {
        Value::Bool(b) => Ok(b),
        _ => Err(CborError::Type {
            what: label(what),
            expected: "a boolean",
        }),
    }
}

pub fn as_text(v: Value, what: u64) -> Result<String, CborError> {
    match v {
        Value::Text(t) => Ok(t),
        _ => Err(CborError::Type {
            what: label(what),
            expected: "a text string",
        }),
    }
}

pub fn as_array(v: Value, what: u64) -> Result<Vec<Value>, CborError> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(CborError::Type {
            what: label(what),
            expected: "an array",
        }),
    }
}

pub fn as_text_list(v: Value, what: u64) -> Result<Vec<String>, CborError> {
    as_array(v, what)?
        .into_iter()
        .map(|e| as_text(e, what))
        .collect()
}

/// A decimal64 with two fraction digits (YANG fraction-digits 2), returned as hundredths.
/// Senders pick the exponent the value needs (go-dots: 20.5 as `[-1, 205]`, 2.0 as
/// `[0, 2]`): any exponent is taken whose value has at most two fraction digits, e.g.
/// `[-3, 1500]` (1.5); `[-3, 1505]` (1.505) is refused naming the field.
pub fn as_decimal2(v: Value, what: u64) -> Result<i64, CborError> {
    let bad = || CborError::Type {
        what: label(what),
        expected: "a decimal fraction (tag 4, [exponent, mantissa])",
    };
    let out_of_range = |why: String| CborError::Invalid {
        what: label(what),
        why,
    };
    let Value::Tag(4, inner) = v else {
        return Err(bad());
    };
    let Value::Array(parts) = *inner else {
        return Err(bad());
    };
    let [Value::Integer(e), Value::Integer(m)] = parts.as_slice() else {
        return Err(bad());
    };
    let (e, m) = (i128::from(*e), i128::from(*m));
    // From hundredths' point of view: scale the mantissa by 10^(e + 2).
    let shift = e + 2;
    let hundredths = if shift >= 0 {
        // 10^19 is beyond i64 already; larger exponents cannot give a decimal64.
        if shift > 18 && m != 0 {
            return Err(out_of_range(format!("10^{e} is out of range")));
        }
        m.checked_mul(10i128.pow(shift.min(18) as u32))
    } else {
        if -shift > 38 {
            // Smaller than any non-zero hundredth: only 0 fits.
            return if m == 0 {
                Ok(0)
            } else {
                Err(out_of_range(format!(
                    "{m}e{e} has more than two fraction digits (fraction-digits 2)"
                )))
            };
        }
        let div = 10i128.pow((-shift) as u32);
        if m % div != 0 {
            return Err(out_of_range(format!(
                "{m}e{e} has more than two fraction digits (fraction-digits 2)"
            )));
        }
        Some(m / div)
    };
    hundredths
        .and_then(|h| i64::try_from(h).ok())
        .ok_or_else(|| out_of_range(format!("{m}e{e} is out of range")))
}

pub fn decimal2(hundredths: i64) -> Value {
    Value::Tag(
        4,
        Box::new(Value::Array(vec![
            Value::Integer((-2).into()),
            Value::Integer(hundredths.into()),
        ])),
    )
}

pub fn uint(n: u64) -> Value {
    Value::Integer(Integer::from(n))
}

pub fn int(n: i64) -> Value {
    Value::Integer(Integer::from(n))
}

/// A map with integer keys, in the order given (callers list keys ascending, as RFC 9132's
/// examples and deterministic encoding want).
pub fn map(entries: Vec<(u64, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (uint(k), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_bodies_are_errors_not_panics() {
        assert!(matches!(parse(&[0xa1]), Err(CborError::Malformed(_))));
        assert!(matches!(parse(&[0xa0, 0x00]), Err(CborError::Trailing(1))));
        assert!(matches!(parse(&[0x81; 100]), Err(CborError::TooDeep)));
        assert!(matches!(
            parse(&vec![0u8; MAX_BODY + 1]),
            Err(CborError::TooLarge(_, MAX_BODY))
        ));
        // A claimed 4 GiB string in 9 bytes must not allocate it.
        assert!(parse(&[0x7a, 0xff, 0xff, 0xff, 0xff, 0x41]).is_err());
        assert!(parse(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn decimals_use_tag_4_with_two_digits() {
        // 2.00 from the reference's computed vectors.
        assert_eq!(encode(&decimal2(200)), vec![0xc4, 0x82, 0x21, 0x18, 0xc8]);
        assert_eq!(
            as_decimal2(parse(&[0xc4, 0x82, 0x21, 0x18, 0x96]).unwrap(), 40),
            Ok(150)
        );
        // go-dots' encoding: the exponent the value needs.
        let dec = |e: i64, m: i64| Value::Tag(4, Box::new(Value::Array(vec![int(e), int(m)])));
        assert_eq!(as_decimal2(dec(-1, 205), 40), Ok(2050), "20.5");
        assert_eq!(as_decimal2(dec(0, 2), 40), Ok(200), "2.0");
        assert_eq!(as_decimal2(dec(1, 3), 40), Ok(3000), "30");
        assert_eq!(as_decimal2(dec(-3, 1500), 40), Ok(150), "1.500");
        assert_eq!(as_decimal2(dec(-40, 0), 40), Ok(0));
        let three = as_decimal2(dec(-3, 1505), 40).unwrap_err().to_string();
        assert!(
            three.contains("ack-random-factor (40)") && three.contains("fraction digits"),
            "{three}"
        );
        assert!(as_decimal2(dec(30, 1), 40).is_err(), "out of range");
        assert!(as_decimal2(dec(i64::MIN, 1), 40).is_err());
        assert!(as_decimal2(dec(i64::MAX, 1), 40).is_err());
        assert!(as_decimal2(uint(2), 40).is_err());
    }

    #[test]
    fn a_body_tagged_271_is_the_same_object() {
        // RFC 9132 §10.5: d9 010f = tag 271.
        let tagged = [0xd9, 0x01, 0x0f, 0xa1, 0x05, 0x01];
        assert_eq!(parse(&tagged), parse(&tagged[3..]));
        assert_eq!(parse(&tagged).unwrap(), map(vec![(5, uint(1))]));
    }

    #[test]
    fn unknown_required_keys_are_named_optional_ones_ignored() {
        let v = map(vec![
            (0, uint(0)),
            (99, uint(1)),
            (200, uint(2)),
            (300, uint(3)),
            (20_000, uint(4)),
            (50_000, uint(4)),
            (70_000, uint(5)),
        ]);
        let f = Fields::new(v, "test").unwrap();
        assert_eq!(
            f.finish(),
            Err(CborError::UnknownKeys(vec![0, 99, 300, 70_000])),
            "key 0 and keys beyond the registry are not optional"
        );
        let v = map(vec![(5, uint(1))]);
        let err = Fields::new(v, "a mitigation request scope")
            .unwrap()
            .finish()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "mid (5) in a mitigation request scope is not allowed here"
        );
    }
}
