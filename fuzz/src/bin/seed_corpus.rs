//! Writes the seed corpora: real messages of every kind the targets read, made by the
//! project's own encoders and the RFC vectors. Usage: seed_corpus REPO FIG8 OUT, with REPO
//! the repository root (test fixtures), FIG8 the RFC 9132 figure 8 body (shared/vectors/)
//! and OUT the corpus root (one directory per target).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType};
use dots_agent::signal::coap_tcp;
use dots_agent::signal::message::{self, Lifetime, Redirect, Scope};
use dots_agent::signal::session_config::{self, SessionConfig};
use dots_agent::signal::telemetry::{
    self, PipeCapacity, PreMitigation, SetupItem, Stats, TelemetryConfig, Unit,
};
use dots_agent_fuzz::{encode_request, join, CUID};
use dots_lab::packet::{Fragment, PacketSpec};

const DOTS_DATA: &str = dots_agent::data::restconf::DOTS_DATA;

struct Out(PathBuf);

impl Out {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir).expect("creating the corpus directory");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("writing a seed");
    }
}

fn request(method: RequestType, path: &[&str], body: Option<&[u8]>, id: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(method);
    p.header.message_id = id;
    p.set_token(vec![0, 0, 0, id as u8]);
    for s in path {
        p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
    }
    if let Some(b) = body {
        p.set_content_format(ContentFormat::ApplicationDotsCbor);
        p.payload = b.to_vec();
    }
    p
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, repo, fig8, out] = args.as_slice() else {
        eprintln!("usage: seed_corpus REPO FIG8 OUT");
        std::process::exit(2);
    };
    let (repo, out) = (Path::new(repo), Out(PathBuf::from(out)));
    let fig8 = read(Path::new(fig8));
    let fixtures = repo.join("dots-agent/tests/fixtures");

    // Signal-channel bodies, from the RFC and from our encoders.
    let mut scope = Scope::new(
        vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8:6401::/48".parse().unwrap(),
        ],
        Lifetime::Seconds(3600),
    );
    scope.target_protocol = vec![6, 17];
    let efficacy = {
        let mut s = scope.clone();
        s.attack_status = Some(2);
        s
    };
    let stats = Stats {
        low: Some(10),
        mid: Some(50),
        high: Some(90),
        peak: Some(100),
        current: Some(70),
    };
    let unit = Unit::from_code(2).expect("unit code 2");
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("fig8", fig8.clone()),
        ("request", message::encode_mitigation_request(&scope)),
        ("efficacy", message::encode_mitigation_request(&efficacy)),
        ("heartbeat", message::encode_heartbeat(true)),
        (
            "redirect",
            message::encode_redirect(&Redirect {
                alt_server: "dots2.example".into(),
                alt_server_record: vec!["192.0.2.3".parse::<IpAddr>().unwrap()],
            }),
        ),
        ("config", session_config::encode(&SessionConfig::default())),
        (
            "config-put",
            session_config::encode_put(false, &[(33, 30), (34, 5)]),
        ),
        (
            "tm-config",
            telemetry::encode_setup_put(&SetupItem::Config(TelemetryConfig::default())),
        ),
        (
            "tm-pipe",
            telemetry::encode_setup_put(&SetupItem::Pipes(vec![PipeCapacity {
                link_id: "uplink".into(),
                unit,
                capacity: 1000,
            }])),
        ),
        (
            "tm-report",
            telemetry::encode_pre_mitigation(&[(
                None,
                PreMitigation {
                    targets: vec!["198.51.100.0/24".parse().unwrap()],
                    total: vec![(unit, stats)],
                    attack: vec![(unit, stats)],
                    talkers: Vec::new(),
                    ..PreMitigation::default()
                },
            )]),
        ),
    ];
    for (name, b) in &bodies {
        out.put("signal_bodies", name, b);
    }

    // Requests as a client sends them, alone and as a conversation.
    let cuid = format!("cuid={CUID}");
    let mitigate = [".well-known", "dots", "mitigate", cuid.as_str(), "mid=123"];
    let all = [".well-known", "dots", "mitigate", cuid.as_str()];
    let hb = [".well-known", "dots", "hb"];
    let config = [".well-known", "dots", "config", "sid=1"];
    let tm_setup = [".well-known", "dots", "tm-setup", cuid.as_str(), "tsid=1"];
    let tm = [".well-known", "dots", "tm", cuid.as_str(), "tmid=1"];
    let body = |n: &str| {
        bodies
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, b)| b.as_slice())
    };
    let mut observe = request(RequestType::Get, &all, None, 3);
    observe.set_observe_value(0);
    let mut block2 = request(RequestType::Get, &all, None, 4);
    block2.add_option(CoapOption::Block2, vec![0x02]);
    let messages = vec![
        ("put", request(RequestType::Put, &mitigate, Some(&fig8), 1)),
        ("get", request(RequestType::Get, &mitigate, None, 2)),
        ("observe", observe),
        ("block2", block2),
        (
            "efficacy",
            request(RequestType::Put, &mitigate, body("efficacy"), 5),
        ),
        ("hb", request(RequestType::Put, &hb, body("heartbeat"), 6)),
        (
            "config-get",
            request(RequestType::Get, &config[..3], None, 7),
        ),
        (
            "config-put",
            request(RequestType::Put, &config, body("config-put"), 8),
        ),
        (
            "tm-setup",
            request(RequestType::Put, &tm_setup, body("tm-pipe"), 9),
        ),
        ("tm", request(RequestType::Put, &tm, body("tm-report"), 10)),
        ("delete", request(RequestType::Delete, &mitigate, None, 11)),
    ];
    let datagrams: Vec<Vec<u8>> = messages
        .iter()
        .map(|(_, p)| p.to_bytes().expect("encoding a request"))
        .collect();
    for ((name, _), d) in messages.iter().zip(&datagrams) {
        out.put("coap_datagram", name, &join(&[d]));
    }
    out.put("coap_datagram", "conversation", &join(&datagrams));
    let mut ack = Packet::new();
    ack.header.set_type(MessageType::Acknowledgement);
    ack.header.message_id = 100;
    out.put(
        "coap_datagram",
        "empty-ack",
        &join(&[ack.to_bytes().unwrap()]),
    );

    let mut stream = vec![7u8];
    stream.extend(coap_tcp::csm());
    for (name, p) in &messages {
        let f = coap_tcp::encode(p).expect("framing a request");
        let mut one = vec![7u8];
        one.extend(coap_tcp::csm());
        one.extend(&f);
        out.put("coap_stream", name, &one);
        stream.extend(f);
    }
    stream.extend(coap_tcp::ping());
    out.put("coap_stream", "conversation", &stream);

    for (name, path) in [
        ("mitigate", &mitigate[..]),
        ("all", &all[..]),
        ("hb", &hb[..]),
        ("config", &config[..]),
        ("tm-setup", &tm_setup[..]),
        ("tm", &tm[..]),
    ] {
        out.put("uri_path", name, path.join("\0").as_bytes());
    }
    out.put(
        "uri_path",
        "cdid",
        b"\0dots\0mitigate\0cdid=x\0cuid=y\0mid=1",
    );

    // The data channel: the RFC 8783 examples of the tests, as a client's session.
    let rfc8783 = fixtures.join("rfc8783");
    let fixture = |n: &str| {
        String::from_utf8(read(&rfc8783.join(n)))
            .expect("UTF-8 fixture")
            .replace("dz6pHjaADkaFTbjr0JGBpw", "cuid-a")
            .into_bytes()
    };
    let c = format!("{DOTS_DATA}/dots-client=cuid-a");
    let requests = vec![
        encode_request("POST", DOTS_DATA, &fixture("register.json")),
        encode_request("POST", &c, &fixture("aliases.json")),
        encode_request("POST", &c, &fixture("acls.json")),
        encode_request(
            "PUT",
            &format!("{c}/acls/acl=x"),
            &fixture("acl-ipv6-udp.json"),
        ),
        encode_request("GET", &format!("{c}/acls"), b""),
        encode_request("GET", &format!("{c}/aliases?content=config"), b""),
        encode_request("GET", &format!("{DOTS_DATA}/capabilities"), b""),
        encode_request("POST", &c, &fixture("acl-unsupported-flow-label.json")),
        encode_request("DELETE", &c, b""),
    ];
    out.put("restconf", "session", &join(&requests));
    for (i, r) in requests.iter().enumerate() {
        out.put(
            "restconf",
            &format!("request-{i}"),
            &join(&[&requests[0], r]),
        );
    }

    // Frames for the XDP parser.
    let mut frames = vec![
        PacketSpec::udp("192.0.2.1", "198.51.100.7", 123, 4444),
        PacketSpec::tcp("2001:db8::1", "2001:db8:6401::1", 1000, 80, 0x02),
        PacketSpec::icmp("2001:db8::1", "2001:db8:6401::1", 128, 0),
        PacketSpec::icmp("192.0.2.1", "198.51.100.7", 8, 0),
    ];
    let mut tagged = PacketSpec::tcp("2001:db8::1", "2001:db8:6401::1", 1000, 80, 0x12);
    tagged.vlans = vec![100, 200];
    tagged.ipv6_ext_headers = 3;
    tagged.fragment = Some(Fragment {
        offset: 0,
        more: true,
    });
    frames.push(tagged);
    let mut options = PacketSpec::udp("192.0.2.1", "198.51.100.7", 53, 53);
    options.ipv4_options = vec![1; 8];
    options.fragment = Some(Fragment {
        offset: 100,
        more: false,
    });
    frames.push(options);
    for (i, f) in frames.iter().enumerate() {
        out.put("xdp_parse", &format!("frame-{i}"), &f.build());
    }
}
