//! What the fuzz targets share: the signal channel's server side (the control plane and a
//! session, as the listeners drive them), the data channel through the control plane,
//! the length-prefixed sequences a target cuts its input into, and the XDP program's own
//! parser compiled for user space.

use std::collections::BTreeMap;

use std::sync::Arc;
use std::time::Instant;

use coap_lite::Packet;
use dots_agent::control::sessions::{Identity, Outbox, SessionId};
use dots_agent::control::Control;
use dots_agent::data::{DataChannel, SharedData};
use dots_agent::datapath::MemoryMitigator;
use dots_agent::engine::{ClientPolicy, Engine};
use dots_agent::signal::session::{Framing, Now, Reply, Service};
use ipnet::IpNet;

pub mod xdp;

/// The cuid of client-a in the tests (RFC 9132 figure 8's).
pub const CUID: &str = "dz6pHjaADkaFTbjr0JGBpw";
pub const CLIENT: &str = "client-a";
/// Seconds since the epoch at the start of every run (any fixed value: runs must repeat).
pub const START_UNIX: u64 = 1_000_000;

/// The signal channel's server side as the DTLS and TLS listeners drive it: the control
/// plane (engine on the in-memory datapath, client-a with 198.51.100.0/24 and
/// 2001:db8:6401::/48) with one session of client-a's, opened as after a handshake. The
/// production `Service` behind the session is fuzzed, not a stand-in.
pub struct SignalServer {
    pub control: Control<MemoryMitigator>,
    pub session: SessionId,
    /// What the session sends unasked (notifications, heartbeats).
    pub outbox: Arc<Outbox>,
}

impl SignalServer {
    /// Returns the server and what its session sends first (a CSM over a stream).
    pub fn open(framing: Framing, at: Instant) -> (Self, Vec<Vec<u8>>) {
        let engine = Engine::new(
            MemoryMitigator::new(),
            vec![ClientPolicy::fixture(CLIENT, &["198.51.100.0/24", "2001:db8:6401::/48"])],
        );
        let mut control = Control::new(engine, SharedData::new(DataChannel::new(BTreeMap::new())));
        let outbox = Arc::new(Outbox::default());
        let identity = Identity {
            cn: CLIENT.into(),
            cuid: CUID.into(),
        };
        let (session, first) = control.open_session(identity, framing, outbox.clone(), at);
        (
            SignalServer {
                control,
                session,
                outbox,
            },
            first,
        )
    }

    /// What arrived; what the session answers, or Err once it has ended.
    pub fn receive(&mut self, now: Now, bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.control.session_message(self.session, now, bytes)
    }

    /// A second of the control thread's clock: the engine, then the sessions; returns what
    /// the session sent unasked.
    pub fn tick(&mut self, now: Now) -> Vec<Vec<u8>> {
        self.control.tick(now.unix);
        self.control.tick_sessions(now);
        self.outbox.take()
    }
}

/// A client's side: answers whatever the server sends with nothing (the session's own
/// handling of responses, notifications and blocks is what is fuzzed there).
pub struct QuietClient;

impl Service for QuietClient {
    fn handle(&mut self, _msg: &Packet, _unix: u64) -> Reply {
        Reply::Silence
    }
}

/// The data channel behind the control plane (engine on the in-memory datapath), clients
/// a (198.51.100.0/24) and b (203.0.113.0/24), as `control/data.rs`'s tests build it.
pub fn data_control() -> Control<MemoryMitigator> {
    let prefixes: BTreeMap<String, Vec<IpNet>> = [
        ("a".to_string(), vec!["198.51.100.0/24".parse().unwrap()]),
        ("b".to_string(), vec!["203.0.113.0/24".parse().unwrap()]),
    ]
    .into();
    let data = SharedData::new(DataChannel::new(prefixes));
    let engine = Engine::new(
        MemoryMitigator::new(),
        vec![
            ClientPolicy::fixture("a", &["198.51.100.0/24"]),
            ClientPolicy::fixture("b", &["203.0.113.0/24"]),
        ],
    )
    .with_terminating_period(0)
    .with_data_source(Box::new(data.clone()));
    Control::new(engine, data)
}

/// Cuts a fuzz input into pieces: each a 16-bit little-endian length and that many bytes
/// (the last piece takes what is left). Lets one input be a sequence of datagrams or
/// requests, and lets the fuzzer splice real messages.
pub fn pieces(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 && out.len() < 64 {
        let n = u16::from_le_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// The inverse of [`pieces`], for the seed corpus.
pub fn join<B: AsRef<[u8]>>(items: &[B]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        let b = i.as_ref();
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// A data-channel request as the `restconf` target reads one piece: a method byte, the
/// path (with `?query`) up to the first newline, then the body.
pub const METHODS: [&str; 6] = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"];

pub fn encode_request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let m = METHODS.iter().position(|x| *x == method).unwrap() as u8;
    let mut out = vec![m];
    out.extend_from_slice(path.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// The XDP program's parser, the very file the kernel runs (`xdp-filter/src/parse.rs`),
/// compiled against [`aya_ebpf::programs::XdpContext`] from `xdp-context/`.
#[path = "../../xdp-filter/src/parse.rs"]
#[allow(dead_code)]
pub mod xdp_parse;
