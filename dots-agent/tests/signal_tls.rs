//! The signal channel over real TLS on loopback: our client against our server, with
//! certificates from `pki::init`, the engine on an in-memory datapath.

use std::path::Path;
use std::sync::Arc;

use coap_lite::{MessageClass, RequestType};
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session};
use dots_agent::datapath::{MemoryMitigator, Mitigator};
use dots_agent::server::{acceptor, config::Tls, serve_tls, SharedEngine};
use dots_agent::signal::engine::{ClientPolicy, Engine};
use dots_agent::signal::message::{self, Lifetime, Scope};
use tokio::sync::Mutex;

async fn start(dir: &Path) -> (String, SharedEngine) {
    dots_agent::pki::init(
        dir,
        "dots.example",
        &[],
        &["client-a".into(), "client-b".into()],
    )
    .unwrap();
    let policy = ClientPolicy {
        name: "client-a".into(),
        prefixes: vec!["2001:db8:6401::/48".parse().unwrap()],
        countermeasures: Default::default(),
        allow_indefinite: false,
        max_lifetime: 86_400,
    };
    let mitigator: Box<dyn Mitigator> = Box::new(MemoryMitigator::new());
    let engine: SharedEngine = Arc::new(Mutex::new(Engine::new(mitigator, vec![policy])));
    let tls = Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve_tls(
        listener,
        Arc::new(acceptor(&tls).unwrap()),
        engine.clone(),
    ));
    (addr, engine)
}

fn client(dir: &Path, addr: &str, name: &str, ca: &Path) -> ClientConfig {
    ClientConfig {
        server: addr.into(),
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: ca.into(),
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

#[tokio::test]
async fn mitigate_status_withdraw_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, engine) = start(dir.path()).await;
    let mut s = Session::connect(&client(
        dir.path(),
        &addr,
        "client-a",
        &dir.path().join("ca.pem"),
    ))
    .await
    .unwrap();
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
    assert_eq!(engine.lock().await.mitigator().installed().len(), 1);

    let r = s
        .request(RequestType::Get, &mitigate_path(&s, 123), None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.05");
    let status =
        dots_agent::signal::diag::to_json(&dots_agent::signal::cbor::parse(&r.payload).unwrap());
    assert_eq!(
        status["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["mid"],
        123
    );
    assert_eq!(
        status["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["status"],
        2
    );

    // Outside the client's prefixes: 4.03 with a diagnostic.
    let outside = message::encode_mitigation_request(&Scope::new(
        vec!["2001:db8:9999::/48".parse().unwrap()],
        Lifetime::Seconds(60),
    ));
    let r = s
        .request(
            RequestType::Put,
            &mitigate_path(&s, 124),
            Some(outside),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "4.03");
    assert!(String::from_utf8_lossy(&r.payload).contains("outside the prefixes"));

    let r = s
        .request(RequestType::Delete, &mitigate_path(&s, 123), None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.02");
    let r = s
        .request(RequestType::Get, &mitigate_path(&s, 123), None, false)
        .await
        .unwrap();
    let status =
        dots_agent::signal::diag::to_json(&dots_agent::signal::cbor::parse(&r.payload).unwrap());
    assert_eq!(
        status["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["status"], 5,
        "active but terminating"
    );
}

#[tokio::test]
async fn identities_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _engine) = start(dir.path()).await;
    // A valid certificate of a client the server does not serve: 4.01.
    let mut b = Session::connect(&client(
        dir.path(),
        &addr,
        "client-b",
        &dir.path().join("ca.pem"),
    ))
    .await
    .unwrap();
    let path = mitigate_path(&b, 1);
    let r = b
        .request(RequestType::Get, &path, None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "4.01");
    assert!(matches!(r.header.code, MessageClass::Response(_)));
    // A certificate from another CA: no session at all.
    let other = tempfile::tempdir().unwrap();
    dots_agent::pki::init(other.path(), "dots.example", &[], &["client-a".into()]).unwrap();
    let mut foreign = client(other.path(), &addr, "client-a", &dir.path().join("ca.pem"));
    foreign.tls.ca = dir.path().join("ca.pem");
    let res = async {
        let mut s = Session::connect(&foreign).await?;
        let p = mitigate_path(&s, 1);
        s.request(RequestType::Get, &p, None, false).await
    }
    .await;
    assert!(
        res.is_err(),
        "a foreign client certificate must not get a session"
    );
}
