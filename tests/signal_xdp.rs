//! End to end: a DOTS client in one namespace asks, over TLS, a DOTS server in another to
//! mitigate; the server's XDP filter drops the attack on the veth between them; the status
//! counts the drops; the filter keeps dropping while the server is down; the restarted
//! server knows the mitigation from its store; the withdrawal lets the attack through again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session, TransportChoice};
use dots_agent::packet::PacketSpec;
use dots_agent::server::ServerConfig;
use dots_agent::signal::message::{self, Lifetime, Scope};
use dots_agent::traffic::{count_received, send_paced, FlowCount, FlowKey, RawSocket};
use dots_e2e::{PinRoot, VethPair};

const SERVER_IP: &str = "192.0.2.2";

fn server_config(dir: &Path, pins: &Path, iface: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[signal]
listen = ["{SERVER_IP}:4646"]
terminating_seconds = 0
[tls]
ca = "ca.pem"
cert = "server.pem"
key = "server.key"
[store]
dir = "state"
[datapath]
interfaces = ["{iface}"]
xdp_mode = "native"
pin_root = "{}"
[[client]]
name = "client-a"
prefixes = ["198.51.100.0/24", "2001:db8:6401::/48"]
"#,
        pins.display()
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the server in namespace `ns`; it runs until the returned sender is used.
fn start_server(
    ns: &dots_e2e::Netns,
    config: &Path,
) -> (
    std::thread::JoinHandle<anyhow::Result<()>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let cfg = ServerConfig::load(config).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = ns.run(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(dots_agent::server::run_until(cfg, async {
            let _ = stop_rx.await;
        }))
    });
    (handle, stop_tx)
}

/// Sends one request on mitigation 1 from namespace `ns` (connecting afresh, as a client
/// that comes and goes would) and returns the response.
fn ask(
    ns: &dots_e2e::Netns,
    cfg: &ClientConfig,
    method: RequestType,
    body: Option<Vec<u8>>,
) -> coap_lite::Packet {
    let cfg = cfg.clone();
    in_ns(ns, move |rt| {
        rt.block_on(async {
            let mut s = connect(&cfg).await;
            let path = vec![
                "mitigate".into(),
                format!("cuid={}", s.cuid()),
                "mid=1".into(),
            ];
            s.request(method, &path, body, false).await.unwrap()
        })
    })
}

/// pkts-dropped of the first scope in a status response.
fn pkts_dropped(r: &coap_lite::Packet) -> Option<u64> {
    let v =
        dots_agent::signal::diag::to_json(&dots_agent::signal::cbor::parse(&r.payload).unwrap());
    v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["pkts-dropped"].as_u64()
}

/// Connects, retrying while the server is still starting (loading its XDP program).
async fn connect(cfg: &ClientConfig) -> Session {
    for _ in 0..50 {
        if let Ok(s) = Session::connect(cfg).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no connection to the server within 10 s");
}

/// Runs `f` with a tokio runtime on a thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &dots_e2e::Netns,
    f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
) -> T {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        f(&rt)
    })
    .join()
    .expect("namespace thread")
}

fn attack(pair: &VethPair, count: u64) -> BTreeMap<FlowKey, FlowCount> {
    let b_if = pair.b_if.clone();
    let receiver = pair.b.run(move || {
        count_received(
            &RawSocket::bind(&b_if).unwrap(),
            Duration::from_millis(1500),
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let a_if = pair.a_if.clone();
    pair.a
        .run(move || {
            let frames = vec![PacketSpec::udp("192.0.2.77", "198.51.100.10", 123, 4444).build()];
            send_paced(
                &RawSocket::bind(&a_if).unwrap(),
                &frames,
                count,
                20_000,
                Duration::from_secs(5),
            )
            .unwrap()
        })
        .join()
        .unwrap();
    receiver.join().unwrap()
}

fn arrived(c: &BTreeMap<FlowKey, FlowCount>) -> u64 {
    c.iter()
        .filter(|(k, _)| k.sport == 123)
        .map(|(_, v)| v.packets)
        .sum()
}

#[test]
fn a_dots_request_over_dtls_drives_the_xdp_filter() {
    scenario(TransportChoice::Dtls);
}

#[test]
fn a_dots_request_over_tls_drives_the_xdp_filter() {
    scenario(TransportChoice::Tls);
}

fn scenario(transport: TransportChoice) {
    let pair = VethPair::new("sx");
    pair.a
        .ip(&["addr", "add", "192.0.2.1/24", "dev", &pair.a_if]);
    pair.b
        .ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", &pair.b_if]);
    let dir = tempfile::tempdir().unwrap();
    let pins = PinRoot::new("sigx");
    dots_agent::pki::init(
        dir.path(),
        "dots.example",
        &[SERVER_IP.parse().unwrap()],
        &["client-a".into()],
    )
    .unwrap();
    let config = server_config(dir.path(), &pins.0, &pair.b_if);
    let (server, stop) = start_server(&pair.b, &config);

    let client = ClientConfig {
        server: format!("{SERVER_IP}:4646"),
        transport,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("client-a.pem"),
            key: dir.path().join("client-a.key"),
        },
    };

    // Before any request the attack gets through.
    assert_eq!(arrived(&attack(&pair, 300)), 300);

    let scope = Scope::new(
        vec!["198.51.100.0/24".parse().unwrap()],
        Lifetime::Seconds(600),
    );
    let body = message::encode_mitigation_request(&scope);
    let created = ask(&pair.a, &client, RequestType::Put, Some(body));
    assert_eq!(code_text(&created), "2.01");
    assert_eq!(
        arrived(&attack(&pair, 500)),
        0,
        "NTP reflection dropped by the amplification countermeasure"
    );

    let status = ask(&pair.a, &client, RequestType::Get, None);
    assert_eq!(
        pkts_dropped(&status),
        Some(500),
        "the status reports the XDP drop counter"
    );

    // The agent stops: the pinned filter goes on dropping.
    let _ = stop.send(());
    server.join().unwrap().unwrap();
    assert_eq!(
        arrived(&attack(&pair, 300)),
        0,
        "still filtering while the agent is down"
    );
    // It starts again and knows the mitigation (from its store); the counters went on.
    let (server, stop) = start_server(&pair.b, &config);
    let status = ask(&pair.a, &client, RequestType::Get, None);
    assert_eq!(
        (code_text(&status), pkts_dropped(&status)),
        ("2.05".to_string(), Some(800))
    );

    let withdrawn = code_text(&ask(&pair.a, &client, RequestType::Delete, None));
    assert_eq!(withdrawn, "2.02");
    std::thread::sleep(Duration::from_millis(2500)); // the ticker removes it (terminating 0 s)
    assert_eq!(
        arrived(&attack(&pair, 300)),
        300,
        "after the withdrawal the traffic flows again"
    );

    let _ = stop.send(());
    server.join().unwrap().unwrap();
}
