//! DOTS telemetry (RFC 9244), free of I/O: units and their scaling, percentiles of a
//! measured series, the telemetry setup a client negotiates (`/tm-setup`: configuration,
//! pipe capacity, baseline), pre-mitigation telemetry (`/tm`), and the bodies that carry
//! them. The engine measures; this module only counts and encodes.

use ciborium::value::Value;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::cbor::{self, uint, CborError, Fields};

/// The YANG names of the telemetry keys used here (RFC 9244 §12), for JSON output.
/// Kept apart from the signal channel's names: these keys are comprehension-optional, and
/// a mitigation request that carries them must not be refused.
pub fn key_name(key: u64) -> Option<&'static str> {
    Some(match key {
        128 => "tsid",
        129 => "telemetry",
        130 => "low-percentile",
        131 => "mid-percentile",
        132 => "high-percentile",
        133 => "unit-config",
        134 => "unit",
        135 => "unit-status",
        136 => "total-pipe-capacity",
        137 => "link-id",
        138 => "pre-or-ongoing-mitigation",
        139 => "total-traffic-normal",
        140 => "low-percentile-g",
        141 => "mid-percentile-g",
        142 => "high-percentile-g",
        143 => "peak-g",
        144 => "total-attack-traffic",
        145 => "total-traffic",
        146 => "total-connection-capacity",
        162 => "attack-detail",
        163 => "id",
        164 => "attack-id",
        165 => "attack-description",
        166 => "attack-severity",
        167 => "start-time",
        168 => "end-time",
        169 => "source-count",
        170 => "top-talker",
        171 => "spoofed-status",
        174 => "baseline",
        175 => "current-config",
        176 => "max-config-values",
        177 => "min-config-values",
        178 => "supported-unit-classes",
        179 => "server-originated-telemetry",
        180 => "telemetry-notify-interval",
        181 => "tmid",
        182 => "measurement-interval",
        183 => "measurement-sample",
        184 => "talker",
        185 => "source-prefix",
        186 => "mid-list",
        187 => "source-port-range",
        188 => "source-icmp-type-range",
        189 => "target",
        190 => "capacity",
        191 => "protocol",
        200 => "port",
        201 => "supported-query-type",
        202 => "vendor-id",
        203 => "ietf-dots-telemetry:telemetry-setup",
        204 => "ietf-dots-telemetry:total-traffic",
        205 => "ietf-dots-telemetry:total-attack-traffic",
        206 => "ietf-dots-telemetry:total-attack-connection",
        207 => "ietf-dots-telemetry:attack-detail",
        208 => "ietf-dots-telemetry:telemetry",
        209 => "current-g",
        210 => "description-lang",
        _ => return None,
    })
}

/// Unit classes (RFC 9244 §5.2): what is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UnitClass {
    PacketsPerSecond = 1,
    BitsPerSecond = 2,
    BytesPerSecond = 3,
}

impl UnitClass {
    pub const ALL: [UnitClass; 3] = [
        UnitClass::PacketsPerSecond,
        UnitClass::BitsPerSecond,
        UnitClass::BytesPerSecond,
    ];

    pub fn from_code(n: u64) -> Option<UnitClass> {
        match n {
            1 => Some(UnitClass::PacketsPerSecond),
            2 => Some(UnitClass::BitsPerSecond),
            3 => Some(UnitClass::BytesPerSecond),
            _ => None,
        }
    }

    /// The rate of this class, from a packet and a byte rate (per second).
    pub fn of(self, packets: u64, bytes: u64) -> u64 {
        match self {
            UnitClass::PacketsPerSecond => packets,
            UnitClass::BitsPerSecond => bytes.saturating_mul(8),
            UnitClass::BytesPerSecond => bytes,
        }
    }
}

/// A unit (RFC 9244 §5.2): a class and a decimal multiplier, coded 3 x k + class for the
/// multiplier 1000^k (1 packet-ps, 2 bit-ps, 3 byte-ps, 4 kilopacket-ps ... 24 zettabyte-ps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unit(u8);

impl Unit {
    pub fn from_code(n: u64) -> Option<Unit> {
        (1..=24).contains(&n).then_some(Unit(n as u8))
    }

    pub fn code(self) -> u8 {
        self.0
    }

    pub fn class(self) -> UnitClass {
        UnitClass::from_code(((self.0 - 1) % 3 + 1) as u64).expect("1..=3")
    }

    /// How many base units (packet/bit/byte per second) one of this unit is.
    pub fn multiplier(self) -> u128 {
        1000u128.pow(((self.0 - 1) / 3) as u32)
    }

    /// A value in this unit, in base units (saturating).
    pub fn to_base(self, v: u64) -> u64 {
        (v as u128 * self.multiplier()).min(u64::MAX as u128) as u64
    }

    /// The unit of `class` for values around `base` (in base units): the largest multiplier
    /// that still leaves three significant digits (RFC 9244 asks for the largest unit that
    /// gives a value above one; as values are integers, the three digits keep the rounding
    /// error under 0.1 %).
    pub fn auto(class: UnitClass, base: u64) -> Unit {
        let mut k = 0;
        while k < 7 && base as u128 / 1000u128.pow(k + 1) >= 1000 {
            k += 1;
        }
        Unit(3 * k as u8 + class as u8)
    }

    /// `base` (in base units) expressed in this unit, rounded down.
    pub fn from_base(self, base: u64) -> u64 {
        (base as u128 / self.multiplier()) as u64
    }
}

/// low/mid/high percentiles, peak and current value of a series (gauge64, in one unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub low: Option<u64>,
    pub mid: Option<u64>,
    pub high: Option<u64>,
    pub peak: Option<u64>,
    pub current: Option<u64>,
}

/// The percentiles a client asked for, in hundredths (RFC 9244 §7.1.2: defaults 10, 50,
/// 90; 0 disables low, mid equal to low disables mid, high equal to mid disables high).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PercentileSet {
    pub low: u32,
    pub mid: u32,
    pub high: u32,
}

impl Default for PercentileSet {
    fn default() -> Self {
        PercentileSet {
            low: 1000,
            mid: 5000,
            high: 9000,
        }
    }
}

/// The nearest-rank percentile `p` (hundredths of a percent point: 5000 = median) of
/// sorted values.
fn nearest_rank(sorted: &[u64], p: u32) -> u64 {
    let n = sorted.len() as u64;
    let rank = (p as u64 * n).div_ceil(10_000).clamp(1, n);
    sorted[(rank - 1) as usize]
}

/// Percentiles, peak and current (last) value of `series` (oldest first); all None for an
/// empty series.
pub fn stats(series: &[u64], p: &PercentileSet) -> Stats {
    let Some(current) = series.last().copied() else {
        return Stats::default();
    };
    let mut sorted = series.to_vec();
    sorted.sort_unstable();
    let low = (p.low > 0).then(|| nearest_rank(&sorted, p.low));
    let mid = (p.mid != p.low).then(|| nearest_rank(&sorted, p.mid));
    let high = (p.high != p.mid).then(|| nearest_rank(&sorted, p.high));
    Stats {
        low,
        mid,
        high,
        peak: sorted.last().copied(),
        current: Some(current),
    }
}

impl Stats {
    /// The same figures, from base units into `unit`.
    pub fn scaled(&self, unit: Unit) -> Stats {
        let f = |v: Option<u64>| v.map(|x| unit.from_base(x));
        Stats {
            low: f(self.low),
            mid: f(self.mid),
            high: f(self.high),
            peak: f(self.peak),
            current: f(self.current),
        }
    }

    /// `{134 unit, 140 low, 141 mid, 142 high, 143 peak, 209 current}` (gauge64 values).
    pub fn encode(&self, unit: Unit) -> Value {
        let mut m = vec![(134, uint(unit.code() as u64))];
        for (k, v) in [
            (140, self.low),
            (141, self.mid),
            (142, self.high),
            (143, self.peak),
            (209, self.current),
        ] {
            if let Some(v) = v {
                m.push((k, uint(v)));
            }
        }
        cbor::map(m)
    }

    /// Reads `{134 unit, 140..143, 209}`: the unit and the figures in that unit.
    pub fn decode(v: Value) -> Result<(Unit, Stats), CborError> {
        let mut f = Fields::new(v, "a traffic entry")?;
        let code = cbor::as_u64(f.require(134, "unit (134)")?, 134)?;
        let unit = Unit::from_code(code).ok_or_else(|| CborError::Invalid {
            what: "unit (134)".into(),
            why: format!("{code} is not a unit (1-24)"),
        })?;
        let mut take = |k: u64| f.take(k).map(|v| cbor::as_u64(v, k)).transpose();
        let s = Stats {
            low: take(140)?,
            mid: take(141)?,
            high: take(142)?,
            peak: take(143)?,
            current: take(209)?,
        };
        f.finish()?;
        Ok((unit, s))
    }
}

/// Traffic in each enabled unit class (a list keyed by unit: 144, 145, 204, 205).
pub type Traffic = Vec<(Unit, Stats)>;

/// Per-second rates (packets, bytes) of one traffic aggregate, oldest first, at most
/// `capacity` samples.
#[derive(Clone, Debug, Default)]
pub struct RateSeries {
    pub samples: std::collections::VecDeque<(u64, u64)>,
    pub capacity: usize,
}

impl RateSeries {
    pub fn new(capacity: usize) -> Self {
        RateSeries {
            samples: Default::default(),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, packets_per_s: u64, bytes_per_s: u64) {
        while self.samples.len() >= self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((packets_per_s, bytes_per_s));
    }

    /// Percentiles, peak and current in each class, each in its auto-scaled unit.
    pub fn traffic(&self, classes: &[UnitClass], p: &PercentileSet) -> Traffic {
        if self.samples.is_empty() {
            return Vec::new();
        }
        classes
            .iter()
            .map(|class| {
                let values: Vec<u64> = self.samples.iter().map(|(n, b)| class.of(*n, *b)).collect();
                let s = stats(&values, p);
                let unit = Unit::auto(*class, s.peak.unwrap_or(0));
                (unit, s.scaled(unit))
            })
            .collect()
    }
}

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

fn traffic_list(t: &Traffic) -> Value {
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreMitigation {
    pub targets: Vec<IpNet>,
    pub total: Vec<(Unit, Stats)>,
    pub attack: Vec<(Unit, Stats)>,
    pub talkers: Vec<ReportedTalker>,
}

fn traffic_of(v: Value, key: u64) -> Result<Vec<(Unit, Stats)>, TelemetryError> {
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

fn decode_talkers(v: Value) -> Result<Vec<ReportedTalker>, TelemetryError> {
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
/// target prefix and at least one measurement.
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
    let targets = match target.take(6) {
        Some(v) => prefixes(v)?,
        None => Vec::new(),
    };
    for k in [7, 8, 10, 11, 12, 13, 186] {
        if target.take(k).is_some() {
            return Err(bad(
                "this server takes telemetry targets as target-prefix (6) only",
            ));
        }
    }
    target.finish()?;
    if targets.is_empty() {
        return Err(bad("target (189) needs a target-prefix (6)"));
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
        targets,
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
            e.push((189, cbor::map(vec![(6, prefix_list(&r.targets))])));
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    pub id: u32,
    pub targets: Vec<IpNet>,
    pub normal: Vec<(Unit, Stats)>,
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

fn bad(s: impl Into<String>) -> TelemetryError {
    TelemetryError::Bad(s.into())
}

fn percent(v: Value, key: u64) -> Result<u32, TelemetryError> {
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

fn prefixes(v: Value) -> Result<Vec<IpNet>, TelemetryError> {
    cbor::as_text_list(v, 6)?
        .iter()
        .map(|t| super::cbor::parse_target_prefix(t).map_err(TelemetryError::from))
        .collect()
}

fn decode_config(v: Value) -> Result<TelemetryConfig, TelemetryError> {
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

fn encode_config(c: &TelemetryConfig) -> Value {
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

fn decode_pipes(v: Value) -> Result<Vec<PipeCapacity>, TelemetryError> {
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

fn decode_baselines(v: Value) -> Result<Vec<Baseline>, TelemetryError> {
    let mut out = Vec::new();
    for e in cbor::as_array(v, 174)? {
        let mut f = Fields::new(e, "baseline")?;
        let id = cbor::as_u32(f.require(163, "id (163)")?, 163)?;
        if id == 0 {
            return Err(bad("baseline id must be at least 1"));
        }
        let targets = match f.take(6) {
            Some(v) => prefixes(v)?,
            None => Vec::new(),
        };
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
            targets,
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

fn prefix_list(p: &[IpNet]) -> Value {
    Value::Array(p.iter().map(|p| Value::Text(p.to_string())).collect())
}

fn encode_pipe(p: &PipeCapacity) -> Value {
    cbor::map(vec![
        (137, Value::Text(p.link_id.clone())),
        (134, uint(p.unit.code() as u64)),
        (190, uint(p.capacity)),
    ])
}

fn encode_baseline(b: &Baseline) -> Value {
    let mut m = vec![(163, uint(b.id as u64))];
    if !b.targets.is_empty() {
        m.push((6, prefix_list(&b.targets)));
    }
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
                let overlap = |a: &Baseline, b: &Baseline| {
                    a.targets.is_empty()
                        || b.targets.is_empty()
                        || a.targets.iter().any(|x| {
                            b.targets
                                .iter()
                                .any(|y| x.contains(&y.network()) || y.contains(&x.network()))
                        })
                };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale_by_thousands_within_their_class() {
        let mbps = Unit::from_code(8).unwrap();
        assert_eq!(mbps.class(), UnitClass::BitsPerSecond);
        assert_eq!(mbps.multiplier(), 1_000_000);
        assert_eq!(mbps.to_base(3), 3_000_000);
        assert_eq!(
            Unit::from_code(12).unwrap().class(),
            UnitClass::BytesPerSecond
        );
        assert_eq!(Unit::from_code(24).unwrap().multiplier(), 10u128.pow(21));
        assert_eq!(
            Unit::from_code(24).unwrap().to_base(100),
            u64::MAX,
            "saturates"
        );
        assert!(Unit::from_code(0).is_none() && Unit::from_code(25).is_none());
        // Auto-scaling keeps three significant digits.
        assert_eq!(Unit::auto(UnitClass::BitsPerSecond, 999), Unit(2));
        assert_eq!(Unit::auto(UnitClass::BitsPerSecond, 999_999), Unit(2));
        assert_eq!(
            Unit::auto(UnitClass::BitsPerSecond, 1_000_000),
            Unit(5),
            "kbit/s"
        );
        assert_eq!(Unit::auto(UnitClass::BitsPerSecond, 2_500_000_000), Unit(8));
        assert_eq!(Unit(8).from_base(2_500_000_000), 2500);
        assert_eq!(Unit::auto(UnitClass::PacketsPerSecond, u64::MAX), Unit(16));
        assert_eq!(UnitClass::BitsPerSecond.of(10, 1500), 12_000);
    }

    #[test]
    fn percentiles_of_known_series() {
        let one_to_hundred: Vec<u64> = (1..=100).collect();
        let s = stats(&one_to_hundred, &PercentileSet::default());
        assert_eq!(
            (s.low, s.mid, s.high, s.peak, s.current),
            (Some(10), Some(50), Some(90), Some(100), Some(100))
        );
        // Order does not matter for percentiles; current is the last sample.
        let shuffled = [7, 3, 9, 1, 5];
        let s = stats(&shuffled, &PercentileSet::default());
        assert_eq!(
            (s.low, s.mid, s.high, s.peak, s.current),
            (Some(1), Some(5), Some(9), Some(9), Some(5))
        );
        // 25th/75th percentiles of 1..=8: ranks 2 and 6.
        let p = PercentileSet {
            low: 2500,
            mid: 5000,
            high: 7500,
        };
        let s = stats(&(1..=8).collect::<Vec<_>>(), &p);
        assert_eq!((s.low, s.mid, s.high), (Some(2), Some(4), Some(6)));
        // Disabled percentiles are absent; an empty series has nothing.
        let off = PercentileSet {
            low: 0,
            mid: 0,
            high: 9000,
        };
        let s = stats(&[4, 8], &off);
        assert_eq!((s.low, s.mid, s.high), (None, None, Some(8)));
        assert_eq!(stats(&[], &PercentileSet::default()), Stats::default());
        // Scaling into a unit rounds down.
        let s = stats(&[1_500_000, 2_600_000], &PercentileSet::default());
        assert_eq!(s.scaled(Unit(8)).peak, Some(2));
        assert_eq!(s.scaled(Unit(5)).mid, Some(1500));
    }

    fn put_body(item: (u64, Value)) -> Vec<u8> {
        cbor::encode(&cbor::map(vec![(
            203,
            cbor::map(vec![(129, Value::Array(vec![cbor::map(vec![item])]))]),
        )]))
    }

    fn pipe(link: &str, unit: u64, capacity: u64) -> Value {
        cbor::map(vec![
            (137, Value::Text(link.into())),
            (134, uint(unit)),
            (190, uint(capacity)),
        ])
    }

    #[test]
    fn setup_bodies_decode_with_the_rfc_codes() {
        let config = cbor::map(vec![
            (182, uint(2)),
            (183, uint(1)),
            (130, cbor::decimal2(500)),
            (132, cbor::decimal2(9500)),
            (
                133,
                Value::Array(vec![cbor::map(vec![
                    (134, uint(3)),
                    (135, Value::Bool(true)),
                ])]),
            ),
            (179, Value::Bool(true)),
        ]);
        let SetupItem::Config(c) = decode_setup_put(&put_body((175, config))).unwrap() else {
            panic!("a configuration")
        };
        assert_eq!(
            (
                c.measurement_interval,
                c.percentiles.low,
                c.percentiles.high
            ),
            (2, 500, 9500)
        );
        assert_eq!(c.classes(), vec![UnitClass::BytesPerSecond]);
        assert!(c.server_originated);
        assert_eq!(c.samples(), 600);
        let unacceptable = |v: Value| match decode_setup_put(&put_body((175, v))) {
            Err(TelemetryError::Unacceptable(t)) => t,
            other => panic!("{other:?}"),
        };
        assert!(unacceptable(cbor::map(vec![(130, cbor::decimal2(10_001))])).contains("100.00"));
        assert!(unacceptable(cbor::map(vec![
            (130, cbor::decimal2(6000)),
            (131, cbor::decimal2(5000))
        ]))
        .contains("low <= mid"));
        assert!(unacceptable(cbor::map(vec![(182, uint(5))])).contains("an hour"));
        assert!(unacceptable(cbor::map(vec![(180, uint(0))])).contains("1..3600"));
        // Two kinds in one PUT, none, a tsid in the body, all-zero pipes: 4.00.
        let two = cbor::encode(&cbor::map(vec![(
            203,
            cbor::map(vec![(
                129,
                Value::Array(vec![cbor::map(vec![
                    (175, cbor::map(vec![])),
                    (136, Value::Array(vec![pipe("l", 8, 1)])),
                ])]),
            )]),
        )]));
        assert!(matches!(
            decode_setup_put(&two),
            Err(TelemetryError::Bad(_))
        ));
        assert!(matches!(
            decode_setup_put(&put_body((128, uint(1)))),
            Err(TelemetryError::Bad(_))
        ));
        assert!(matches!(
            decode_setup_put(&put_body((136, Value::Array(vec![pipe("l", 8, 0)])))),
            Err(TelemetryError::Bad(_))
        ));
        assert!(matches!(
            decode_setup_put(&put_body((
                136,
                Value::Array(vec![pipe("l", 8, 1), pipe("l", 5, 1000)])
            ))),
            Err(TelemetryError::Bad(_))
        ));
        assert!(matches!(
            decode_setup_put(b"\xff"),
            Err(TelemetryError::Bad(_))
        ));
    }

    #[test]
    fn higher_tsids_supersede_and_pipes_become_a_byte_rate() {
        let mut s = TelemetrySetup::default();
        let pipes = |v: Vec<Value>| match decode_setup_put(&put_body((136, Value::Array(v)))) {
            Ok(SetupItem::Pipes(p)) => SetupItem::Pipes(p),
            other => panic!("{other:?}"),
        };
        // 1 Gbit/s uplink and a 400 Mbit/s backup.
        assert_eq!(
            s.put(
                5,
                pipes(vec![pipe("uplink", 11, 1), pipe("backup", 8, 400)])
            ),
            Ok(true)
        );
        assert_eq!(s.pipe_bytes_per_second(), Some(50_000_000));
        // A higher tsid replaces the backup's capacity; the uplink stays.
        assert_eq!(s.put(6, pipes(vec![pipe("backup", 8, 800)])), Ok(true));
        assert_eq!(s.pipes.len(), 2);
        assert_eq!(s.pipe_bytes_per_second(), Some(100_000_000));
        assert!(
            s.put(4, pipes(vec![pipe("backup", 8, 100)])).is_err(),
            "stale"
        );
        assert_eq!(s.put(6, pipes(vec![pipe("backup", 8, 900)])), Ok(false));
        s.delete(5);
        assert_eq!(s.pipes.len(), 1);
        let config = SetupItem::Config(TelemetryConfig::default());
        assert_eq!(s.put(7, config.clone()), Ok(true));
        assert!(s.put(3, config).is_err());
        let back = cbor::parse(&s.encode_get(Some(7))).unwrap();
        let j = super::super::diag::to_json(&back);
        let entries = &j["ietf-dots-telemetry:telemetry-setup"]["telemetry"];
        assert_eq!(entries.as_array().map(|a| a.len()), Some(1), "{j}");
        assert_eq!(entries[0]["tsid"], 7);
        assert_eq!(entries[0]["current-config"]["measurement-interval"], 1);
        assert_eq!(
            j["ietf-dots-telemetry:telemetry-setup"]["max-config-values"]["measurement-interval"],
            MAX_INTERVAL as u64
        );
    }

    #[test]
    fn pre_mitigation_reports_round_trip_and_are_checked() {
        let report = PreMitigation {
            targets: vec!["198.51.100.0/24".parse().unwrap()],
            total: vec![(
                Unit(8),
                Stats {
                    peak: Some(900),
                    current: Some(800),
                    ..Stats::default()
                },
            )],
            attack: vec![],
            talkers: vec![ReportedTalker {
                source: "192.0.2.66/32".parse().unwrap(),
                spoofed: Some(false),
                attack: vec![(
                    Unit(1),
                    Stats {
                        current: Some(5000),
                        ..Stats::default()
                    },
                )],
            }],
        };
        let put = encode_pre_mitigation(&[(None, report.clone())]);
        assert_eq!(decode_pre_mitigation(&put), Ok(report.clone()));
        let get = encode_pre_mitigation(&[(Some(3), report)]);
        assert!(decode_pre_mitigation(&get).is_err(), "tmid in the body");
        let no_measure = cbor::encode(&cbor::map(vec![(
            208,
            cbor::map(vec![(
                138,
                Value::Array(vec![cbor::map(vec![(
                    189,
                    cbor::map(vec![(
                        6,
                        Value::Array(vec![Value::Text("198.51.100.0/24".into())]),
                    )]),
                )])]),
            )]),
        )]));
        assert!(matches!(
            decode_pre_mitigation(&no_measure),
            Err(TelemetryError::Bad(t)) if t.contains("at least one")
        ));
    }

    #[test]
    fn traffic_entries_round_trip() {
        let s = Stats {
            low: Some(1),
            mid: None,
            high: Some(3),
            peak: Some(4),
            current: Some(2),
        };
        let (u, back) = Stats::decode(s.encode(Unit(7))).unwrap();
        assert_eq!((u, back), (Unit(7), s));
        assert!(
            Stats::decode(cbor::map(vec![(140, uint(1))])).is_err(),
            "unit required"
        );
        assert!(Stats::decode(cbor::map(vec![(134, uint(99))])).is_err());
    }
}
