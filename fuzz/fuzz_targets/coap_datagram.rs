//! CoAP over DTLS as the server and a client see it: each piece of the input is one
//! decrypted datagram, handed to a server session (through the control plane, as the DTLS
//! listener hands it) and to a client session; time advances a second per datagram and the sessions' timers run.
//! Whatever they send back must be a CoAP message that fits a datagram.
#![no_main]

use std::time::{Duration, Instant};

use coap_lite::{MessageClass, Packet, RequestType};
use dots_agent::signal::session::{Delivery, Framing, Now, Role, Session, MAX_DATAGRAM};
use dots_agent_fuzz::{pieces, QuietClient, SignalServer, START_UNIX};
use libfuzzer_sys::fuzz_target;

fn check_sent(out: &[Vec<u8>]) {
    for d in out {
        assert!(
            d.len() <= MAX_DATAGRAM + 64,
            "datagram of {} bytes",
            d.len()
        );
        Packet::from_bytes(d).expect("a session sent a datagram that is not CoAP");
    }
}

fuzz_target!(|data: &[u8]| {
    let at = Instant::now();
    let mut now = Now {
        at,
        unix: START_UNIX,
    };
    let (mut server, first) = SignalServer::open(Framing::Datagram, at);
    check_sent(&first);
    let mut client = Session::new(Role::Client, Framing::Datagram, at, 100);
    let mut quiet = QuietClient;
    // The client has asked something, so that answers can match its token (1).
    let mut get = Packet::new();
    get.header.code = MessageClass::Request(RequestType::Get);
    let (_, first) = client.request(
        now,
        get,
        Delivery::Confirmable {
            first: Duration::from_secs(2),
            retransmits: 3,
        },
    );
    check_sent(&first);
    let mut open = true;
    for d in pieces(data) {
        if open {
            match server.receive(now, d) {
                Ok(out) => check_sent(&out),
                Err(_) => open = false,
            }
        }
        check_sent(&client.on_message(now, d, &mut quiet));
        now.at += Duration::from_secs(1);
        now.unix += 1;
        check_sent(&server.tick(now));
        check_sent(&client.on_tick(now, &mut quiet));
        let _ = client.response(&1u32.to_be_bytes());
    }
});
