//! A DOTS gateway (`[upstream]` and no datapath) between a client and an upstream server,
//! all three on loopback over real DTLS and TLS, certificates from `pki::init`: the
//! client's request is relayed under the gateway's own cuid, upstream's status comes back
//! under the client's mid, a gateway restart keeps the mapping, the withdrawal reaches
//! upstream after the gateway's terminating period, an upstream refusal and the loss of the
//! upstream session show in the client's status and are retried.

mod common;

use std::path::Path;
use std::time::Duration;

use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, ClientTls, Session, TransportChoice};
use dots_agent::control::ControlHandle;
use dots_agent::server::ServerConfig;
use dots_agent::signal::message::{self, Lifetime, Scope, Status};
use dots_agent::upstream::relay::Relay;

/// The upstream server serves the gateway for part of client-a's prefix only: a target in
/// 2001:db8:6401:8000::/49 is refused there (4.03).
const UPSTREAM_CLIENTS: &str = "[[client]]\nname = \"gateway\"\n\
    prefixes = [\"2001:db8:6401::/49\"]\ncountermeasures = {}\n";
const GATEWAY_CLIENTS: &str = "[[client]]\nname = \"client-a\"\n\
    prefixes = [\"2001:db8:6401::/48\"]\ncountermeasures = {}\n";

/// A server on a thread and runtime of its own, so that stopping it ends every task that
/// holds its sockets (as a process exit would).
struct Server {
    control: ControlHandle,
    signal: Vec<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
    }
}

/// Writes `name.toml` in `dir` and starts that server on the in-memory datapath; its store
/// in `dir/state-name` (the same on a restart).
async fn start(dir: &Path, name: &str, listen: &str, rest: &str) -> Server {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[signal]\nlisten = [\"{listen}\"]\nterminating_seconds = 0\n\
             [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             [store]\ndir = \"state-{name}\"\n{rest}"
        ),
    )
    .unwrap();
    let config = ServerConfig::load(&path).unwrap();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let datapath = Box::new(dots_agent::datapath::MemoryMitigator::new());
            let running = dots_agent::app::start(&config, datapath).await;
            let running = match running {
                Ok(r) => r,
                Err(e) => return started_tx.send(Err(format!("{e:#}"))).unwrap(),
            };
            started_tx
                .send(Ok((running.control.clone(), running.signal.clone())))
                .unwrap();
            let _ = stopped.await;
            drop(running);
        });
    });
    let (control, signal) = started
        .recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Server {
        control,
        signal,
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn gateway_config(upstream: &str, transport: &str) -> String {
    format!(
        "{GATEWAY_CLIENTS}[upstream]\nserver = \"{upstream}\"\nserver_name = \"dots.example\"\n\
         ca = \"ca.pem\"\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\n\
         transport = \"{transport}\"\nterminating_seconds = 1\n"
    )
}

fn client(dir: &Path, addr: &str, transport: TransportChoice) -> ClientConfig {
    ClientConfig {
        server: addr.into(),
        transport,
        server_name: "dots.example".into(),
        tls: ClientTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("client-a.pem"),
            key: dir.join("client-a.key"),
        },
    }
}

fn path(s: &Session, mid: Option<u32>) -> Vec<String> {
    let mut p = vec!["mitigate".into(), format!("cuid={}", s.cuid())];
    p.extend(mid.map(|m| format!("mid={m}")));
    p
}

/// (status, pkts-dropped) of each scope of a 2.05, by mid.
fn statuses(r: &coap_lite::Packet) -> Vec<(u64, u64)> {
    let v = dots_agent::signal::diag::to_json(
        &dots_agent::signal::cbor::parse_response(&r.payload).unwrap(),
    );
    v["ietf-dots-signal-channel:mitigation-scope"]["scope"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["mid"].as_u64().unwrap(), s["status"].as_u64().unwrap()))
        .collect()
}

/// Asks until `ok` holds for the answer, at most 60 times 250 ms; the last answer.
async fn until(
    s: &mut Session,
    method_path: Vec<String>,
    what: &str,
    ok: impl Fn(&coap_lite::Packet) -> bool,
) -> coap_lite::Packet {
    for _ in 0..60 {
        let r = s
            .request(RequestType::Get, &method_path, None, false)
            .await
            .unwrap();
        if ok(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what}: not within 60 tries");
}

/// The upstream server's view of the gateway's mitigations: (mid, status, targets).
async fn upstream_view(up: &Server, cuid: &str) -> Vec<(u32, Status, String)> {
    let cuid = cuid.to_string();
    up.control
        .run(move |c| {
            c.engine
                .status(&cuid, None, dots_agent::clock::unix_now())
                .map(|all| {
                    all.into_iter()
                        .map(|m| {
                            let t = m.scope.target_prefix.iter().map(|p| p.to_string());
                            (m.mid, m.status, t.collect::<Vec<_>>().join(","))
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .await
        .unwrap()
}

async fn wait_upstream(
    up: &Server,
    cuid: &str,
    what: &str,
    ok: impl Fn(&[(u32, Status, String)]) -> bool,
) -> Vec<(u32, Status, String)> {
    for _ in 0..60 {
        let v = upstream_view(up, cuid).await;
        if ok(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what}: upstream has {:?}", upstream_view(up, cuid).await);
}

async fn relay<R: Send + 'static>(
    gw: &Server,
    f: impl FnOnce(&mut Relay) -> R + Send + 'static,
) -> R {
    gw.control
        .run(move |c| f(c.engine.escalation_mut::<Relay>().expect("a relay")))
        .await
        .unwrap()
}

fn put_body(prefix: &str) -> Vec<u8> {
    message::encode_mitigation_request(&Scope::new(
        vec![prefix.parse().unwrap()],
        Lifetime::Seconds(600),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_relays_over_dtls() {
    chain(TransportChoice::Dtls, "dtls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_relays_over_tls() {
    chain(TransportChoice::Tls, "tls").await;
}

async fn chain(transport: TransportChoice, upstream_transport: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(
        d,
        "dots.example",
        &[],
        &["client-a".into(), "gateway".into()],
    )
    .unwrap();
    let gw_cuid = dots_agent::pki::cuid(
        &openssl::x509::X509::from_pem(&std::fs::read(d.join("gateway.pem")).unwrap()).unwrap(),
    )
    .unwrap();
    let up = start(d, "upstream", "127.0.0.1:0", UPSTREAM_CLIENTS).await;
    let up_addr = up.signal[0].to_string();
    let gw = start(
        d,
        "gateway",
        "127.0.0.1:0",
        &gateway_config(&up_addr, upstream_transport),
    )
    .await;
    let gw_addr = gw.signal[0].to_string();

    let mut s = Session::connect(&client(d, &gw_addr, transport))
        .await
        .unwrap();
    let r = s
        .request(
            RequestType::Put,
            &path(&s, Some(7)),
            Some(put_body("2001:db8:6401:1::/64")),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");

    // Relayed under the gateway's cuid, as its mid 1.
    wait_upstream(&up, &gw_cuid, "relayed", |v| {
        v == [(
            1,
            Status::SuccessfullyMitigated,
            "2001:db8:6401:1::/64".into(),
        )]
    })
    .await;
    // Upstream's status comes back under the client's mid.
    let p = path(&s, Some(7));
    until(&mut s, p, "status 2 from upstream", |r| {
        code_text(r) == "2.05" && statuses(r) == [(7, 2)]
    })
    .await;

    // A gateway restart keeps the mapping: upstream still has one mitigation, mid 1; the
    // client connects again.
    drop(s);
    drop(gw);
    let gw = start(
        d,
        "gateway",
        &gw_addr,
        &gateway_config(&up_addr, upstream_transport),
    )
    .await;
    let a_cuid = s_cuid(d);
    assert_eq!(
        relay(&gw, move |r| r.upstream_mid(&a_cuid, 7)).await,
        Some(1)
    );
    let mut s = Session::connect(&client(d, &gw_addr, transport))
        .await
        .unwrap();
    let p = path(&s, Some(7));
    until(&mut s, p, "status 2 after the gateway's restart", |r| {
        code_text(r) == "2.05" && statuses(r) == [(7, 2)]
    })
    .await;
    assert_eq!(
        upstream_view(&up, &gw_cuid).await.len(),
        1,
        "not relayed twice"
    );

    // Upstream refuses a target outside what it serves the gateway: reported as status 4
    // (nobody mitigates it), the refusal named, tried again.
    let r = s
        .request(
            RequestType::Put,
            &path(&s, Some(8)),
            Some(put_body("2001:db8:6401:8000::/64")),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        code_text(&r),
        "2.01",
        "the gateway accepts what its client may ask"
    );
    let p = path(&s, Some(8));
    until(&mut s, p, "status 4 after upstream's refusal", |r| {
        statuses(r) == [(8, 4)]
    })
    .await;
    let cuid = s.cuid().to_string();
    let why = relay(&gw, move |r| r.problem(&cuid, 8)).await.unwrap();
    assert!(why.starts_with("4.03"), "{why}");

    // Withdrawal: upstream's copy is withdrawn after the gateway's terminating period.
    for mid in [7, 8] {
        let r = s
            .request(RequestType::Delete, &path(&s, Some(mid)), None, false)
            .await
            .unwrap();
        assert_eq!(code_text(&r), "2.02");
    }
    wait_upstream(&up, &gw_cuid, "withdrawn upstream", |v| {
        v.iter()
            .all(|(_, st, _)| *st != Status::SuccessfullyMitigated)
    })
    .await;
    let cuid = s.cuid().to_string();
    for _ in 0..60 {
        let c = cuid.clone();
        if relay(&gw, move |r| r.upstream_mid(&c, 7)).await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let c = cuid.clone();
    assert_eq!(
        relay(&gw, move |r| r.upstream_mid(&c, 7)).await,
        None,
        "mapping removed"
    );

    // The upstream server goes away: a relayed mitigation reports 4 and the session is
    // made again once it is back (its store kept the mitigation).
    let r = s
        .request(
            RequestType::Put,
            &path(&s, Some(9)),
            Some(put_body("2001:db8:6401:2::/64")),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
    let p = path(&s, Some(9));
    until(&mut s, p.clone(), "status 2", |r| statuses(r) == [(9, 2)]).await;
    drop(up);
    until(&mut s, p.clone(), "status 4 while upstream is gone", |r| {
        statuses(r) == [(9, 4)]
    })
    .await;
    let c = cuid.clone();
    let why = relay(&gw, move |r| r.problem(&c, 9)).await.unwrap();
    assert!(why.contains("upstream session lost"), "{why}");
    let _up = start(d, "upstream", &up_addr, UPSTREAM_CLIENTS).await;
    until(&mut s, p, "status 2 once upstream is back", |r| {
        statuses(r) == [(9, 2)]
    })
    .await;
}

fn s_cuid(d: &Path) -> String {
    dots_agent::pki::cuid(
        &openssl::x509::X509::from_pem(&std::fs::read(d.join("client-a.pem")).unwrap()).unwrap(),
    )
    .unwrap()
}

/// A port free on 127.0.0.1 for both TCP and UDP (bound and released: the servers of a
/// loop must know each other's address before either starts).
fn free_port() -> u16 {
    for _ in 0..20 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// Two gateways, each the other's upstream: the request comes back to the gateway it
/// started from, which holds it for client-a already: a conflict (4.09) ends the loop at
/// the second visit, and gw-b reports it. Each relay decrements Hop-Limit (16, then 15),
/// and a request that arrives with 1 left ends in 5.08 naming where it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_of_gateways_ends() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dots_agent::pki::init(
        d,
        "dots.example",
        &[],
        &["client-a".into(), "gw-a".into(), "gw-b".into()],
    )
    .unwrap();
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let upstream = |to: &str, me: &str| {
        format!(
            "[upstream]\nserver = \"{to}\"\nserver_name = \"dots.example\"\nca = \"ca.pem\"\n\
             cert = \"{me}.pem\"\nkey = \"{me}.key\"\ntransport = \"tls\"\n"
        )
    };
    let client = |name: &str| {
        format!("[[client]]\nname = \"{name}\"\nprefixes = [\"2001:db8:6401::/48\"]\ncountermeasures = {{}}\n")
    };
    let gw_a = start(
        d,
        "gw-a",
        &a,
        &format!(
            "{}{}{}",
            client("client-a"),
            client("gw-b"),
            upstream(&b, "gw-a")
        ),
    )
    .await;
    let gw_b = start(
        d,
        "gw-b",
        &b,
        &format!("{}{}", client("gw-a"), upstream(&a, "gw-b")),
    )
    .await;

    let mut s = Session::connect(&client_at(d, &a)).await.unwrap();
    let r = s
        .request(
            RequestType::Put,
            &path(&s, Some(1)),
            Some(put_body("2001:db8:6401:1::/64")),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");

    let mut refusals = Vec::new();
    for _ in 0..80 {
        refusals = relay(&gw_b, |r| r.refusals()).await;
        if !refusals.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].2.starts_with("4.09"), "{refusals:?}");
    assert_eq!(relay(&gw_a, |r| r.relayed()).await, 1);
    assert_eq!(relay(&gw_b, |r| r.relayed()).await, 1);
    let a_cuid = s_cuid(d);
    assert_eq!(
        relay(&gw_a, move |r| r.hop_limit(&a_cuid, 1)).await,
        Some(16)
    );
    let (b_cuid, b_mid) = (refusals[0].0.clone(), refusals[0].1);
    assert_eq!(
        relay(&gw_b, move |r| r.hop_limit(&b_cuid, b_mid)).await,
        Some(15)
    );

    // What arrives with Hop-Limit 1 goes no further.
    let hop = [(coap_lite::CoapOption::Unknown(16), vec![1u8])];
    let r = s
        .request_with(
            RequestType::Put,
            &path(&s, Some(2)),
            Some(put_body("2001:db8:6401:2::/64")),
            false,
            &hop,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "5.08");
    let why = String::from_utf8(r.payload).unwrap();
    assert!(
        why.starts_with(&format!(
            "hop limit reached at the DOTS gateway on {a} on a request relayed by client-a"
        )),
        "{why}"
    );
    assert_eq!(relay(&gw_a, |r| r.relayed()).await, 1, "not relayed");
}

fn client_at(d: &Path, addr: &str) -> ClientConfig {
    client(d, addr, TransportChoice::Tls)
}
