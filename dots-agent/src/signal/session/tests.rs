//! Sessions tested without sockets: a client session and a server session (the engine on
//! an in-memory datapath behind it) pass bytes to each other, and time is stepped by hand.

use std::time::{Duration, Instant};

use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType};

use super::*;
use crate::datapath::{MemoryMitigator, Mitigator};
use crate::engine::{ClientPolicy, Engine};
use crate::signal::handler::{self, Peer};
use crate::signal::message::{self, Lifetime, Scope};

const CUID: &str = "dz6pHjaADkaFTbjr0JGBpw";

/// The server's side: the engine behind the handler, for client-a.
struct Server {
    engine: Engine<MemoryMitigator>,
    interval: u64,
    missed: u32,
}

impl Service for Server {
    fn handle(&mut self, msg: &Packet, unix: u64) -> Reply {
        let peer = Peer {
            client: Some("client-a"),
            cuid: CUID,
        };
        handler::handle(&mut self.engine, &peer, msg, unix)
    }
    fn fingerprint(&mut self, obs: &Observation, unix: u64) -> Option<Vec<u8>> {
        handler::fingerprint(&self.engine, obs, unix)
    }
    fn notification(
        &mut self,
        obs: &Observation,
        last: &mut Vec<u8>,
        periodic: bool,
        sequence: u32,
        unix: u64,
    ) -> Option<(Packet, bool)> {
        handler::notification(&self.engine, obs, last, periodic, sequence, unix)
    }
    fn heartbeat_interval(&mut self) -> u64 {
        self.interval
    }
    fn heartbeat_missed(&mut self) {
        self.missed += 1;
    }
}

fn server() -> Server {
    Server {
        engine: Engine::new(
            MemoryMitigator::new(),
            vec![ClientPolicy::fixture("client-a", &["198.51.100.0/24"])],
        ),
        interval: 0,
        missed: 0,
    }
}

/// The client's side: 2.04 to the server's heartbeats.
#[derive(Default)]
struct Client {
    heartbeats: u32,
}

impl Service for Client {
    fn handle(&mut self, msg: &Packet, _unix: u64) -> Reply {
        self.heartbeats += 1;
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(ResponseType::Changed);
        p.set_token(msg.get_token().to_vec());
        Reply::Response(p)
    }
}

/// Two sessions joined in memory.
struct Pair {
    client: Session,
    server: Session,
    cs: Client,
    ss: Server,
    now: Now,
    /// Messages that went from the client to the server.
    sent: usize,
}

impl Pair {
    fn new(framing: Framing) -> Pair {
        let at = Instant::now();
        let mut p = Pair {
            client: Session::new(Role::Client, framing, at, 100),
            server: Session::new(Role::Server, framing, at, 5000),
            cs: Client::default(),
            ss: server(),
            now: Now { at, unix: 1000 },
            sent: 0,
        };
        let first = p.client.start();
        p.deliver_to_server(first);
        let first = p.server.start();
        p.deliver_to_client(first);
        p
    }

    fn deliver_to_server(&mut self, msgs: Vec<Vec<u8>>) {
        for m in msgs {
            self.sent += 1;
            let back = self.server.on_message(self.now, &m, &mut self.ss);
            self.deliver_to_client(back);
        }
    }

    fn deliver_to_client(&mut self, msgs: Vec<Vec<u8>>) {
        for m in msgs {
            let back = self.client.on_message(self.now, &m, &mut self.cs);
            self.deliver_to_server(back);
        }
    }

    /// A request from the client, carried until it is answered.
    fn request(&mut self, p: Packet, delivery: Delivery) -> Result<Packet, String> {
        let (token, out) = self.client.request(self.now, p, delivery);
        self.deliver_to_server(out);
        self.client.response(&token).expect("answered at once")
    }

    fn tick(&mut self, by: Duration) {
        self.now.at += by;
        self.now.unix += by.as_secs();
        let out = self.server.on_tick(self.now, &mut self.ss);
        self.deliver_to_client(out);
        let out = self.client.on_tick(self.now, &mut self.cs);
        self.deliver_to_server(out);
    }
}

fn get(path: &[&str]) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Get);
    for s in [".well-known", "dots"].iter().chain(path) {
        p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
    }
    p
}

fn put_mitigation(mid: u32, target: &str) -> Packet {
    let mut p = get(&["mitigate", &format!("cuid={CUID}"), &format!("mid={mid}")]);
    p.header.code = MessageClass::Request(RequestType::Put);
    p.set_content_format(ContentFormat::ApplicationDotsCbor);
    p.payload = message::encode_mitigation_request(&Scope::new(
        vec![target.parse().unwrap()],
        Lifetime::Seconds(3600),
    ));
    p
}

fn code(p: &Packet) -> String {
    let raw: u8 = p.header.code.into();
    format!("{}.{:02}", raw >> 5, raw & 0x1f)
}

const ONCE: Delivery = Delivery::Once {
    wait: Duration::from_secs(10),
};

#[test]
fn a_request_and_its_answer_in_both_framings() {
    for framing in [Framing::Datagram, Framing::Stream] {
        let mut pair = Pair::new(framing);
        let r = pair
            .request(put_mitigation(1, "198.51.100.1/32"), ONCE)
            .unwrap();
        assert_eq!(code(&r), "2.01", "{framing:?}");
        assert_eq!(pair.ss.engine.mitigator().installed().len(), 1);
        if framing == Framing::Datagram {
            assert_eq!(r.header.get_type(), MessageType::NonConfirmable);
        }
    }
}

#[test]
fn a_retransmitted_request_is_answered_again_not_processed_twice() {
    let mut server = Session::new(Role::Server, Framing::Datagram, Instant::now(), 1);
    let mut svc = server_with_interval(0);
    let now = Now {
        at: Instant::now(),
        unix: 0,
    };
    let mut p = put_mitigation(1, "198.51.100.1/32");
    p.header.set_type(MessageType::Confirmable);
    p.header.message_id = 4242;
    p.set_token(vec![7]);
    let bytes = p.to_bytes().unwrap();
    let first = server.on_message(now, &bytes, &mut svc);
    let again = server.on_message(now, &bytes, &mut svc);
    assert_eq!(first, again, "the same answer, a 2.01 twice, not a 2.04");
    let r = Packet::from_bytes(&first[0]).unwrap();
    assert_eq!(
        (code(&r), r.header.get_type(), r.header.message_id),
        ("2.01".to_string(), MessageType::Acknowledgement, 4242)
    );
    // A new message id is a new request: a refresh.
    p.header.message_id = 4243;
    let r = server.on_message(now, &p.to_bytes().unwrap(), &mut svc);
    assert_eq!(code(&Packet::from_bytes(&r[0]).unwrap()), "2.04");
}

fn server_with_interval(interval: u64) -> Server {
    Server {
        interval,
        ..server()
    }
}

#[test]
fn a_large_status_comes_in_blocks_and_is_put_together() {
    for framing in [Framing::Datagram, Framing::Stream] {
        let mut pair = Pair::new(framing);
        for mid in 1..=60u32 {
            let r = pair
                .request(put_mitigation(mid, &format!("198.51.100.{mid}/32")), ONCE)
                .unwrap();
            assert_eq!(code(&r), "2.01");
        }
        let before = pair.sent;
        let r = pair
            .request(get(&["mitigate", &format!("cuid={CUID}")]), ONCE)
            .unwrap();
        assert_eq!(code(&r), "2.05");
        let v = crate::signal::diag::to_json(&crate::signal::cbor::parse(&r.payload).unwrap());
        let scopes = v["ietf-dots-signal-channel:mitigation-scope"]["scope"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(scopes, 60, "{framing:?}: the whole body");
        assert!(r.get_first_option(CoapOption::Block2).is_none());
        match framing {
            // Over 1152 bytes: the server sent it in blocks the client asked for in turn.
            Framing::Datagram => assert!(pair.sent - before > 1, "{}", pair.sent - before),
            // Our client's CSM takes 64 KiB: one message.
            Framing::Stream => assert_eq!(pair.sent - before, 1),
        }
    }
}

#[test]
fn without_the_peers_csm_a_stream_uses_1152_bytes_and_blocks() {
    let at = Instant::now();
    let now = Now { at, unix: 1000 };
    let mut server = Session::new(Role::Server, Framing::Stream, at, 1);
    let mut svc = server_with_interval(0);
    for mid in 1..=60u32 {
        let p = put_mitigation(mid, &format!("198.51.100.{mid}/32"));
        server.on_message(now, &coap_tcp::encode(&p).unwrap(), &mut svc);
    }
    let mut g = get(&["mitigate", &format!("cuid={CUID}")]);
    g.set_token(vec![1]);
    let out = server.on_message(now, &coap_tcp::encode(&g).unwrap(), &mut svc);
    let Some(Ok(Some((coap_tcp::Frame::Message(r), _)))) = out.first().map(|b| coap_tcp::decode(b))
    else {
        panic!("a message")
    };
    let b = Block::of(&r, CoapOption::Block2).unwrap().unwrap();
    assert_eq!((b.num, b.more, b.size()), (0, true, 1024));
    assert!(r.get_first_option(CoapOption::ETag).is_some());
    assert!(r.get_first_option(CoapOption::Size2).is_some());
}

#[test]
fn heartbeats_go_out_on_the_clock_and_missing_answers_are_counted() {
    let mut pair = Pair::new(Framing::Datagram);
    pair.ss.interval = 15;
    pair.tick(Duration::from_secs(14));
    assert_eq!(pair.cs.heartbeats, 0);
    pair.tick(Duration::from_secs(1));
    assert_eq!(pair.cs.heartbeats, 1, "one PUT /hb after 15 s");
    // The client answered it: nothing is missing. Then the client goes quiet.
    let mut silent = Session::new(Role::Server, Framing::Datagram, pair.now.at, 1);
    let mut svc = server_with_interval(15);
    for s in 1..=4u64 {
        let now = Now {
            at: pair.now.at + Duration::from_secs(15 * s),
            unix: 0,
        };
        let out = silent.on_tick(now, &mut svc);
        assert_eq!(out.len(), 1, "a heartbeat every interval");
    }
    assert_eq!(
        svc.missed, 3,
        "every interval but the first without an answer"
    );
    assert_eq!(pair.ss.missed, 0);
}

#[test]
fn an_observer_hears_of_a_withdrawal() {
    let mut pair = Pair::new(Framing::Stream);
    pair.request(put_mitigation(7, "198.51.100.7/32"), ONCE)
        .unwrap();
    let mut obs = get(&["mitigate", &format!("cuid={CUID}"), "mid=7"]);
    obs.set_observe_value(0);
    let (token, out) = pair.client.request(pair.now, obs, ONCE);
    pair.deliver_to_server(out);
    let first = pair.client.response(&token).unwrap().unwrap();
    assert!(first.get_observe_value().is_some());
    pair.ss.engine.delete(CUID, 7, 1000).unwrap();
    pair.tick(Duration::from_secs(1));
    let n = pair.client.notification(&token).expect("a notification");
    let v = crate::signal::diag::to_json(&crate::signal::cbor::parse(&n.payload).unwrap());
    assert_eq!(
        v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["status"],
        5
    );
}

#[test]
fn unanswered_requests_are_retransmitted_then_given_up() {
    let at = Instant::now();
    let mut client = Session::new(Role::Client, Framing::Datagram, at, 10);
    let mut svc = Client::default();
    let now = |s: u64| Now {
        at: at + Duration::from_secs(s),
        unix: s,
    };
    // CON: the same message id again after 2, 4, 8 s (doubling), then given up.
    let con = Delivery::Confirmable {
        first: Duration::from_secs(2),
        retransmits: 2,
    };
    let (token, out) = client.request(now(0), get(&["config"]), con);
    let mid = Packet::from_bytes(&out[0]).unwrap().header.message_id;
    let mut seen = Vec::new();
    for s in 1..=20 {
        for b in client.on_tick(now(s), &mut svc) {
            seen.push((s, Packet::from_bytes(&b).unwrap().header.message_id));
        }
    }
    assert_eq!(seen, vec![(2, mid), (6, mid)]);
    assert_eq!(
        client.response(&token),
        Some(Err("no acknowledgement after 2 retransmissions".into()))
    );
    // NON: a new message id every 2 s, four tries in all.
    let non = Delivery::Repeated {
        every: Duration::from_secs(2),
        times: 4,
    };
    let (token, out) = client.request(now(100), get(&["hb"]), non);
    let mut mids = vec![Packet::from_bytes(&out[0]).unwrap().header.message_id];
    for s in 101..=110 {
        for b in client.on_tick(now(s), &mut svc) {
            mids.push(Packet::from_bytes(&b).unwrap().header.message_id);
        }
    }
    mids.dedup();
    assert_eq!(mids.len(), 4);
    assert_eq!(
        client.response(&token),
        Some(Err("no response after 4 tries".into()))
    );
}

#[test]
fn release_and_malformed_frames_end_a_stream_session() {
    let now = Now {
        at: Instant::now(),
        unix: 0,
    };
    let mut s = Session::new(Role::Server, Framing::Stream, now.at, 1);
    let mut svc = server();
    // A ping is answered with a pong.
    let out = s.on_message(now, &coap_tcp::ping(), &mut svc);
    assert!(matches!(
        coap_tcp::decode(&out[0]),
        Ok(Some((
            coap_tcp::Frame::Signal {
                code: coap_tcp::PONG,
                ..
            },
            _
        )))
    ));
    // An Empty message (0.00), even with options and a payload, is ignored: no answer,
    // the session stays (RFC 8323 §3.3; fuzz/found/coap_stream-payload-ff-roundtrip).
    assert!(s
        .on_message(now, &[0x41, 0x00, 0xaa, 0x11, 0x41, 0xff, 0x01], &mut svc)
        .is_empty());
    assert!(s.closed().is_none());
    // Half a frame waits for the rest.
    let p = coap_tcp::encode(&put_mitigation(1, "198.51.100.1/32")).unwrap();
    assert!(s.on_message(now, &p[..5], &mut svc).is_empty());
    assert_eq!(s.on_message(now, &p[5..], &mut svc).len(), 1);
    s.on_message(now, &[0x09], &mut svc);
    assert!(s.closed().unwrap().contains("token length 9"));
    let mut r = Session::new(Role::Server, Framing::Stream, now.at, 1);
    r.on_message(now, &[0x00, coap_tcp::RELEASE], &mut svc);
    assert!(r.closed().is_some());
}

fn datagram_server() -> (Now, Session, Server) {
    let now = Now {
        at: Instant::now(),
        unix: 0,
    };
    (
        now,
        Session::new(Role::Server, Framing::Datagram, now.at, 1),
        server(),
    )
}

/// Sends `p` to a server session; its one answer.
fn answer(now: Now, s: &mut Session, svc: &mut dyn Service, p: &Packet) -> Packet {
    let out = s.on_message(now, &p.to_bytes().unwrap(), svc);
    assert_eq!(out.len(), 1, "one answer");
    Packet::from_bytes(&out[0]).unwrap()
}

#[test]
fn a_request_body_in_block1_blocks_is_put_together() {
    let (now, mut s, mut svc) = datagram_server();
    let whole = put_mitigation(1, "198.51.100.1/32");
    let body = whole.payload.clone();
    let blocks: Vec<&[u8]> = body.chunks(16).collect();
    for (n, chunk) in blocks.iter().enumerate() {
        let mut p = whole.clone();
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = 40 + n as u16;
        p.payload = chunk.to_vec();
        let last = n + 1 == blocks.len();
        Block {
            num: n as u32,
            more: !last,
            szx: 0,
        }
        .set(&mut p, CoapOption::Block1);
        p.add_option(CoapOption::Size1, vec![body.len() as u8]);
        p.add_option(CoapOption::Unknown(REQUEST_TAG), vec![0x82, 0xfb]);
        let r = answer(now, &mut s, &mut svc, &p);
        let echoed = Block::of(&r, CoapOption::Block1).unwrap().unwrap();
        assert_eq!(echoed.num, n as u32);
        if last {
            assert_eq!(code(&r), "2.01", "{}", String::from_utf8_lossy(&r.payload));
        } else {
            assert_eq!((code(&r), echoed.more), ("2.31".into(), true));
            assert!(svc.engine.mitigator().installed().is_empty(), "atomic");
        }
    }
    assert_eq!(svc.engine.mitigator().installed().len(), 1);
    // A block out of order: 4.08; a body over the limit: 4.13 with Size1.
    let mut p = whole.clone();
    p.payload = vec![0; 16];
    Block {
        num: 3,
        more: true,
        szx: 0,
    }
    .set(&mut p, CoapOption::Block1);
    p.header.message_id = 90;
    assert_eq!(code(&answer(now, &mut s, &mut svc, &p)), "4.08");
    p.header.message_id = 91;
    Block {
        num: 0,
        more: true,
        szx: 0,
    }
    .set(&mut p, CoapOption::Block1);
    p.add_option(CoapOption::Size1, vec![0x01, 0x00, 0x00, 0x00]);
    let r = answer(now, &mut s, &mut svc, &p);
    assert_eq!(code(&r), "4.13");
    let size1 = r.get_first_option(CoapOption::Size1).unwrap();
    assert_eq!(
        size1.iter().fold(0usize, |a, b| (a << 8) | *b as usize),
        crate::signal::cbor::MAX_BODY
    );
}

#[test]
fn a_ping_gets_a_reset_and_a_con_without_answer_an_ack() {
    let (now, mut s, mut svc) = datagram_server();
    let mut ping = Packet::new();
    ping.header.code = MessageClass::Empty;
    ping.header.set_type(MessageType::Confirmable);
    ping.header.message_id = 7;
    let r = answer(now, &mut s, &mut svc, &ping);
    assert_eq!(
        (r.header.get_type(), r.header.message_id),
        (MessageType::Reset, 7)
    );
    assert_eq!(r.header.code, MessageClass::Empty);
    // An efficacy update for a mid the server does not hold has no response (RFC 9132
    // §4.4.3), but a CON one is acknowledged.
    let mut eff = put_mitigation(9, "198.51.100.1/32");
    eff.add_option(CoapOption::IfMatch, Vec::new());
    eff.header.set_type(MessageType::Confirmable);
    eff.header.message_id = 8;
    let r = answer(now, &mut s, &mut svc, &eff);
    assert_eq!(
        (r.header.get_type(), r.header.message_id),
        (MessageType::Acknowledgement, 8)
    );
    assert_eq!(r.header.code, MessageClass::Empty);
    // Again (a retransmission): the same ACK.
    let again = answer(now, &mut s, &mut svc, &eff);
    assert_eq!(again.header.message_id, 8);
    eff.header.set_type(MessageType::NonConfirmable);
    eff.header.message_id = 9;
    assert!(
        s.on_message(now, &eff.to_bytes().unwrap(), &mut svc)
            .is_empty(),
        "NON: nothing"
    );
}

#[test]
fn unrecognised_critical_options_get_4_02() {
    let (now, mut s, mut svc) = datagram_server();
    let mut p = get(&["config"]);
    p.add_option(CoapOption::Unknown(65001), Vec::new());
    let r = answer(now, &mut s, &mut svc, &p);
    assert_eq!(code(&r), "4.02");
    assert!(String::from_utf8_lossy(&r.payload).contains("65001"));
    let mut q = get(&["config"]);
    q.header.message_id = 2;
    q.add_option(CoapOption::Unknown(65000), Vec::new()); // elective: ignored
    assert_eq!(code(&answer(now, &mut s, &mut svc, &q)), "2.05");
}

/// A service whose answer cannot be put in any datagram (options alone over the limit).
struct Oversized {
    unsendable: Vec<String>,
}

impl Service for Oversized {
    fn handle(&mut self, msg: &Packet, _unix: u64) -> Reply {
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(ResponseType::Content);
        p.set_token(msg.get_token().to_vec());
        p.add_option(CoapOption::Unknown(65000), vec![0; 1300]);
        Reply::Response(p)
    }
    fn unsendable(&mut self, why: &str) {
        self.unsendable.push(why.into());
    }
}

#[test]
fn a_response_that_cannot_be_sent_is_counted_and_replaced_by_5_00() {
    let (now, mut s, _) = datagram_server();
    let mut svc = Oversized {
        unsendable: Vec::new(),
    };
    let r = answer(now, &mut s, &mut svc, &get(&["config"]));
    assert_eq!(code(&r), "5.00");
    assert_eq!(svc.unsendable.len(), 1, "{:?}", svc.unsendable);
    assert!(svc.unsendable[0].contains("2.05"), "{:?}", svc.unsendable);
}

#[test]
fn an_empty_ack_stops_retransmission_and_the_answer_may_come_later() {
    let at = Instant::now();
    let mut client = Session::new(Role::Client, Framing::Datagram, at, 10);
    let mut svc = Client::default();
    let now = |s: u64| Now {
        at: at + Duration::from_secs(s),
        unix: s,
    };
    let con = Delivery::Confirmable {
        first: Duration::from_secs(2),
        retransmits: 3,
    };
    let (token, out) = client.request(now(0), get(&["config"]), con);
    let sent = Packet::from_bytes(&out[0]).unwrap();
    let mut ack = Packet::new();
    ack.header.code = MessageClass::Empty;
    ack.header.set_type(MessageType::Acknowledgement);
    ack.header.message_id = sent.header.message_id;
    assert!(client
        .on_message(now(1), &ack.to_bytes().unwrap(), &mut svc)
        .is_empty());
    for s in 2..=9 {
        assert!(
            client.on_tick(now(s), &mut svc).is_empty(),
            "no retransmission at {s} s"
        );
    }
    // The separate response (CON here) carries the token.
    let mut answer = Packet::new();
    answer.header.set_type(MessageType::NonConfirmable);
    answer.header.code = MessageClass::Response(ResponseType::Content);
    answer.header.message_id = 999;
    answer.set_token(token.clone());
    client.on_message(now(9), &answer.to_bytes().unwrap(), &mut svc);
    assert_eq!(code(&client.response(&token).unwrap().unwrap()), "2.05");
}
