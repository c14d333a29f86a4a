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
    metrics: Vec<std::net::SocketAddr>,
    data: Vec<std::net::SocketAddr>,
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
            let addrs = (
                running.signal.clone(),
                running.metrics.clone(),
                running.data.clone(),
            );
            started_tx
                .send(Ok((running.control.clone(), addrs)))
                .unwrap();
            let _ = stopped.await;
            drop(running);
        });
    });
    let (control, (signal, metrics, data)) = started
        .recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Server {
        control,
        signal,
        metrics,
        data,
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
    client_as(dir, "client-a", addr, transport)
}

/// A client with the certificate `pki::init` made for `name`.
fn client_as(dir: &Path, name: &str, addr: &str, transport: TransportChoice) -> ClientConfig {
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

/// The cuid of the certificate `pki::init` made for `name` (what a gateway names as cdid).
fn cuid_of(d: &Path, name: &str) -> String {
    let pem = std::fs::read(d.join(format!("{name}.pem"))).unwrap();
    dots_agent::pki::cuid(&openssl::x509::X509::from_pem(&pem).unwrap()).unwrap()
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

/// Asks for a mitigation of `prefix` as `mid`: the response code.
async fn put(s: &mut Session, mid: u32, prefix: &str) -> String {
    let p = path(s, Some(mid));
    let r = s
        .request(RequestType::Put, &p, Some(put_body(prefix)), false)
        .await
        .unwrap();
    code_text(&r)
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
    assert_eq!(put(&mut s, 7, "2001:db8:6401:1::/64").await, "2.01");

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
    assert_eq!(
        put(&mut s, 8, "2001:db8:6401:8000::/64").await,
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
    assert_eq!(put(&mut s, 9, "2001:db8:6401:2::/64").await, "2.01");
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
/// started from (its own relayed request, with fewer hops left than it sent), which ends
/// the loop in 5.08 naming it at the second visit, and gw-b reports it. Each relay
/// decrements Hop-Limit (16, then 15), and a request that arrives with 1 left ends in 5.08
/// naming where it came from.
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
    assert_eq!(put(&mut s, 1, "2001:db8:6401:1::/64").await, "2.01");

    let mut refusals = Vec::new();
    for _ in 0..80 {
        refusals = relay(&gw_b, |r| r.refusals()).await;
        if !refusals.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let why = &refusals[0].2;
    assert!(
        why.starts_with("5.08: loop of DOTS gateways: "),
        "{refusals:?}"
    );
    for part in [
        format!("the DOTS gateway on {a} relayed mid 1 of client-a (2001:db8:6401:1::/64)"),
        format!("to the DOTS server at {b} with Hop-Limit 16"),
        "came back from gw-b with Hop-Limit 15".to_string(),
    ] {
        assert!(why.contains(&part), "{part:?} not in {why}");
    }
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

/// `mitigate/[cdid=..]/cuid=../[mid=..]`, as a gateway writes it.
fn cdid_path(cdid: Option<&str>, cuid: &str, mid: Option<u32>) -> Vec<String> {
    let mut p = vec!["mitigate".to_string()];
    p.extend(cdid.map(|c| format!("cdid={c}")));
    p.push(format!("cuid={cuid}"));
    p.extend(mid.map(|m| format!("mid={m}")));
    p
}

/// GET /metrics with curl (a real HTTP peer), its body.
fn scrape(addr: std::net::SocketAddr) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A server-domain gateway (`domain = "server"`) names each downstream client's domain
/// (cdid, the hash of its certificate) in what it relays; the upstream server, which trusts
/// it (`gateway = true`), keeps the cdid with the mitigation, shows it in /metrics, answers
/// a GET for one cdid with that domain's mitigations only, treats two cdids behind the one
/// gateway as two clients (an overlap is a 4.09, not a replacement; one cdid cannot change
/// or withdraw the other's), and refuses a cdid from a client it does not trust (4.03).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdid_from_a_trusted_gateway_and_from_an_untrusted_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = ["client-a", "client-b", "gateway"].map(String::from);
    dots_agent::pki::init(d, "dots.example", &[], &names).unwrap();
    let (a, b, gw_cuid) = (
        cuid_of(d, "client-a"),
        cuid_of(d, "client-b"),
        cuid_of(d, "gateway"),
    );
    let up = start(
        d,
        "upstream",
        "127.0.0.1:0",
        "[metrics]\nlisten = [\"127.0.0.1:0\"]\n\
         [[client]]\nname = \"gateway\"\ngateway = true\nprefixes = [\"2001:db8:6401::/48\"]\n\
         countermeasures = {}\n\
         [[client]]\nname = \"client-a\"\nprefixes = [\"2001:db8:6401::/48\"]\n\
         countermeasures = {}\n",
    )
    .await;
    let up_addr = up.signal[0].to_string();
    let gw = start(
        d,
        "gateway",
        "127.0.0.1:0",
        &format!(
            "{}[[client]]\nname = \"client-b\"\nprefixes = [\"2001:db8:6401::/48\"]\n\
             countermeasures = {{}}\n{}domain = \"server\"\n",
            GATEWAY_CLIENTS,
            gateway_config(&up_addr, "dtls").replace(GATEWAY_CLIENTS, "")
        ),
    )
    .await;
    let gw_addr = gw.signal[0].to_string();

    // client-a and client-b ask the gateway over DTLS; upstream gets both under the
    // gateway's cuid, each with its client's cdid.
    for (name, mid, prefix) in [
        ("client-a", 7, "2001:db8:6401:1::/64"),
        ("client-b", 3, "2001:db8:6401:2::/64"),
    ] {
        let mut s = Session::connect(&client_as(d, name, &gw_addr, TransportChoice::Dtls))
            .await
            .unwrap();
        assert_eq!(put(&mut s, mid, prefix).await, "2.01", "{name}");
    }
    wait_upstream(&up, &gw_cuid, "both relayed", |v| {
        v.len() == 2
            && v.iter()
                .all(|(_, st, _)| *st == Status::SuccessfullyMitigated)
    })
    .await;
    let c = gw_cuid.clone();
    let cdids = up
        .control
        .run(move |ctl| [1, 2].map(|mid| ctl.engine.cdid_of(&c, mid)))
        .await
        .unwrap();
    assert_eq!(cdids, [Some(a.clone()), Some(b.clone())]);
    let a_at_gateway = a.clone();
    assert_eq!(
        relay(&gw, move |r| r.cdid(&a_at_gateway, 7)).await,
        Some(a.clone()),
        "the gateway keeps the cdid with its mapping"
    );

    // /metrics names the cdid of each relayed mitigation.
    let text = scrape(up.metrics[0]);
    for (mid, cdid) in [(1, &a), (2, &b)] {
        let line =
            format!("dots_mitigation_cdid{{cdid=\"{cdid}\",client=\"gateway\",mid=\"{mid}\"}} 1");
        assert!(text.contains(&line), "{line} not in\n{text}");
    }

    // The gateway's own session to upstream, as a trusted gateway: a GET for one cdid reads
    // that domain's mitigations.
    let mut g = Session::connect(&client_as(d, "gateway", &up_addr, TransportChoice::Dtls))
        .await
        .unwrap();
    for (cdid, want) in [(&a, vec![(1, 2)]), (&b, vec![(2, 2)])] {
        let r = g
            .request(
                RequestType::Get,
                &cdid_path(Some(cdid), &gw_cuid, None),
                None,
                false,
            )
            .await
            .unwrap();
        assert_eq!(code_text(&r), "2.05");
        assert_eq!(statuses(&r), want, "GET for cdid {cdid}");
    }
    // Two cdids behind one gateway are two clients: an overlap is a conflict, not the
    // newer mid replacing the older as it would for one client.
    let put = |cdid: &'static str, mid: u32| {
        (
            cdid_path(Some(cdid), &gw_cuid, Some(mid)),
            put_body("2001:db8:6401:3::/64"),
        )
    };
    let (p, body) = put("domain-x", 10);
    let r = g
        .request(RequestType::Put, &p, Some(body), false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
    let (p, body) = put("domain-y", 11);
    let r = g
        .request(RequestType::Put, &p, Some(body), false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "4.09", "another domain's overlap");
    // ... and one cdid may not change or withdraw the other's mitigation.
    let (p, body) = put("domain-y", 10);
    let r = g
        .request(RequestType::Put, &p, Some(body), false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "4.03");
    let r = g
        .request(
            RequestType::Delete,
            &cdid_path(Some("domain-y"), &gw_cuid, Some(10)),
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "4.03");
    assert!(String::from_utf8_lossy(&r.payload).contains("cdid=domain-x"));
    let r = g
        .request(
            RequestType::Delete,
            &cdid_path(Some("domain-x"), &gw_cuid, Some(10)),
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.02");

    // A client not trusted as a gateway may not name a domain: 4.03, saying why.
    let mut s = Session::connect(&client_as(d, "client-a", &up_addr, TransportChoice::Tls))
        .await
        .unwrap();
    let r = s
        .request(
            RequestType::Put,
            &cdid_path(Some(&b), s.cuid(), Some(1)),
            Some(put_body("2001:db8:6401:4::/64")),
            false,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "4.03");
    let why = String::from_utf8(r.payload).unwrap();
    assert!(
        why.contains("client-a is not a trusted DOTS gateway"),
        "{why}"
    );
    assert_eq!(
        upstream_view(&up, s.cuid()).await,
        vec![],
        "nothing created"
    );
}

/// The conflict-information of the first scope of a 2.05, as JSON (Null without one).
fn conflict_of(r: &coap_lite::Packet) -> serde_json::Value {
    let v = dots_agent::signal::diag::to_json(
        &dots_agent::signal::cbor::parse_response(&r.payload).unwrap(),
    );
    v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["conflict-information"].clone()
}

/// Upstream refuses a relayed request with 4.09 (another client there holds the targets):
/// the downstream client, whose PUT the gateway had answered 2.01, reads status 7
/// (attack-mitigation-withdrawn) with upstream's conflict-information (conflict-status 1,
/// cause 1, the contested targets, the retry-timer), as RFC 9132 §4.4.1.3 notifies a
/// deactivated request; once the other client withdraws, the gateway's retry is accepted
/// and the status is upstream's again, without conflict-information.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_conflict_comes_back_to_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = ["client-a", "client-x", "gateway"].map(String::from);
    dots_agent::pki::init(d, "dots.example", &[], &names).unwrap();
    let up = start(
        d,
        "upstream",
        "127.0.0.1:0",
        &format!(
            "{UPSTREAM_CLIENTS}[[client]]\nname = \"client-x\"\n\
             prefixes = [\"2001:db8:6401::/48\"]\ncountermeasures = {{}}\n"
        ),
    )
    .await;
    let up_addr = up.signal[0].to_string();
    let gw = start(
        d,
        "gateway",
        "127.0.0.1:0",
        &gateway_config(&up_addr, "tls"),
    )
    .await;
    let gw_addr = gw.signal[0].to_string();

    // client-x holds the targets at the upstream server.
    let mut x = Session::connect(&client_as(d, "client-x", &up_addr, TransportChoice::Dtls))
        .await
        .unwrap();
    assert_eq!(put(&mut x, 1, "2001:db8:6401:1::/64").await, "2.01");

    let mut s = Session::connect(&client(d, &gw_addr, TransportChoice::Dtls))
        .await
        .unwrap();
    assert_eq!(
        put(&mut s, 4, "2001:db8:6401:1::/64").await,
        "2.01",
        "accepted by the gateway"
    );
    let p = path(&s, Some(4));
    let r = until(
        &mut s,
        p.clone(),
        "status 7 with upstream's conflict",
        |r| statuses(r) == [(4, 7)] && !conflict_of(r).is_null(),
    )
    .await;
    let info = conflict_of(&r);
    assert_eq!(info["conflict-status"], 1, "{info}");
    assert_eq!(info["conflict-cause"], 1, "{info}");
    assert_eq!(
        info["conflict-scope"]["target-prefix"],
        serde_json::json!(["2001:db8:6401:1::/64"]),
        "{info}"
    );
    let retry = info["retry-timer"].as_u64().unwrap_or(0);
    assert!((1..=600).contains(&retry), "{info}");

    // The other client withdraws: the gateway's retry is accepted upstream.
    let r = x
        .request(RequestType::Delete, &path(&x, Some(1)), None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.02");
    let mut last = None;
    for _ in 0..160 {
        let r = s.request(RequestType::Get, &p, None, false).await.unwrap();
        if statuses(&r) == [(4, 2)] && conflict_of(&r).is_null() {
            last = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        last.is_some(),
        "upstream did not accept the retry within 40 s"
    );
}

/// Traffic of `pps` packets/s now and at its peak (RFC 9244 units).
fn traffic(pps: u64) -> dots_agent::signal::telemetry::Traffic {
    use dots_agent::signal::telemetry::{Stats, Unit};
    let stats = Stats {
        peak: Some(pps),
        current: Some(pps),
        ..Default::default()
    };
    vec![(Unit::from_code(1).unwrap(), stats)]
}

/// Telemetry (RFC 9244) through a gateway, over DTLS: client-a's pre-or-ongoing-mitigation
/// report (its tmid 5, about its mid 7) is relayed under the gateway's cuid as the
/// gateway's tmid 1 with mid-list mapped to the gateway's mid 1; a gateway restart keeps
/// the mapping (stored); the client's efficacy update (attack-status and efficacy
/// telemetry) goes upstream as an efficacy update; deleting the report downstream deletes
/// it upstream and ends the mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_and_efficacy_updates_are_relayed() {
    use dots_agent::signal::telemetry::{encode_pre_mitigation, PreMitigation};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = ["client-a", "gateway"].map(String::from);
    dots_agent::pki::init(d, "dots.example", &[], &names).unwrap();
    let up = start(d, "upstream", "127.0.0.1:0", UPSTREAM_CLIENTS).await;
    let up_addr = up.signal[0].to_string();
    let gw = start(
        d,
        "gateway",
        "127.0.0.1:0",
        &gateway_config(&up_addr, "dtls"),
    )
    .await;
    let gw_addr = gw.signal[0].to_string();
    let mut s = Session::connect(&client(d, &gw_addr, TransportChoice::Dtls))
        .await
        .unwrap();
    let a = s.cuid().to_string();
    let prefix = "2001:db8:6401:1::/64";
    assert_eq!(put(&mut s, 7, prefix).await, "2.01");
    let gw_cuid = cuid_of(d, "gateway");
    wait_upstream(&up, &gw_cuid, "relayed", |v| v.len() == 1).await;

    let report = PreMitigation {
        targets: vec![prefix.parse().unwrap()],
        ports: Vec::new(),
        protocols: Vec::new(),
        aliases: Vec::new(),
        mids: vec![7],
        total: traffic(90_000),
        attack: traffic(80_000),
        talkers: Vec::new(),
    };
    let tm = |tmid: u32| {
        vec![
            "tm".to_string(),
            format!("cuid={a}"),
            format!("tmid={tmid}"),
        ]
    };
    let body = encode_pre_mitigation(&[(None, report)]);
    let r = s
        .request(RequestType::Put, &tm(5), Some(body), false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.04");
    let upstream_reports = || async {
        up.control
            .run(|c| {
                c.engine
                    .tm_get("gateway", None)
                    .map(|all| {
                        let tmids = all.iter().map(|(t, r)| (t.unwrap(), r.mids.clone()));
                        tmids.collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .await
            .unwrap()
    };
    let mut seen = Vec::new();
    for _ in 0..60 {
        seen = upstream_reports().await;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        seen,
        vec![(1, vec![1])],
        "tmid 1 upstream, about the gateway's mid 1"
    );

    // A restart of the gateway keeps the mapping.
    drop(s);
    drop(gw);
    let gw = start(d, "gateway", &gw_addr, &gateway_config(&up_addr, "dtls")).await;
    let c = a.clone();
    assert_eq!(
        relay(&gw, move |r| r.telemetry_upstream(&c, 5)).await,
        Some((1, None))
    );
    let mut s = Session::connect(&client(d, &gw_addr, TransportChoice::Dtls))
        .await
        .unwrap();

    // An efficacy update: the client still sees 5,000 packets/s of attack.
    let mut update = Scope::new(vec![prefix.parse().unwrap()], Lifetime::Seconds(600));
    update.attack_status = Some(1);
    update.efficacy_attack = traffic(5_000);
    let r = s
        .request(
            RequestType::Put,
            &path(&s, Some(7)),
            Some(message::encode_mitigation_request(&update)),
            true,
        )
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.04");
    let mut reported = false;
    for _ in 0..60 {
        reported = up
            .control
            .run(|c| {
                let views = c.engine.views(dots_agent::clock::unix_now());
                views
                    .iter()
                    .any(|v| v.client == "gateway" && v.mid == 1 && !v.client_attack.is_empty())
            })
            .await
            .unwrap();
        if reported {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(reported, "the efficacy update did not reach upstream");

    // Deleted downstream: deleted upstream, the mapping ends.
    let r = s
        .request(RequestType::Delete, &tm(5), None, false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.02");
    for _ in 0..60 {
        if upstream_reports().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(upstream_reports().await, vec![]);
    let c = a.clone();
    for _ in 0..60 {
        let c = c.clone();
        if relay(&gw, move |r| r.telemetry_upstream(&c, 5))
            .await
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(relay(&gw, move |r| r.telemetry_upstream(&c, 5)).await, None);
}

/// curl as `who` against the data channel at `addr`: (HTTP status, JSON body or Null).
fn curl(
    d: &Path,
    addr: std::net::SocketAddr,
    who: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let port = addr.port();
    let mut c = std::process::Command::new("curl");
    c.args(["-sS", "--max-time", "10", "-X", method])
        .arg("--cacert")
        .arg(d.join("ca.pem"))
        .arg("--cert")
        .arg(d.join(format!("{who}.pem")))
        .arg("--key")
        .arg(d.join(format!("{who}.key")))
        .args(["--resolve", &format!("dots.example:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        c.args([
            "-H",
            "Content-Type: application/yang-data+json",
            "--data-binary",
            b,
        ]);
    }
    let out = c
        .arg(format!("https://dots.example:{port}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (json, code) = text.rsplit_once('\n').expect("curl printed the status");
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

/// A gateway's data channel over HTTPS (curl): aliases are kept on the gateway and a
/// client's alias-name reaches upstream as the alias's targets; writing an ACL is answered
/// 501 naming what the gateway does not relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_aliases_and_answers_acls_501() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = ["client-a", "gateway"].map(String::from);
    dots_agent::pki::init(d, "dots.example", &[], &names).unwrap();
    let up = start(d, "upstream", "127.0.0.1:0", UPSTREAM_CLIENTS).await;
    let up_addr = up.signal[0].to_string();
    let config = format!(
        "{GATEWAY_CLIENTS}[data]\nlisten = [\"127.0.0.1:0\"]\n{}",
        gateway_config(&up_addr, "tls").replace(GATEWAY_CLIENTS, "")
    );
    let gw = start(d, "gateway", "127.0.0.1:0", &config).await;
    let (gw_addr, data) = (gw.signal[0].to_string(), gw.data[0]);
    let a = cuid_of(d, "client-a");
    const D: &str = "/restconf/data/ietf-dots-data-channel:dots-data";
    let c = format!("{D}/dots-client={a}");
    let register = format!(r#"{{"ietf-dots-data-channel:dots-client": [{{"cuid": "{a}"}}]}}"#);
    assert_eq!(curl(d, data, "client-a", "POST", D, Some(&register)).0, 201);
    let alias = r#"{"ietf-dots-data-channel:alias": [{"name": "web", "target-prefix": ["2001:db8:6401:5::/64"]}]}"#;
    let (status, _) = curl(
        d,
        data,
        "client-a",
        "PUT",
        &format!("{c}/aliases/alias=web"),
        Some(alias),
    );
    assert_eq!(status, 201);
    let acl = r#"{"ietf-dots-data-channel:acl": [{"name": "udp-9999", "type": "ipv6-acl-type",
        "aces": {"ace": [{"name": "a", "matches": {"udp": {"destination-port-range-or-operator":
        {"operator": "eq", "port": 9999}}}, "actions": {"forwarding": "drop"}}]}}]}"#;
    let (status, v) = curl(
        d,
        data,
        "client-a",
        "PUT",
        &format!("{c}/acls/acl=udp-9999"),
        Some(acl),
    );
    assert_eq!(status, 501, "{v}");
    let error = &v["ietf-restconf:errors"]["error"][0];
    assert_eq!(error["error-tag"], "operation-not-supported", "{v}");
    let message = error["error-message"].as_str().unwrap_or("");
    assert!(message.contains("does not relay data-channel ACLs"), "{v}");
    assert_eq!(
        curl(
            d,
            data,
            "client-a",
            "GET",
            &format!("{c}/acls/acl=udp-9999"),
            None
        )
        .0,
        404
    );

    // A mitigation request naming the alias: relayed with its targets.
    let mut s = Session::connect(&client(d, &gw_addr, TransportChoice::Dtls))
        .await
        .unwrap();
    let mut scope = Scope::new(Vec::new(), Lifetime::Seconds(600));
    scope.alias_name = vec!["web".into()];
    let body = message::encode_mitigation_request(&scope);
    let r = s
        .request(RequestType::Put, &path(&s, Some(2)), Some(body), false)
        .await
        .unwrap();
    assert_eq!(code_text(&r), "2.01");
    let gw_cuid = cuid_of(d, "gateway");
    wait_upstream(&up, &gw_cuid, "the alias's targets upstream", |v| {
        v == [(
            1,
            Status::SuccessfullyMitigated,
            "2001:db8:6401:5::/64".into(),
        )]
    })
    .await;
}
