//! CoAP over TLS (RFC 8323 framing): the input's first byte sets how the stream is cut
//! into reads, the rest is the stream, given to a server session (through the control
//! plane, as the TLS listener hands it) and a client session. Every frame they send must
//! decode whole. The frame decoder alone must also re-encode every message it decodes to
//! the same message.
#![no_main]

use std::time::{Duration, Instant};

use dots_agent::signal::coap_tcp::{self, Frame};
use dots_agent::signal::session::{Framing, Now, Role, Session};
use dots_agent_fuzz::{QuietClient, SignalServer, START_UNIX};
use libfuzzer_sys::fuzz_target;

fn check_sent(out: &[Vec<u8>]) {
    for f in out {
        match coap_tcp::decode(f) {
            Ok(Some((_, used))) => assert_eq!(used, f.len(), "one frame per write"),
            other => panic!("a session sent a frame that does not decode: {other:?}"),
        }
    }
}

fn decode_all(mut buf: &[u8]) {
    loop {
        match coap_tcp::decode(buf) {
            Ok(Some((frame, used))) => {
                assert!(used > 0 && used <= buf.len());
                if let Frame::Message(p) = frame {
                    let again = coap_tcp::encode(&p).expect("a decoded message re-encodes");
                    let Ok(Some((Frame::Message(q), n))) = coap_tcp::decode(&again) else {
                        panic!("a re-encoded message does not decode");
                    };
                    assert_eq!(n, again.len());
                    assert_eq!(p.header.code, q.header.code);
                    assert_eq!(p.get_token(), q.get_token());
                    assert_eq!(p.payload, q.payload);
                    assert_eq!(
                        p.options().collect::<Vec<_>>(),
                        q.options().collect::<Vec<_>>()
                    );
                }
                buf = &buf[used..];
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    decode_all(stream);
    let read = cut as usize % 97 + 1;
    let at = Instant::now();
    let mut now = Now {
        at,
        unix: START_UNIX,
    };
    let (mut server, first) = SignalServer::open(Framing::Stream, at);
    let mut client = Session::new(Role::Client, Framing::Stream, at, 0);
    let mut quiet = QuietClient;
    check_sent(&first);
    check_sent(&client.start());
    let mut open = true;
    for chunk in stream.chunks(read) {
        if open {
            match server.receive(now, chunk) {
                Ok(out) => check_sent(&out),
                Err(_) => open = false,
            }
        }
        if client.closed().is_none() {
            check_sent(&client.on_message(now, chunk, &mut quiet));
        }
        now.at += Duration::from_millis(500);
        now.unix += 1;
        check_sent(&server.tick(now));
        check_sent(&client.on_tick(now, &mut quiet));
    }
});
