//! Interoperability with an independent implementation: libcoap's coap-client-openssl
//! (Debian libcoap3-bin) against our server over coaps:// (DTLS) and coaps+tcp:// (TLS),
//! sending RFC 9132 Figure 8. libcoap exits 0 even on failure, so the response code is read
//! from its -v 6 log.

mod common;

use std::path::Path;
use std::process::Command;

use dots_agent::datapath::Mitigator;

use common::signal;

const FIG8: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rfc9132-fig8.cbor"
);

fn libcoap(dir: &Path, args: &[&str]) -> String {
    libcoap_as(dir, "client-a", args)
}

/// libcoap's client with the certificate of `client`; its log (-v 6) and output.
fn libcoap_as(dir: &Path, client: &str, args: &[&str]) -> String {
    let pki = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let out = Command::new("coap-client-openssl")
        .args([
            "-c",
            &pki(&format!("{client}.pem")),
            "-j",
            &pki(&format!("{client}.key")),
            "-C",
            &pki("ca.pem"),
            "-v",
            "6",
            "-B",
            "5",
        ])
        .args(args)
        .output()
        .expect("coap-client-openssl (Debian libcoap3-bin; scripts/setup.sh installs it)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The code of the response line libcoap logs, e.g. "2.01".
fn code(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| {
            l.contains("v:1 t:")
                && !l.contains(" c:PUT")
                && !l.contains(" c:GET")
                && !l.contains(" c:DELETE")
        })
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("c:"))
                .map(String::from)
        })
        .find(|c| c.chars().next().is_some_and(|ch| ch.is_ascii_digit()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_client_speaks_to_our_server_over_dtls_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    dots_agent::pki::init(
        &d,
        "dots.example",
        &["127.0.0.1".parse().unwrap()],
        &["client-a".into()],
    )
    .unwrap();
    let cert =
        openssl::x509::X509::from_pem(&std::fs::read(d.join("client-a.pem")).unwrap()).unwrap();
    let cuid = dots_agent::pki::cuid(&cert).unwrap();
    let running = signal::server_for_client_a(&d, 0).await;
    let port = running.signal[0].port();
    let engine = running.control.clone();

    for (scheme, mid) in [("coaps", 100), ("coaps+tcp", 200)] {
        let base = format!("{scheme}://127.0.0.1:{port}/.well-known/dots/mitigate/cuid={cuid}");
        let run = |args: Vec<String>| {
            let d = d.clone();
            tokio::task::spawn_blocking(move || {
                libcoap(&d, &args.iter().map(|s| s.as_str()).collect::<Vec<_>>())
            })
        };
        let put = run(vec![
            "-m".into(),
            "put".into(),
            "-t".into(),
            "271".into(),
            "-f".into(),
            FIG8.into(),
            format!("{base}/mid={mid}"),
        ])
        .await
        .unwrap();
        assert_eq!(code(&put).as_deref(), Some("2.01"), "{scheme}: {put}");
        let created = format!(
            "a101a10281a205{}0e190e10",
            if mid < 24 {
                format!("{mid:02x}")
            } else {
                format!("18{mid:02x}")
            }
        );
        assert!(
            put.contains(&created),
            "{scheme}: the created reply names mid {mid}: {put}"
        );
        if scheme == "coaps" {
            assert!(
                put.contains("t:ACK c:2.01"),
                "over DTLS the response rides on the ACK: {put}"
            );
        }
        assert_eq!(
            engine
                .run(|c| c.engine.mitigator().installed().len())
                .await
                .unwrap(),
            1
        );

        let get = run(vec!["-m".into(), "get".into(), base.clone()])
            .await
            .unwrap();
        assert_eq!(code(&get).as_deref(), Some("2.05"), "{scheme}: {get}");

        let wrong = run(vec![
            "-m".into(),
            "put".into(),
            "-t".into(),
            "50".into(),
            "-f".into(),
            FIG8.into(),
            format!("{base}/mid={}", mid + 1),
        ])
        .await
        .unwrap();
        assert_eq!(code(&wrong).as_deref(), Some("4.15"), "{scheme}: {wrong}");

        let del = run(vec![
            "-m".into(),
            "delete".into(),
            format!("{base}/mid={mid}"),
        ])
        .await
        .unwrap();
        assert_eq!(code(&del).as_deref(), Some("2.02"), "{scheme}: {del}");
        // Terminating period 0: the next tick ends it.
        engine.run(|c| c.engine.tick(u64::MAX / 2)).await.unwrap();
        assert!(engine
            .run(|c| c.engine.mitigator().installed().is_empty())
            .await
            .unwrap());
    }
}

/// libcoap run on a blocking thread (it blocks until its -B or -s bound).
async fn run_libcoap(dir: &Path, client: &str, args: Vec<String>) -> String {
    let (d, c) = (dir.to_path_buf(), client.to_string());
    tokio::task::spawn_blocking(move || {
        libcoap_as(&d, &c, &args.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

/// client-a and client-b, each with prefixes of its own.
const TWO_CLIENTS: &str = "[[client]]\nname = \"client-a\"\nprefixes = [\"2001:db8:6401::/48\"]\n\
    countermeasures = {}\n[[client]]\nname = \"client-b\"\nprefixes = [\"2001:db8:6402::/48\"]\n\
    countermeasures = {}\n";

/// A server for client-a and client-b on loopback, and client-a's cuid.
async fn two_clients(d: &Path) -> (dots_agent::app::Running, String) {
    dots_agent::pki::init(
        d,
        "dots.example",
        &["127.0.0.1".parse().unwrap()],
        &["client-a".into(), "client-b".into()],
    )
    .unwrap();
    let cert =
        openssl::x509::X509::from_pem(&std::fs::read(d.join("client-a.pem")).unwrap()).unwrap();
    let cuid = dots_agent::pki::cuid(&cert).unwrap();
    let running = signal::server(d, "127.0.0.1:0", "", TWO_CLIENTS).await;
    (running, cuid)
}

/// Mitigations `mids` of client-a, each of `prefixes` /128 targets: a status far over
/// one datagram.
async fn many_mitigations(running: &dots_agent::app::Running, cuid: &str, mids: std::ops::Range<u32>, prefixes: u32) {
    let cuid = cuid.to_string();
    running
        .control
        .run(move |c| {
            for mid in mids {
                let targets = (0..prefixes)
                    .map(|i| format!("2001:db8:6401:{mid:x}::{:x}/128", i + 1).parse().unwrap())
                    .collect();
                let scope = dots_agent::signal::message::Scope::new(
                    targets,
                    dots_agent::signal::message::Lifetime::Seconds(3600),
                );
                c.engine
                    .put("client-a", &cuid, mid, scope, false, dots_agent::clock::unix_now())
                    .unwrap();
            }
        })
        .await
        .unwrap();
}

/// The CBOR items libcoap wrote with -o (one per response or notification, back to back),
/// as JSON with the YANG names.
fn outputs(path: &Path) -> Vec<serde_json::Value> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut rest = bytes.as_slice();
    let mut items = Vec::new();
    while !rest.is_empty() {
        let v: ciborium::value::Value = ciborium::de::from_reader(&mut rest).expect("CBOR");
        items.push(dots_agent::signal::diag::to_json(&v));
    }
    items
}

fn scopes(v: &serde_json::Value) -> usize {
    v["ietf-dots-signal-channel:mitigation-scope"]["scope"]
        .as_array()
        .map_or(0, |a| a.len())
}

/// RFC 9132 §4.4.2.2 / RFC 7959: a status of six mitigations (about 3.6 KB) reaches a
/// DTLS client in Block2 blocks that libcoap fetches and puts together; an Observe of it
/// gets the notification of a seventh the same way (block 0 in the notification, the rest
/// fetched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_gets_and_observes_a_large_status_in_blocks_over_dtls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (running, cuid) = two_clients(d).await;
    let port = running.signal[0].port();
    many_mitigations(&running, &cuid, 1..7, 24).await;
    let uri = format!("coaps://127.0.0.1:{port}/.well-known/dots/mitigate/cuid={cuid}");

    let out = d.join("get.cbor");
    let get = run_libcoap(
        d,
        "client-a",
        vec!["-m".into(), "get".into(), "-o".into(), out.display().to_string(), uri.clone()],
    )
    .await;
    assert!(get.contains("Block2:1/"), "fetched in blocks: {get}");
    let got = outputs(&out);
    assert_eq!(got.len(), 1, "{get}");
    assert_eq!(scopes(&got[0]), 6, "the whole body: {}", got[0]);
    assert_eq!(
        got[0]["ietf-dots-signal-channel:mitigation-scope"]["scope"][5]["target-prefix"]
            .as_array()
            .map(|a| a.len()),
        Some(24)
    );

    // Observe for at most 8 s; a seventh mitigation once the registration is answered.
    let out = d.join("observe.cbor");
    let observer = tokio::spawn({
        let d = d.to_path_buf();
        let args = vec!["-s".into(), "8".into(), "-o".into(), out.display().to_string(), uri];
        async move { run_libcoap(&d, "client-a", args).await }
    });
    for _ in 0..80 {
        if !outputs(&out).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(outputs(&out).len(), 1, "the registration's answer, whole");
    many_mitigations(&running, &cuid, 7..8, 24).await;
    let log = observer.await.unwrap();
    let got = outputs(&out);
    assert!(got.len() >= 2, "a notification: {log}");
    assert_eq!(scopes(got.last().unwrap()), 7, "the notification, whole: {log}");
    assert!(
        log.lines().any(|l| l.contains("t:NON") && l.contains("Observe:") && l.contains("Block2:0/M/")),
        "the notification carried block 0: {log}"
    );
}
