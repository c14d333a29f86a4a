//! The data channel (RFC 8783 RESTCONF/JSON) through the control plane, as the HTTPS
//! listener drives it: each piece of the input is one request (a byte for method and peer,
//! the path and `?query` up to a newline, then the body) applied in order to one server
//! (the engine on the in-memory datapath), so registrations, aliases and ACLs build up.
//! Also the path, query and percent-decoding helpers and the JSON models on their own.
//! Every answer must be a status a client can act on (never 500) with a JSON body or none.
#![no_main]

use dots_agent::data::model::{Acl, Alias};
use dots_agent::data::restconf;
use dots_agent::data::service::{Peer, Request};
use dots_agent_fuzz::{data_control, pieces, METHODS, START_UNIX};
use libfuzzer_sys::fuzz_target;

const PEERS: [(Option<&str>, &str); 3] = [
    (Some("a"), "cuid-a"),
    (Some("b"), "cuid-b"),
    (None, "cuid-unknown"),
];

fuzz_target!(|data: &[u8]| {
    let mut control = data_control();
    let mut now = START_UNIX;
    for piece in pieces(data) {
        let Some((&head, rest)) = piece.split_first() else {
            continue;
        };
        let method = METHODS[(head & 0x07) as usize % METHODS.len()];
        let (client, cuid) = PEERS[(head >> 3) as usize % PEERS.len()];
        let (line, body) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let (path, query) = match line.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (line, None),
        };
        let _ = restconf::resource(path);
        let _ = restconf::query(query);
        let _ = restconf::percent_decode(path);
        let r = control.data_request(
            &Peer { client, cuid },
            &Request {
                method,
                path,
                query,
                body,
            },
            now,
        );
        assert!(
            (200..600).contains(&r.status) && r.status != 500,
            "status {} for {method} {line}",
            r.status
        );
        now += 61;
        control.tick(now);

        if let Ok(acl) = serde_json::from_slice::<Acl>(body) {
            let _ = acl.entries(&["198.51.100.0/24".parse().unwrap()]);
        }
        if let Ok(alias) = serde_json::from_slice::<Alias>(body) {
            let _ = alias.validate();
        }
    }
});
