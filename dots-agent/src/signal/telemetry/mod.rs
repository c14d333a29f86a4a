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

mod report;
mod setup;
mod units;

pub use report::*;
pub use setup::*;
pub use units::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::PortRange;

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
            ..PreMitigation::default()
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

    fn texts(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|t| Value::Text((*t).into())).collect())
    }

    fn baseline_body(targets: Vec<(u64, Value)>) -> Vec<u8> {
        let mut b = vec![(163, uint(1))];
        b.extend(targets);
        b.push((
            139,
            Value::Array(vec![cbor::map(vec![(134, uint(1)), (143, uint(100))])]),
        ));
        put_body((174, Value::Array(vec![cbor::map(b)])))
    }

    fn tm_body(target: Vec<(u64, Value)>) -> Vec<u8> {
        cbor::encode(&cbor::map(vec![(
            208,
            cbor::map(vec![(
                138,
                Value::Array(vec![cbor::map(vec![
                    (189, cbor::map(target)),
                    (
                        145,
                        Value::Array(vec![cbor::map(vec![(134, uint(1)), (143, uint(5))])]),
                    ),
                ])]),
            )]),
        )]))
    }

    fn bad_text<T: std::fmt::Debug>(r: Result<T, TelemetryError>) -> String {
        match r {
            Err(TelemetryError::Bad(t)) => t,
            other => panic!("expected 4.00, got {other:?}"),
        }
    }

    #[test]
    fn baselines_take_every_target_kind_but_fqdn_and_uri() {
        let ranges = Value::Array(vec![
            cbor::map(vec![(8, uint(443))]),
            cbor::map(vec![(8, uint(8000)), (9, uint(8080))]),
        ]);
        let body = baseline_body(vec![
            (6, texts(&["198.51.100.0/24"])),
            (7, ranges),
            (10, Value::Array(vec![uint(6), uint(17)])),
            (13, texts(&["web"])),
        ]);
        let item = decode_setup_put(&body).unwrap();
        let SetupItem::Baselines(b) = &item else {
            panic!("{item:?}")
        };
        assert_eq!(
            b[0].ports,
            vec![
                PortRange::single(443),
                PortRange {
                    lower: 8000,
                    upper: Some(8080)
                }
            ]
        );
        assert_eq!(
            (b[0].protocols.clone(), b[0].aliases.clone()),
            (vec![6, 17], vec!["web".to_string()])
        );
        assert_eq!(encode_setup_put(&item), body, "round trip, byte for byte");
        // Stored as JSON (the journal): a setup stored before ports existed still loads.
        let json = serde_json::to_value(&b[0]).unwrap();
        assert_eq!(serde_json::from_value::<Baseline>(json).unwrap(), b[0]);
        let old = serde_json::json!({"id": 2, "targets": ["198.51.100.0/24"], "normal": []});
        let old: Baseline = serde_json::from_value(old).unwrap();
        assert!(old.ports.is_empty() && old.protocols.is_empty() && old.aliases.is_empty());
        // FQDN and URI targets are refused by name, never dropped.
        let t = bad_text(decode_setup_put(&baseline_body(vec![(
            11,
            texts(&["www.example.com"]),
        )])));
        assert!(
            t.contains("target-fqdn (11)") && t.contains("no resolver"),
            "{t}"
        );
        let t = bad_text(decode_setup_put(&baseline_body(vec![(
            12,
            texts(&["https://example.com/"]),
        )])));
        assert!(t.contains("target-uri (12)"), "{t}");
        // mid-list belongs to /tm only; hostile ports and protocols are 4.00, not panics.
        bad_text(decode_setup_put(&baseline_body(vec![(
            186,
            Value::Array(vec![uint(1)]),
        )])));
        for hostile in [
            (7, Value::Array(vec![cbor::map(vec![(8, uint(70_000))])])),
            (
                7,
                Value::Array(vec![cbor::map(vec![(8, uint(90)), (9, uint(80))])]),
            ),
            (7, Value::Array(vec![cbor::map(vec![(9, uint(80))])])),
            (7, texts(&["80"])),
            (10, Value::Array(vec![uint(300)])),
            (10, uint(6)),
            (13, Value::Array(vec![uint(1)])),
            (11, uint(1)),
        ] {
            bad_text(decode_setup_put(&baseline_body(vec![hostile])));
        }
    }

    #[test]
    fn baselines_supersede_only_on_overlapping_ports_and_protocols() {
        let on = |ports: &[(u16, Option<u16>)], protocols: &[u8]| Baseline {
            id: 1,
            targets: vec!["198.51.100.0/24".parse().unwrap()],
            ports: ports
                .iter()
                .map(|(lower, upper)| PortRange {
                    lower: *lower,
                    upper: *upper,
                })
                .collect(),
            protocols: protocols.to_vec(),
            ..Baseline::default()
        };
        let mut s = TelemetrySetup::default();
        s.put(1, SetupItem::Baselines(vec![on(&[(443, None)], &[6])]))
            .unwrap();
        s.put(2, SetupItem::Baselines(vec![on(&[(53, None)], &[17])]))
            .unwrap();
        assert_eq!(s.baselines.len(), 2, "disjoint ports: both stand");
        s.put(3, SetupItem::Baselines(vec![on(&[(400, Some(500))], &[])]))
            .unwrap();
        assert_eq!(
            s.baselines.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![2, 3],
            "400-500, any protocol, supersedes 443/tcp"
        );
        assert!(
            s.put(1, SetupItem::Baselines(vec![on(&[(53, None)], &[])]))
                .is_err(),
            "stale"
        );
    }

    #[test]
    fn pre_mitigation_targets_take_every_kind_and_mid_list() {
        let body = tm_body(vec![
            (7, Value::Array(vec![cbor::map(vec![(8, uint(53))])])),
            (10, Value::Array(vec![uint(17)])),
            (13, texts(&["dns"])),
            (186, Value::Array(vec![uint(7), uint(9)])),
        ]);
        let r = decode_pre_mitigation(&body).unwrap();
        assert!(r.targets.is_empty());
        assert_eq!(
            (
                r.ports.clone(),
                r.protocols.clone(),
                r.aliases.clone(),
                r.mids.clone()
            ),
            (
                vec![PortRange::single(53)],
                vec![17],
                vec!["dns".to_string()],
                vec![7, 9]
            )
        );
        assert_eq!(
            decode_pre_mitigation(&encode_pre_mitigation(&[(None, r.clone())])),
            Ok(r)
        );
        // mid-list alone is a target.
        let r = decode_pre_mitigation(&tm_body(vec![(186, Value::Array(vec![uint(1)]))])).unwrap();
        assert_eq!(r.mids, vec![1]);
        // Ports alone say nothing about where: 4.00.
        let t = bad_text(decode_pre_mitigation(&tm_body(vec![(
            7,
            Value::Array(vec![cbor::map(vec![(8, uint(53))])]),
        )])));
        assert!(t.contains("mid-list (186)"), "{t}");
        let t = bad_text(decode_pre_mitigation(&tm_body(vec![
            (6, texts(&["198.51.100.0/24"])),
            (11, texts(&["www.example.com"])),
        ])));
        assert!(t.contains("target-fqdn (11)"), "{t}");
        let t = bad_text(decode_pre_mitigation(&tm_body(vec![(
            12,
            texts(&["https://example.com/"]),
        )])));
        assert!(t.contains("target-uri (12)"), "{t}");
        for hostile in [
            Value::Array(vec![uint(1 << 40)]),
            Value::Array(vec![Value::Text("1".into())]),
            uint(1),
        ] {
            bad_text(decode_pre_mitigation(&tm_body(vec![(186, hostile)])));
        }
    }
}
