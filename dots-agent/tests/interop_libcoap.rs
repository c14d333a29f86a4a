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
async fn many_mitigations(
    running: &dots_agent::app::Running,
    cuid: &str,
    mids: std::ops::Range<u32>,
    prefixes: u32,
) {
    let cuid = cuid.to_string();
    running
        .control
        .run(move |c| {
            for mid in mids {
                let targets = (0..prefixes)
                    .map(|i| {
                        format!("2001:db8:6401:{mid:x}::{:x}/128", i + 1)
                            .parse()
                            .unwrap()
                    })
                    .collect();
                let scope = dots_agent::signal::message::Scope::new(
                    targets,
                    dots_agent::signal::message::Lifetime::Seconds(3600),
                );
                c.engine
                    .put(
                        "client-a",
                        &cuid,
                        mid,
                        scope,
                        false,
                        dots_agent::clock::unix_now(),
                    )
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
        vec![
            "-m".into(),
            "get".into(),
            "-o".into(),
            out.display().to_string(),
            uri.clone(),
        ],
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
        let args = vec![
            "-s".into(),
            "8".into(),
            "-o".into(),
            out.display().to_string(),
            uri,
        ];
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
    assert_eq!(
        scopes(got.last().unwrap()),
        7,
        "the notification, whole: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("t:NON") && l.contains("Observe:") && l.contains("Block2:0/M/")),
        "the notification carried block 0: {log}"
    );
}

/// The code of the last response line of libcoap's log (after 2.31s and block fetches).
fn last_code(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("v:1 t:") && !l.contains(" c:PUT") && !l.contains(" c:GET"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("c:"))
                .map(String::from)
        })
        .rfind(|c| c.chars().next().is_some_and(|ch| ch.is_ascii_digit()))
}

/// RFC 7959 §2.5: libcoap sends a mitigation request of 80 targets (about 2 KB) in
/// Block1 blocks of 512 bytes with Size1 and Request-Tag; each but the last gets 2.31, the
/// last 2.01 once the whole body is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_puts_a_large_request_in_block1_blocks_over_dtls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (running, cuid) = two_clients(d).await;
    let port = running.signal[0].port();
    let targets = (0..80)
        .map(|i| format!("2001:db8:6401:1::{:x}/128", i + 1).parse().unwrap())
        .collect();
    let body = dots_agent::signal::message::encode_mitigation_request(
        &dots_agent::signal::message::Scope::new(
            targets,
            dots_agent::signal::message::Lifetime::Seconds(3600),
        ),
    );
    assert!(body.len() > 1800, "{} bytes", body.len());
    let last = (body.len() - 1) / 512;
    let file = d.join("big.cbor");
    std::fs::write(&file, &body).unwrap();
    let uri = format!("coaps://127.0.0.1:{port}/.well-known/dots/mitigate/cuid={cuid}/mid=1");
    let log = run_libcoap(
        d,
        "client-a",
        vec![
            "-m".into(),
            "put".into(),
            "-t".into(),
            "271".into(),
            "-b".into(),
            "512".into(),
            "-f".into(),
            file.display().to_string(),
            uri,
        ],
    )
    .await;
    // libcoap logs the first block it sends and the final answer (the 2.31 Continues in
    // between stay inside its block layer, which goes on only when it gets them).
    assert!(
        log.contains("Block1:0/M/512, Size1:"),
        "sent in blocks: {log}"
    );
    assert!(
        log.contains(&format!("Block1:{last}/_/512")),
        "the last block: {log}"
    );
    assert_eq!(last_code(&log).as_deref(), Some("2.01"), "{log}");
    let held = running
        .control
        .run(move |c| {
            c.engine
                .status(&cuid, Some(1), dots_agent::clock::unix_now())
                .map(|s| s[0].scope.target_prefix.len())
        })
        .await
        .unwrap();
    assert_eq!(held.ok(), Some(80), "the whole body was read");
}

/// A cuid the client chose (as go-dots' -cuid), not its key's hash: client-a's from its
/// first request; client-b using it gets 4.09 with conflict-cause 3 (RFC 9132 §4.4.1.3).
/// Also over DTLS with libcoap: a CoAP ping (-K, as keepalive) gets a Reset, and an
/// unrecognised critical option 4.02.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_chosen_cuid_ping_and_critical_options_over_dtls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (running, _) = two_clients(d).await;
    let port = running.signal[0].port();
    let base = format!("coaps://127.0.0.1:{port}/.well-known/dots");
    let put = |client: &'static str, prefix: &str, out: &Path| {
        let body = dots_agent::signal::message::encode_mitigation_request(
            &dots_agent::signal::message::Scope::new(
                vec![prefix.parse().unwrap()],
                dots_agent::signal::message::Lifetime::Seconds(3600),
            ),
        );
        let file = d.join(format!("{client}.cbor"));
        std::fs::write(&file, body).unwrap();
        run_libcoap(
            d,
            client,
            vec![
                "-m".into(),
                "put".into(),
                "-t".into(),
                "271".into(),
                "-f".into(),
                file.display().to_string(),
                "-o".into(),
                out.display().to_string(),
                format!("{base}/mitigate/cuid=chosen-by-operator-1/mid=5"),
            ],
        )
    };
    let a = put("client-a", "2001:db8:6401::/64", &d.join("a.out")).await;
    assert_eq!(code(&a).as_deref(), Some("2.01"), "{a}");
    let b = put("client-b", "2001:db8:6402::/64", &d.join("b.out")).await;
    assert_eq!(code(&b).as_deref(), Some("4.09"), "{b}");
    // {1: {2: [{17: {19: 3}}]}}: conflict-cause 3, as libcoap logs the body.
    assert!(
        b.contains("<<a101a10281a111a11303>>"),
        "conflict-cause 3: {b}"
    );
    let holder = running
        .control
        .run(|c| {
            c.engine
                .cuid_holder("chosen-by-operator-1")
                .map(String::from)
        })
        .await
        .unwrap();
    assert_eq!(holder.as_deref(), Some("client-a"));

    // Observe /config for 3 s with a ping after each second of silence.
    let log = run_libcoap(
        d,
        "client-a",
        vec![
            "-v".into(),
            "7".into(),
            "-K".into(),
            "1".into(),
            "-s".into(),
            "3".into(),
            format!("{base}/config"),
        ],
    )
    .await;
    assert!(
        log.contains("t:RST"),
        "the ping was answered with a Reset: {log}"
    );

    let log = run_libcoap(
        d,
        "client-a",
        vec!["-O".into(), "65001,x".into(), format!("{base}/config")],
    )
    .await;
    assert_eq!(code(&log).as_deref(), Some("4.02"), "{log}");
}

/// RFC 9177 Q-Block2 (option 31, critical) as go-dots' sample configuration asks for it:
/// libcoap in go-dots' block mode (COAP_BLOCK_USE_LIBCOAP | COAP_BLOCK_TRY_Q_BLOCK, -L 5),
/// once by itself and once with the Q-Block2 option go-dots adds to every GET (NUM 0, M,
/// SZX 1). This server does not implement Q-Block: it answers 4.02, and the client must
/// still get the whole status (in Block2 blocks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trying_q_block2_gets_the_whole_status_over_dtls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (running, cuid) = two_clients(d).await;
    let port = running.signal[0].port();
    many_mitigations(&running, &cuid, 1..7, 24).await;
    let uri = format!("coaps://127.0.0.1:{port}/.well-known/dots/mitigate/cuid={cuid}");
    for (i, extra) in [vec![], vec!["-O".to_string(), "31,0x09".to_string()]]
        .into_iter()
        .enumerate()
    {
        let out = d.join(format!("q{i}.cbor"));
        let mut args = vec![
            "-L".into(),
            "5".into(),
            "-o".into(),
            out.display().to_string(),
        ];
        args.extend(extra);
        args.push(uri.clone());
        let log = run_libcoap(d, "client-a", args).await;
        let got = outputs(&out);
        assert_eq!(
            got.iter().map(scopes).next_back(),
            Some(6),
            "run {i}: {log}"
        );
    }
}

/// RFC 9244 §7: our client sends /tm-setup as CON over DTLS (as /config), seen by
/// libcoap's coap-server-openssl, which logs every PDU it receives.
#[test]
fn our_client_sends_telemetry_setup_as_con_to_a_libcoap_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(
        d,
        "dots.example",
        &["127.0.0.1".parse().unwrap()],
        &["client-a".into()],
    )
    .unwrap();
    // coap-server takes UDP on the port and DTLS on the next one: find two free ones.
    let port = (0..50)
        .find_map(|_| {
            let a = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            let p = a.local_addr().ok()?.port();
            std::net::UdpSocket::bind(("127.0.0.1", p.checked_add(1)?)).ok()?;
            Some(p)
        })
        .expect("two free UDP ports");
    let log_path = d.join("coap-server.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let pki = |f: &str| d.join(f).display().to_string();
    let mut server = Command::new("coap-server-openssl")
        .args([
            "-A",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-v",
            "7",
            "-d",
            "10",
        ])
        .args([
            "-c",
            &pki("server.pem"),
            "-j",
            &pki("server.key"),
            "-C",
            &pki("ca.pem"),
        ])
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("coap-server-openssl (libcoap3-bin)");
    // Listening once its DTLS port is taken (at most 5 s).
    for _ in 0..50 {
        if std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let config = d.join("client.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"127.0.0.1:{}\"\nserver_name = \"dots.example\"\ntransport = \"dtls\"\n\
             [tls]\nca = \"ca.pem\"\ncert = \"client-a.pem\"\nkey = \"client-a.key\"\n",
            port + 1
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dots-agent"))
        .args([
            "client",
            "--config",
            config.to_str().unwrap(),
            "--timeout",
            "3",
        ])
        .args([
            "telemetry",
            "configure",
            "--tsid",
            "1",
            "--server-originated",
        ])
        .output()
        .unwrap();
    // The server's log is complete once it has exited.
    let _ = server.kill();
    let _ = server.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let put = log
        .lines()
        .find(|l| l.contains("c:PUT") && l.contains("tm-setup"))
        .unwrap_or_default();
    assert!(
        put.contains("t:CON"),
        "tm-setup is CON: {put}\n{log}\n{:?} {} {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
