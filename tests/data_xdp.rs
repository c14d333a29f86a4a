//! End to end: a DOTS client in one namespace creates ACLs over the data channel (HTTPS
//! with client certificates) on a DOTS server in another; the server's XDP filter drops
//! the matching traffic on the veth between them and the ACL statistics count it. An
//! `immediate` ACL works at once; an `activate-when-mitigating` one exactly while the
//! client has a mitigation (asked for over the signal channel); the pinned filter goes on
//! dropping while the agent is down and the restarted agent still knows the ACLs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use coap_lite::RequestType;
use dots_agent::af_packet::{FlowCount, FlowKey, PacketSocket};
use dots_agent::client::{code_text, ClientConfig, Session, TransportChoice};
use dots_agent::data::client::{request, HttpResponse};
use dots_agent::signal::message::{self, Lifetime, Scope};
use dots_e2e::dots::{http_get, in_ns, start_server};
use dots_e2e::{Lab, VethPair, SERVER_IP};
use dots_lab::packet::PacketSpec;
use dots_lab::trafficgen::socket::send_paced;

const D: &str = "/restconf/data/ietf-dots-data-channel:dots-data";

/// One data-channel request from namespace `ns`, retrying the connection while the
/// server starts (at most 10 s).
fn data(
    ns: &dots_e2e::Netns,
    cfg: &ClientConfig,
    method: &'static str,
    path: String,
    body: Option<String>,
) -> HttpResponse {
    let cfg = cfg.clone();
    in_ns(ns, move |rt| {
        rt.block_on(async {
            let server = format!("{SERVER_IP}:4443");
            for _ in 0..50 {
                match request(
                    &cfg,
                    &server,
                    method,
                    &path,
                    body.as_deref().map(str::as_bytes),
                )
                .await
                {
                    Ok(r) => return r,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            panic!("no answer from the data channel within 10 s");
        })
    })
}

/// A mitigation request (PUT, or DELETE to withdraw) for mid 1 over the signal channel.
fn signal(
    ns: &dots_e2e::Netns,
    cfg: &ClientConfig,
    method: RequestType,
    body: Option<Vec<u8>>,
) -> String {
    let cfg = cfg.clone();
    in_ns(ns, move |rt| {
        rt.block_on(async {
            let mut s = Session::connect(&cfg).await.unwrap();
            let path = vec![
                "mitigate".into(),
                format!("cuid={}", s.cuid()),
                "mid=1".into(),
            ];
            code_text(&s.request(method, &path, body, false).await.unwrap())
        })
    })
}

/// Sends `count` UDP packets from 192.0.2.77 (source port 4000) to 198.51.100.10 on each
/// destination port, and returns what arrived per destination port.
fn traffic(pair: &VethPair, ports: &[u16], count: u64) -> BTreeMap<u16, u64> {
    let b_if = pair.b_if.clone();
    let receiver = pair.b.run(move || {
        PacketSocket::open(&b_if)
            .unwrap()
            .count_flows(Duration::from_millis(1500))
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let a_if = pair.a_if.clone();
    let frames: Vec<Vec<u8>> = ports
        .iter()
        .map(|p| PacketSpec::udp("192.0.2.77", "198.51.100.10", 4000, *p).build())
        .collect();
    let total = count * ports.len() as u64;
    pair.a
        .run(move || {
            send_paced(
                &PacketSocket::open(&a_if).unwrap(),
                &frames,
                total,
                20_000,
                Duration::from_secs(5),
            )
            .unwrap()
        })
        .join()
        .unwrap();
    let got: BTreeMap<FlowKey, FlowCount> = receiver.join().unwrap();
    ports
        .iter()
        .map(|p| {
            let n = got
                .iter()
                .filter(|(k, _)| k.sport == 4000 && k.dport == *p)
                .map(|(_, v)| v.packets)
                .sum();
            (*p, n)
        })
        .collect()
}

fn acl(name: &str, activation: &str, port: u16) -> String {
    format!(
        r#"{{"ietf-dots-data-channel:acls": {{"acl": [{{
            "name": "{name}", "type": "ipv4-acl-type", "activation-type": "{activation}",
            "aces": {{"ace": [{{"name": "udp-{port}",
                "matches": {{"ipv4": {{"destination-ipv4-network": "198.51.100.0/24",
                                      "source-ipv4-network": "192.0.2.0/24"}},
                            "udp": {{"destination-port-range-or-operator": {{"operator": "eq", "port": {port}}}}}}},
                "actions": {{"forwarding": "drop"}}}}]}}}}]}}}}"#
    )
}

/// GET with curl (an independent HTTPS client, with client-a's certificate) from
/// namespace `ns`; returns the body as JSON.
fn curl_get(ns: &dots_e2e::Netns, dir: &Path, path: String) -> serde_json::Value {
    let dir = dir.to_path_buf();
    ns.run(move || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "10"])
            .arg("--cacert")
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("client-a.pem"))
            .arg("--key")
            .arg(dir.join("client-a.key"))
            .args(["--resolve", &format!("dots.example:4443:{SERVER_IP}")])
            .arg(format!("https://dots.example:4443{path}"))
            .output()
            .expect("running curl");
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON from curl")
    })
    .join()
    .unwrap()
}

/// matched-packets and matched-octets of the first ACE of an ACL.
fn statistics(r: &HttpResponse) -> (u64, u64) {
    let v = r.json().expect("a JSON body");
    let s = &v["ietf-dots-data-channel:acls"]["acl"][0]["aces"]["ace"][0]["statistics"];
    let n = |k: &str| {
        s[k].as_str()
            .and_then(|x| x.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (n("matched-packets"), n("matched-octets"))
}

#[test]
fn acls_from_the_data_channel_drive_the_xdp_filter() {
    let lab = Lab::new("dx");
    let (pair, dir) = (&lab.pair, &lab.dir);
    let config = lab.server_config(
        r#""198.51.100.0/24""#,
        "terminating_seconds = 0",
        &format!(
            "[data]\nlisten = [\"{SERVER_IP}:4443\"]\n[metrics]\nlisten = [\"127.0.0.1:9464\"]"
        ),
        "",
    );
    let (server, stop) = start_server(&pair.b, &config);
    let client = lab.client(TransportChoice::Tls);
    let cuid = dots_agent::data::client::cuid_of(&client).unwrap();
    let c = format!("{D}/dots-client={cuid}");

    let reg = format!(r#"{{"ietf-dots-data-channel:dots-client": [{{"cuid": "{cuid}"}}]}}"#);
    assert_eq!(
        data(&pair.a, &client, "POST", D.into(), Some(reg)).status,
        201
    );
    assert_eq!(
        traffic(pair, &[4444, 5555], 200),
        BTreeMap::from([(4444, 200), (5555, 200)])
    );

    // An immediate ACL drops UDP to port 4444 at once; port 5555 still passes.
    let r = data(
        &pair.a,
        &client,
        "POST",
        c.clone(),
        Some(acl("now", "immediate", 4444)),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        traffic(pair, &[4444, 5555], 300),
        BTreeMap::from([(4444, 0), (5555, 300)])
    );
    let (packets, octets) = statistics(&data(
        &pair.a,
        &client,
        "GET",
        format!("{c}/acls/acl=now"),
        None,
    ));
    // The same count reaches Prometheus as the ACL entry's series.
    let (code, metrics) = http_get(&pair.b, "127.0.0.1:9464", "/metrics".into()).expect("/metrics");
    assert_eq!(code, 200);
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("dots_acl_entry_matched_packets_total{")
                && l.contains("client=\"client-a\"")
        })
        .collect();
    assert!(
        series.iter().any(|l| l.ends_with(&format!(" {packets}"))),
        "ACL series in /metrics: {series:?}"
    );
    assert_eq!(packets, 300, "the ACE's XDP counter");
    let seen_by_curl = curl_get(
        &pair.a,
        dir.path(),
        format!("{c}/acls/acl=now?content=nonconfig"),
    );
    assert_eq!(
        seen_by_curl["ietf-dots-data-channel:acls"]["acl"][0]["aces"]["ace"][0]["statistics"]
            ["matched-packets"],
        "300"
    );
    assert!(octets >= 300 * 42, "{octets} octets");

    // An activate-when-mitigating ACL for port 5555: idle until a mitigation exists.
    let r = data(
        &pair.a,
        &client,
        "POST",
        c.clone(),
        Some(acl("later", "activate-when-mitigating", 5555)),
    );
    assert_eq!(r.status, 201);
    assert_eq!(traffic(pair, &[5555], 200), BTreeMap::from([(5555, 200)]));
    let scope = Scope::new(
        vec!["198.51.100.10/32".parse().unwrap()],
        Lifetime::Seconds(600),
    );
    assert_eq!(
        signal(
            &pair.a,
            &client,
            RequestType::Put,
            Some(message::encode_mitigation_request(&scope))
        ),
        "2.01"
    );
    assert_eq!(
        traffic(pair, &[4444, 5555], 200),
        BTreeMap::from([(4444, 0), (5555, 0)]),
        "both ACLs live inside the mitigation"
    );
    let (later, _) = statistics(&data(
        &pair.a,
        &client,
        "GET",
        format!("{c}/acls/acl=later"),
        None,
    ));
    assert_eq!(later, 200);
    assert_eq!(signal(&pair.a, &client, RequestType::Delete, None), "2.02");
    std::thread::sleep(Duration::from_millis(2500)); // the ticker ends it (terminating 0 s)
    assert_eq!(
        traffic(pair, &[4444, 5555], 200),
        BTreeMap::from([(4444, 0), (5555, 200)]),
        "the mitigation is gone: only the immediate ACL remains"
    );
    let (now, _) = statistics(&data(
        &pair.a,
        &client,
        "GET",
        format!("{c}/acls/acl=now"),
        None,
    ));
    assert_eq!(
        now,
        300 + 200 + 200,
        "counts from inside the ended mitigation are kept"
    );

    // The agent stops: the pinned filter keeps dropping; restarted, it knows the ACLs.
    let _ = stop.send(());
    server.join().unwrap().unwrap();
    assert_eq!(traffic(pair, &[4444], 100), BTreeMap::from([(4444, 0)]));
    let (server, stop) = start_server(&pair.b, &config);
    let r = data(&pair.a, &client, "GET", format!("{c}/acls/acl=now"), None);
    assert_eq!(r.status, 200);
    // The pinned baseline counted on while the agent was down; the counts from inside the
    // ended mitigation come from the store.
    assert_eq!(
        statistics(&r).0,
        300 + 200 + 200 + 100,
        "the counters went on"
    );
    assert_eq!(traffic(pair, &[4444], 100), BTreeMap::from([(4444, 0)]));

    // Deleting the ACL lets the traffic through again.
    assert_eq!(
        data(
            &pair.a,
            &client,
            "DELETE",
            format!("{c}/acls/acl=now"),
            None
        )
        .status,
        204
    );
    assert_eq!(traffic(pair, &[4444], 100), BTreeMap::from([(4444, 100)]));

    let _ = stop.send(());
    server.join().unwrap().unwrap();
}
