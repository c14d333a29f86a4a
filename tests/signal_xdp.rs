//! End to end: a DOTS client in one namespace asks, over TLS, a DOTS server in another to
//! mitigate; the server's XDP filter drops the attack on the veth between them; the status
//! counts the drops; the filter keeps dropping while the server is down; the restarted
//! server knows the mitigation from its store; the withdrawal lets the attack through again.

use std::time::Duration;

use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, TransportChoice};
use dots_agent::signal::message::{self, Lifetime, Scope};
use dots_e2e::dots::{arrived, ask_mid, attack, start_server};
use dots_e2e::Lab;

/// Sends one request on mitigation 1 from namespace `ns` (connecting afresh, as a client
/// that comes and goes would) and returns the response.
fn ask(
    ns: &dots_e2e::Netns,
    cfg: &ClientConfig,
    method: RequestType,
    body: Option<Vec<u8>>,
) -> coap_lite::Packet {
    ask_mid(ns, cfg, 1, method, body, false).unwrap()
}

/// pkts-dropped of the first scope in a status response.
fn pkts_dropped(r: &coap_lite::Packet) -> Option<u64> {
    let v =
        dots_agent::signal::diag::to_json(&dots_agent::signal::cbor::parse(&r.payload).unwrap());
    v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["pkts-dropped"].as_u64()
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
    let lab = Lab::new("sx");
    let pair = &lab.pair;
    let config = lab.server_config(
        r#""198.51.100.0/24", "2001:db8:6401::/48""#,
        "terminating_seconds = 0",
        "",
        "",
    );
    let (server, stop) = start_server(&pair.b, &config);

    let client = lab.client(transport);

    // Before any request the attack gets through.
    assert_eq!(arrived(&attack(pair, 300, 20_000)), 300);

    let scope = Scope::new(
        vec!["198.51.100.0/24".parse().unwrap()],
        Lifetime::Seconds(600),
    );
    let body = message::encode_mitigation_request(&scope);
    let created = ask(&pair.a, &client, RequestType::Put, Some(body));
    assert_eq!(code_text(&created), "2.01");
    assert_eq!(
        arrived(&attack(pair, 500, 20_000)),
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
        arrived(&attack(pair, 300, 20_000)),
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
        arrived(&attack(pair, 300, 20_000)),
        300,
        "after the withdrawal the traffic flows again"
    );

    let _ = stop.send(());
    server.join().unwrap().unwrap();
}
