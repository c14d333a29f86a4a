//! The telemetry setup a client negotiates (`/tm-setup`, RFC 9244 §7): configuration,
//! pipe capacity and baselines, the server's limits, and their bodies.

use super::*;
use crate::datapath::PortRange;

/// Measurement intervals (RFC 9244 §7.1.2), in seconds: 5 min, 10 min, 30 min, hour,
/// day, week, month (30 days).
pub fn interval_seconds(code: u8) -> Option<u64> {
    Some(match code {
        1 => 300,
        2 => 600,
        3 => 1800,
        4 => 3600,
        5 => 86_400,
        6 => 604_800,
        7 => 2_592_000,
        _ => return None,
    })
}

/// Measurement samples (RFC 9244 §7.1.2), in seconds: second, 5 s, 30 s, minute, 5 min,
/// 10 min, 30 min, hour.
pub fn sample_seconds(code: u8) -> Option<u64> {
    Some(match code {
        1 => 1,
        2 => 5,
        3 => 30,
        4 => 60,
        5 => 300,
        6 => 600,
        7 => 1800,
        8 => 3600,
        _ => return None,
    })
}

/// A client's telemetry configuration (RFC 9244 §7.1.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryConfig {
    /// measurement-interval code (1 = 5 minutes ... 7 = month).
    pub measurement_interval: u8,
    /// measurement-sample code (1 = second ... 8 = hour).
    pub measurement_sample: u8,
    pub percentiles: PercentileSet,
    /// Unit classes to report in, each enabled or not.
    pub unit_classes: Vec<(UnitClass, bool)>,
    /// Whether the server adds telemetry to mitigation status (off unless asked for).
    pub server_originated: bool,
    /// Minimum seconds between telemetry notifications.
    pub notify_interval: u16,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            measurement_interval: 1,
            measurement_sample: 1,
            percentiles: PercentileSet::default(),
            unit_classes: vec![
                (UnitClass::PacketsPerSecond, true),
                (UnitClass::BitsPerSecond, true),
                (UnitClass::BytesPerSecond, false),
            ],
            server_originated: false,
            notify_interval: 10,
        }
    }
}

impl TelemetryConfig {
    /// The enabled unit classes, in code order.
    pub fn classes(&self) -> Vec<UnitClass> {
        let mut v: Vec<UnitClass> = self
            .unit_classes
            .iter()
            .filter(|(_, on)| *on)
            .map(|(c, _)| *c)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Samples kept to cover the measurement interval.
    pub fn samples(&self) -> usize {
        let i = interval_seconds(self.measurement_interval).unwrap_or(300);
        let s = sample_seconds(self.measurement_sample).unwrap_or(1);
        (i / s).max(1) as usize
    }

    pub fn sample_seconds(&self) -> u64 {
        sample_seconds(self.measurement_sample).unwrap_or(1)
    }
}

/// What this server accepts (published as max-config-values / min-config-values): up to
/// an hour measured in samples of up to a minute (3,600 samples a mitigation at most).
pub const MAX_INTERVAL: u8 = 4;
pub const MAX_SAMPLE: u8 = 4;
pub const MAX_SAMPLES: u64 = 3600;

/// A link's capacity (RFC 9244 §7.2), e.g. the client's uplink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeCapacity {
    pub link_id: String,
    pub unit: Unit,
    pub capacity: u64,
}

impl PipeCapacity {
    /// The capacity in bytes per second, if its unit counts bits or bytes.
    pub fn bytes_per_second(&self) -> Option<u64> {
        let base = self.unit.to_base(self.capacity);
        match self.unit.class() {
            UnitClass::BitsPerSecond => Some(base / 8),
            UnitClass::BytesPerSecond => Some(base),
            UnitClass::PacketsPerSecond => None,
        }
    }
}

/// A normal traffic baseline (RFC 9244 §7.3) for some targets (none: the whole domain).
/// Alias names are kept as given, with what they stood for added to the explicit targets
/// (as in mitigation requests), so a restored setup needs no data channel to mean the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    pub id: u32,
    pub targets: Vec<IpNet>,
    // serde(default): setups stored before these fields existed still load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// Empty: any protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub normal: Vec<(Unit, Stats)>,
}

/// The target fields of a baseline (RFC 9244 §7.3) or of a pre-mitigation `target`
/// (189, §8.1.1), as decoded (aliases and mids not yet resolved).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetFields {
    pub prefixes: Vec<IpNet>,
    pub ports: Vec<PortRange>,
    pub protocols: Vec<u8>,
    pub aliases: Vec<String>,
    pub mids: Vec<u32>,
}

/// Takes the target fields 6, 7, 10, 11, 12, 13 (and 186 mid-list where `mid_list`) from
/// `f`. FQDN and URI targets are refused (4.00), as in mitigation requests: this server
/// has no resolver, and ignoring them would measure or report against the wrong targets.
pub(super) fn take_targets(f: &mut Fields, mid_list: bool) -> Result<TargetFields, TelemetryError> {
    let mut t = TargetFields::default();
    if let Some(v) = f.take(6) {
        t.prefixes = prefixes(v)?;
    }
    if let Some(v) = f.take(7) {
        t.ports = super::super::message::decode_port_ranges(v)?;
    }
    if let Some(v) = f.take(10) {
        t.protocols = super::super::message::decode_protocols(v)?;
    }
    for (key, name, what) in [(11, "target-fqdn", "FQDNs"), (12, "target-uri", "URIs")] {
        if let Some(v) = f.take(key) {
            let given = cbor::as_text_list(v, key)?;
            return Err(bad(format!(
                "{name} ({key}) {given:?} refused: this server does not resolve {what} (no resolver); give target-prefix (6) or an alias-name (13) of prefixes"
            )));
        }
    }
    if let Some(v) = f.take(13) {
        t.aliases = cbor::as_text_list(v, 13)?;
    }
    if let Some(v) = f.take(186) {
        // Telemetry keys are comprehension-optional: refuse it here, or it would pass unseen.
        if !mid_list {
            return Err(bad(
                "mid-list (186) belongs to pre-mitigation telemetry, not a baseline",
            ));
        }
        for m in cbor::as_array(v, 186)? {
            t.mids.push(cbor::as_u32(m, 186)?);
        }
    }
    Ok(t)
}

/// The target fields as CBOR entries (key order), the inverse of `take_targets`.
pub(super) fn target_entries(
    prefixes: &[IpNet],
    ports: &[PortRange],
    protocols: &[u8],
    aliases: &[String],
    mids: &[u32],
) -> Vec<(u64, Value)> {
    let mut e = Vec::new();
    if !prefixes.is_empty() {
        e.push((6, prefix_list(prefixes)));
    }
    if !ports.is_empty() {
        e.push((7, super::super::message::encode_port_ranges(ports)));
    }
    if !protocols.is_empty() {
        e.push((
            10,
            Value::Array(protocols.iter().map(|p| uint(*p as u64)).collect()),
        ));
    }
    if !aliases.is_empty() {
        e.push((
            13,
            Value::Array(aliases.iter().map(|a| Value::Text(a.clone())).collect()),
        ));
    }
    if !mids.is_empty() {
        e.push((
            186,
            Value::Array(mids.iter().map(|m| uint(*m as u64)).collect()),
        ));
    }
    e
}

/// Whether two target sets can share traffic: prefixes, ports and protocols each
/// overlap, an empty list standing for all.
pub(super) fn targets_overlap(
    a: (&[IpNet], &[PortRange], &[u8]),
    b: (&[IpNet], &[PortRange], &[u8]),
) -> bool {
    let prefixes = a.0.is_empty()
        || b.0.is_empty()
        || a.0.iter().any(|x| {
            b.0.iter()
                .any(|y| x.contains(&y.network()) || y.contains(&x.network()))
        });
    let span = |r: &PortRange| (r.lower, r.upper.unwrap_or(r.lower));
    let ports = a.1.is_empty()
        || b.1.is_empty()
        || a.1.iter().any(|x| {
            b.1.iter().any(|y| {
                let (x, y) = (span(x), span(y));
                x.0 <= y.1 && y.0 <= x.1
            })
        });
    let protocols = a.2.is_empty() || b.2.is_empty() || a.2.iter().any(|p| b.2.contains(p));
    prefixes && ports && protocols
}

impl Baseline {
    fn scope(&self) -> (&[IpNet], &[PortRange], &[u8]) {
        (&self.targets, &self.ports, &self.protocols)
    }
}

/// One telemetry-setup PUT: exactly one kind of content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetupItem {
    Config(TelemetryConfig),
    Pipes(Vec<PipeCapacity>),
    Baselines(Vec<Baseline>),
}

/// Why a telemetry request was refused: 4.00 (malformed) or 4.22 (outside the limits).
#[derive(Debug, PartialEq, Eq)]
pub enum TelemetryError {
    Bad(String),
    Unacceptable(String),
}

impl From<CborError> for TelemetryError {
    fn from(e: CborError) -> Self {
        TelemetryError::Bad(e.to_string())
    }
}

pub(super) fn bad(s: impl Into<String>) -> TelemetryError {
    TelemetryError::Bad(s.into())
}

pub(super) fn percent(v: Value, key: u64) -> Result<u32, TelemetryError> {
    let h = cbor::as_decimal2(v, key)?;
    if !(0..=10_000).contains(&h) {
        return Err(TelemetryError::Unacceptable(format!(
            "percentile {}.{:02} is outside 0.00..100.00",
            h / 100,
            (h % 100).abs()
        )));
    }
    Ok(h as u32)
}

pub(super) fn prefixes(v: Value) -> Result<Vec<IpNet>, TelemetryError> {
    cbor::as_text_list(v, 6)?
        .iter()
        .map(|t| super::cbor::parse_target_prefix(t).map_err(TelemetryError::from))
        .collect()
}

pub(super) fn decode_config(v: Value) -> Result<TelemetryConfig, TelemetryError> {
    let mut f = Fields::new(v, "current-config")?;
    let mut c = TelemetryConfig::default();
    if let Some(v) = f.take(182) {
        let n = cbor::as_u64(v, 182)?;
        if interval_seconds(n.min(255) as u8).is_none() {
            return Err(bad(format!("measurement-interval {n} is not 1-7")));
        }
        c.measurement_interval = n as u8;
    }
    if let Some(v) = f.take(183) {
        let n = cbor::as_u64(v, 183)?;
        if sample_seconds(n.min(255) as u8).is_none() {
            return Err(bad(format!("measurement-sample {n} is not 1-8")));
        }
        c.measurement_sample = n as u8;
    }
    if let Some(v) = f.take(130) {
        c.percentiles.low = percent(v, 130)?;
    }
    if let Some(v) = f.take(131) {
        c.percentiles.mid = percent(v, 131)?;
    }
    if let Some(v) = f.take(132) {
        c.percentiles.high = percent(v, 132)?;
    }
    if let Some(v) = f.take(133) {
        let mut classes = Vec::new();
        for e in cbor::as_array(v, 133)? {
            let mut u = Fields::new(e, "unit-config")?;
            let code = cbor::as_u64(u.require(134, "unit (134)")?, 134)?;
            let class = UnitClass::from_code(code)
                .ok_or_else(|| bad(format!("unit class {code} is not 1-3")))?;
            let on = cbor::as_bool(u.require(135, "unit-status (135)")?, 135)?;
            u.finish()?;
            classes.push((class, on));
        }
        c.unit_classes = classes;
    }
    if let Some(v) = f.take(179) {
        c.server_originated = cbor::as_bool(v, 179)?;
    }
    if let Some(v) = f.take(180) {
        let n = cbor::as_u64(v, 180)?;
        if !(1..=3600).contains(&n) {
            return Err(TelemetryError::Unacceptable(format!(
                "telemetry-notify-interval {n} is outside 1..3600"
            )));
        }
        c.notify_interval = n as u16;
    }
    f.finish()?;
    let p = c.percentiles;
    if p.mid < p.low || p.high < p.mid {
        return Err(TelemetryError::Unacceptable(
            "percentiles must be low <= mid <= high".into(),
        ));
    }
    if c.measurement_interval > MAX_INTERVAL || c.measurement_sample > MAX_SAMPLE {
        return Err(TelemetryError::Unacceptable(format!(
            "this server measures over at most an hour (interval {MAX_INTERVAL}) in samples of at most a minute (sample {MAX_SAMPLE})"
        )));
    }
    let (i, s) = (
        interval_seconds(c.measurement_interval).unwrap_or(300),
        c.sample_seconds(),
    );
    if s >= i || i / s > MAX_SAMPLES {
        return Err(TelemetryError::Unacceptable(format!(
            "the sample must be shorter than the interval, with at most {MAX_SAMPLES} samples in it"
        )));
    }
    Ok(c)
}

pub(super) fn encode_config(c: &TelemetryConfig) -> Value {
    let units = c
        .unit_classes
        .iter()
        .map(|(class, on)| cbor::map(vec![(134, uint(*class as u64)), (135, Value::Bool(*on))]))
        .collect();
    cbor::map(vec![
        (182, uint(c.measurement_interval as u64)),
        (183, uint(c.measurement_sample as u64)),
        (130, cbor::decimal2(c.percentiles.low as i64)),
        (131, cbor::decimal2(c.percentiles.mid as i64)),
        (132, cbor::decimal2(c.percentiles.high as i64)),
        (133, Value::Array(units)),
        (179, Value::Bool(c.server_originated)),
        (180, uint(c.notify_interval as u64)),
    ])
}

pub(super) fn decode_pipes(v: Value) -> Result<Vec<PipeCapacity>, TelemetryError> {
    let mut out: Vec<PipeCapacity> = Vec::new();
    for e in cbor::as_array(v, 136)? {
        let mut f = Fields::new(e, "total-pipe-capacity")?;
        let link_id = cbor::as_text(f.require(137, "link-id (137)")?, 137)?;
        let code = cbor::as_u64(f.require(134, "unit (134)")?, 134)?;
        let unit = Unit::from_code(code).ok_or_else(|| bad(format!("unit {code} is not 1-24")))?;
        let capacity = cbor::as_u64(f.require(190, "capacity (190)")?, 190)?;
        f.finish()?;
        if let Some(other) = out
            .iter()
            .find(|p| p.link_id == link_id && p.unit.class() == unit.class() && p.unit != unit)
        {
            // The same link in two scales of one class: which one holds is unclear.
            return Err(bad(format!(
                "link {link_id:?} has capacities in units {} and {}",
                other.unit.code(),
                unit.code()
            )));
        }
        out.push(PipeCapacity {
            link_id,
            unit,
            capacity,
        });
    }
    if out.is_empty() {
        return Err(bad("total-pipe-capacity is empty"));
    }
    if out.iter().all(|p| p.capacity == 0) {
        return Err(bad(
            "every capacity is 0: to remove the pipes, DELETE their tsid",
        ));
    }
    Ok(out)
}

pub(super) fn decode_baselines(v: Value) -> Result<Vec<Baseline>, TelemetryError> {
    let mut out = Vec::new();
    for e in cbor::as_array(v, 174)? {
        let mut f = Fields::new(e, "baseline")?;
        let id = cbor::as_u32(f.require(163, "id (163)")?, 163)?;
        if id == 0 {
            return Err(bad("baseline id must be at least 1"));
        }
        let t = take_targets(&mut f, false)?;
        let mut normal = Vec::new();
        if let Some(v) = f.take(139) {
            for t in cbor::as_array(v, 139)? {
                normal.push(Stats::decode(t)?);
            }
        }
        f.finish()?;
        if normal.is_empty() {
            return Err(bad(format!(
                "baseline {id} has no total-traffic-normal (139)"
            )));
        }
        out.push(Baseline {
            id,
            targets: t.prefixes,
            ports: t.ports,
            protocols: t.protocols,
            aliases: t.aliases,
            normal,
        });
    }
    Ok(out)
}

/// A PUT /tm-setup body `{203: {129: [{one of 175, 136, 174}]}}`.
pub fn decode_setup_put(body: &[u8]) -> Result<SetupItem, TelemetryError> {
    let mut top = Fields::new(cbor::parse(body)?, "the request")?;
    let setup = top.require(203, "ietf-dots-telemetry:telemetry-setup (203)")?;
    top.finish()?;
    let mut setup = Fields::new(setup, "telemetry-setup")?;
    let list = cbor::as_array(setup.require(129, "telemetry (129)")?, 129)?;
    setup.finish()?;
    let [entry] = <[Value; 1]>::try_from(list)
        .map_err(|_| bad("telemetry (129) must hold exactly one entry"))?;
    let mut e = Fields::new(entry, "telemetry")?;
    if e.take(128).is_some() {
        return Err(bad("tsid belongs in the path, not the body"));
    }
    let items = [e.take(175), e.take(136), e.take(174)];
    e.finish()?;
    match items {
        [Some(c), None, None] => Ok(SetupItem::Config(decode_config(c)?)),
        [None, Some(p), None] => Ok(SetupItem::Pipes(decode_pipes(p)?)),
        [None, None, Some(b)] => Ok(SetupItem::Baselines(decode_baselines(b)?)),
        _ => Err(bad(
            "give exactly one of current-config (175), total-pipe-capacity (136) and baseline (174)",
        )),
    }
}

pub(super) fn prefix_list(p: &[IpNet]) -> Value {
    Value::Array(p.iter().map(|p| Value::Text(p.to_string())).collect())
}

pub(super) fn encode_pipe(p: &PipeCapacity) -> Value {
    cbor::map(vec![
        (137, Value::Text(p.link_id.clone())),
        (134, uint(p.unit.code() as u64)),
        (190, uint(p.capacity)),
    ])
}

pub(super) fn encode_baseline(b: &Baseline) -> Value {
    let mut m = vec![(163, uint(b.id as u64))];
    m.extend(target_entries(
        &b.targets,
        &b.ports,
        &b.protocols,
        &b.aliases,
        &[],
    ));
    m.push((
        139,
        Value::Array(b.normal.iter().map(|(u, s)| s.encode(*u)).collect()),
    ));
    cbor::map(m)
}

/// The PUT /tm-setup body for one item (what a client sends).
pub fn encode_setup_put(item: &SetupItem) -> Vec<u8> {
    let content = match item {
        SetupItem::Config(c) => (175, encode_config(c)),
        SetupItem::Pipes(p) => (136, Value::Array(p.iter().map(encode_pipe).collect())),
        SetupItem::Baselines(b) => (174, Value::Array(b.iter().map(encode_baseline).collect())),
    };
    cbor::encode(&cbor::map(vec![(
        203,
        cbor::map(vec![(129, Value::Array(vec![cbor::map(vec![content])]))]),
    )]))
}

/// A client's telemetry setup: each item with the tsid that set it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetrySetup {
    pub config: Option<(u32, TelemetryConfig)>,
    pub pipes: Vec<(u32, PipeCapacity)>,
    pub baselines: Vec<(u32, Baseline)>,
}

impl TelemetrySetup {
    /// The configuration in force (the defaults until one is set).
    pub fn current(&self) -> TelemetryConfig {
        self.config.clone().map(|(_, c)| c).unwrap_or_default()
    }

    pub fn has(&self, tsid: u32) -> bool {
        self.config.as_ref().is_some_and(|(t, _)| *t == tsid)
            || self.pipes.iter().any(|(t, _)| *t == tsid)
            || self.baselines.iter().any(|(t, _)| *t == tsid)
    }

    /// Applies a PUT with `tsid`: Ok(true) if the tsid is new (2.01). A higher tsid
    /// supersedes a lower one: always for the configuration, for pipes on the same link
    /// and unit class, for baselines on overlapping targets; a lower tsid cannot undo a
    /// higher one (4.00).
    pub fn put(&mut self, tsid: u32, item: SetupItem) -> Result<bool, TelemetryError> {
        let created = !self.has(tsid);
        let stale = |t: u32| {
            Err(bad(format!(
                "tsid {tsid} is lower than the current {t}: a new setup needs a higher tsid"
            )))
        };
        match item {
            SetupItem::Config(c) => {
                if let Some((t, _)) = &self.config {
                    if *t > tsid {
                        return stale(*t);
                    }
                }
                self.config = Some((tsid, c));
            }
            SetupItem::Pipes(pipes) => {
                for p in &pipes {
                    if let Some((t, _)) = self.pipes.iter().find(|(t, o)| {
                        *t > tsid && o.link_id == p.link_id && o.unit.class() == p.unit.class()
                    }) {
                        return stale(*t);
                    }
                }
                self.pipes.retain(|(t, o)| {
                    *t == tsid
                        || !pipes
                            .iter()
                            .any(|p| o.link_id == p.link_id && o.unit.class() == p.unit.class())
                });
                self.pipes.retain(|(t, _)| *t != tsid);
                self.pipes.extend(
                    pipes
                        .into_iter()
                        .filter(|p| p.capacity > 0)
                        .map(|p| (tsid, p)),
                );
            }
            SetupItem::Baselines(baselines) => {
                let overlap = |a: &Baseline, b: &Baseline| targets_overlap(a.scope(), b.scope());
                for b in &baselines {
                    if let Some((t, _)) = self
                        .baselines
                        .iter()
                        .find(|(t, o)| *t > tsid && overlap(o, b))
                    {
                        return stale(*t);
                    }
                }
                self.baselines
                    .retain(|(t, o)| *t != tsid && !baselines.iter().any(|b| overlap(o, b)));
                self.baselines
                    .extend(baselines.into_iter().map(|b| (tsid, b)));
            }
        }
        Ok(created)
    }

    /// DELETE /tm-setup/cuid/tsid: removes what that tsid set.
    pub fn delete(&mut self, tsid: u32) {
        if self.config.as_ref().is_some_and(|(t, _)| *t == tsid) {
            self.config = None;
        }
        self.pipes.retain(|(t, _)| *t != tsid);
        self.baselines.retain(|(t, _)| *t != tsid);
    }

    /// The smallest pipe capacity in bytes per second (the link traffic must fit in).
    pub fn pipe_bytes_per_second(&self) -> Option<u64> {
        self.pipes
            .iter()
            .filter_map(|(_, p)| p.bytes_per_second())
            .min()
    }

    /// `{203: {...}}` for GET: the server's limits and, for `tsid` (or all), the entries.
    pub fn encode_get(&self, tsid: Option<u32>) -> Vec<u8> {
        let mut tsids: Vec<u32> = self
            .config
            .iter()
            .map(|(t, _)| *t)
            .chain(self.pipes.iter().map(|(t, _)| *t))
            .chain(self.baselines.iter().map(|(t, _)| *t))
            .filter(|t| tsid.is_none_or(|x| x == *t))
            .collect();
        tsids.sort_unstable();
        tsids.dedup();
        let entries = tsids
            .into_iter()
            .map(|t| {
                let mut e = vec![(128, uint(t as u64))];
                if let Some((_, c)) = self.config.as_ref().filter(|(x, _)| *x == t) {
                    e.push((175, encode_config(c)));
                }
                let pipes: Vec<Value> = self
                    .pipes
                    .iter()
                    .filter(|(x, _)| *x == t)
                    .map(|(_, p)| encode_pipe(p))
                    .collect();
                if !pipes.is_empty() {
                    e.push((136, Value::Array(pipes)));
                }
                let baselines: Vec<Value> = self
                    .baselines
                    .iter()
                    .filter(|(x, _)| *x == t)
                    .map(|(_, b)| encode_baseline(b))
                    .collect();
                if !baselines.is_empty() {
                    e.push((174, Value::Array(baselines)));
                }
                cbor::map(e)
            })
            .collect();
        let limits = |max: bool| {
            cbor::map(vec![
                (182, uint(if max { MAX_INTERVAL } else { 1 } as u64)),
                (183, uint(if max { MAX_SAMPLE } else { 1 } as u64)),
                (130, cbor::decimal2(if max { 10_000 } else { 0 })),
                (131, cbor::decimal2(if max { 10_000 } else { 0 })),
                (132, cbor::decimal2(if max { 10_000 } else { 0 })),
                (179, Value::Bool(max)),
                (180, uint(if max { 3600 } else { 1 })),
            ])
        };
        let classes = UnitClass::ALL
            .iter()
            .map(|c| cbor::map(vec![(134, uint(*c as u64)), (135, Value::Bool(true))]))
            .collect();
        cbor::encode(&cbor::map(vec![(
            203,
            cbor::map(vec![
                (176, limits(true)),
                (177, limits(false)),
                (178, cbor::map(vec![(133, Value::Array(classes))])),
                (129, Value::Array(entries)),
            ]),
        )]))
    }
}
