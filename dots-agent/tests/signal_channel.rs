//! The signal channel over real DTLS and TLS on loopback: our client against our server,
//! with certificates from `pki::init`, the engine on an in-memory datapath.

mod common;

use std::path::Path;

use coap_lite::RequestType;
use dots_agent::app::Running;
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session, TransportChoice};
use dots_agent::control::ControlHandle;
use dots_agent::datapath::Mitigator;
use dots_agent::engine;
use dots_agent::signal::message::{self, Lifetime, Scope};

use common::signal;

/// A server on 127.0.0.1 (TLS on TCP and DTLS on UDP, one port number), for client-a; the
/// certificates (client-a and client-b) in `dir`.
async fn start(dir: &Path) -> (String, Running) {
    dots_agent::pki::init(
        dir,
        "dots.example",
        &[],
        &["client-a".into(), "client-b".into()],
    )
    .unwrap();
    let running = signal::server_for_client_a(dir, engine::TERMINATING_DEFAULT).await;
    (running.signal[0].to_string(), running)
}

/// How many rule sets the datapath holds.
async fn installed(control: &ControlHandle) -> usize {
    control
        .run(|c| c.engine.mitigator().installed().len())
        .await
        .unwrap()
}

fn client(dir: &Path, addr: &str, name: &str, transport: TransportChoice) -> ClientConfig {
    ClientConfig {
        server: addr.into(),
        transport,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        },
    }
}

fn mitigate_path(s: &Session, mid: u32) -> Vec<String> {
    vec![
        "mitigate".into(),
        format!("cuid={}", s.cuid()),
        format!("mid={mid}"),
    ]
}

/// PUT mitigate/cuid/mid of one target prefix for 60 s; the response.
async fn mitigate_prefix(s: &mut Session, mid: u32, prefix: &str) -> coap_lite::Packet {
    let body = message::encode_mitigation_request(&Scope::new(
        vec![prefix.parse().unwrap()],
        Lifetime::Seconds(60),
    ));
    let path = mitigate_path(s, mid);
    s.request(RequestType::Put, &path, Some(body), false)
        .await
        .unwrap()
}

fn scope_json(payload: &[u8]) -> serde_json::Value {
    let v = dots_agent::signal::diag::to_json(&dots_agent::signal::cbor::parse(payload).unwrap());
    v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0].clone()
}

async fn mitigate_status_withdraw(transport: TransportChoice, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (addr, running) = start(dir.path()).await;
    let engine = running.control.clone();
    let mut s = Session::connect(&client(dir.path(), &addr, "client-a", transport))
        .await
        .unwrap();
    assert_eq!(s.transport(), expect);
    let fig8 = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rfc9132-fig8.cbor"
    ))
    .unwrap();
    let r = s
        .request(RequestType::Put, &mitigate_path(&s, 123), Some(fig8), false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
    assert_eq!(
        r.payload,
        message::encode_created(123, Lifetime::Seconds(3600))
    );
    assert_eq!(installed(&engine).await, 1);

    let r = s
        .request(RequestType::Get, &mitigate_path(&s, 123), None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.05");
    assert_eq!(
        (
            scope_json(&r.payload)["mid"].as_u64(),
            scope_json(&r.payload)["status"].as_u64()
        ),
        (Some(123), Some(2))
    );

    // Outside the client's prefixes: 4.03 with a diagnostic.
    let r = mitigate_prefix(&mut s, 124, "2001:db8:9999::/48").await;
    assert_eq!(code_text(&r), "4.03");
    assert!(String::from_utf8_lossy(&r.payload).contains("outside the prefixes"));

    // Efficacy update (empty If-Match) refreshes the lifetime.
    let refreshed = message::encode_mitigation_request(&{
        let mut sc = message::decode_mitigation_request(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/rfc9132-fig8.cbor"
            ))
            .unwrap(),
        )
        .unwrap();
        sc.lifetime = Lifetime::Seconds(7200);
        sc
    });
    let r = s
        .request(
            RequestType::Put,
            &mitigate_path(&s, 123),
            Some(refreshed),
            true,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.04");

    let r = s
        .request(RequestType::Delete, &mitigate_path(&s, 123), None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.02");
    let r = s
        .request(RequestType::Get, &mitigate_path(&s, 123), None, false)
        .await
        .unwrap();
    assert_eq!(
        scope_json(&r.payload)["status"].as_u64(),
        Some(5),
        "active but terminating"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mitigate_status_withdraw_over_dtls() {
    mitigate_status_withdraw(TransportChoice::Dtls, "dtls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mitigate_status_withdraw_over_tls() {
    mitigate_status_withdraw(TransportChoice::Tls, "tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_prefers_dtls() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _engine) = start(dir.path()).await;
    let s = Session::connect(&client(
        dir.path(),
        &addr,
        "client-a",
        TransportChoice::Auto,
    ))
    .await
    .unwrap();
    assert_eq!(s.transport(), "dtls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_checked_on_both_transports() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _engine) = start(dir.path()).await;
    let other = tempfile::tempdir().unwrap();
    dots_agent::pki::init(other.path(), "dots.example", &[], &["client-a".into()]).unwrap();
    for transport in [TransportChoice::Dtls, TransportChoice::Tls] {
        // A valid certificate of a client the server does not serve: 4.01.
        let mut b = Session::connect(&client(dir.path(), &addr, "client-b", transport))
            .await
            .unwrap();
        let path = mitigate_path(&b, 1);
        let r = b
            .request(RequestType::Get, &path, None, false)
            .await
            .unwrap();
        assert_eq!(code_text(&r), "4.01", "{transport:?}");
        // A certificate from another CA: no session at all.
        let mut foreign = client(other.path(), &addr, "client-a", transport);
        foreign.tls.ca = dir.path().join("ca.pem");
        let res = async {
            let mut s = Session::connect(&foreign).await?;
            let p = mitigate_path(&s, 1);
            s.request(RequestType::Get, &p, None, false).await
        }
        .await;
        assert!(
            res.is_err(),
            "{transport:?}: a foreign client certificate must not get a session"
        );
    }
}

async fn observe_sees_the_withdrawal(transport: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _engine) = start(dir.path()).await;
    let cfg = client(dir.path(), &addr, "client-a", transport);
    let mut a = Session::connect(&cfg).await.unwrap();
    let fig8 = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rfc9132-fig8.cbor"
    ))
    .unwrap();
    let r = a
        .request(RequestType::Put, &mitigate_path(&a, 7), Some(fig8), false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
    let (first, token) = a.observe(&mitigate_path(&a, 7)).await.unwrap();
    assert_eq!(code_text(&first), "2.05");
    assert!(
        first.get_observe_value().is_some(),
        "the response confirms the registration"
    );
    // Another session of the same client withdraws: the observer is told, within seconds.
    let mut b = Session::connect(&cfg).await.unwrap();
    let r = b
        .request(RequestType::Delete, &mitigate_path(&b, 7), None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.02");
    let n = a
        .notification(&token, std::time::Duration::from_secs(5))
        .await
        .unwrap()
        .expect("a notification");
    assert_eq!(code_text(&n), "2.05");
    assert_eq!(
        scope_json(&n.payload)["status"].as_u64(),
        Some(5),
        "dots-client-withdrawn-mitigation"
    );
    assert!(n.get_observe_value().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_over_dtls() {
    observe_sees_the_withdrawal(TransportChoice::Dtls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_over_tls() {
    observe_sees_the_withdrawal(TransportChoice::Tls).await;
}

async fn the_server_sends_heartbeats(transport: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _engine) = start(dir.path()).await;
    let mut s = Session::connect(&client(dir.path(), &addr, "client-a", transport))
        .await
        .unwrap();
    // The shortest interval the server accepts, for the idle set (no mitigation is active).
    let body = dots_agent::signal::session_config::encode_put(true, &[(33, 15)]);
    let r = s
        .request(
            RequestType::Put,
            &["config".into(), "sid=1".into()],
            Some(body),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
    // Wait on a token that never comes, while the session answers what the server sends.
    let none = s
        .notification(b"none", std::time::Duration::from_secs(17))
        .await
        .unwrap();
    assert!(none.is_none());
    assert!(
        s.server_heartbeats() >= 1,
        "{transport:?}: a server heartbeat within 17 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sends_heartbeats_over_dtls() {
    the_server_sends_heartbeats(TransportChoice::Dtls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sends_heartbeats_over_tls() {
    the_server_sends_heartbeats(TransportChoice::Tls).await;
}

/// The client retransmits CON requests with the parameters negotiated for the session, and
/// switches to the mitigating set while it has a mitigation (RFC 9132 §4.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_uses_the_negotiated_session_parameters() {
    use dots_agent::signal::session_config;
    let dir = tempfile::tempdir().unwrap();
    let (addr, _engine) = start(dir.path()).await;
    let mut s = Session::connect(&client(
        dir.path(),
        &addr,
        "client-a",
        TransportChoice::Dtls,
    ))
    .await
    .unwrap();
    assert_eq!(
        session_config::retransmission(s.parameters(), 0),
        (std::time::Duration::from_secs(2), 3),
        "RFC defaults before anything is negotiated"
    );
    let idle = session_config::encode_put(true, &[(38, 5), (39, 100)]);
    let r = s
        .request(
            RequestType::Put,
            &["config".into(), "sid=1".into()],
            Some(idle),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
    let mitigating = session_config::encode_put(false, &[(38, 2)]);
    let r = s
        .request(
            RequestType::Put,
            &["config".into(), "sid=2".into()],
            Some(mitigating),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
    // A fresh session learns them from the server with a GET.
    let mut fresh = Session::connect(&client(
        dir.path(),
        &addr,
        "client-a",
        TransportChoice::Dtls,
    ))
    .await
    .unwrap();
    let r = fresh
        .request(RequestType::Get, &["config".into()], None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.05");
    for session in [&s, &fresh] {
        assert_eq!(
            session_config::retransmission(session.parameters(), 0),
            (std::time::Duration::from_secs(1), 5),
            "idle set"
        );
    }
    let r = mitigate_prefix(&mut fresh, 1, "2001:db8:6401::/64").await;
    assert_eq!(code_text(&r), "2.01");
    assert_eq!(
        session_config::retransmission(fresh.parameters(), 0),
        (std::time::Duration::from_secs(2), 2),
        "mitigating set while a mitigation is active"
    );
    let r = fresh
        .request(RequestType::Delete, &mitigate_path(&fresh, 1), None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.02");
    assert_eq!(session_config::retransmission(fresh.parameters(), 0).1, 5);
}

/// A server being drained redirects its clients (RFC 9132 §4.6): the client follows to the
/// alternate, its request lands there, and a redirect back is not followed (no loops).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_redirect_once() {
    use dots_agent::signal::message::Redirect;
    let dir = tempfile::tempdir().unwrap();
    let (alternate, alt_server) = start(dir.path()).await;
    let alt_engine = alt_server.control.clone();
    let port = alternate.rsplit_once(':').unwrap().1;
    // The drained server listens on another loopback address, same port.
    let to_alternate = Redirect {
        alt_server: "dots.example".into(),
        alt_server_record: vec!["127.0.0.1".parse().unwrap()],
    };
    let redirect = format!(
        "[signal.redirect]\nalt_server = \"{}\"\nalt_server_record = [\"{}\"]\nmax_age = 600",
        to_alternate.alt_server, to_alternate.alt_server_record[0]
    );
    let drained_server = signal::server(
        dir.path(),
        &format!("127.0.0.2:{port}"),
        &redirect,
        signal::CLIENT_A,
    )
    .await;
    let home = drained_server.signal[0].to_string();
    let drained = drained_server.control.clone();
    let mut s = Session::connect(&client(
        dir.path(),
        &home,
        "client-a",
        TransportChoice::Dtls,
    ))
    .await
    .unwrap();
    let r = mitigate_prefix(&mut s, 1, "2001:db8:6401::/64").await;
    assert_eq!(code_text(&r), "2.01", "created at the alternate");
    assert_eq!(s.server().0, alternate);
    assert_eq!(installed(&alt_engine).await, 1);
    let cuid = s.cuid().to_string();
    assert!(drained
        .run(move |c| c.engine.status(&cuid, None, 0).is_err())
        .await
        .unwrap());
    // The alternate now redirects back home: contacted a moment ago, so not followed.
    alt_engine
        .run(|c| {
            c.engine.set_redirect(Some((
                Redirect {
                    alt_server: "dots.example".into(),
                    alt_server_record: vec!["127.0.0.2".parse().unwrap()],
                },
                600,
            )))
        })
        .await
        .unwrap();
    let r = s
        .request(RequestType::Get, &mitigate_path(&s, 1), None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "5.03");
    assert_eq!(s.server().0, alternate);
    let back = message::decode_redirect(&r.payload).unwrap();
    assert_eq!(
        back.alt_server_record,
        vec!["127.0.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
}

/// RFC 9132 details over each transport: a withdrawal of an unknown mid is 2.02 (§4.4.4,
/// as go-dots answers), an id under a second spelling (`mid=01`, `mid=+1`) and an unknown
/// comprehension-required key (0, §6) are 4.00 with a diagnostic, and change nothing.
async fn protocol_details(transport: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let (addr, running) = start(dir.path()).await;
    let engine = running.control.clone();
    let mut s = Session::connect(&client(dir.path(), &addr, "client-a", transport))
        .await
        .unwrap();
    let r = s
        .request(RequestType::Delete, &mitigate_path(&s, 77), None, false)
        .await
        .unwrap();
    assert_eq!((code_text(&r), r.payload.len()), ("2.02".into(), 0));

    let scope = Scope::new(
        vec!["2001:db8:6401::/48".parse().unwrap()],
        Lifetime::Seconds(60),
    );
    let body = message::encode_mitigation_request(&scope);
    for spelling in ["mid=01", "mid=+1"] {
        let path = vec![
            "mitigate".to_string(),
            format!("cuid={}", s.cuid()),
            spelling.to_string(),
        ];
        let r = s
            .request(RequestType::Put, &path, Some(body.clone()), false)
            .await
            .unwrap();
        assert_eq!(code_text(&r), "4.00", "{spelling}");
        assert!(
            String::from_utf8_lossy(&r.payload).contains(spelling),
            "{spelling}: {}",
            String::from_utf8_lossy(&r.payload)
        );
    }

    // The same scope with key 0 added inside it.
    use ciborium::value::Value;
    let mut with_key_0 = dots_agent::signal::cbor::parse(&body).unwrap();
    let Value::Map(top) = &mut with_key_0 else {
        panic!("a map")
    };
    let Value::Map(ms) = &mut top[0].1 else {
        panic!("mitigation-scope")
    };
    let Value::Array(scopes) = &mut ms[0].1 else {
        panic!("scope list")
    };
    let Value::Map(first) = &mut scopes[0] else {
        panic!("a scope")
    };
    first.insert(0, (Value::Integer(0.into()), Value::Integer(1.into())));
    let r = s
        .request(
            RequestType::Put,
            &mitigate_path(&s, 1),
            Some(dots_agent::signal::cbor::encode(&with_key_0)),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "4.00");
    assert!(
        String::from_utf8_lossy(&r.payload).contains("comprehension-required key(s) [0]"),
        "{}",
        String::from_utf8_lossy(&r.payload)
    );
    assert_eq!(installed(&engine).await, 0, "nothing was installed");
    // The well-formed request is accepted.
    let r = s
        .request(RequestType::Put, &mitigate_path(&s, 1), Some(body), false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_details_over_dtls() {
    protocol_details(TransportChoice::Dtls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_details_over_tls() {
    protocol_details(TransportChoice::Tls).await;
}
