//! What a go-dots client (nttdots/go-dots, dots_client over its libcoap) sends, replayed
//! byte for byte where the shape matters, each answered as go-dots expects. The bodies are
//! built as go-dots' CBOR codec writes its structs (unsigned-integer keys in field order;
//! decimals as shopspring/decimal gives them: the exponent the value needs, 20.5 as
//! `4([-1, 205])`, 50 as `4([0, 50])`), from its sample requests
//! (dots_client/sampleSessionConfigurationDraft.json, sampleMitigationRequestDraft.json,
//! sampleMitigationRequestDraftEfficacyUpdate.json) and its heartbeat task. The transport is
//! libcoap's coap-client-openssl over coaps://, as go-dots itself runs on libcoap, with the
//! cuid given by the operator (go-dots' `-cuid`), not the certificate's hash.

mod common;

use std::path::Path;
use std::process::Command;

use common::signal;

const CLIENT: &str = "[[client]]\nname = \"client-a\"\nprefixes = [\"2001:db8:6401::/48\"]\n\
    countermeasures = {}\n";

/// go-dots' `-cuid` (an operator's choice).
const CUID: &str = "go-dots-cuid-1";

/// libcoap's log of one request with `body` (Content-Format 271), and the code it got.
fn send(dir: &Path, args: &[&str], body: Option<&[u8]>) -> (String, Option<String>) {
    let pki = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let mut cmd = Command::new("coap-client-openssl");
    cmd.args([
        "-c",
        &pki("client-a.pem"),
        "-j",
        &pki("client-a.key"),
        "-C",
        &pki("ca.pem"),
    ]);
    cmd.args(["-v", "6", "-B", "5", "-L", "5"]);
    if let Some(b) = body {
        let f = dir.join("body.cbor");
        std::fs::write(&f, b).unwrap();
        cmd.args(["-t", "271", "-f", f.to_str().unwrap()]);
    }
    let out = cmd
        .args(args)
        .output()
        .expect("coap-client-openssl (libcoap3-bin)");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = log
        .lines()
        .filter(|l| l.contains("v:1 t:") && !l.contains(" c:PUT") && !l.contains(" c:GET"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("c:"))
                .map(String::from)
        })
        .rfind(|c| c.starts_with(|ch: char| ch.is_ascii_digit()));
    (log, code)
}

/// CBOR as go-dots writes it, spelled out in hex (RFC 8949 diagnostic in comments).
fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_dots_client_is_answered_as_it_expects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    dots_agent::pki::init(
        &d,
        "dots.example",
        &["127.0.0.1".parse().unwrap()],
        &["client-a".into()],
    )
    .unwrap();
    let running = signal::server(&d, "127.0.0.1:0", "", CLIENT).await;
    let port = running.signal[0].port();
    let base = format!("coaps://127.0.0.1:{port}/.well-known/dots");
    let run = |args: Vec<String>, body: Option<Vec<u8>>| {
        let d = d.clone();
        tokio::task::spawn_blocking(move || {
            send(
                &d,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
                body.as_deref(),
            )
        })
    };

    // Session configuration PUT: heartbeat 50 s (go-dots' sample), ack-timeout 2.5 s as
    // 4([-1, 25]), ack-random-factor 1.5 as 4([-1, 15]), max-retransmit 3.
    // {30: {32: {33: {36: 50}, 37: {36: 3}, 38: {36: 3}, 39: {43: 4([-1, 25])},
    //            40: {43: 4([-1, 15])}},
    //       44: {33: {36: 50}, 37: {36: 3}, 38: {36: 3}, 39: {43: 4([-1, 25])},
    //            40: {43: 4([-1, 15])}}}}
    let set = "a5 1821 a1 1824 1832  1825 a1 1824 03  1826 a1 1824 03 \
               1827 a1 182b c4 82 20 1819  1828 a1 182b c4 82 20 0f";
    let config = hex(&format!("a1 181e a2 1820 {set} 182c {set}"));
    let (log, code) = run(
        vec!["-m".into(), "put".into(), format!("{base}/config/sid=1")],
        Some(config),
    )
    .await
    .unwrap();
    assert_eq!(
        code.as_deref(),
        Some("2.01"),
        "session configuration: {log}"
    );
    let current = running
        .control
        .run(|c| c.engine.config("client-a"))
        .await
        .unwrap();
    assert_eq!(current.mitigating.heartbeat_interval(), 50);

    // Its config GET carries Q-Block2 (NUM 0, M, SZX 1): answered with the configuration.
    let (log, code) = run(
        vec![
            "-m".into(),
            "get".into(),
            "-O".into(),
            "31,0x09".into(),
            format!("{base}/config"),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        code.as_deref(),
        Some("2.05"),
        "config GET with Q-Block2: {log}"
    );

    // Mitigation request, go-dots' sample: two /128 targets, ports 80, 443, 8080, TCP.
    // {1: {2: [{6: ["2001:db8:6401::1/128", "2001:db8:6401::2/128"],
    //           7: [{8: 80}, {8: 443}, {8: 8080}], 10: [6], 14: 3600}]}}
    let request = hex("a1 01 a1 02 81 a4 \
         06 82 74 323030313a6462383a363430313a3a312f313238 \
               74 323030313a6462383a363430313a3a322f313238 \
         07 83 a1 08 1850 a1 08 1901bb a1 08 191f90 \
         0a 81 06 \
         0e 190e10");
    let mitigate = format!("{base}/mitigate/cuid={CUID}/mid=12332");
    let (log, code) = run(
        vec!["-m".into(), "put".into(), mitigate.clone()],
        Some(request.clone()),
    )
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("2.01"), "mitigation request: {log}");
    // go-dots reads {1: {2: [{5: mid, 14: lifetime}]}} from the 2.01.
    assert!(
        log.contains("<<a101a10281a20519302c0e190e10>>"),
        "the created reply names the mid: {log}"
    );

    // Efficacy update (If-Match empty, attack-status 2, lifetime 100).
    // {1: {2: [{6: [...], 7: [...], 10: [6], 14: 100, 29: 2}]}}
    let efficacy = hex("a1 01 a1 02 81 a5 \
         06 82 74 323030313a6462383a363430313a3a312f313238 \
               74 323030313a6462383a363430313a3a322f313238 \
         07 83 a1 08 1850 a1 08 1901bb a1 08 191f90 \
         0a 81 06 \
         0e 1864 \
         181d 02");
    let (log, code) = run(
        vec![
            "-m".into(),
            "put".into(),
            "-O".into(),
            "1,".into(),
            mitigate.clone(),
        ],
        Some(efficacy.clone()),
    )
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("2.04"), "efficacy update: {log}");
    // The same for a mid the server does not hold: no response (RFC 9132 §4.4.3), but
    // the CON is acknowledged, so go-dots' libcoap stops retransmitting.
    let (log, _) = run(
        vec![
            "-v".into(),
            "7".into(),
            "-B".into(),
            "2".into(),
            "-m".into(),
            "put".into(),
            "-O".into(),
            "1,".into(),
            format!("{base}/mitigate/cuid={CUID}/mid=99"),
        ],
        Some(efficacy),
    )
    .await
    .unwrap();
    assert!(log.contains("t:ACK c:0.00"), "an empty ACK: {log}");

    // Heartbeat: {49: {51: false}} (go-dots' heartbeat task, no cuid or mid in the path).
    let (log, code) = run(
        vec!["-m".into(), "put".into(), format!("{base}/hb")],
        Some(hex("a1 1831 a1 1833 f4")),
    )
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("2.04"), "heartbeat: {log}");

    // Telemetry setup, go-dots' sampleTelemetryConfiguration.json: measurement-interval
    // week (6), measurement-sample 5-minutes (5), percentiles 5.00 / 65.00 / 95.00 as go-dots'
    // decimal encoder writes them (4([0, 5]) ...), notify interval 1, packet-ps on.
    // {203: {129: [{175: {182: 6, 183: 5, 130: 4([0, 5]), 131: 4([0, 65]),
    //                     132: 4([0, 95]), 180: 1, 133: [{134: 1, 135: true}]}}]}}
    let tm_config = hex("a1 18cb a1 1881 81 a1 18af a7 \
         18b6 06  18b7 05 \
         1882 c4 82 00 05  1883 c4 82 00 1841  1884 c4 82 00 185f \
         18b4 01  1885 81 a2 1886 01 1887 f5");
    let tm_setup = format!("{base}/tm-setup/cuid={CUID}");
    // A week in 5-minute samples is beyond what this server measures (its GET of tm-setup
    // says so in max-config-values): 4.22 naming the limit, as RFC 9244 §7.2 has it.
    let (log, code) = run(
        vec!["-m".into(), "put".into(), format!("{tm_setup}/tsid=1")],
        Some(tm_config),
    )
    .await
    .unwrap();
    assert_eq!(
        code.as_deref(),
        Some("4.22"),
        "telemetry configuration: {log}"
    );
    assert!(log.contains("at most an hour"), "the limit is named: {log}");
    // The same body within those limits (hour (4) in minutes (4)) is taken.
    let tm_config = hex("a1 18cb a1 1881 81 a1 18af a7 \
         18b6 04  18b7 04 \
         1882 c4 82 00 05  1883 c4 82 00 1841  1884 c4 82 00 185f \
         18b4 01  1885 81 a2 1886 01 1887 f5");
    let (log, code) = run(
        vec!["-m".into(), "put".into(), format!("{tm_setup}/tsid=1")],
        Some(tm_config),
    )
    .await
    .unwrap();
    assert_eq!(
        code.as_deref(),
        Some("2.01"),
        "telemetry configuration: {log}"
    );
    // Its baseline, sampleBaseline.json with a target of this client's:
    // {203: {129: [{174: [{163: 1, 6: ["2001:db8:6401::10/128"],
    //                      139: [{134: 2, 143: 50}]}]}]}}
    let baseline = hex("a1 18cb a1 1881 81 a1 18ae 81 a3 \
         18a3 01 \
         06 81 75 323030313a6462383a363430313a3a31302f313238 \
         188b 81 a2 1886 02 188f 1832");
    let (log, code) = run(
        vec!["-m".into(), "put".into(), format!("{tm_setup}/tsid=2")],
        Some(baseline),
    )
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("2.01"), "telemetry baseline: {log}");
    let (log, code) = run(vec!["-m".into(), "get".into(), tm_setup], None)
        .await
        .unwrap();
    assert_eq!(
        code.as_deref(),
        Some("2.05"),
        "telemetry setup read back: {log}"
    );

    // Status GET with Q-Block2, and the withdrawal.
    let (log, code) = run(
        vec![
            "-m".into(),
            "get".into(),
            "-O".into(),
            "31,0x09".into(),
            mitigate.clone(),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("2.05"), "status: {log}");
    let (log, code) = run(vec!["-m".into(), "delete".into(), mitigate], None)
        .await
        .unwrap();
    assert_eq!(code.as_deref(), Some("2.02"), "withdrawal: {log}");
}
