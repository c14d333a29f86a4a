//! Units and their scaling (RFC 9244 §5), percentiles of a measured series, and the
//! series a measurement keeps.

use super::*;

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
pub struct Unit(pub(super) u8);

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
pub(super) fn nearest_rank(sorted: &[u64], p: u32) -> u64 {
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
