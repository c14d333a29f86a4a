//! Session configuration (RFC 9132 §4.5): the signal-channel parameters a client may
//! negotiate, for while a mitigation is active (`mitigating-config`) and otherwise
//! (`idle-config`), with the server's limits. Keys 34/35 follow RFC 9132 Table 5
//! (max-value = 34, min-value = 35), as other implementations do.

use ciborium::value::Value;

use super::cbor::{self, uint, CborError, Fields};

/// One parameter: key, limits and default. Decimal parameters are in hundredths.
#[derive(Clone, Copy, Debug)]
struct Param {
    key: u64,
    decimal: bool,
    min: u64,
    max: u64,
    default: u64,
    /// A value outside [min, max] that is still acceptable (heartbeat-interval 0 = off).
    also: Option<u64>,
}

const PARAMS: [Param; 6] = [
    Param {
        key: 33,
        decimal: false,
        min: 15,
        max: 240,
        default: 30,
        also: Some(0),
    }, // heartbeat-interval
    Param {
        key: 37,
        decimal: false,
        min: 3,
        max: 20,
        default: 15,
        also: None,
    }, // missing-hb-allowed
    Param {
        key: 38,
        decimal: false,
        min: 2,
        max: 15,
        default: 3,
        also: None,
    }, // max-retransmit
    Param {
        key: 39,
        decimal: true,
        min: 100,
        max: 3000,
        default: 200,
        also: None,
    }, // ack-timeout
    Param {
        key: 40,
        decimal: true,
        min: 110,
        max: 400,
        default: 150,
        also: None,
    }, // ack-random-factor
    Param {
        key: 50,
        decimal: false,
        min: 5,
        max: 20,
        default: 5,
        also: None,
    }, // probing-rate
];

/// Current values of one set, by key (decimals in hundredths).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigSet(pub [(u64, u64); 6]);

impl Default for ConfigSet {
    fn default() -> Self {
        ConfigSet(PARAMS.map(|p| (p.key, p.default)))
    }
}

impl ConfigSet {
    pub fn get(&self, key: u64) -> Option<u64> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn set(&mut self, key: u64, v: u64) {
        if let Some(e) = self.0.iter_mut().find(|(k, _)| *k == key) {
            e.1 = v;
        }
    }

    pub fn heartbeat_interval(&self) -> u64 {
        self.get(33).unwrap_or(30)
    }

    pub fn missing_hb_allowed(&self) -> u64 {
        self.get(37).unwrap_or(15)
    }
}

/// A client's negotiated configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionConfig {
    pub sid: Option<u32>,
    pub mitigating: ConfigSet,
    pub idle: ConfigSet,
}

/// Why a PUT was refused: 4.00 (malformed) or 4.22 (a value outside the limits).
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    Bad(CborError),
    Unacceptable(String),
}

impl From<CborError> for ConfigError {
    fn from(e: CborError) -> Self {
        ConfigError::Bad(e)
    }
}

fn value(p: &Param, v: u64) -> Value {
    if p.decimal {
        cbor::decimal2(v as i64)
    } else {
        uint(v)
    }
}

fn set_body(set: &ConfigSet, with_limits: bool) -> Value {
    let entries = PARAMS
        .iter()
        .map(|p| {
            let current = set.get(p.key).unwrap_or(p.default);
            let (kmax, kmin, kcur) = if p.decimal {
                (41, 42, 43)
            } else {
                (34, 35, 36)
            };
            let mut m = Vec::new();
            if with_limits {
                m.push((kmax, value(p, p.max)));
                m.push((kmin, value(p, p.min)));
            }
            m.push((kcur, value(p, current)));
            (p.key, cbor::map(m))
        })
        .collect();
    cbor::map(entries)
}

/// `{30: {32: {...}, 44: {...}}}` with max/min/current values (the GET response).
pub fn encode(c: &SessionConfig) -> Vec<u8> {
    cbor::encode(&cbor::map(vec![(
        30,
        cbor::map(vec![
            (32, set_body(&c.mitigating, true)),
            (44, set_body(&c.idle, true)),
        ]),
    )]))
}

/// A PUT body setting `values` ((key, value); decimals in hundredths) in the mitigating
/// set, or in the idle set.
pub fn encode_put(idle: bool, values: &[(u64, u64)]) -> Vec<u8> {
    let entries = values
        .iter()
        .filter_map(|(k, v)| {
            let p = PARAMS.iter().find(|p| p.key == *k)?;
            let kcur = if p.decimal { 43 } else { 36 };
            Some((*k, cbor::map(vec![(kcur, value(p, *v))])))
        })
        .collect();
    cbor::encode(&cbor::map(vec![(
        30,
        cbor::map(vec![(if idle { 44 } else { 32 }, cbor::map(entries))]),
    )]))
}

fn apply_set(v: Value, target: &mut ConfigSet, which: &'static str) -> Result<(), ConfigError> {
    let mut f = Fields::new(v, which)?;
    let mut seen = 0;
    for p in &PARAMS {
        let Some(container) = f.take(p.key) else {
            continue;
        };
        seen += 1;
        let mut c = Fields::new(container, which)?;
        let current = if p.decimal {
            let h = cbor::as_decimal2(c.require(43, "current-value-decimal (43)")?, 43)?;
            u64::try_from(h)
                .map_err(|_| ConfigError::Unacceptable(format!("key {}: negative", p.key)))?
        } else {
            cbor::as_u64(c.require(36, "current-value (36)")?, 36)?
        };
        c.finish()?;
        if (current < p.min || current > p.max) && p.also != Some(current) {
            let name = cbor::key_name(p.key).unwrap_or("parameter");
            let show = |v: u64| {
                if p.decimal {
                    format!("{}.{:02}", v / 100, v % 100)
                } else {
                    v.to_string()
                }
            };
            return Err(ConfigError::Unacceptable(format!(
                "{name} {} is outside {}..{}",
                show(current),
                show(p.min),
                show(p.max)
            )));
        }
        target.set(p.key, current);
    }
    f.finish()?;
    if seen == 0 {
        return Err(ConfigError::Bad(CborError::Missing("a session parameter")));
    }
    Ok(())
}

/// The current values of a GET /config response (what a client must use); limits and
/// unknown parameters are skipped.
pub fn decode_response(body: &[u8]) -> Result<SessionConfig, CborError> {
    let mut top = Fields::new(cbor::parse(body)?, "the response")?;
    let mut sc = Fields::new(
        top.require(30, "ietf-dots-signal-channel:signal-config (30)")?,
        "signal-config",
    )?;
    let mut out = SessionConfig::default();
    if let Some(sid) = sc.take(31) {
        out.sid = Some(cbor::as_u32(sid, 31)?);
    }
    for (key, set) in [(32, &mut out.mitigating), (44, &mut out.idle)] {
        let Some(v) = sc.take(key) else { continue };
        let mut f = Fields::new(v, "a configuration set")?;
        for p in &PARAMS {
            let Some(container) = f.take(p.key) else {
                continue;
            };
            let mut c = Fields::new(container, "a session parameter")?;
            let current = if p.decimal {
                c.take(43)
                    .map(|v| cbor::as_decimal2(v, 43).map(|h| h.max(0) as u64))
            } else {
                c.take(36).map(|v| cbor::as_u64(v, 36))
            };
            if let Some(v) = current {
                set.set(p.key, v?);
            }
        }
    }
    Ok(out)
}

/// CON retransmission parameters of a set (RFC 7252 §4.8, negotiated per RFC 9132 §4.5):
/// the first timeout (ACK_TIMEOUT x a random factor in [1, ACK_RANDOM_FACTOR]) and how
/// many retransmissions follow, each timeout doubling.
pub fn retransmission(set: &ConfigSet, random: u8) -> (std::time::Duration, u32) {
    let ack_timeout_ms = set.get(39).unwrap_or(200) * 10;
    let factor_hundredths = set.get(40).unwrap_or(150).max(100);
    let spread = ack_timeout_ms * (factor_hundredths - 100) / 100;
    let first = ack_timeout_ms + spread * random as u64 / 255;
    let max = set.get(38).unwrap_or(3) as u32;
    (std::time::Duration::from_millis(first), max)
}

/// Applies a PUT body to a copy of `base` (the client's configuration so far).
pub fn decode_put(body: &[u8], base: &SessionConfig) -> Result<SessionConfig, ConfigError> {
    let mut top = Fields::new(cbor::parse(body)?, "the request")?;
    let sc = top.require(30, "ietf-dots-signal-channel:signal-config (30)")?;
    top.finish()?;
    let mut sc = Fields::new(sc, "signal-config")?;
    let mut out = base.clone();
    let mitigating = sc.take(32);
    let idle = sc.take(44);
    sc.finish()?;
    if mitigating.is_none() && idle.is_none() {
        return Err(ConfigError::Bad(CborError::Missing(
            "mitigating-config (32) or idle-config (44)",
        )));
    }
    if let Some(m) = mitigating {
        apply_set(m, &mut out.mitigating, "mitigating-config")?;
    }
    if let Some(i) = idle {
        apply_set(i, &mut out.idle, "idle-config")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_vector_sets_heartbeat_and_ack_timeout() {
        // {30:{32:{33:{36:30},39:{43:2.00}}}} from the protocol reference.
        let body = [
            0xa1, 0x18, 0x1e, 0xa1, 0x18, 0x20, 0xa2, 0x18, 0x21, 0xa1, 0x18, 0x24, 0x18, 0x1e,
            0x18, 0x27, 0xa1, 0x18, 0x2b, 0xc4, 0x82, 0x21, 0x18, 0xc8,
        ];
        let c = decode_put(&body, &SessionConfig::default()).unwrap();
        assert_eq!(c.mitigating.heartbeat_interval(), 30);
        assert_eq!(c.mitigating.get(39), Some(200));
    }

    #[test]
    fn out_of_range_is_4_22_and_malformed_is_4_00() {
        let put = |set: u64, param: u64, cur: Value| {
            let (kcur, _) = if param == 39 || param == 40 {
                (43, ())
            } else {
                (36, ())
            };
            let body = cbor::encode(&cbor::map(vec![(
                30,
                cbor::map(vec![(
                    set,
                    cbor::map(vec![(param, cbor::map(vec![(kcur, cur)]))]),
                )]),
            )]));
            decode_put(&body, &SessionConfig::default())
        };
        assert_eq!(
            put(32, 33, uint(10)),
            Err(ConfigError::Unacceptable(
                "heartbeat-interval 10 is outside 15..240".into()
            ))
        );
        assert!(put(32, 33, uint(0)).is_ok(), "0 switches heartbeats off");
        assert_eq!(
            put(44, 39, cbor::decimal2(5000)),
            Err(ConfigError::Unacceptable(
                "ack-timeout 50.00 is outside 1.00..30.00".into()
            ))
        );
        assert!(matches!(
            put(44, 37, Value::Text("x".into())),
            Err(ConfigError::Bad(_))
        ));
        assert!(matches!(
            decode_put(
                &cbor::encode(&cbor::map(vec![(30, cbor::map(vec![]))])),
                &SessionConfig::default()
            ),
            Err(ConfigError::Bad(_))
        ));
    }

    #[test]
    fn encode_put_round_trips() {
        let body = encode_put(true, &[(33, 60), (39, 250)]);
        let c = decode_put(&body, &SessionConfig::default()).unwrap();
        assert_eq!(
            (c.idle.heartbeat_interval(), c.idle.get(39)),
            (60, Some(250))
        );
        assert_eq!(c.mitigating, ConfigSet::default());
    }

    #[test]
    fn a_client_reads_the_values_in_force_and_derives_retransmission() {
        let mut c = SessionConfig::default();
        c.idle.set(38, 5);
        c.idle.set(39, 100);
        c.idle.set(40, 200);
        let back = decode_response(&encode(&c)).unwrap();
        assert_eq!(back, SessionConfig { sid: None, ..c });
        let (first, max) = retransmission(&back.idle, 0);
        assert_eq!((first, max), (std::time::Duration::from_millis(1000), 5));
        let (spread, _) = retransmission(&back.idle, 255);
        assert_eq!(spread, std::time::Duration::from_millis(2000), "1 s x 2.00");
        let defaults = retransmission(&back.mitigating, 255);
        assert_eq!(defaults, (std::time::Duration::from_millis(3000), 3));
        assert!(decode_response(b"\xa0").is_err());
    }

    #[test]
    fn get_body_carries_limits_and_current_values() {
        let v = cbor::parse(&encode(&SessionConfig::default())).unwrap();
        let j = super::super::diag::to_json(&v);
        let hb =
            &j["ietf-dots-signal-channel:signal-config"]["mitigating-config"]["heartbeat-interval"];
        assert_eq!(
            (
                hb["max-value"].as_u64(),
                hb["min-value"].as_u64(),
                hb["current-value"].as_u64()
            ),
            (Some(240), Some(15), Some(30))
        );
        let at = &j["ietf-dots-signal-channel:signal-config"]["idle-config"]["ack-timeout"];
        assert_eq!(at["current-value-decimal"], "2.00");
    }
}
