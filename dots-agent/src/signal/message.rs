//! Signal-channel message bodies (RFC 9132 §4.4, §4.7; RFC 9133 acl-list) as typed values,
//! decoded strictly from CBOR and encoded deterministically (keys ascending, defaults
//! omitted), so the RFC's Figure 8 request round-trips byte for byte.

use ciborium::value::Value;
use ipnet::IpNet;

use super::cbor::{self, parse_target_prefix, uint, CborError, Fields};
use crate::datapath::PortRange;

/// Mitigation request lifetime (key 14): seconds, or -1 for "until withdrawn".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    Seconds(u32),
    Indefinite,
}

impl Lifetime {
    pub fn to_cbor(self) -> Value {
        match self {
            Lifetime::Seconds(s) => uint(s as u64),
            Lifetime::Indefinite => cbor::int(-1),
        }
    }
}

/// RFC 9133 activation types (key 52).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationType {
    ActivateWhenMitigating = 1,
    Immediate = 2,
    Deactivate = 3,
}

/// An entry of `ietf-dots-signal-control:acl-list` (key 53).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclActivation {
    pub acl_name: String,
    pub activation_type: ActivationType,
}

/// The one `scope` of a mitigation request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub target_prefix: Vec<IpNet>,
    pub target_port_range: Vec<PortRange>,
    /// Empty: any protocol.
    pub target_protocol: Vec<u8>,
    pub target_fqdn: Vec<String>,
    pub target_uri: Vec<String>,
    pub alias_name: Vec<String>,
    pub lifetime: Lifetime,
    pub trigger_mitigation: bool,
    pub acl_list: Vec<AclActivation>,
    /// attack-status (29), carried by efficacy updates: 1 under attack, 2 mitigated.
    pub attack_status: Option<u8>,
    /// Efficacy telemetry (RFC 9244 §9.1): the attack traffic the client still sees
    /// (205), in efficacy updates.
    pub efficacy_attack: super::telemetry::Traffic,
}

impl Scope {
    pub fn new(target_prefix: Vec<IpNet>, lifetime: Lifetime) -> Scope {
        Scope {
            target_prefix,
            target_port_range: Vec::new(),
            target_protocol: Vec::new(),
            target_fqdn: Vec::new(),
            target_uri: Vec::new(),
            alias_name: Vec::new(),
            lifetime,
            trigger_mitigation: true,
            acl_list: Vec::new(),
            attack_status: None,
            efficacy_attack: Vec::new(),
        }
    }

    /// The target fields (6, 7, 10-13) as CBOR entries, in key order.
    fn target_entries(&self) -> Vec<(u64, Value)> {
        let mut e = Vec::new();
        let texts = |v: &[String]| Value::Array(v.iter().map(|s| Value::Text(s.clone())).collect());
        if !self.target_prefix.is_empty() {
            e.push((
                6,
                Value::Array(
                    self.target_prefix
                        .iter()
                        .map(|p| Value::Text(p.to_string()))
                        .collect(),
                ),
            ));
        }
        if !self.target_port_range.is_empty() {
            e.push((7, encode_port_ranges(&self.target_port_range)));
        }
        if !self.target_protocol.is_empty() {
            e.push((
                10,
                Value::Array(
                    self.target_protocol
                        .iter()
                        .map(|p| uint(*p as u64))
                        .collect(),
                ),
            ));
        }
        if !self.target_fqdn.is_empty() {
            e.push((11, texts(&self.target_fqdn)));
        }
        if !self.target_uri.is_empty() {
            e.push((12, texts(&self.target_uri)));
        }
        if !self.alias_name.is_empty() {
            e.push((13, texts(&self.alias_name)));
        }
        e
    }
}

/// Why a request body is refused: the text is the 4.00 diagnostic payload.
pub type RequestError = CborError;

fn invalid(key: u64, why: impl Into<String>) -> CborError {
    let name = cbor::key_name(key).unwrap_or("value");
    CborError::Invalid {
        what: format!("{name} ({key})"),
        why: why.into(),
    }
}

/// Decodes a mitigation request body `{1: {2: [scope]}}` (RFC 9132 §4.4.1).
pub fn decode_mitigation_request(body: &[u8]) -> Result<Scope, RequestError> {
    let mut top = Fields::new(cbor::parse(body)?, "the request")?;
    let ms = top.require(1, "ietf-dots-signal-channel:mitigation-scope (1)")?;
    top.finish()?;
    let mut ms = Fields::new(ms, "mitigation-scope")?;
    let scopes = cbor::as_array(ms.require(2, "scope (2)")?, 2)?;
    ms.finish()?;
    let [scope] = <[Value; 1]>::try_from(scopes).map_err(|s| {
        invalid(
            2,
            format!("holds {} entries; a request carries exactly one", s.len()),
        )
    })?;
    decode_scope(scope)
}

fn decode_scope(v: Value) -> Result<Scope, CborError> {
    let mut f = Fields::new(v, "a mitigation request scope")?;
    let lifetime = match cbor::as_i64(f.require(14, "lifetime (14)")?, 14)? {
        0 => {
            return Err(invalid(
                14,
                "0 is not a lifetime (RFC 9132: use DELETE to withdraw)",
            ))
        }
        -1 => Lifetime::Indefinite,
        n if n < 0 => {
            return Err(invalid(
                14,
                format!("{n}: only -1 (indefinite) may be negative"),
            ))
        }
        n => Lifetime::Seconds(
            u32::try_from(n).map_err(|_| invalid(14, format!("{n} exceeds 2^32-1")))?,
        ),
    };
    let mut s = Scope::new(Vec::new(), lifetime);
    if let Some(v) = f.take(6) {
        for t in cbor::as_text_list(v, 6)? {
            s.target_prefix.push(parse_target_prefix(&t)?);
        }
    }
    if let Some(v) = f.take(7) {
        s.target_port_range = decode_port_ranges(v)?;
    }
    if let Some(v) = f.take(10) {
        s.target_protocol = decode_protocols(v)?;
    }
    if let Some(v) = f.take(11) {
        s.target_fqdn = cbor::as_text_list(v, 11)?;
    }
    if let Some(v) = f.take(12) {
        s.target_uri = cbor::as_text_list(v, 12)?;
    }
    if let Some(v) = f.take(13) {
        s.alias_name = cbor::as_text_list(v, 13)?;
    }
    if let Some(v) = f.take(29) {
        match cbor::as_u64(v, 29)? {
            n @ (1 | 2) => s.attack_status = Some(n as u8),
            n => {
                return Err(invalid(
                    29,
                    format!("{n} is not an attack status (1 under attack, 2 mitigated)"),
                ))
            }
        }
    }
    if let Some(v) = f.take(45) {
        s.trigger_mitigation = cbor::as_bool(v, 45)?;
    }
    if let Some(v) = f.take(205) {
        s.efficacy_attack = super::telemetry::decode_traffic(v, 205)?;
    }
    if let Some(v) = f.take(207) {
        // Attack details of an efficacy update are checked, not used: talkers reach the
        // server's policy through pre-mitigation telemetry (/tm).
        super::telemetry::decode_attack_detail(v)?;
    }
    if let Some(v) = f.take(53) {
        for e in cbor::as_array(v, 53)? {
            let mut ef = Fields::new(e, "acl-list")?;
            let acl_name = cbor::as_text(ef.require(23, "acl-name (23)")?, 23)?;
            let activation_type = match ef.take(52).map(|v| cbor::as_u64(v, 52)).transpose()? {
                None | Some(1) => ActivationType::ActivateWhenMitigating,
                Some(2) => ActivationType::Immediate,
                Some(3) => ActivationType::Deactivate,
                Some(n) => return Err(invalid(52, format!("{n} is not an activation type (1-3)"))),
            };
            ef.finish()?;
            s.acl_list.push(AclActivation {
                acl_name,
                activation_type,
            });
        }
    }
    f.finish()?;
    if s.target_prefix.is_empty()
        && s.target_fqdn.is_empty()
        && s.target_uri.is_empty()
        && s.alias_name.is_empty()
    {
        return Err(CborError::Missing(
            "a target: target-prefix (6), target-fqdn (11), target-uri (12) or alias-name (13)",
        ));
    }
    Ok(s)
}

/// A target-port-range list (7), as in mitigation requests and telemetry targets.
pub(crate) fn decode_port_ranges(v: Value) -> Result<Vec<PortRange>, CborError> {
    let mut out = Vec::new();
    for r in cbor::as_array(v, 7)? {
        let mut rf = Fields::new(r, "target-port-range")?;
        let lower = port(rf.require(8, "lower-port (8)")?, 8)?;
        let upper = rf.take(9).map(|u| port(u, 9)).transpose()?;
        rf.finish()?;
        if upper.is_some_and(|u| u < lower) {
            return Err(invalid(9, format!("upper-port below lower-port {lower}")));
        }
        out.push(PortRange { lower, upper });
    }
    Ok(out)
}

/// A target-protocol list (10): IANA protocol numbers.
pub(crate) fn decode_protocols(v: Value) -> Result<Vec<u8>, CborError> {
    cbor::as_array(v, 10)?
        .into_iter()
        .map(|p| {
            let n = cbor::as_u64(p, 10)?;
            u8::try_from(n).map_err(|_| invalid(10, format!("{n} is not a protocol number")))
        })
        .collect()
}

/// The CBOR of a target-port-range list (7).
pub(crate) fn encode_port_ranges(ranges: &[PortRange]) -> Value {
    Value::Array(
        ranges
            .iter()
            .map(|r| {
                let mut m = vec![(8, uint(r.lower as u64))];
                if let Some(u) = r.upper {
                    m.push((9, uint(u as u64)));
                }
                cbor::map(m)
            })
            .collect(),
    )
}

fn port(v: Value, key: u64) -> Result<u16, CborError> {
    let n = cbor::as_u64(v, key)?;
    u16::try_from(n).map_err(|_| invalid(key, format!("{n} is not a port number")))
}

/// Encodes a mitigation request (the client side).
pub fn encode_mitigation_request(s: &Scope) -> Vec<u8> {
    let mut e = s.target_entries();
    e.push((14, s.lifetime.to_cbor()));
    if let Some(a) = s.attack_status {
        e.push((29, uint(a as u64)));
    }
    if !s.trigger_mitigation {
        e.push((45, Value::Bool(false)));
    }
    if !s.acl_list.is_empty() {
        let list = s
            .acl_list
            .iter()
            .map(|a| {
                let mut m = vec![(23, Value::Text(a.acl_name.clone()))];
                if a.activation_type != ActivationType::ActivateWhenMitigating {
                    m.push((52, uint(a.activation_type as u64)));
                }
                cbor::map(m)
            })
            .collect();
        e.push((53, Value::Array(list)));
    }
    if !s.efficacy_attack.is_empty() {
        e.push((
            205,
            Value::Array(
                s.efficacy_attack
                    .iter()
                    .map(|(u, t)| t.encode(*u))
                    .collect(),
            ),
        ));
    }
    cbor::encode(&cbor::map(vec![(
        1,
        cbor::map(vec![(2, Value::Array(vec![cbor::map(e)]))]),
    )]))
}

/// Mitigation status codes (key 16, RFC 9132 §4.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    InProgress = 1,
    SuccessfullyMitigated = 2,
    Stopped = 3,
    ExceededCapability = 4,
    ClientWithdrawn = 5,
    Terminated = 6,
    Withdrawn = 7,
    SignalLoss = 8,
}

impl Status {
    /// The status of code `n`; None for a code RFC 9132 does not define.
    pub fn from_code(n: u64) -> Option<Status> {
        Some(match n {
            1 => Status::InProgress,
            2 => Status::SuccessfullyMitigated,
            3 => Status::Stopped,
            4 => Status::ExceededCapability,
            5 => Status::ClientWithdrawn,
            6 => Status::Terminated,
            7 => Status::Withdrawn,
            8 => Status::SignalLoss,
            _ => return None,
        })
    }
}

/// One entry of a status reply or notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MitigationStatus {
    pub mid: u32,
    pub scope: Scope,
    /// Remaining lifetime (the scope's lifetime is the remaining one here).
    pub mitigation_start: Option<u64>,
    pub status: Status,
    pub bytes_dropped: Option<u64>,
    pub bps_dropped: Option<u64>,
    pub pkts_dropped: Option<u64>,
    pub pps_dropped: Option<u64>,
    /// Mitigation-status telemetry (RFC 9244 §9.2), for clients that asked for it.
    pub telemetry: Option<super::telemetry::StatusTelemetry>,
    /// conflict-information (17, CBOR), e.g. an upstream server's conflict relayed back.
    pub conflict_information: Option<Vec<u8>>,
}

/// `{1: {2: [{5: mid, ...targets, 14: lifetime, 15?, 16, 25-28?}]}}`.
pub fn encode_status(entries: &[MitigationStatus]) -> Vec<u8> {
    let scopes = entries
        .iter()
        .map(|m| {
            let mut e = vec![(5, uint(m.mid as u64))];
            e.extend(m.scope.target_entries());
            e.push((14, m.scope.lifetime.to_cbor()));
            if let Some(t) = m.mitigation_start {
                e.push((15, uint(t)));
            }
            e.push((16, uint(m.status as u64)));
            for (k, v) in [
                (25, m.bytes_dropped),
                (26, m.bps_dropped),
                (27, m.pkts_dropped),
                (28, m.pps_dropped),
            ] {
                if let Some(v) = v {
                    e.push((k, uint(v)));
                }
            }
            if !m.scope.acl_list.is_empty() {
                let list = m
                    .scope
                    .acl_list
                    .iter()
                    .map(|a| {
                        cbor::map(vec![
                            (23, Value::Text(a.acl_name.clone())),
                            (52, uint(a.activation_type as u64)),
                        ])
                    })
                    .collect();
                e.push((53, Value::Array(list)));
            }
            if let Some(t) = &m.telemetry {
                e.extend(t.entries());
            }
            if let Some(info) = m.conflict_information.as_deref() {
                e.extend(cbor::parse(info).ok().map(|v| (17, v)));
            }
            cbor::map(e)
        })
        .collect();
    cbor::encode(&cbor::map(vec![(
        1,
        cbor::map(vec![(2, Value::Array(scopes))]),
    )]))
}

/// The response to a created mitigation: `{1: {2: [{5: mid, 14: granted lifetime}]}}`.
pub fn encode_created(mid: u32, granted: Lifetime) -> Vec<u8> {
    let scope = cbor::map(vec![(5, uint(mid as u64)), (14, granted.to_cbor())]);
    cbor::encode(&cbor::map(vec![(
        1,
        cbor::map(vec![(2, Value::Array(vec![scope]))]),
    )]))
}

/// `{49: {51: peer-hb-status}}` (RFC 9132 §4.7).
pub fn encode_heartbeat(peer_hb_status: bool) -> Vec<u8> {
    cbor::encode(&cbor::map(vec![(
        49,
        cbor::map(vec![(51, Value::Bool(peer_hb_status))]),
    )]))
}

pub fn decode_heartbeat(body: &[u8]) -> Result<bool, CborError> {
    let mut top = Fields::new(cbor::parse(body)?, "the heartbeat")?;
    let hb = top.require(49, "ietf-dots-signal-channel:heartbeat (49)")?;
    top.finish()?;
    let mut hb = Fields::new(hb, "heartbeat")?;
    let status = cbor::as_bool(hb.require(51, "peer-hb-status (51)")?, 51)?;
    hb.finish()?;
    Ok(status)
}

/// Where a server sends its clients instead (RFC 9132 §4.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// alt-server (47): the name the alternate's certificate carries.
    pub alt_server: String,
    /// alt-server-record (48): its addresses (the client skips name resolution).
    pub alt_server_record: Vec<std::net::IpAddr>,
}

/// `{46: {47: name, 48: [addresses]}}`, the body of a redirecting 5.03.
pub fn encode_redirect(r: &Redirect) -> Vec<u8> {
    let mut inner = vec![(47, Value::Text(r.alt_server.clone()))];
    if !r.alt_server_record.is_empty() {
        inner.push((
            48,
            Value::Array(
                r.alt_server_record
                    .iter()
                    .map(|a| Value::Text(a.to_string()))
                    .collect(),
            ),
        ));
    }
    cbor::encode(&cbor::map(vec![(46, cbor::map(inner))]))
}

pub fn decode_redirect(body: &[u8]) -> Result<Redirect, CborError> {
    let mut top = Fields::new(cbor::parse(body)?, "the redirect")?;
    let r = top.require(46, "ietf-dots-signal-channel:redirected-signal (46)")?;
    top.finish()?;
    let mut r = Fields::new(r, "redirected-signal")?;
    let alt_server = cbor::as_text(r.require(47, "alt-server (47)")?, 47)?;
    let alt_server_record = match r.take(48) {
        None => Vec::new(),
        Some(v) => cbor::as_text_list(v, 48)?
            .iter()
            .map(|a| {
                a.parse().map_err(|_| CborError::Invalid {
                    what: "alt-server-record (48)".into(),
                    why: format!("{a:?} is not an IP address"),
                })
            })
            .collect::<Result<_, _>>()?,
    };
    r.finish()?;
    Ok(Redirect {
        alt_server,
        alt_server_record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip_and_others_are_none() {
        for code in 1..=8u64 {
            assert_eq!(Status::from_code(code).map(|s| s as u64), Some(code));
        }
        assert_eq!(Status::from_code(0), None);
        assert_eq!(Status::from_code(9), None);
    }

    #[test]
    fn efficacy_telemetry_round_trips() {
        let mut s = Scope::new(
            vec!["198.51.100.0/24".parse().unwrap()],
            Lifetime::Seconds(60),
        );
        s.attack_status = Some(1);
        s.efficacy_attack = vec![(
            super::super::telemetry::Unit::from_code(8).unwrap(),
            super::super::telemetry::Stats {
                current: Some(40),
                ..Default::default()
            },
        )];
        assert_eq!(
            decode_mitigation_request(&encode_mitigation_request(&s)),
            Ok(s)
        );
    }

    #[test]
    fn redirects_round_trip_and_need_alt_server() {
        let r = Redirect {
            alt_server: "alt.example".into(),
            alt_server_record: vec!["2001:db8::1".parse().unwrap(), "192.0.2.7".parse().unwrap()],
        };
        assert_eq!(decode_redirect(&encode_redirect(&r)), Ok(r));
        let no_name = cbor::encode(&cbor::map(vec![(46, cbor::map(vec![]))]));
        assert!(decode_redirect(&no_name).is_err());
        let bad_address = cbor::encode(&cbor::map(vec![(
            46,
            cbor::map(vec![
                (47, Value::Text("a".into())),
                (48, Value::Array(vec![Value::Text("not-an-ip".into())])),
            ]),
        )]));
        assert!(decode_redirect(&bad_address).is_err());
    }

    const FIG8: &[u8] = include_bytes!("../../tests/fixtures/rfc9132-fig8.cbor");

    #[test]
    fn rfc9132_figure_8_decodes_and_round_trips() {
        let s = decode_mitigation_request(FIG8).unwrap();
        assert_eq!(
            s.target_prefix,
            vec![
                "2001:db8:6401::1/128".parse::<IpNet>().unwrap(),
                "2001:db8:6401::2/128".parse().unwrap()
            ]
        );
        assert_eq!(
            s.target_port_range,
            vec![
                PortRange::single(80),
                PortRange::single(443),
                PortRange::single(8080)
            ]
        );
        assert_eq!(s.target_protocol, vec![6]);
        assert_eq!(s.lifetime, Lifetime::Seconds(3600));
        assert!(s.trigger_mitigation);
        assert_eq!(encode_mitigation_request(&s), FIG8);
    }

    fn request(scope: Vec<(u64, Value)>) -> Vec<u8> {
        cbor::encode(&cbor::map(vec![(
            1,
            cbor::map(vec![(2, Value::Array(vec![cbor::map(scope)]))]),
        )]))
    }

    fn prefixes(p: &[&str]) -> Value {
        Value::Array(p.iter().map(|s| Value::Text(s.to_string())).collect())
    }

    #[test]
    fn request_errors_say_what_is_wrong() {
        let msg = |b: Vec<u8>| decode_mitigation_request(&b).unwrap_err().to_string();
        assert_eq!(
            msg(request(vec![(6, prefixes(&["198.51.100.0/24"]))])),
            "lifetime (14) is missing"
        );
        assert_eq!(
            msg(request(vec![
                (6, prefixes(&["198.51.100.0/24"])),
                (14, uint(0))
            ])),
            "lifetime (14): 0 is not a lifetime (RFC 9132: use DELETE to withdraw)"
        );
        assert!(msg(request(vec![(14, uint(60))])).contains("a target"));
        assert!(msg(request(vec![
            (6, prefixes(&["127.0.0.0/8"])),
            (14, uint(60))
        ]))
        .contains("loopback"));
        assert!(msg(request(vec![
            (6, prefixes(&["not-a-prefix"])),
            (14, uint(60))
        ]))
        .contains("not an IP prefix"));
        assert_eq!(
            msg(request(vec![
                (6, prefixes(&["198.51.100.0/24"])),
                (14, uint(60)),
                (100, uint(1))
            ])),
            "unknown comprehension-required key(s) [100]"
        );
        assert!(msg(request(vec![
            (4, Value::Text("x".into())),
            (6, prefixes(&["198.51.100.0/24"])),
            (14, uint(60))
        ]))
        .contains("cuid (4)"));
        let two = cbor::encode(&cbor::map(vec![(
            1,
            cbor::map(vec![(
                2,
                Value::Array(vec![
                    cbor::map(vec![(14, uint(1))]),
                    cbor::map(vec![(14, uint(1))]),
                ]),
            )]),
        )]));
        assert!(msg(two).contains("exactly one"));
        assert!(matches!(
            decode_mitigation_request(&[0xff, 0x00]),
            Err(CborError::Malformed(_))
        ));
    }

    #[test]
    fn optional_extension_keys_are_ignored_and_indefinite_lifetime_is_kept() {
        let b = request(vec![
            (6, prefixes(&["198.51.100.0/24"])),
            (14, cbor::int(-1)),
            (45, Value::Bool(false)),
            (180, uint(5)),
        ]);
        let s = decode_mitigation_request(&b).unwrap();
        assert_eq!(s.lifetime, Lifetime::Indefinite);
        assert!(!s.trigger_mitigation);
    }

    #[test]
    fn acl_list_and_status_encode() {
        let mut s = Scope::new(
            vec!["198.51.100.0/24".parse().unwrap()],
            Lifetime::Seconds(3600),
        );
        s.acl_list = vec![AclActivation {
            acl_name: "sample-ipv4-acl".into(),
            activation_type: ActivationType::Immediate,
        }];
        let back = decode_mitigation_request(&encode_mitigation_request(&s)).unwrap();
        assert_eq!(back, s);
        let st = MitigationStatus {
            mid: 123,
            scope: s,
            mitigation_start: Some(1_700_000_000),
            status: Status::SuccessfullyMitigated,
            bytes_dropped: Some(1_000_000),
            bps_dropped: Some(8_000),
            pkts_dropped: Some(1_000),
            pps_dropped: Some(10),
            telemetry: None,
            conflict_information: None,
        };
        let v = cbor::parse(&encode_status(&[st])).unwrap();
        let text = format!("{v:?}");
        assert!(
            text.contains("123") && text.contains("1700000000"),
            "{text}"
        );
        assert_eq!(
            encode_created(123, Lifetime::Seconds(3600)),
            vec![0xa1, 0x01, 0xa1, 0x02, 0x81, 0xa2, 0x05, 0x18, 0x7b, 0x0e, 0x19, 0x0e, 0x10]
        );
    }

    #[test]
    fn heartbeat_matches_the_reference_vector() {
        assert_eq!(
            encode_heartbeat(true),
            vec![0xa1, 0x18, 0x31, 0xa1, 0x18, 0x33, 0xf5]
        );
        assert_eq!(
            decode_heartbeat(&[0xa1, 0x18, 0x31, 0xa1, 0x18, 0x33, 0xf4]),
            Ok(false)
        );
        assert!(decode_heartbeat(&[0xa1, 0x18, 0x31, 0xa0]).is_err());
    }
}
