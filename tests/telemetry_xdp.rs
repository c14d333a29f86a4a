//! End to end, RFC 9244 telemetry acting on the XDP filter: a client tells the server its
//! pipe capacity (the filter caps the scope to it), asks for server-originated telemetry
//! (the status carries measured total and attack traffic), then measures what still
//! arrives and reports its top talker (the server's policy drops that source). The status
//! also names the top talker the XDP program sampled.

use std::time::Duration;

use coap_lite::RequestType;
use dots_agent::af_packet::PacketSocket;
use dots_agent::client::{code_text, Session, TransportChoice};
use dots_agent::signal::message::{self, Lifetime, Scope};
use dots_agent::signal::telemetry::{self, PreMitigation, SetupItem, TelemetryConfig};
use dots_e2e::dots::{connect, in_ns, start_server};
use dots_e2e::{Lab, VethPair};
use dots_lab::packet::PacketSpec;
use dots_lab::trafficgen::socket::send_paced;

const ATTACKER: &str = "192.0.2.77";
const TARGET: &str = "198.51.100.10";

/// 400-byte UDP frames from the attacker at `pps` for `seconds` (not from an
/// amplification port: only the telemetry-driven rules act on them).
fn flood(pair: &VethPair, pps: u64, seconds: u64) -> u64 {
    let a_if = pair.a_if.clone();
    pair.a
        .run(move || {
            let mut spec = PacketSpec::udp(ATTACKER, TARGET, 40_000, 80);
            spec.payload_len = 358;
            send_paced(
                &PacketSocket::open(&a_if).unwrap(),
                &[spec.build()],
                pps * seconds,
                pps,
                Duration::from_secs(seconds + 2),
            )
            .unwrap()
        })
        .join()
        .unwrap()
}

fn json(p: &coap_lite::Packet) -> serde_json::Value {
    dots_agent::signal::diag::to_json(&dots_agent::signal::cbor::parse(&p.payload).unwrap())
}

#[test]
fn telemetry_caps_the_scope_reports_traffic_and_drops_the_top_talker() {
    let lab = Lab::new("tm");
    let pair = &lab.pair;
    let (server, stop) = start_server(
        &pair.b,
        &lab.server_config(
            r#""198.51.100.0/24""#,
            "",
            "",
            "countermeasures = {}\ndrop_top_talkers = true",
        ),
    );
    let client = lab.client(TransportChoice::Dtls);
    let request = |path: Vec<String>, method: RequestType, body: Option<Vec<u8>>| {
        let cfg = client.clone();
        in_ns(&pair.a, move |rt| {
            rt.block_on(async {
                let mut s: Session = connect(&cfg).await;
                let mut full = vec![path[0].clone(), format!("cuid={}", s.cuid())];
                full.extend(path[1..].iter().cloned());
                s.request(method, &full, body, false).await.unwrap()
            })
        })
    };

    // Setup: server-originated telemetry, and a 1 Mbit/s (125,000 B/s) pipe.
    let config = TelemetryConfig {
        server_originated: true,
        ..TelemetryConfig::default()
    };
    let put_setup = |tsid: u32, item: SetupItem| {
        request(
            vec!["tm-setup".into(), format!("tsid={tsid}")],
            RequestType::Put,
            Some(telemetry::encode_setup_put(&item)),
        )
    };
    assert_eq!(code_text(&put_setup(1, SetupItem::Config(config))), "2.01");
    let pipe = telemetry::PipeCapacity {
        link_id: "uplink".into(),
        unit: telemetry::Unit::from_code(8).unwrap(),
        capacity: 1,
    };
    assert_eq!(
        code_text(&put_setup(2, SetupItem::Pipes(vec![pipe]))),
        "2.01"
    );

    let scope = Scope::new(
        vec!["198.51.100.0/24".parse().unwrap()],
        Lifetime::Seconds(600),
    );
    let mitigate = vec!["mitigate".to_string(), "mid=1".to_string()];
    let r = request(
        mitigate.clone(),
        RequestType::Put,
        Some(message::encode_mitigation_request(&scope)),
    );
    assert_eq!(code_text(&r), "2.01");

    // 1,000 frames/s of 400 bytes = 400,000 B/s against a 125,000 B/s cap.
    let sent = flood(pair, 1000, 4);
    let status = json(&request(mitigate.clone(), RequestType::Get, None));
    let entry = &status["ietf-dots-signal-channel:mitigation-scope"]["scope"][0];
    let dropped = entry["pkts-dropped"].as_u64().unwrap();
    assert!(
        dropped > sent / 2 && dropped < sent,
        "the pipe cap drops the excess only: {dropped} of {sent}"
    );
    let total = &entry["ietf-dots-telemetry:total-traffic"];
    let attack = &entry["ietf-dots-telemetry:total-attack-traffic"];
    let peak_pps = total[0]["peak-g"]
        .as_u64()
        .expect("total-traffic in packets/s");
    assert!(
        (700..=1300).contains(&peak_pps),
        "peak total traffic near 1,000 packets/s: {total}"
    );
    assert!(attack[0]["peak-g"].as_u64().unwrap() > 0, "{attack}");
    // The attacker is the top talker the XDP program sampled among the dropped sources.
    let talker = &entry["ietf-dots-telemetry:attack-detail"][0]["top-talker"]["talker"][0];
    assert_eq!(talker["source-prefix"], format!("{ATTACKER}/32"), "{entry}");
    let talker_peak = talker["total-attack-traffic"][0]["peak-g"]
        .as_u64()
        .unwrap();
    assert!(
        (200..=2500).contains(&talker_peak),
        "a sampled estimate (1 drop in 16, per-second readings) of the ~690 packets/s dropped: {talker}"
    );
    println!("status telemetry: total {total} attack {attack}");

    // The client measures what still arrives (here: behind the filter, on the server's
    // side of the link, where the cleaned traffic lands) and reports its top talker.
    let b_if = pair.b_if.clone();
    let measuring = pair.b.run(move || {
        dots_agent::measure::measure(&b_if, 3, &["198.51.100.0/24".parse().unwrap()]).unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    flood(pair, 1000, 2);
    let m = measuring.join().unwrap();
    let talkers = m.top_talkers(3, &[telemetry::UnitClass::PacketsPerSecond]);
    assert_eq!(
        talkers[0].source,
        format!("{ATTACKER}/32").parse().unwrap(),
        "the attacker is the top talker"
    );
    let report = PreMitigation {
        targets: vec!["198.51.100.0/24".parse().unwrap()],
        total: m.traffic(
            &[telemetry::UnitClass::PacketsPerSecond],
            &Default::default(),
        ),
        attack: Vec::new(),
        talkers,
        ..PreMitigation::default()
    };
    let r = request(
        vec!["tm".into(), "tmid=1".into()],
        RequestType::Put,
        Some(telemetry::encode_pre_mitigation(&[(None, report)])),
    );
    assert_eq!(code_text(&r), "2.04");
    // The server's policy drops the reported talker: now everything from it is dropped.
    let before = json(&request(mitigate.clone(), RequestType::Get, None))
        ["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["pkts-dropped"]
        .as_u64()
        .unwrap();
    let sent = flood(pair, 1000, 2);
    let after = json(&request(mitigate, RequestType::Get, None))
        ["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["pkts-dropped"]
        .as_u64()
        .unwrap();
    assert_eq!(
        after - before,
        sent,
        "every packet of the reported talker dropped"
    );

    let _ = stop.send(());
    server.join().unwrap().unwrap();
}
