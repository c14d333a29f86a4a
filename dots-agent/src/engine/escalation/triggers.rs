//! Why a mitigation goes upstream with `escalate = "exceeded"` (issue 16): this server's
//! filter cannot hold it. Four triggers, checked in this order:
//!
//! 1. the spec does not fit the local datapath (too many prefix lengths, port ranges, ACL
//!    entries or entry shapes, or the maps are full): accepted, carried upstream at once;
//! 2. the client's reported attack rate (RFC 9244 `total-attack-traffic` in the request or
//!    its efficacy updates, or in pre-mitigation telemetry on overlapping targets) is above
//!    the capacity;
//! 3. the traffic to the targets in scope measured by the filter is above it.
//!
//! The capacity is `capacity_pps` / `capacity_bps` of `[upstream]`, lowered to the client's
//! pipe capacity (RFC 9244 telemetry setup, `total-pipe-capacity`) where that is smaller:
//! the fourth trigger. Pure functions: the engine gathers the facts, the relay decides with
//! [`why`] and says why in its log.

use crate::datapath::DatapathError;
use crate::datapath::SpecError;
use crate::signal::telemetry::{Stats, TelemetrySetup, Traffic, UnitClass};

/// A rate in packets/s and bit/s (None: not known or no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    pub pps: Option<u64>,
    pub bps: Option<u64>,
}

impl Rate {
    /// The larger of two readings, per unit.
    fn max(self, other: Rate) -> Rate {
        let m = |a: Option<u64>, b: Option<u64>| a.max(b);
        Rate {
            pps: m(self.pps, other.pps),
            bps: m(self.bps, other.bps),
        }
    }
}

/// What this server's filter holds for one mitigation, and where each limit comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub pps: Option<(u64, &'static str)>,
    pub bps: Option<(u64, &'static str)>,
}

impl Capacity {
    /// The configured `[upstream]` capacity.
    pub fn configured(pps: Option<u64>, bps: Option<u64>) -> Capacity {
        Capacity {
            pps: pps.map(|c| (c, "capacity_pps")),
            bps: bps.map(|c| (c, "capacity_bps")),
        }
    }

    /// Lowered to the client's pipe capacity where that is smaller.
    pub fn within(self, pipe: Rate) -> Capacity {
        let lower = |cap: Option<(u64, &'static str)>, pipe: Option<u64>| match (cap, pipe) {
            (Some((c, _)), Some(p)) if p < c => Some((p, "the client's pipe capacity")),
            (None, Some(p)) => Some((p, "the client's pipe capacity")),
            (cap, _) => cap,
        };
        Capacity {
            pps: lower(self.pps, pipe.pps),
            bps: lower(self.bps, pipe.bps),
        }
    }

    /// "N packets/s > capacity_pps C" when `rate` is above it.
    pub fn exceeded_by(&self, rate: Rate) -> Option<String> {
        if let (Some(r), Some((c, name))) = (rate.pps, self.pps) {
            if r > c {
                return Some(format!("{r} packets/s > {name} {c} packets/s"));
            }
        }
        if let (Some(r), Some((c, name))) = (rate.bps, self.bps) {
            if r > c {
                return Some(format!("{r} bit/s > {name} {c} bit/s"));
            }
        }
        None
    }
}

/// The facts about one mitigation that decide whether it goes upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The highest attack rate its client reported (RFC 9244 telemetry).
    pub reported: Rate,
    /// The client's pipe capacity (telemetry setup), per unit.
    pub pipe: Rate,
    /// Why its spec does not fit the local datapath (it is then not installed here).
    pub unfit: Option<String>,
}

/// Why a mitigation must go upstream, if it must: `measured` is the traffic to its targets
/// in scope over the last second at least (None: not measured yet).
pub fn why(configured: Capacity, facts: &Facts, measured: Option<Rate>) -> Option<String> {
    if let Some(e) = &facts.unfit {
        return Some(format!(
            "its spec does not fit this server's datapath ({e})"
        ));
    }
    let cap = configured.within(facts.pipe);
    if let Some(over) = cap.exceeded_by(facts.reported) {
        return Some(format!("the client reports {over} of attack traffic"));
    }
    let over = cap.exceeded_by(measured?)?;
    Some(format!("the filter measured {over} to the targets"))
}

/// A datapath refusal that says the spec is too big for this datapath (not malformed):
/// what a bigger or differently built filter upstream may hold.
pub fn unfit(e: &DatapathError) -> Option<String> {
    match e {
        DatapathError::Capacity(_)
        | DatapathError::Spec(
            SpecError::TooManyLengths(..)
            | SpecError::TooManyPortRanges(..)
            | SpecError::TooManyAclEntries(..)
            | SpecError::TooManyTuples(..)
            | SpecError::ChainTooLong(..),
        ) => Some(e.to_string()),
        _ => None,
    }
}

/// One figure of a reported rate: the current value (209), else the peak, else the
/// highest percentile given.
fn figure(s: &Stats) -> Option<u64> {
    s.current.or(s.peak).or(s.high).or(s.mid).or(s.low)
}

/// The highest rate in a reported traffic list, per unit class (bytes/s counted as bits).
pub fn reported_rate(traffic: &Traffic) -> Rate {
    let mut out = Rate::default();
    for (unit, stats) in traffic {
        let Some(v) = figure(stats) else { continue };
        let base = unit.to_base(v);
        let r = match unit.class() {
            UnitClass::PacketsPerSecond => Rate {
                pps: Some(base),
                bps: None,
            },
            UnitClass::BitsPerSecond => Rate {
                pps: None,
                bps: Some(base),
            },
            UnitClass::BytesPerSecond => Rate {
                pps: None,
                bps: Some(base.saturating_mul(8)),
            },
        };
        out = out.max(r);
    }
    out
}

/// The client's smallest pipe capacity per unit class (bytes/s counted as bits).
pub fn pipe_rate(setup: &TelemetrySetup) -> Rate {
    let min = |a: Option<u64>, b: u64| Some(a.map_or(b, |a| a.min(b)));
    let mut out = Rate::default();
    for (_, p) in &setup.pipes {
        let base = p.unit.to_base(p.capacity);
        match p.unit.class() {
            UnitClass::PacketsPerSecond => out.pps = min(out.pps, base),
            UnitClass::BitsPerSecond => out.bps = min(out.bps, base),
            UnitClass::BytesPerSecond => out.bps = min(out.bps, base.saturating_mul(8)),
        }
    }
    out
}

/// The larger of several reported rates.
pub fn highest(rates: impl IntoIterator<Item = Rate>) -> Rate {
    rates.into_iter().fold(Rate::default(), Rate::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::telemetry::{PipeCapacity, Unit};

    fn stats(current: Option<u64>, peak: Option<u64>) -> Stats {
        Stats {
            current,
            peak,
            ..Default::default()
        }
    }

    /// Units by RFC 9244 code: 1 packets/s, 2 bit/s, 3 bytes/s, 4 kilo-packets/s,
    /// 8 megabit/s (classes repeat every three codes, each a thousand times the last).
    fn unit(code: u64) -> Unit {
        Unit::from_code(code).unwrap()
    }

    #[test]
    fn reported_rates_are_read_per_class_in_base_units() {
        let t: Traffic = vec![
            (unit(4), stats(Some(5), Some(9))),  // 5 kpps now
            (unit(3), stats(None, Some(1_000))), // peak 1000 bytes/s
            (unit(1), stats(Some(700), None)),
        ];
        assert_eq!(
            reported_rate(&t),
            Rate {
                pps: Some(5_000),
                bps: Some(8_000)
            }
        );
        assert_eq!(reported_rate(&Vec::new()), Rate::default());
        assert_eq!(
            reported_rate(&vec![(unit(1), Stats::default())]),
            Rate::default(),
            "an entry without figures says nothing"
        );
    }

    #[test]
    fn the_smallest_pipe_per_class_counts() {
        let pipe = |link: &str, code, capacity| {
            (
                1,
                PipeCapacity {
                    link_id: link.into(),
                    unit: unit(code),
                    capacity,
                },
            )
        };
        let setup = TelemetrySetup {
            pipes: vec![pipe("a", 8, 100), pipe("b", 8, 40), pipe("c", 1, 9_000)],
            ..Default::default()
        };
        assert_eq!(
            pipe_rate(&setup),
            Rate {
                pps: Some(9_000),
                bps: Some(40_000_000)
            }
        );
    }

    #[test]
    fn each_trigger_names_itself() {
        let cap = Capacity::configured(Some(1_000), Some(1_000_000));
        let quiet = Facts::default();
        assert_eq!(why(cap.clone(), &quiet, None), None, "nothing measured yet");
        let below = Rate {
            pps: Some(1_000),
            bps: Some(1_000_000),
        };
        assert_eq!(
            why(cap.clone(), &quiet, Some(below)),
            None,
            "at capacity: held"
        );
        let measured = Rate {
            pps: Some(1_001),
            bps: None,
        };
        assert_eq!(
            why(cap.clone(), &quiet, Some(measured)).unwrap(),
            "the filter measured 1001 packets/s > capacity_pps 1000 packets/s to the targets"
        );
        let reported = Facts {
            reported: Rate {
                pps: None,
                bps: Some(2_000_000),
            },
            ..Default::default()
        };
        assert_eq!(
            why(cap.clone(), &reported, None).unwrap(),
            "the client reports 2000000 bit/s > capacity_bps 1000000 bit/s of attack traffic"
        );
        // A pipe smaller than the configured capacity lowers it; a larger one does not.
        let small_pipe = Facts {
            pipe: Rate {
                pps: None,
                bps: Some(500_000),
            },
            ..Default::default()
        };
        let m = Rate {
            pps: Some(10),
            bps: Some(600_000),
        };
        assert_eq!(
            why(cap.clone(), &small_pipe, Some(m)).unwrap(),
            "the filter measured 600000 bit/s > the client's pipe capacity 500000 bit/s to the targets"
        );
        let big_pipe = Facts {
            pipe: Rate {
                pps: Some(1_000_000),
                bps: Some(10_000_000),
            },
            ..Default::default()
        };
        assert_eq!(why(cap.clone(), &big_pipe, Some(m)), None);
        // Only a pps capacity configured: a bit/s pipe still limits.
        let pps_only = Capacity::configured(Some(1_000), None);
        assert!(why(pps_only, &small_pipe, Some(m)).is_some());
        // Unfit comes first, whatever the rates.
        let unfit = Facts {
            unfit: Some("datapath full: no slot".into()),
            ..Default::default()
        };
        assert_eq!(
            why(cap, &unfit, None).unwrap(),
            "its spec does not fit this server's datapath (datapath full: no slot)"
        );
    }

    #[test]
    fn only_a_spec_too_big_is_unfit() {
        let full = DatapathError::Capacity("mitigation slots".into());
        assert!(unfit(&full).unwrap().contains("datapath full"));
        let many = DatapathError::Spec(SpecError::TooManyAclEntries(300, 256));
        assert!(unfit(&many).unwrap().contains("300 ACL entries"));
        let reversed = DatapathError::Spec(SpecError::ReversedPortRange(9, 1));
        assert_eq!(
            unfit(&reversed),
            None,
            "a malformed spec is the client's to fix"
        );
        let setup = DatapathError::Setup("no interface".into());
        assert_eq!(unfit(&setup), None);
    }
}
