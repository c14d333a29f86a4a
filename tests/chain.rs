//! End to end, recursive signalling through three agents, each with its own role:
//! a customer's client asks its gateway (no datapath), which relays to the provider's
//! scrubber (a recursive server: XDP, and `[upstream]` with escalate = "always"), which
//! escalates to the upstream provider's scrubber (XDP). The attack crosses both filters:
//! the upstream one drops the UDP flood on port 9999 (its ACL for the provider), the
//! provider's drops the NTP reflection (amplification); the customer's status counts both.
//! The gateway restarts in the middle of the mitigation; the withdrawal goes through the
//! chain and the attack flows again. With escalate = "exceeded": escalated once the
//! measured attack exceeds the provider's capacity, or at once when the request itself
//! reports more (RFC 9244 total-attack-traffic), status 4 until upstream confirms.
//!
//! The network and the agents' configurations are the lab's (`dots-lab run
//! examples/scenarios/chain.toml`: dots-lab/src/lab/chain/net.rs), without the customer's
//! namespace; the gateway runs beside the provider here.
//!
//! ```text
//! inet 192.0.2.1 --veth-- 192.0.2.2 up (XDP) 203.0.113.1 --veth-- 203.0.113.2 prov (XDP)
//!                          upstream scrubber :4646               provider :4646,
//!                                                                gateway 127.0.0.1:4747
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use coap_lite::RequestType;
use dots_agent::af_packet::{FlowCount, FlowKey, PacketSocket};
use dots_agent::client::{code_text, ClientConfig, ClientTls, TransportChoice};
use dots_agent::signal::message::{self, Lifetime, Scope};
use dots_agent::signal::telemetry::{Stats, Unit};
use dots_e2e::dots::{ask_mid, start_server};
use dots_e2e::{Netns, PinRoot};
use dots_lab::lab::chain::net::{self, Configs};
use dots_lab::packet::PacketSpec;
use dots_lab::trafficgen::socket::send_paced;

struct Chain {
    inet: Netns,
    up: Netns,
    prov: Netns,
    dir: tempfile::TempDir,
    up_pins: PinRoot,
    prov_pins: PinRoot,
}

/// The upstream scrubber's policy for the provider: UDP to port 9999 is dropped.
const UPSTREAM_POLICY: &str =
    "countermeasures = {}\nacl = [{ name = \"udp-9999\", action = \"drop\", \
    matches = { protocol = 17, destination_port = { lower = 9999, upper = 9999 } } }]";
/// The provider's policy for the customer's gateway: reflection from well-known ports.
const PROVIDER_POLICY: &str = "countermeasures = { amplification = true }";

impl Chain {
    fn new() -> Chain {
        let (inet, up, prov) = (Netns::new("cha"), Netns::new("chu"), Netns::new("chp"));
        // The lab's chain network (dots-lab/src/lab/chain/net.rs) without the customer's
        // namespace: what the provider's filter lets through is counted on its ingress.
        net::wire(&inet.name, &up.name, &prov.name, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        dots_agent::pki::init(
            dir.path(),
            "dots.example",
            &[],
            &["client-a".into(), "gateway".into(), "provider".into()],
        )
        .unwrap();
        Chain {
            inet,
            up,
            prov,
            dir,
            up_pins: PinRoot::new("chu-pin"),
            prov_pins: PinRoot::new("chp-pin"),
        }
    }

    fn configs(&self) -> Configs<'static> {
        Configs {
            pki: "",
            server_name: "dots.example",
            customer: "client-a",
            terminating_seconds: 0,
        }
    }

    fn write(&self, name: &str, text: String) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn upstream_config(&self) -> PathBuf {
        let text = self.configs().upstream(&self.up_pins.0, UPSTREAM_POLICY);
        self.write("upstream", text)
    }

    /// `escalate`: the provider's escalate line(s) in `[upstream]`.
    fn provider_config(&self, escalate: &str) -> PathBuf {
        let text = self
            .configs()
            .provider(&self.prov_pins.0, escalate, PROVIDER_POLICY);
        self.write("provider", text)
    }

    fn gateway_config(&self) -> PathBuf {
        self.write("gateway", self.configs().gateway())
    }

    fn identity(&self, server: &str, who: &str) -> ClientConfig {
        let d = self.dir.path();
        ClientConfig {
            server: server.into(),
            transport: TransportChoice::Dtls,
            server_name: "dots.example".into(),
            tls: ClientTls {
                ca: d.join("ca.pem"),
                cert: d.join(format!("{who}.pem")),
                key: d.join(format!("{who}.key")),
            },
        }
    }

    /// NTP reflection (source port 123) and a UDP flood on port 9999, `each` of both, sent
    /// from the internet to the customer through the upstream scrubber; what reaches the
    /// provider's interface, by destination port.
    fn attack(&self, each: u64) -> BTreeMap<u16, u64> {
        let receiver = self.prov.run(|| {
            PacketSocket::open(net::PROV_IN)
                .unwrap()
                .count_flows(Duration::from_millis(2500))
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        self.inet
            .run(move || {
                let frames: Vec<Vec<u8>> = [(123, 4444), (5555, 9999)]
                    .into_iter()
                    .map(|(sport, dport)| {
                        let mut p = PacketSpec::udp("192.0.2.77", "198.51.100.10", sport, dport);
                        p.dst_mac = net::UP_IN_MAC;
                        p.build()
                    })
                    .collect();
                let sock = PacketSocket::open(net::INET_IF).unwrap();
                send_paced(&sock, &frames, 2 * each, 20_000, Duration::from_secs(5)).unwrap()
            })
            .join()
            .unwrap();
        let got: BTreeMap<FlowKey, FlowCount> = receiver.join().unwrap();
        let mut by_port = BTreeMap::from([(4444, 0), (9999, 0)]);
        for (k, v) in got {
            if k.dst.to_string() == "198.51.100.10" {
                *by_port.entry(k.dport).or_default() += v.packets;
            }
        }
        by_port
    }
}

/// (status, pkts-dropped) of mid `mid` of `who` at `server`, asked from namespace `ns`.
fn status(ns: &Netns, cfg: &ClientConfig, mid: u32) -> Option<(u64, u64)> {
    let r = ask_mid(ns, cfg, mid, RequestType::Get, None, false).ok()?;
    if code_text(&r) != "2.05" {
        return None;
    }
    let v = dots_agent::signal::diag::to_json(
        &dots_agent::signal::cbor::parse_response(&r.payload).ok()?,
    );
    let scope = &v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0];
    Some((scope["status"].as_u64()?, scope["pkts-dropped"].as_u64()?))
}

/// Asks until `ok`, at most 40 times, 250 ms apart; the last answer.
fn until(
    ns: &Netns,
    cfg: &ClientConfig,
    mid: u32,
    what: &str,
    ok: impl Fn(Option<(u64, u64)>) -> bool,
) -> Option<(u64, u64)> {
    until_within(ns, cfg, mid, what, 40, ok)
}

/// Asks until `ok`, at most `tries` times, 250 ms apart; the last answer.
fn until_within(
    ns: &Netns,
    cfg: &ClientConfig,
    mid: u32,
    what: &str,
    tries: u32,
    ok: impl Fn(Option<(u64, u64)>) -> bool,
) -> Option<(u64, u64)> {
    let mut last = None;
    for _ in 0..tries {
        last = status(ns, cfg, mid);
        if ok(last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what}: last answer {last:?}");
}

fn customer(ns: &Netns, cfg: &ClientConfig, method: RequestType) -> String {
    let scope = Scope::new(
        vec!["198.51.100.0/24".parse().unwrap()],
        Lifetime::Seconds(600),
    );
    customer_asks(ns, cfg, method, scope)
}

/// The customer's request for mid 1 with `scope` (PUT), or its withdrawal (DELETE).
fn customer_asks(ns: &Netns, cfg: &ClientConfig, method: RequestType, scope: Scope) -> String {
    let body = (method == RequestType::Put).then(|| message::encode_mitigation_request(&scope));
    code_text(&ask_mid(ns, cfg, 1, method, body, false).unwrap())
}

/// An agent started by `start_server`: its thread, and what stops it.
type Agent = (
    std::thread::JoinHandle<anyhow::Result<()>>,
    tokio::sync::oneshot::Sender<()>,
);

/// Stops the agents in this order, each ended cleanly before the next is told.
fn stop<const N: usize>(agents: [Agent; N]) {
    for (thread, stop) in agents {
        let _ = stop.send(());
        thread.join().unwrap().unwrap();
    }
}

#[test]
fn a_request_through_a_gateway_and_a_recursive_scrubber_is_dropped_at_both() {
    let chain = Chain::new();
    assert_eq!(
        chain.attack(200),
        BTreeMap::from([(4444, 200), (9999, 200)]),
        "before any request everything arrives"
    );
    let (upstream, stop_up) = start_server(&chain.up, &chain.upstream_config());
    let config = chain.provider_config("escalate = \"always\"");
    let (provider, stop_prov) = start_server(&chain.prov, &config);
    let (gateway, stop_gw) = start_server(&chain.prov, &chain.gateway_config());

    let me = chain.identity("127.0.0.1:4747", "client-a");
    assert_eq!(customer(&chain.prov, &me, RequestType::Put), "2.01");
    // The request went through the chain: the provider holds the gateway's mid 1, the
    // upstream scrubber the provider's mid 1, both active.
    let as_gateway = chain.identity("203.0.113.2:4646", "gateway");
    let as_provider = chain.identity("203.0.113.1:4646", "provider");
    until(&chain.prov, &as_gateway, 1, "at the provider", |s| {
        s.is_some_and(|s| s.0 == 2)
    });
    until(&chain.prov, &as_provider, 1, "upstream", |s| {
        s.is_some_and(|s| s.0 == 2)
    });

    // Each filter drops its part.
    assert_eq!(chain.attack(300), BTreeMap::from([(4444, 0), (9999, 0)]));
    let up = until(&chain.prov, &as_provider, 1, "upstream drops", |s| {
        s.is_some_and(|s| s.1 == 300)
    });
    assert_eq!(
        up,
        Some((2, 300)),
        "the UDP flood, at the upstream scrubber"
    );
    // The provider's own status sums its drops (the NTP reflection) and upstream's.
    until(&chain.prov, &as_gateway, 1, "summed at the provider", |s| {
        s == Some((2, 600))
    });
    // The customer sees both, through its gateway.
    until(&chain.prov, &me, 1, "summed at the customer", |s| {
        s == Some((2, 600))
    });

    // The gateway restarts in the middle of the mitigation: the customer notices a pause.
    stop([(gateway, stop_gw)]);
    let (gateway, stop_gw) = start_server(&chain.prov, &chain.gateway_config());
    until(&chain.prov, &me, 1, "after the gateway's restart", |s| {
        s == Some((2, 600))
    });
    until(&chain.prov, &as_gateway, 1, "still one mitigation", |s| {
        s == Some((2, 600))
    });
    assert_eq!(
        status(&chain.prov, &as_gateway, 2),
        None,
        "not relayed twice"
    );

    // The withdrawal goes through the chain; the attack flows again.
    assert_eq!(customer(&chain.prov, &me, RequestType::Delete), "2.02");
    // Status 6: the terminating period (0 s here) is over and the rules are out.
    until(
        &chain.prov,
        &as_gateway,
        1,
        "withdrawn at the provider",
        |s| s.is_none_or(|s| s.0 == 6),
    );
    until(&chain.prov, &as_provider, 1, "withdrawn upstream", |s| {
        s.is_none_or(|s| s.0 == 6)
    });
    assert_eq!(
        chain.attack(200),
        BTreeMap::from([(4444, 200), (9999, 200)])
    );

    stop([
        (gateway, stop_gw),
        (provider, stop_prov),
        (upstream, stop_up),
    ]);
}

#[test]
fn a_recursive_scrubber_escalates_once_the_attack_exceeds_its_capacity() {
    let chain = Chain::new();
    let (upstream, stop_up) = start_server(&chain.up, &chain.upstream_config());
    let config = chain.provider_config("escalate = \"exceeded\"\ncapacity_pps = 100");
    let (provider, stop_prov) = start_server(&chain.prov, &config);
    let (gateway, stop_gw) = start_server(&chain.prov, &chain.gateway_config());
    let me = chain.identity("127.0.0.1:4747", "client-a");
    let as_provider = chain.identity("203.0.113.1:4646", "provider");
    assert_eq!(customer(&chain.prov, &me, RequestType::Put), "2.01");
    until(&chain.prov, &me, 1, "mitigated by the provider", |s| {
        s.is_some_and(|s| s.0 == 2)
    });
    assert_eq!(
        status(&chain.prov, &as_provider, 1),
        None,
        "not escalated yet"
    );

    // 600 packets within a second: above the provider's 100 packets/s. It drops the NTP
    // reflection itself, and escalates.
    assert_eq!(chain.attack(300), BTreeMap::from([(4444, 0), (9999, 300)]));
    until(&chain.prov, &as_provider, 1, "escalated", |s| {
        s.is_some_and(|s| s.0 == 2)
    });
    until(&chain.prov, &me, 1, "upstream confirmed", |s| {
        s == Some((2, 300))
    });

    // Now both drop, and the customer's status counts both.
    assert_eq!(chain.attack(300), BTreeMap::from([(4444, 0), (9999, 0)]));
    until(&chain.prov, &me, 1, "summed", |s| s == Some((2, 900)));

    stop([
        (gateway, stop_gw),
        (provider, stop_prov),
        (upstream, stop_up),
    ]);
}

#[test]
fn a_request_reporting_more_attack_than_the_scrubber_holds_is_escalated_at_once() {
    let chain = Chain::new();
    // The upstream scrubber is not there yet: whatever escalates waits for it.
    let config = chain.provider_config("escalate = \"exceeded\"\ncapacity_pps = 1000");
    let (provider, stop_prov) = start_server(&chain.prov, &config);
    let (gateway, stop_gw) = start_server(&chain.prov, &chain.gateway_config());
    let me = chain.identity("127.0.0.1:4747", "client-a");
    let as_provider = chain.identity("203.0.113.1:4646", "provider");
    // RFC 9244 total-attack-traffic in the request: 5 kilopackets/s now, above the
    // provider's 1,000 packets/s. No traffic is sent: the report alone decides.
    let mut scope = Scope::new(
        vec!["198.51.100.0/24".parse().unwrap()],
        Lifetime::Seconds(600),
    );
    scope.efficacy_attack = vec![(
        Unit::from_code(4).unwrap(),
        Stats {
            current: Some(5),
            ..Default::default()
        },
    )];
    assert_eq!(
        customer_asks(&chain.prov, &me, RequestType::Put, scope),
        "2.01"
    );
    // Attack-exceeded-capability (4) while upstream has not confirmed.
    until(
        &chain.prov,
        &me,
        1,
        "exceeded until upstream confirms",
        |s| s.is_some_and(|s| s.0 == 4),
    );
    let (upstream, stop_up) = start_server(&chain.up, &chain.upstream_config());
    // The provider's session upstream is retried with backoff (up to 8 s apart by now).
    until_within(&chain.prov, &as_provider, 1, "escalated", 80, |s| {
        s.is_some_and(|s| s.0 == 2)
    });
    until_within(&chain.prov, &me, 1, "upstream confirmed", 80, |s| {
        s.is_some_and(|s| s.0 == 2)
    });
    stop([
        (gateway, stop_gw),
        (provider, stop_prov),
        (upstream, stop_up),
    ]);
}
