//! Telemetry as reports: what a server adds to a status (RFC 9244 §9.2) and the
//! pre-mitigation telemetry a client sends (`/tm`, §8), with their bodies.

use super::*;
use crate::datapath::PortRange;

/// A source of attack traffic the datapath dropped, with its rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Talker {
    pub source: IpNet,
    pub attack: Traffic,
}

/// What a status reply adds for a client that asked for server-originated telemetry
/// (RFC 9244 §9.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusTelemetry {
    /// All traffic to the targets in scope (204).
    pub total: Traffic,
    /// The part that was dropped (205).
    pub attack: Traffic,
    /// Top talkers among the dropped sources (in 207).
    pub talkers: Vec<Talker>,
    /// When the mitigation started seeing attack traffic (167).
    pub attack_start: Option<u64>,
}

pub(super) fn traffic_list(t: &Traffic) -> Value {
    Value::Array(t.iter().map(|(u, s)| s.encode(*u)).collect())
}

impl StatusTelemetry {
    /// The scope-entry keys: 204 total-traffic, 205 total-attack-traffic, 207
    /// attack-detail (one entry; vendor-id 0 and attack-id 0: no vendor attack mapping is
    /// published, RFC 9244 §8.1.6; severity unknown).
    pub fn entries(&self) -> Vec<(u64, Value)> {
        let mut e = Vec::new();
        if !self.total.is_empty() {
            e.push((204, traffic_list(&self.total)));
        }
        if !self.attack.is_empty() {
            e.push((205, traffic_list(&self.attack)));
        }
        if !self.talkers.is_empty() {
            let talkers = self
                .talkers
                .iter()
                .map(|t| {
                    cbor::map(vec![
                        (185, Value::Text(t.source.to_string())),
                        (144, traffic_list(&t.attack)),
                    ])
                })
                .collect();
            let mut detail = vec![(202, uint(0)), (164, uint(0)), (166, uint(5))];
            if let Some(t) = self.attack_start {
                detail.push((167, uint(t)));
            }
            detail.push((170, cbor::map(vec![(184, Value::Array(talkers))])));
            e.push((207, Value::Array(vec![cbor::map(detail)])));
        }
        e
    }
}

/// A talker a client reports (RFC 9244 §8.2): a source prefix, whether it is spoofed
/// (None: unknown), and its attack traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedTalker {
    pub source: IpNet,
    pub spoofed: Option<bool>,
    pub attack: Vec<(Unit, Stats)>,
}

/// Pre-or-ongoing-mitigation telemetry from a client (`/tm`, RFC 9244 §8): what it sees
/// arriving at its targets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreMitigation {
    /// Target prefixes, with those of the aliases and mitigations named below once the
    /// engine has resolved them.
    pub targets: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// Empty: any protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// mid-list (186): the client's mitigations this telemetry is about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mids: Vec<u32>,
    pub total: Vec<(Unit, Stats)>,
    pub attack: Vec<(Unit, Stats)>,
    pub talkers: Vec<ReportedTalker>,
}

pub(super) fn traffic_of(v: Value, key: u64) -> Result<Vec<(Unit, Stats)>, TelemetryError> {
    Ok(decode_traffic(v, key)?)
}

/// A traffic list (144, 145, 204, 205): entries keyed by unit.
pub fn decode_traffic(v: Value, key: u64) -> Result<Traffic, CborError> {
    cbor::as_array(v, key)?
        .into_iter()
        .map(Stats::decode)
        .collect()
}

/// Checks an attack-detail list (162, 207) and returns its talkers.
pub fn decode_attack_detail(v: Value) -> Result<Vec<ReportedTalker>, CborError> {
    decode_talkers(v).map_err(|e| CborError::Invalid {
        what: "attack-detail".into(),
        why: match e {
            TelemetryError::Bad(t) | TelemetryError::Unacceptable(t) => t,
        },
    })
}

/// At most this many talkers are kept per report.
pub const MAX_TALKERS: usize = 64;

pub(super) fn decode_talkers(v: Value) -> Result<Vec<ReportedTalker>, TelemetryError> {
    let mut out = Vec::new();
    for detail in cbor::as_array(v, 162)? {
        let mut d = Fields::new(detail, "attack-detail")?;
        for k in [202, 164, 165, 166, 167, 168, 169, 210] {
            d.take(k);
        }
        if let Some(tt) = d.take(170) {
            let mut tt = Fields::new(tt, "top-talker")?;
            if let Some(list) = tt.take(184) {
                for t in cbor::as_array(list, 184)? {
                    let mut f = Fields::new(t, "talker")?;
                    let text = cbor::as_text(f.require(185, "source-prefix (185)")?, 185)?;
                    let source = super::cbor::parse_target_prefix(&text)?;
                    let spoofed = f.take(171).map(|v| cbor::as_bool(v, 171)).transpose()?;
                    let attack = match f.take(144) {
                        Some(v) => traffic_of(v, 144)?,
                        None => Vec::new(),
                    };
                    for k in [187, 188, 173, 157] {
                        f.take(k);
                    }
                    f.finish()?;
                    out.push(ReportedTalker {
                        source,
                        spoofed,
                        attack,
                    });
                }
            }
            tt.finish()?;
        }
        d.finish()?;
    }
    if out.len() > MAX_TALKERS {
        return Err(bad(format!(
            "{} talkers: this server takes at most {MAX_TALKERS}",
            out.len()
        )));
    }
    Ok(out)
}

/// A PUT /tm body `{208: {138: [{189: target, 145?, 144?, 162?}]}}`: one entry, with a
/// target (prefix, alias-name or mid-list; ports and protocols narrow it) and at least
/// one measurement.
pub fn decode_pre_mitigation(body: &[u8]) -> Result<PreMitigation, TelemetryError> {
    let mut top = Fields::new(cbor::parse(body)?, "the request")?;
    let tm = top.require(208, "ietf-dots-telemetry:telemetry (208)")?;
    top.finish()?;
    let mut tm = Fields::new(tm, "telemetry")?;
    let list = cbor::as_array(tm.require(138, "pre-or-ongoing-mitigation (138)")?, 138)?;
    tm.finish()?;
    let [entry] = <[Value; 1]>::try_from(list)
        .map_err(|_| bad("pre-or-ongoing-mitigation (138) must hold exactly one entry"))?;
    let mut e = Fields::new(entry, "pre-or-ongoing-mitigation")?;
    if e.take(181).is_some() {
        return Err(bad("tmid belongs in the path, not the body"));
    }
    let mut target = Fields::new(e.require(189, "target (189)")?, "target")?;
    let t = take_targets(&mut target, true)?;
    target.finish()?;
    if t.prefixes.is_empty() && t.aliases.is_empty() && t.mids.is_empty() {
        return Err(bad(
            "target (189) needs a target-prefix (6), alias-name (13) or mid-list (186)",
        ));
    }
    let total = e.take(145).map(|v| traffic_of(v, 145)).transpose()?;
    let attack = e.take(144).map(|v| traffic_of(v, 144)).transpose()?;
    let talkers = e.take(162).map(decode_talkers).transpose()?;
    for k in [195, 196, 197, 198, 173, 199] {
        e.take(k);
    }
    e.finish()?;
    if total.is_none() && attack.is_none() && talkers.is_none() {
        return Err(bad(
            "give at least one of total-traffic (145), total-attack-traffic (144) and attack-detail (162)",
        ));
    }
    Ok(PreMitigation {
        targets: t.prefixes,
        ports: t.ports,
        protocols: t.protocols,
        aliases: t.aliases,
        mids: t.mids,
        total: total.unwrap_or_default(),
        attack: attack.unwrap_or_default(),
        talkers: talkers.unwrap_or_default(),
    })
}

/// `{208: {138: [...]}}` with the given reports: with their tmids (GET tm/cuid[/tmid]),
/// or one without (the body of a client's PUT).
pub fn encode_pre_mitigation(reports: &[(Option<u32>, PreMitigation)]) -> Vec<u8> {
    let entries = reports
        .iter()
        .map(|(tmid, r)| {
            let mut e = Vec::new();
            if let Some(t) = tmid {
                e.push((181, uint(*t as u64)));
            }
            e.push((
                189,
                cbor::map(target_entries(
                    &r.targets,
                    &r.ports,
                    &r.protocols,
                    &r.aliases,
                    &r.mids,
                )),
            ));
            if !r.total.is_empty() {
                e.push((145, traffic_list(&r.total)));
            }
            if !r.attack.is_empty() {
                e.push((144, traffic_list(&r.attack)));
            }
            if !r.talkers.is_empty() {
                let talkers = r
                    .talkers
                    .iter()
                    .map(|t| {
                        let mut m = vec![(185, Value::Text(t.source.to_string()))];
                        if let Some(s) = t.spoofed {
                            m.push((171, Value::Bool(s)));
                        }
                        if !t.attack.is_empty() {
                            m.push((144, traffic_list(&t.attack)));
                        }
                        cbor::map(m)
                    })
                    .collect();
                e.push((
                    162,
                    Value::Array(vec![cbor::map(vec![
                        (202, uint(0)),
                        (164, uint(0)),
                        (170, cbor::map(vec![(184, Value::Array(talkers))])),
                    ])]),
                ));
            }
            cbor::map(e)
        })
        .collect();
    cbor::encode(&cbor::map(vec![(
        208,
        cbor::map(vec![(138, Value::Array(entries))]),
    )]))
}
