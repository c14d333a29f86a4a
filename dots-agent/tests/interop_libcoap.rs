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
    let pki = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let out = Command::new("coap-client-openssl")
        .args([
            "-c",
            &pki("client-a.pem"),
            "-j",
            &pki("client-a.key"),
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
