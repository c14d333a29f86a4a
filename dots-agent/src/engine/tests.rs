//! The engine's rules, each tested without sockets or clocks (time is passed in).

use super::journal::MemoryJournal;
use super::*;
use crate::datapath::compile::name_hash;
use crate::datapath::{MemoryMitigator, MitigationCounters, MitigationSpec};
use xdp_common::Counter;

/// An engine that restored what `journal` holds, and commits to it from now on.
fn restored<M: Mitigator>(e: Engine<M>, journal: &MemoryJournal, now: u64) -> (Engine<M>, usize) {
    let mut e = e.with_journal(Box::new(journal.clone()));
    let n = e
        .restore(&journal.snapshot(), Vec::new(), Vec::new(), now)
        .unwrap();
    (e, n)
}

/// A session configuration request body, as the handler decodes it.
fn session_config<M: Mitigator>(e: &Engine<M>, client: &str, body: &[u8]) -> SessionConfig {
    crate::signal::session_config::decode_put(body, &e.config(client)).unwrap()
}

fn pre_mitigation(body: &[u8]) -> tm::PreMitigation {
    tm::decode_pre_mitigation(body).unwrap()
}

fn setup_item(body: &[u8]) -> tm::SetupItem {
    tm::decode_setup_put(body).unwrap()
}

fn engine() -> Engine<MemoryMitigator> {
    let policy = |name: &str, p: &str| ClientPolicy {
        countermeasures: Countermeasures {
            amplification: true,
            ..Default::default()
        },
        ..ClientPolicy::fixture(name, &[p])
    };
    Engine::new(
        MemoryMitigator::new(),
        vec![
            policy("a", "198.51.100.0/24"),
            policy("b", "203.0.113.0/24"),
        ],
    )
}

fn scope(p: &str, lifetime: u32) -> Scope {
    Scope::new(vec![p.parse().unwrap()], Lifetime::Seconds(lifetime))
}

#[test]
fn create_installs_and_status_reports_counters() {
    let mut e = engine();
    assert_eq!(
        e.put("a", "cu-a", 1, scope("198.51.100.7/32", 3600), false, 1000),
        Ok(PutOutcome::Created {
            granted: Lifetime::Seconds(3600)
        })
    );
    let id = e.mitigator().installed()[0];
    assert!(
        e.mitigator()
            .spec(id)
            .unwrap()
            .countermeasures
            .amplification,
        "policy countermeasures applied"
    );
    let mut c = MitigationCounters::default();
    c.dropped[0] = Counter {
        packets: 10,
        bytes: 1000,
    };
    let mut e2 = e;
    e2.mitigator_mut().set_counters(id, c);
    assert_eq!(
        e2.status("cu-a", Some(1), 1590).unwrap()[0].pps_dropped,
        None,
        "one reading: no rate yet"
    );
    let mut c2 = MitigationCounters::default();
    c2.dropped[0] = Counter {
        packets: 10,
        bytes: 1000,
    };
    c2.dropped[1] = Counter {
        packets: 0,
        bytes: 0,
    };
    e2.mitigator_mut().set_counters(id, c2);
    let st = e2.status("cu-a", Some(1), 1600).unwrap();
    assert_eq!(
        (st[0].pps_dropped, st[0].bps_dropped),
        (Some(0), Some(0)),
        "nothing new over 10 s"
    );
    let mut c3 = MitigationCounters::default();
    c3.dropped[0] = Counter {
        packets: 110,
        bytes: 11_000,
    };
    e2.mitigator_mut().set_counters(id, c3);
    let later = e2.status("cu-a", Some(1), 1610).unwrap();
    assert_eq!(
        (later[0].pps_dropped, later[0].bps_dropped),
        (Some(10), Some(8_000)),
        "100 packets of 100 B in 10 s"
    );
    assert_eq!(st[0].status, Status::SuccessfullyMitigated);
    assert_eq!(st[0].scope.lifetime, Lifetime::Seconds(3000));
    assert_eq!(
        (st[0].pkts_dropped, st[0].bytes_dropped),
        (Some(10), Some(1000))
    );
    assert_eq!(st[0].mitigation_start, Some(1000));
}

#[test]
fn authorisation_and_unsupported_targets() {
    let mut e = engine();
    assert!(matches!(
        e.put("a", "cu-a", 1, scope("203.0.113.1/32", 60), false, 0),
        Err(Refusal::Forbidden(_))
    ));
    assert!(matches!(
        e.put("zz", "cu-z", 1, scope("198.51.100.1/32", 60), false, 0),
        Err(Refusal::Forbidden(_))
    ));
    let mut s = scope("198.51.100.1/32", 60);
    s.target_fqdn = vec!["www.example.com".into()];
    assert!(matches!(
        e.put("a", "cu-a", 1, s, false, 0),
        Err(Refusal::BadRequest(_))
    ));
}

#[test]
fn refresh_modify_and_same_client_conflicts() {
    let mut e = engine();
    e.put("a", "cu-a", 5, scope("198.51.100.0/28", 60), false, 0)
        .unwrap();
    assert_eq!(
        e.put("a", "cu-a", 5, scope("198.51.100.0/28", 600), false, 10),
        Ok(PutOutcome::Changed)
    );
    assert_eq!(
        e.status("cu-a", Some(5), 10).unwrap()[0].scope.lifetime,
        Lifetime::Seconds(600)
    );
    assert!(matches!(
        e.put("a", "cu-a", 5, scope("198.51.100.0/29", 60), false, 10),
        Err(Refusal::BadRequest(_))
    ));
    // Lower mid overlapping: 4.09 naming the newer mid.
    assert_eq!(
        e.put("a", "cu-a", 4, scope("198.51.100.1/32", 60), false, 10),
        Err(Refusal::Conflict {
            cause: 1,
            mid: Some(5),
            diagnostic: "mid 5 of this client overlaps and is newer".into()
        })
    );
    // Higher mid overlapping: replaces the lower one.
    assert!(matches!(
        e.put("a", "cu-a", 6, scope("198.51.100.0/28", 60), false, 10),
        Ok(PutOutcome::Created { .. })
    ));
    assert!(matches!(
        e.status("cu-a", Some(5), 10),
        Err(Refusal::NotFound(_))
    ));
    assert_eq!(e.mitigator().installed().len(), 1);
}

#[test]
fn attack_status_rides_only_on_efficacy_updates() {
    let mut e = engine();
    e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 0)
        .unwrap();
    let mut s = scope("198.51.100.0/28", 60);
    s.attack_status = Some(2);
    assert_eq!(
        e.put("a", "cu-a", 1, s.clone(), true, 5),
        Ok(PutOutcome::Changed)
    );
    assert!(matches!(
        e.put("a", "cu-a", 2, s, false, 5),
        Err(Refusal::BadRequest(_))
    ));
}

#[test]
fn efficacy_updates_and_other_clients() {
    let mut e = engine();
    assert_eq!(
        e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), true, 0),
        Ok(PutOutcome::Discarded)
    );
    e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 0)
        .unwrap();
    assert_eq!(
        e.put("a", "cu-a", 1, scope("198.51.100.0/28", 120), true, 5),
        Ok(PutOutcome::Changed)
    );
    assert!(matches!(
        e.put("a", "cu-a", 1, scope("198.51.100.0/29", 120), true, 5),
        Err(Refusal::BadRequest(_))
    ));
    // Another client may not take over the cuid.
    assert!(matches!(
        e.put("b", "cu-a", 9, scope("203.0.113.0/28", 60), false, 5),
        Err(Refusal::Conflict { cause: 3, .. })
    ));
}

#[test]
fn withdrawal_keeps_filtering_then_ends_and_lifetimes_expire() {
    let mut e = engine();
    e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 0)
        .unwrap();
    e.put("a", "cu-a", 2, scope("198.51.100.64/28", 1000), false, 0)
        .unwrap();
    e.delete("cu-a", 2, 10).unwrap();
    assert_eq!(
        e.status("cu-a", Some(2), 10).unwrap()[0].status,
        Status::ClientWithdrawn
    );
    assert_eq!(
        e.mitigator().installed().len(),
        2,
        "still filtering while terminating"
    );
    e.delete("cu-a", 99, 10).unwrap(); // unknown mid: still fine
    assert_eq!(e.tick(59), vec![]);
    assert_eq!(e.tick(60), vec![("cu-a".to_string(), 1)]);
    // An ended mitigation reports attack-mitigation-terminated for a while.
    assert_eq!(
        e.status("cu-a", Some(1), 61).unwrap()[0].status,
        Status::Terminated
    );
    assert_eq!(e.mitigator().installed().len(), 1);
    // At 130 mitigation 1 is forgotten (60 + ENDED_RETENTION) and 2 ends.
    assert_eq!(e.tick(130), vec![("cu-a".to_string(), 2)]);
    assert!(e.mitigator().installed().is_empty());
    let st = e.status("cu-a", None, 130).unwrap();
    assert_eq!(
        st.iter().map(|m| (m.mid, m.status)).collect::<Vec<_>>(),
        vec![(2, Status::Terminated)]
    );
    // An efficacy update cannot bring it back; a new request with its mid can.
    assert_eq!(
        e.put("a", "cu-a", 2, scope("198.51.100.64/28", 1000), true, 131),
        Ok(PutOutcome::Discarded)
    );
    assert!(e.tick(190).is_empty());
    assert!(matches!(
        e.status("cu-a", None, 190),
        Err(Refusal::NotFound(_))
    ));
    e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 200)
        .unwrap();
    assert_eq!(e.mitigator().installed().len(), 1);
}

fn set_dropped(e: &mut Engine<MemoryMitigator>, cuid: &str, mid: u32, packets: u64) {
    let id = e.ledger.get(cuid, mid).unwrap().datapath_id;
    let mut c = MitigationCounters::default();
    c.dropped[0] = Counter {
        packets,
        bytes: packets * 100,
    };
    assert!(e.mitigator_mut().set_counters(id, c));
}

fn status_of(e: &Engine<MemoryMitigator>, mid: u32, now: u64) -> Status {
    e.status("cu-a", Some(mid), now).unwrap()[0].status
}

#[test]
fn status_telemetry_reports_percentiles_of_measured_rates() {
    use ciborium::value::Value;
    let mut e = engine();
    // Server-originated telemetry in packets/s only, median and 90th percentile.
    let config = crate::signal::cbor::encode(&crate::signal::cbor::map(vec![(
        203,
        crate::signal::cbor::map(vec![(
            129,
            Value::Array(vec![crate::signal::cbor::map(vec![(
                175,
                crate::signal::cbor::map(vec![
                    (130, crate::signal::cbor::decimal2(0)),
                    (
                        133,
                        Value::Array(vec![crate::signal::cbor::map(vec![
                            (134, crate::signal::cbor::uint(1)),
                            (135, Value::Bool(true)),
                        ])]),
                    ),
                    (179, Value::Bool(true)),
                ]),
            )])]),
        )]),
    )]));
    assert_eq!(e.tm_setup_put("a", 1, setup_item(&config), 0), Ok(true));
    e.put("a", "cu-a", 1, scope("198.51.100.0/28", 3600), false, 0)
        .unwrap();
    let id = e.ledger.get("cu-a", 1).unwrap().datapath_id;
    // Ten seconds: in scope 100, 200, ... 1000 packets/s; a tenth of it dropped.
    let (mut total, mut dropped) = (0u64, 0u64);
    e.tick(0);
    for t in 1..=10u64 {
        total += 100 * t;
        dropped += 10 * t;
        let mut c = MitigationCounters {
            in_scope: Counter {
                packets: total,
                bytes: total * 100,
            },
            ..Default::default()
        };
        c.dropped[0] = Counter {
            packets: dropped,
            bytes: dropped * 100,
        };
        e.mitigator_mut().set_counters(id, c);
        // One attacker accounts for every drop (the datapath's sampled estimate).
        e.mitigator_mut().set_talkers(
            id,
            vec![(
                "192.0.2.9".parse().unwrap(),
                Counter {
                    packets: dropped,
                    bytes: dropped * 100,
                },
            )],
        );
        e.tick(t);
    }
    let st = e.status("cu-a", Some(1), 10).unwrap();
    let t = st[0].telemetry.clone().expect("telemetry asked for");
    let (unit, total) = t.total[0];
    assert_eq!(unit.code(), 1, "packet-ps, three digits kept");
    assert_eq!(
        (total.low, total.mid, total.high, total.peak, total.current),
        (None, Some(500), Some(900), Some(1000), Some(1000))
    );
    assert_eq!(t.attack[0].1.mid, Some(50));
    assert_eq!(t.attack_start, Some(0));
    assert_eq!(t.talkers.len(), 1);
    assert_eq!(
        t.talkers[0].source,
        "192.0.2.9/32".parse::<IpNet>().unwrap()
    );
    assert_eq!(
        t.talkers[0].attack[0].1.current,
        Some(100),
        "its drops over the last second"
    );
    // The encoded status carries them under the telemetry keys.
    let body = crate::signal::message::encode_status(&st);
    let j = crate::signal::diag::to_json(&crate::signal::cbor::parse(&body).unwrap());
    let entry = &j["ietf-dots-signal-channel:mitigation-scope"]["scope"][0];
    assert_eq!(
        entry["ietf-dots-telemetry:total-traffic"][0]["peak-g"],
        1000
    );
    assert_eq!(
        entry["ietf-dots-telemetry:total-attack-traffic"][0]["mid-percentile-g"],
        50
    );
    let talker = &entry["ietf-dots-telemetry:attack-detail"][0]["top-talker"]["talker"][0];
    assert_eq!(talker["source-prefix"], "192.0.2.9/32");
    assert_eq!(talker["total-attack-traffic"][0]["current-g"], 100);
    // A client that did not ask gets none.
    let mut other = engine();
    other
        .put("a", "cu-a", 1, scope("198.51.100.0/28", 3600), false, 0)
        .unwrap();
    other.tick(5);
    assert!(other.status("cu-a", Some(1), 5).unwrap()[0]
        .telemetry
        .is_none());
}

#[test]
fn reported_top_talkers_are_dropped_only_by_policy() {
    use crate::signal::telemetry::{encode_pre_mitigation, PreMitigation, ReportedTalker};
    let report_for = |target: &str, talkers: &[(&str, Option<bool>)]| {
        let r = PreMitigation {
            targets: vec![target.parse().unwrap()],
            total: vec![],
            attack: vec![],
            talkers: talkers
                .iter()
                .map(|(s, spoofed)| ReportedTalker {
                    source: s.parse().unwrap(),
                    spoofed: *spoofed,
                    attack: vec![],
                })
                .collect(),
            ..PreMitigation::default()
        };
        encode_pre_mitigation(&[(None, r)])
    };
    let report = |talkers: &[(&str, Option<bool>)]| report_for("198.51.100.0/28", talkers);
    for policy in [false, true] {
        let mut e = engine();
        if policy {
            e = e.with_talker_drop(["a".to_string()]);
        }
        e.put("a", "cu-a", 1, scope("198.51.100.0/28", 3600), false, 0)
            .unwrap();
        let id = e.ledger.get("cu-a", 1).unwrap().datapath_id;
        let body = report(&[
            ("192.0.2.66/32", Some(false)),
            ("192.0.2.67/32", Some(true)),
        ]);
        assert_eq!(e.tm_put("a", 2, pre_mitigation(&body), 1), Ok(()));
        let drops = e.mitigator().spec(id).unwrap().drop_list.clone();
        if policy {
            assert_eq!(drops, vec!["192.0.2.66/32".parse::<IpNet>().unwrap()]);
        } else {
            assert!(drops.is_empty(), "off by default");
        }
        // A lower tmid for the same targets is stale; a higher one replaces it.
        assert!(matches!(
            e.tm_put("a", 1, pre_mitigation(&body), 2),
            Err(Refusal::BadRequest(_))
        ));
        assert_eq!(
            e.tm_put(
                "a",
                3,
                pre_mitigation(&report(&[("192.0.2.70/32", None)])),
                3
            ),
            Ok(())
        );
        assert!(matches!(e.tm_get("a", Some(2)), Err(Refusal::NotFound(_))));
        assert!(e.tm_get("a", Some(3)).is_ok());
        e.tm_delete("a", None, 4);
        assert!(e.mitigator().spec(id).unwrap().drop_list.is_empty());
        // Targets outside the client's prefixes: 4.03.
        let outside = report_for("203.0.113.0/28", &[("192.0.2.1/32", None)]);
        assert!(matches!(
            e.tm_put("a", 9, pre_mitigation(&outside), 5),
            Err(Refusal::Forbidden(_))
        ));
    }
}

#[test]
fn attack_stopped_is_reported_after_a_quiet_period() {
    let mut e = engine().with_attack_quiet(30);
    e.put("a", "cu-a", 1, scope("198.51.100.0/28", 3600), false, 0)
        .unwrap();
    // No drops at all: nothing to say the attack stopped.
    for t in 1..100 {
        e.tick(t);
    }
    assert_eq!(status_of(&e, 1, 100), Status::SuccessfullyMitigated);
    set_dropped(&mut e, "cu-a", 1, 500);
    e.tick(100);
    assert_eq!(status_of(&e, 1, 110), Status::SuccessfullyMitigated);
    assert_eq!(status_of(&e, 1, 130), Status::Stopped, "30 s quiet");
    // The attack resumes: mitigated again. The rules stayed in all along.
    set_dropped(&mut e, "cu-a", 1, 900);
    e.tick(131);
    assert_eq!(status_of(&e, 1, 131), Status::SuccessfullyMitigated);
    assert_eq!(e.mitigator().installed().len(), 1);
    // The client saying it is still under attack also restarts the quiet clock.
    let mut efficacy = scope("198.51.100.0/28", 3600);
    efficacy.attack_status = Some(1);
    e.put("a", "cu-a", 1, efficacy, true, 155).unwrap();
    assert_eq!(status_of(&e, 1, 170), Status::SuccessfullyMitigated);
    assert_eq!(status_of(&e, 1, 185), Status::Stopped);
}

#[test]
fn preconfigured_requests_announce_3_and_7_then_rearm() {
    let mut e = engine().with_attack_quiet(30);
    let mut armed = scope("198.51.100.0/24", 3600);
    armed.trigger_mitigation = false;
    e.put("a", "cu-a", 1, armed.clone(), false, 0).unwrap();
    // An active request overlapping it is withdrawn by the server when the session is
    // lost (status 7, no terminating period), and the armed one takes over.
    e.put("a", "cu-a", 2, scope("198.51.100.0/28", 3600), false, 0)
        .unwrap();
    assert_eq!(e.session_lost("cu-a", 10), vec![1]);
    assert_eq!(status_of(&e, 2, 10), Status::Withdrawn);
    assert_eq!(status_of(&e, 1, 10), Status::SuccessfullyMitigated);
    assert_eq!(e.mitigator().installed().len(), 1);
    // The attack stops: the server takes it out, announces 3, then re-arms (8).
    set_dropped(&mut e, "cu-a", 1, 100);
    e.tick(12);
    e.tick(42);
    assert!(e.mitigator().installed().is_empty());
    assert_eq!(status_of(&e, 1, 42), Status::Stopped);
    assert!(e.announcing("cu-a", Some(1), 45));
    assert!(!e.announcing("cu-a", Some(1), 46));
    e.tick(46);
    let st = &e.status("cu-a", Some(1), 46).unwrap()[0];
    assert_eq!((st.status, st.mitigation_start), (Status::SignalLoss, None));
    // Lost again: active again. Then the client is back and asks for mitigation of
    // an overlapping scope itself: the preconfigured one is deactivated (7, then 8).
    e.seen("a", "cu-a", 50);
    e.lost.insert("cu-a".into());
    assert_eq!(e.session_lost("cu-a", 60), vec![1]);
    e.seen("a", "cu-a", 70);
    e.put("a", "cu-a", 3, scope("198.51.100.0/25", 3600), false, 70)
        .unwrap();
    assert_eq!(status_of(&e, 1, 70), Status::Withdrawn);
    assert_eq!(status_of(&e, 3, 70), Status::SuccessfullyMitigated);
    assert_eq!(e.mitigator().installed().len(), 1);
    e.tick(74);
    assert_eq!(status_of(&e, 1, 74), Status::SignalLoss);
}

#[test]
fn a_preconfigured_request_the_datapath_cannot_hold_reports_4() {
    let mut e = engine();
    let mut armed = scope("198.51.100.0/28", 3600);
    armed.trigger_mitigation = false;
    // 17 distinct port ranges: more than the datapath's scope holds.
    armed.target_port_range = (0..17).map(|p| PortRange::single(1000 + p)).collect();
    e.put("a", "cu-a", 1, armed, false, 0).unwrap();
    e.lost.insert("cu-a".into());
    assert!(e.session_lost("cu-a", 5).is_empty());
    assert_eq!(status_of(&e, 1, 5), Status::ExceededCapability);
    e.seen("a", "cu-a", 9);
    assert_eq!(status_of(&e, 1, 9), Status::SignalLoss, "re-armed");
}

#[test]
fn armed_requests_activate_on_signal_loss_and_indefinite_is_capped() {
    let mut e = engine();
    let mut s = Scope::new(
        vec!["198.51.100.0/24".parse().unwrap()],
        Lifetime::Indefinite,
    );
    s.trigger_mitigation = false;
    assert_eq!(
        e.put("a", "cu-a", 1, s, false, 0),
        Ok(PutOutcome::Created {
            granted: Lifetime::Seconds(86_400)
        })
    );
    assert_eq!(
        e.status("cu-a", Some(1), 0).unwrap()[0].status,
        Status::SignalLoss
    );
    assert!(e.mitigator().installed().is_empty());
    assert_eq!(e.session_lost("cu-a", 50), vec![1]);
    let st = &e.status("cu-a", Some(1), 50).unwrap()[0];
    assert_eq!(
        (st.status, st.mitigation_start),
        (Status::SuccessfullyMitigated, Some(50))
    );
    assert_eq!(e.mitigator().installed().len(), 1);
}

#[test]
fn a_failed_replacement_keeps_the_old_mitigation() {
    let mut e = engine();
    e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 0)
        .unwrap();
    // 17 distinct port ranges: more than the datapath's scope holds.
    let mut s = scope("198.51.100.0/28", 60);
    s.target_port_range = (0..17).map(|p| PortRange::single(1000 + p)).collect();
    assert!(matches!(
        e.put("a", "cu-a", 2, s, false, 5),
        Err(Refusal::BadRequest(_))
    ));
    assert_eq!(
        e.status("cu-a", Some(1), 5).unwrap()[0].status,
        Status::SuccessfullyMitigated
    );
    assert_eq!(e.mitigator().installed().len(), 1);
}

#[test]
fn accepted_state_survives_a_restart() {
    let journal = MemoryJournal::new();
    let (mut e, n) = restored(engine(), &journal, 0);
    assert_eq!(n, 0);
    e.put("a", "cu-a", 1, scope("198.51.100.0/28", 100), false, 0)
        .unwrap();
    e.put("a", "cu-a", 2, scope("198.51.100.64/28", 1000), false, 0)
        .unwrap();
    let mut armed = scope("198.51.100.128/28", 1000);
    armed.trigger_mitigation = false;
    e.put("a", "cu-a", 3, armed, false, 0).unwrap();
    let body = [
        0xa1, 0x18, 0x1e, 0xa1, 0x18, 0x20, 0xa1, 0x18, 0x21, 0xa1, 0x18, 0x24, 0x18, 0x3c,
    ];
    e.config_put("a", 7, session_config(&e, "a", &body))
        .unwrap();
    // The agent restarts 500 s later; the pinned datapath still holds an orphan rule.
    let mut datapath = MemoryMitigator::new();
    datapath
        .install(&MitigationSpec::new(
            999,
            vec!["198.51.100.200/32".parse().unwrap()],
        ))
        .unwrap();
    let fresh = Engine::new(datapath, e.policies.values().cloned().collect());
    drop(e);
    let (mut e, n) = restored(fresh, &journal, 500);
    assert_eq!(n, 3);
    assert_eq!(
        e.mitigator().installed().len(),
        2,
        "two active rule sets back, the orphan gone"
    );
    assert_eq!(
        e.config_get("a", Some(7))
            .unwrap()
            .mitigating
            .heartbeat_interval(),
        60
    );
    let st = e.status("cu-a", Some(2), 500).unwrap();
    assert_eq!(
        (st[0].scope.lifetime, st[0].mitigation_start),
        (Lifetime::Seconds(500), Some(0))
    );
    assert_eq!(
        e.status("cu-a", Some(3), 500).unwrap()[0].status,
        Status::SignalLoss
    );
    // Mitigation 1 expired while the agent was down.
    assert_eq!(e.tick(500), vec![("cu-a".to_string(), 1)]);
    // New mitigations get datapath ids after the restored ones.
    e.put("a", "cu-a", 4, scope("198.51.100.16/28", 100), false, 500)
        .unwrap();
    assert_eq!(e.mitigator().installed().len(), 2);
}

#[test]
fn a_silent_session_activates_armed_requests() {
    let mut e = engine();
    let mut armed = scope("198.51.100.0/24", 3600);
    armed.trigger_mitigation = false;
    e.put("a", "cu-a", 1, armed, false, 0).unwrap();
    e.seen("a", "cu-a", 0);
    // Defaults: 30 s x 15 missing heartbeats.
    assert!(e.detect_lost_sessions(450).is_empty());
    assert_eq!(e.detect_lost_sessions(451), vec!["cu-a".to_string()]);
    assert_eq!(e.mitigator().installed().len(), 1, "armed request active");
    assert!(e.detect_lost_sessions(1000).is_empty(), "declared once");
    // A negotiated shorter window counts; traffic clears the loss.
    e.seen("a", "cu-a", 1000);
    let body = [
        0xa1, 0x18, 0x1e, 0xa1, 0x18, 0x20, 0xa2, 0x18, 0x21, 0xa1, 0x18, 0x24, 0x0f, 0x18, 0x25,
        0xa1, 0x18, 0x24, 0x03,
    ];
    e.config_put("a", 1, session_config(&e, "a", &body))
        .unwrap(); // mitigating: 15 s x 3
    assert_eq!(e.detect_lost_sessions(1046), vec!["cu-a".to_string()]);
}

struct OneAlias;
impl DataSource for OneAlias {
    fn alias(&self, cuid: &str, name: &str) -> Option<AliasTargets> {
        match (cuid, name) {
            ("cu-a", "web") => Some(AliasTargets {
                prefixes: vec!["198.51.100.80/28".parse().unwrap()],
                ports: vec![PortRange::single(443)],
                protocols: vec![6],
                names: 0,
            }),
            ("cu-a", "named") => Some(AliasTargets {
                names: 1,
                ..Default::default()
            }),
            _ => None,
        }
    }
    fn plan_acl_list(&self, cuid: &str, acls: &[AclActivation]) -> Result<AclEdit, String> {
        match acls.iter().find(|a| a.acl_name != "known") {
            Some(a) => Err(format!("unknown acl-name {:?}", a.acl_name)),
            None => Ok(AclEdit {
                client: "a".into(),
                entries: Vec::new(),
                change: Change::DataClient {
                    cuid: cuid.into(),
                    doc: None,
                },
            }),
        }
    }
    fn apply_acl_list(&mut self, _cuid: &str, _acls: &[AclActivation]) {}
}

#[test]
fn acl_lists_are_checked_before_the_request_is_accepted() {
    let mut e = engine().with_data_source(Box::new(OneAlias));
    let mut s = scope("198.51.100.0/28", 60);
    s.acl_list = vec![AclActivation {
        acl_name: "nope".into(),
        activation_type: ActivationType::Immediate,
    }];
    assert!(matches!(
        e.put("a", "cu-a", 1, s.clone(), false, 0),
        Err(Refusal::BadRequest(_))
    ));
    assert!(e.mitigator().installed().is_empty(), "nothing installed");
    s.acl_list[0].acl_name = "known".into();
    assert!(matches!(
        e.put("a", "cu-a", 1, s.clone(), false, 0),
        Ok(PutOutcome::Created { .. })
    ));
    // Without a data channel acl-list is refused.
    assert!(matches!(
        engine().put("a", "cu-a", 1, s, false, 0),
        Err(Refusal::BadRequest(_))
    ));
}

#[test]
fn alias_names_resolve_through_the_clients_aliases() {
    let mut e = engine().with_data_source(Box::new(OneAlias));
    let mut s = Scope::new(Vec::new(), Lifetime::Seconds(60));
    s.alias_name = vec!["web".into()];
    assert!(matches!(
        e.put("a", "cu-a", 1, s.clone(), false, 0),
        Ok(PutOutcome::Created { .. })
    ));
    let id = e.mitigator().installed()[0];
    let spec = e.mitigator().spec(id).unwrap();
    assert_eq!(spec.targets, vec!["198.51.100.80/28".parse().unwrap()]);
    assert_eq!(
        (spec.ports.clone(), spec.protocols.clone()),
        (vec![PortRange::single(443)], vec![6])
    );
    assert_eq!(
        e.put("a", "cu-a", 1, s.clone(), false, 10),
        Ok(PutOutcome::Changed),
        "the same request again is a refresh"
    );
    // The alias name is stored with the mitigation: after a restart the same request
    // is still a refresh.
    let journal = MemoryJournal::new();
    let (mut stored, _) = restored(engine().with_data_source(Box::new(OneAlias)), &journal, 0);
    stored.put("a", "cu-a", 1, s.clone(), false, 0).unwrap();
    drop(stored);
    let (mut restarted, _) = restored(engine().with_data_source(Box::new(OneAlias)), &journal, 5);
    assert_eq!(
        restarted.put("a", "cu-a", 1, s.clone(), false, 5),
        Ok(PutOutcome::Changed)
    );
    assert_eq!(
        restarted.status("cu-a", Some(1), 5).unwrap()[0]
            .scope
            .alias_name,
        vec!["web".to_string()]
    );
    // Another client's cuid does not see this alias; FQDN aliases are not resolved.
    assert!(matches!(
        e.put("b", "cu-b", 1, s, false, 0),
        Err(Refusal::BadRequest(_))
    ));
    let mut named = Scope::new(Vec::new(), Lifetime::Seconds(60));
    named.alias_name = vec!["named".into()];
    assert!(matches!(
        e.put("a", "cu-a", 2, named, false, 0),
        Err(Refusal::BadRequest(_))
    ));
}

#[test]
fn telemetry_targets_resolve_aliases_and_mids_like_mitigations() {
    let mut e = engine().with_data_source(Box::new(OneAlias));
    let baseline = tm::Baseline {
        id: 1,
        aliases: vec!["web".into()],
        normal: vec![(tm::Unit::from_code(1).unwrap(), tm::Stats::default())],
        ..Default::default()
    };
    let item = e
        .tm_setup_resolve("cu-a", tm::SetupItem::Baselines(vec![baseline.clone()]))
        .unwrap();
    assert_eq!(e.tm_setup_put("a", 1, item, 0), Ok(true));
    let stored = &e.tm_setup_get("a", Some(1)).unwrap().baselines[0].1;
    assert_eq!(
        (
            stored.targets.clone(),
            stored.ports.clone(),
            stored.protocols.clone(),
            stored.aliases.clone()
        ),
        (
            vec!["198.51.100.80/28".parse().unwrap()],
            vec![PortRange::single(443)],
            vec![6],
            vec!["web".to_string()]
        ),
        "the alias's targets, and its name kept"
    );
    // The same refusals as mitigation requests: another cuid's alias, an FQDN alias.
    for (cuid, name) in [("cu-b", "web"), ("cu-a", "named"), ("cu-a", "nope")] {
        let b = tm::Baseline {
            aliases: vec![name.into()],
            ..baseline.clone()
        };
        assert!(matches!(
            e.tm_setup_resolve(cuid, tm::SetupItem::Baselines(vec![b])),
            Err(Refusal::BadRequest(_))
        ));
    }
    assert!(matches!(
        engine().tm_setup_resolve("cu-a", tm::SetupItem::Baselines(vec![baseline])),
        Err(Refusal::BadRequest(t)) if t.contains("no data channel")
    ));
    // mid-list: the mitigation's prefixes join the report's targets; unknown mids are 4.00.
    e.put("a", "cu-a", 4, scope("198.51.100.0/28", 60), false, 0)
        .unwrap();
    let report = tm::PreMitigation {
        mids: vec![4],
        total: vec![(tm::Unit::from_code(1).unwrap(), tm::Stats::default())],
        ..Default::default()
    };
    let r = e.tm_resolve("cu-a", report.clone()).unwrap();
    assert_eq!(r.targets, vec!["198.51.100.0/28".parse().unwrap()]);
    assert_eq!(e.tm_put("a", 1, r, 0), Ok(()));
    assert_eq!(e.tm_get("a", Some(1)).unwrap()[0].1.mids, vec![4]);
    let unknown = tm::PreMitigation {
        mids: vec![5],
        ..report
    };
    assert!(matches!(
        e.tm_resolve("cu-a", unknown),
        Err(Refusal::BadRequest(t)) if t.contains("mid-list (186)")
    ));
}

#[test]
fn other_clients_overlaps_conflict() {
    let mut e = engine();
    let mut wide = engine().policies.remove("a").unwrap();
    wide.name = "c".into();
    wide.prefixes = vec!["198.51.0.0/16".parse().unwrap()];
    e.policies.insert("c".into(), wide);
    e.put("a", "cu-a", 1, scope("198.51.100.0/28", 60), false, 0)
        .unwrap();
    let mut two = scope("198.51.100.0/24", 60);
    two.target_prefix.push("198.51.200.0/24".parse().unwrap());
    match e.put("c", "cu-c", 1, two, false, 15) {
        Err(Refusal::HeldByOther {
            targets,
            retry_timer,
            ..
        }) => {
            assert_eq!(targets, vec!["198.51.100.0/24".parse::<IpNet>().unwrap()]);
            assert_eq!(retry_timer, Some(45), "the other's remaining lifetime");
        }
        other => panic!("{other:?}"),
    }
    // Once it has ended, the targets are free.
    e.tick(60);
    e.put("c", "cu-c", 1, scope("198.51.100.0/24", 60), false, 61)
        .unwrap();
}

// Data-channel ACLs as the engine applies them (what `data/layer.rs` did as a Mitigator
// decorator before the engine became the datapath's only writer).

fn drop_from(name: &str, src: &str) -> AclEntry {
    AclEntry {
        name: name.into(),
        matches: crate::datapath::AclMatch {
            source: Some(src.parse().unwrap()),
            ..Default::default()
        },
        action: crate::datapath::AclAction::Drop,
    }
}

fn acl_len(e: &Engine<MemoryMitigator>, id: u64) -> usize {
    e.mitigator()
        .counters(id)
        .unwrap()
        .map(|c| c.acl.len())
        .unwrap_or(0)
}

#[test]
fn immediate_acls_are_live_at_once_and_when_mitigating_only_with_a_mitigation() {
    let mut e = engine();
    e.set_acls(
        "a",
        Some(vec![
            (ActivationType::Immediate, drop_from("now", "192.0.2.0/24")),
            (
                ActivationType::ActivateWhenMitigating,
                drop_from("later", "203.0.113.0/24"),
            ),
            (
                ActivationType::Deactivate,
                drop_from("off", "203.0.113.0/25"),
            ),
        ]),
        Vec::new(),
    )
    .unwrap();
    let base = DatapathId::baseline("a").raw();
    assert_eq!(e.mitigator().installed(), vec![base]);
    // The memory datapath keeps one counter per ACL entry of a spec.
    assert_eq!(acl_len(&e, base), 1, "only the immediate entry");
    assert!(e.views(0).is_empty(), "the engine does not see baselines");
    // A mitigation of the whole /24 takes the prefix from the baseline.
    e.put("a", "cu-a", 1, scope("198.51.100.0/24", 60), false, 0)
        .unwrap();
    assert_eq!(
        e.mitigator().installed(),
        vec![1],
        "baseline gone: its only prefix is held"
    );
    assert_eq!(acl_len(&e, 1), 2, "immediate + when-mitigating merged");
    assert!(e.mitigating("a"));
    e.delete("cu-a", 1, 0).unwrap();
    e.tick(TERMINATING_DEFAULT);
    assert_eq!(e.mitigator().installed(), vec![base]);
    assert_eq!(acl_len(&e, base), 1, "when-mitigating off again");
}

#[test]
fn a_narrow_mitigation_keeps_the_baseline_and_counters_sum() {
    let mut e = engine();
    e.set_acls(
        "a",
        Some(vec![(
            ActivationType::ActivateWhenMitigating,
            drop_from("x", "192.0.2.0/24"),
        )]),
        Vec::new(),
    )
    .unwrap();
    assert!(
        e.mitigator().installed().is_empty(),
        "nothing live without a mitigation"
    );
    e.put("a", "cu-a", 7, scope("198.51.100.7/32", 60), false, 0)
        .unwrap();
    let id = e.ledger.get("cu-a", 7).unwrap().datapath_id;
    assert_eq!(
        e.mitigator().installed(),
        vec![id, DatapathId::baseline("a").raw()]
    );
    let c = e.acl_counters("a");
    assert_eq!(c.get(&name_hash("x")).map(|c| c.packets), Some(0));
}

#[test]
fn entries_the_datapath_cannot_hold_change_nothing() {
    let mut e = engine();
    e.set_acls(
        "a",
        Some(vec![(
            ActivationType::Immediate,
            drop_from("x", "192.0.2.0/24"),
        )]),
        Vec::new(),
    )
    .unwrap();
    let dup = vec![
        (ActivationType::Immediate, drop_from("y", "192.0.2.0/24")),
        (
            ActivationType::ActivateWhenMitigating,
            drop_from("y", "192.0.2.0/25"),
        ),
    ];
    assert!(e.set_acls("a", Some(dup), Vec::new()).is_err());
    assert_eq!(e.acl_counters("a").len(), 1, "the old entry still live");
}

/// A datapath that counts the engine's calls.
#[derive(Default)]
struct Counting {
    inner: MemoryMitigator,
    installs: Vec<u64>,
    removes: Vec<u64>,
}

impl Mitigator for Counting {
    fn install(&mut self, spec: &MitigationSpec) -> Result<(), DatapathError> {
        self.installs.push(spec.id);
        self.inner.install(spec)
    }
    fn remove(
        &mut self,
        id: u64,
    ) -> Result<Option<crate::datapath::MitigationCounters>, DatapathError> {
        self.removes.push(id);
        self.inner.remove(id)
    }
    fn counters(
        &self,
        id: u64,
    ) -> Result<Option<crate::datapath::MitigationCounters>, DatapathError> {
        self.inner.counters(id)
    }
    fn installed(&self) -> Vec<u64> {
        self.inner.installed()
    }
}

impl Counting {
    /// (installs, removes) since the last call.
    fn calls(&mut self) -> (Vec<u64>, Vec<u64>) {
        (
            std::mem::take(&mut self.installs),
            std::mem::take(&mut self.removes),
        )
    }
}

#[test]
fn one_put_one_install_one_delete_one_remove_one_acl_edit_one_install_per_mitigation() {
    let policy = ClientPolicy::fixture("a", &["198.51.0.0/16"]);
    let mut e = Engine::new(Counting::default(), vec![policy]).with_terminating_period(0);
    let mut entries = vec![
        (ActivationType::Immediate, drop_from("now", "192.0.2.0/24")),
        (
            ActivationType::ActivateWhenMitigating,
            drop_from("later", "203.0.113.0/24"),
        ),
    ];
    e.set_acls("a", Some(entries.clone()), Vec::new()).unwrap();
    let base = DatapathId::baseline("a").raw();
    assert_eq!(e.mitigator_mut().calls(), (vec![base], vec![]));
    // The first mitigation makes the activate-when-mitigating entry live in the baseline.
    e.put("a", "cu-a", 1, scope("198.51.1.0/32", 600), false, 0)
        .unwrap();
    let first = e.ledger.get("cu-a", 1).unwrap().datapath_id;
    assert_eq!(e.mitigator_mut().calls(), (vec![base, first], vec![]));
    // Every further PUT: one install, its own; nothing else is touched.
    let mut ids = vec![first];
    for mid in 2..=100u32 {
        let target = format!("198.51.{}.{}/32", 1 + mid / 256, mid % 256);
        e.put("a", "cu-a", mid, scope(&target, 600), false, 0)
            .unwrap();
        let id = e.ledger.get("cu-a", mid).unwrap().datapath_id;
        assert_eq!(
            e.mitigator_mut().calls(),
            (vec![id], vec![]),
            "PUT mid {mid}"
        );
        ids.push(id);
    }
    // A refresh and an efficacy update change no rule.
    e.put("a", "cu-a", 7, scope("198.51.1.7/32", 900), false, 1)
        .unwrap();
    e.put("a", "cu-a", 7, scope("198.51.1.7/32", 900), true, 2)
        .unwrap();
    assert_eq!(e.mitigator_mut().calls(), (vec![], vec![]));
    // One DELETE: one remove (after its terminating period, here 0), nothing installed.
    e.delete("cu-a", 50, 3).unwrap();
    assert_eq!(e.mitigator_mut().calls(), (vec![], vec![]), "terminating");
    e.tick(3);
    let fifty = ids.remove(49);
    assert_eq!(e.mitigator_mut().calls(), (vec![], vec![fifty]));
    // One ACL edit that changes a live entry: each of the 99 mitigations once, and the
    // baseline once.
    entries[0].1 = drop_from("now", "192.0.2.0/25");
    e.set_acls("a", Some(entries.clone()), Vec::new()).unwrap();
    let (mut installs, removes) = e.mitigator_mut().calls();
    installs.sort();
    let mut expected = ids.clone();
    expected.push(base);
    expected.sort();
    assert_eq!((installs, removes), (expected, vec![]));
    // One that adds a deactivated ACL changes no rule.
    entries.push((
        ActivationType::Deactivate,
        drop_from("off", "198.18.0.0/15"),
    ));
    e.set_acls("a", Some(entries), Vec::new()).unwrap();
    assert_eq!(e.mitigator_mut().calls(), (vec![], vec![]));
}

#[test]
fn a_change_the_store_cannot_record_is_refused_and_undone() {
    let journal = MemoryJournal::new();
    let (mut e, _) = restored(engine(), &journal, 0);
    e.put("a", "cu-a", 1, scope("198.51.100.0/28", 600), false, 0)
        .unwrap();
    assert_eq!(
        journal.transactions(),
        1,
        "one transaction per accepted change"
    );
    let before = e.mitigator().installed();
    journal.fail(true);
    // A new mitigation superseding mid 1: not stored, so not made.
    match e.put("a", "cu-a", 2, scope("198.51.100.0/28", 600), false, 1) {
        Err(Refusal::Unavailable(d)) => assert!(d.contains("could not store"), "{d}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.mitigator().installed().len(), before.len());
    assert_eq!(status_of(&e, 1, 1), Status::SuccessfullyMitigated);
    assert!(e.status("cu-a", Some(2), 1).is_err());
    // A withdrawal likewise.
    assert!(matches!(
        e.delete("cu-a", 1, 2),
        Err(Refusal::Unavailable(_))
    ));
    assert_eq!(status_of(&e, 1, 2), Status::SuccessfullyMitigated);
    journal.fail(false);
    e.put("a", "cu-a", 2, scope("198.51.100.0/28", 600), false, 3)
        .unwrap();
    // What a restart finds is what was acknowledged.
    let (e2, n) = restored(engine(), &journal, 4);
    assert_eq!(n, 1);
    assert_eq!(status_of(&e2, 2, 4), Status::SuccessfullyMitigated);
    assert!(
        e2.status("cu-a", Some(1), 4).is_err(),
        "mid 1 was superseded"
    );
}

fn operator_spec(id: u32, target: &str) -> MitigationSpec {
    toml::from_str(&format!("id = {id}\ntargets = [\"{target}\"]")).unwrap()
}

#[test]
fn operator_mitigations_are_stored_restored_and_never_silently_deleted() {
    let journal = MemoryJournal::new();
    let (mut e, _) = restored(engine(), &journal, 0);
    let added = e
        .operator_add(vec![operator_spec(7, "192.0.2.0/24")])
        .unwrap();
    assert_eq!(added, vec![(7, Added::Installed)]);
    assert_eq!(journal.snapshot().operator_mitigations.len(), 1);
    let raw = DatapathId::Operator(7).raw();
    assert!(e.mitigator().installed().contains(&raw));
    assert_eq!(e.describe(raw), "operator mitigation 7");
    assert_eq!(e.views(0)[0].client, OPERATOR_CLIENT);
    // A target a client's mitigation holds is refused, naming the owner.
    e.put("a", "cu-a", 3, scope("198.51.100.0/28", 600), false, 0)
        .unwrap();
    match e.operator_add(vec![operator_spec(8, "198.51.100.0/28")]) {
        Err(Refusal::Conflict { diagnostic, .. }) => {
            assert!(diagnostic.contains("a mid 3"), "{diagnostic}")
        }
        other => panic!("{other:?}"),
    }
    // Not stored, not made: the datapath keeps what it had.
    journal.fail(true);
    let before = e.mitigator().installed();
    assert!(matches!(
        e.operator_add(vec![operator_spec(9, "203.0.113.0/24")]),
        Err(Refusal::Unavailable(_))
    ));
    assert_eq!(e.mitigator().installed(), before);
    journal.fail(false);

    // A restart restores it; one pinned while no server ran is kept, not deleted.
    let mut dp = MemoryMitigator::new();
    dp.install(&operator_datapath_spec(
        5,
        &operator_spec(5, "203.0.113.0/24"),
    ))
    .unwrap();
    let fresh = Engine::new(dp, engine().policies.into_values().collect());
    let (e2, _) = restored(fresh, &journal, 1);
    let ids: Vec<(u32, bool)> = e2
        .operator_list()
        .iter()
        .map(|v| (v.id, v.spec.is_some()))
        .collect();
    assert_eq!(ids, vec![(5, false), (7, true)]);
    let mut e2 = e2;
    assert!(e2.operator_remove(7).unwrap().is_some());
    assert!(journal.snapshot().operator_mitigations.is_empty());
    assert!(matches!(e2.operator_remove(7), Err(Refusal::NotFound(_))));
}

#[test]
fn a_reload_applies_new_policies_or_none() {
    let mut e = engine();
    let mut policies: Vec<ClientPolicy> = e.policies.values().cloned().collect();
    policies.retain(|p| p.name != "b");
    policies[0].prefixes.push("192.0.2.0/24".parse().unwrap());
    let changes = e.reload_policies(policies, Vec::new()).unwrap();
    assert_eq!(changes.changed, vec!["a".to_string()]);
    assert_eq!(changes.removed, vec!["b".to_string()]);
    e.put("a", "cu-a", 1, scope("192.0.2.0/28", 600), false, 0)
        .unwrap();
    assert!(matches!(
        e.put("b", "cu-b", 1, scope("203.0.113.0/28", 600), false, 0),
        Err(Refusal::Forbidden(_))
    ));
}
