//! CoAP requests to engine calls and back (RFC 9132 §4.4, §4.7), without I/O: a session
//! hands in a parsed request and the peer's identity and sends what comes back. All CBOR
//! is decoded and encoded here; the engine takes and returns typed values.

use coap_lite::{CoapOption, ContentFormat, MessageClass, Packet, RequestType, ResponseType};

use super::cbor::{self, uint};
use super::message;
use super::session::{Observation, Reply, Watched};
use super::session_config::{self, ConfigError};
use super::telemetry;
use super::uri::{self, Resource};
use crate::datapath::Mitigator;
use crate::engine::{Engine, PutOutcome, Refusal};

/// Who is asking, as the (D)TLS layer established it.
pub struct Peer<'a> {
    /// The configured client whose certificate this is; None: unknown certificate (4.01).
    pub client: Option<&'a str>,
    /// The cuid derived from the certificate (RFC 9132 §4.4.1.1).
    pub cuid: &'a str,
}

/// What a notification compares with what it last sent: the (mid, status) list of
/// mitigations, or the configuration's encoding. None: the observed mitigation is gone.
pub fn fingerprint<M: Mitigator>(
    engine: &Engine<M>,
    obs: &Observation,
    now: u64,
) -> Option<Vec<u8>> {
    match obs.target {
        Watched::Mitigation(mid) => engine.status(&obs.cuid, mid, now).ok().map(|st| {
            st.iter()
                .flat_map(|m| m.mid.to_be_bytes().into_iter().chain([m.status as u8]))
                .collect()
        }),
        Watched::Config => engine
            .config_get(&obs.client, None)
            .ok()
            .map(|c| session_config::encode(&c)),
    }
}

/// A notification for an observation, or None if nothing changed and none is due (every
/// call while a status is being announced; configurations only on change). `last` is the
/// fingerprint last sent; it is updated. A mitigation that is gone (forgotten after it
/// ended) yields a final 4.04 (and the caller drops the observation).
pub fn notification<M: Mitigator>(
    engine: &Engine<M>,
    obs: &Observation,
    last: &mut Vec<u8>,
    periodic_due: bool,
    sequence: u32,
    now: u64,
) -> Option<(Packet, bool)> {
    let mut p = Packet::new();
    p.set_token(obs.token.clone());
    p.set_observe_value(sequence & 0x00ff_ffff);
    let mid = match obs.target {
        Watched::Mitigation(mid) => mid,
        Watched::Config => {
            let current = fingerprint(engine, obs, now)?;
            if current == *last {
                return None;
            }
            p.header.code = MessageClass::Response(ResponseType::Content);
            p.set_content_format(ContentFormat::ApplicationDotsCbor);
            p.payload = current.clone();
            p.add_option(CoapOption::MaxAge, u32::MAX.to_be_bytes().to_vec());
            *last = current;
            return Some((p, false));
        }
    };
    match engine.status(&obs.cuid, mid, now) {
        Ok(st) => {
            let now_states = fingerprint(engine, obs, now).unwrap_or_default();
            let announcing = engine.announcing(&obs.cuid, mid, now);
            if now_states == *last && !periodic_due && !announcing {
                return None;
            }
            *last = now_states;
            p.header.code = MessageClass::Response(ResponseType::Content);
            p.set_content_format(ContentFormat::ApplicationDotsCbor);
            p.payload = message::encode_status(&st);
            Some((p, false))
        }
        Err(_) => {
            p.header.code = MessageClass::Response(ResponseType::NotFound);
            p.payload = b"the observed mitigation is gone".to_vec();
            Some((p, true))
        }
    }
}

fn response(req: &Packet, code: ResponseType, payload: Vec<u8>, cbor_body: bool) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(code);
    p.set_token(req.get_token().to_vec());
    if cbor_body {
        p.set_content_format(ContentFormat::ApplicationDotsCbor);
    }
    p.payload = payload;
    p
}

fn diagnostic(req: &Packet, code: ResponseType, text: impl Into<String>) -> Packet {
    response(req, code, text.into().into_bytes(), false)
}

fn refusal(req: &Packet, r: Refusal) -> Packet {
    refusal_of(req, r, Vec::new())
}

/// A refused mitigation request: a 4.09's scope entry names the request's mid and
/// lifetime beside conflict-information, as go-dots' server does and its client reads
/// (`ScopePut`: mid, lifetime, conflict-information).
fn put_refusal(req: &Packet, r: Refusal, mid: u32, lifetime: message::Lifetime) -> Packet {
    refusal_of(
        req,
        r,
        vec![(5, uint(mid as u64)), (14, lifetime.to_cbor())],
    )
}

/// `entry`: what the 4.09 scope entry carries before conflict-information.
fn refusal_of(req: &Packet, r: Refusal, entry: Vec<(u64, ciborium::value::Value)>) -> Packet {
    match r {
        Refusal::BadRequest(t) => diagnostic(req, ResponseType::BadRequest, t),
        Refusal::Forbidden(t) => diagnostic(req, ResponseType::Forbidden, t),
        Refusal::NotFound(t) => diagnostic(req, ResponseType::NotFound, t),
        Refusal::Unavailable(t) => diagnostic(req, ResponseType::ServiceUnavailable, t),
        Refusal::HeldByOther {
            targets,
            retry_timer,
            ..
        } => {
            // Another client's request is active (18 = 1) on overlapping targets (19 = 1):
            // which of ours (21), and when to try again (20).
            let mut info = vec![(18, uint(1)), (19, uint(1))];
            if let Some(t) = retry_timer {
                info.push((20, uint(t as u64)));
            }
            let prefixes = targets
                .iter()
                .map(|p| ciborium::value::Value::Text(p.to_string()))
                .collect();
            info.push((
                21,
                cbor::map(vec![(6, ciborium::value::Value::Array(prefixes))]),
            ));
            conflict_body(req, entry, info)
        }
        Refusal::Unprocessable(t) => diagnostic(req, ResponseType::UnprocessableEntity, t),
        Refusal::Conflict { cause, mid, .. } => {
            // conflict-information (17) inside the scope entry: status (18) only when
            // another request is active, cause (19), and the conflicting mid in 21.
            let mut info = Vec::new();
            if cause != 3 {
                info.push((18, uint(1)));
            }
            info.push((19, uint(cause as u64)));
            if let Some(m) = mid {
                info.push((21, cbor::map(vec![(5, uint(m as u64))])));
            }
            conflict_body(req, entry, info)
        }
    }
}

/// 4.09 with `{1: {2: [{(entry,) 17: conflict-information}]}}`: conflict-information
/// sits in the scope entry, as the YANG module places it.
fn conflict_body(
    req: &Packet,
    mut entry: Vec<(u64, ciborium::value::Value)>,
    info: Vec<(u64, ciborium::value::Value)>,
) -> Packet {
    entry.push((17, cbor::map(info)));
    let body = cbor::map(vec![(
        1,
        cbor::map(vec![(
            2,
            ciborium::value::Value::Array(vec![cbor::map(entry)]),
        )]),
    )]);
    response(req, ResponseType::Conflict, cbor::encode(&body), true)
}

/// The cuid a request's path names must be one its client holds or may take (the hash
/// of its key, or another it chose: RFC 9132 §4.4.1.1); another client's is refused.
/// The session is alive for it from now on.
fn claim_path_cuid<M: Mitigator>(
    engine: &mut Engine<M>,
    client: &str,
    resource: &Resource,
    now: u64,
) -> Result<(), Refusal> {
    let cuid = match resource {
        Resource::Mitigate { cuid, .. }
        | Resource::TelemetrySetup { cuid, .. }
        | Resource::Telemetry { cuid, .. } => cuid,
        Resource::Config { .. } | Resource::Heartbeat => return Ok(()),
    };
    engine.claim_cuid(client, cuid)?;
    engine.seen(client, cuid, now);
    Ok(())
}

fn path(req: &Packet) -> Vec<String> {
    req.get_option(CoapOption::UriPath)
        .map(|l| {
            l.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn is_dots_cbor(req: &Packet) -> bool {
    matches!(
        req.get_content_format(),
        Some(ContentFormat::ApplicationDotsCbor)
    )
}

/// Handles one request. Uri-Host and Uri-Port (sent by stock CoAP clients) are accepted and
/// ignored.
pub fn handle<M: Mitigator>(
    engine: &mut Engine<M>,
    peer: &Peer<'_>,
    req: &Packet,
    now: u64,
) -> Reply {
    let method = match req.header.code {
        MessageClass::Request(m) => m,
        // A client's answer to our heartbeat, or an empty ACK/RST: traffic, nothing to say.
        MessageClass::Response(_) | MessageClass::Empty => {
            if let Some(client) = peer.client {
                engine.seen(client, peer.cuid, now);
            }
            return Reply::Silence;
        }
        MessageClass::Reserved(_) => {
            return Reply::Response(diagnostic(req, ResponseType::BadRequest, "not a request"));
        }
    };
    let Some(client) = peer.client else {
        return Reply::Response(diagnostic(
            req,
            ResponseType::Unauthorized,
            "the certificate is valid but belongs to no configured DOTS client",
        ));
    };
    // Any traffic from the client keeps its session alive (RFC 9132 §4.7).
    engine.seen(client, peer.cuid, now);
    if let Some((to, max_age)) = engine.redirect() {
        // Redirected signalling (RFC 9132 §4.6): 5.03 naming the alternate server, Max-Age
        // how long to use it.
        let mut r = response(
            req,
            ResponseType::ServiceUnavailable,
            message::encode_redirect(to),
            true,
        );
        r.add_option(CoapOption::MaxAge, max_age.to_be_bytes().to_vec());
        return Reply::Response(r);
    }
    let segments = path(req);
    let segs: Vec<&str> = segments.iter().map(|s| s.as_str()).collect();
    let resource = match uri::parse(&segs) {
        Ok(r) => r,
        Err(e) if e.is_not_found() => {
            return Reply::Response(diagnostic(req, ResponseType::NotFound, e.to_string()))
        }
        Err(e) => return Reply::Response(diagnostic(req, ResponseType::BadRequest, e.to_string())),
    };
    let has_body = !req.payload.is_empty();
    if has_body && !is_dots_cbor(req) {
        return Reply::Response(diagnostic(
            req,
            ResponseType::UnsupportedContentFormat,
            "the payload must be application/dots+cbor (Content-Format 271)",
        ));
    }
    if let Err(r) = claim_path_cuid(engine, client, &resource, now) {
        return Reply::Response(refusal(req, r));
    }
    match (resource, method) {
        (Resource::Mitigate { cuid, mid, .. }, m) => {
            match m {
                RequestType::Put => {
                    let Some(mid) = mid else {
                        return Reply::Response(diagnostic(
                            req,
                            ResponseType::BadRequest,
                            "mid is required in the path",
                        ));
                    };
                    let scope = match message::decode_mitigation_request(&req.payload) {
                        Ok(s) => s,
                        Err(e) => {
                            return Reply::Response(diagnostic(
                                req,
                                ResponseType::BadRequest,
                                e.to_string(),
                            ))
                        }
                    };
                    let efficacy = req
                        .get_option(CoapOption::IfMatch)
                        .is_some_and(|l| l.iter().any(|v| v.is_empty()));
                    let lifetime = scope.lifetime;
                    match engine.put(client, &cuid, mid, scope, efficacy, now) {
                        Ok(PutOutcome::Created { granted }) => Reply::Response(response(
                            req,
                            ResponseType::Created,
                            message::encode_created(mid, granted),
                            true,
                        )),
                        Ok(PutOutcome::Changed) => {
                            Reply::Response(response(req, ResponseType::Changed, Vec::new(), false))
                        }
                        Ok(PutOutcome::Discarded) => Reply::Silence,
                        Err(r) => Reply::Response(put_refusal(req, r, mid, lifetime)),
                    }
                }
                RequestType::Delete => {
                    let Some(mid) = mid else {
                        return Reply::Response(diagnostic(
                            req,
                            ResponseType::BadRequest,
                            "mid is required in the path",
                        ));
                    };
                    // RFC 9132 §4.4.4: 2.02 "even if the 'mid' parameter value conveyed in
                    // the DELETE request does not exist in its configuration data" (a retried
                    // withdrawal must not look like a failure); go-dots answers the same.
                    match engine.delete(&cuid, mid, now) {
                        Ok(()) => {
                            Reply::Response(response(req, ResponseType::Deleted, Vec::new(), false))
                        }
                        Err(r) => Reply::Response(refusal(req, r)),
                    }
                }
                RequestType::Get => match engine.status(&cuid, mid, now) {
                    Ok(st) => {
                        let mut resp = response(
                            req,
                            ResponseType::Content,
                            message::encode_status(&st),
                            true,
                        );
                        match req.get_observe_value() {
                            Some(Ok(v)) if v == 0 || v == 1 => {
                                if v == 0 {
                                    resp.set_observe_value(0);
                                }
                                Reply::Observe {
                                    response: resp,
                                    observation: Observation {
                                        token: req.get_token().to_vec(),
                                        cuid,
                                        client: client.to_string(),
                                        target: Watched::Mitigation(mid),
                                    },
                                    register: v == 0,
                                }
                            }
                            _ => Reply::Response(resp),
                        }
                    }
                    Err(r) => Reply::Response(refusal(req, r)),
                },
                _ => Reply::Response(diagnostic(
                    req,
                    ResponseType::MethodNotAllowed,
                    "mitigate takes PUT, GET and DELETE",
                )),
            }
        }
        (Resource::Heartbeat, RequestType::Put) => match message::decode_heartbeat(&req.payload) {
            Ok(status) => Reply::Heartbeat {
                response: response(req, ResponseType::Changed, Vec::new(), false),
                peer_hb_status: status,
            },
            Err(e) => Reply::Response(diagnostic(req, ResponseType::BadRequest, e.to_string())),
        },
        (Resource::Heartbeat, _) => Reply::Response(diagnostic(
            req,
            ResponseType::MethodNotAllowed,
            "hb takes PUT",
        )),
        (Resource::Config { sid }, RequestType::Get) => match engine.config_get(client, sid) {
            Ok(c) => {
                let mut r = response(req, ResponseType::Content, session_config::encode(&c), true);
                // The configuration holds until changed (RFC 9132 §4.5.3: 2^32-1, no expiry).
                r.add_option(CoapOption::MaxAge, u32::MAX.to_be_bytes().to_vec());
                match req.get_observe_value() {
                    // Observe on config: notified when it changes (RFC 9132 §4.5.3).
                    Some(Ok(v)) if v == 0 || v == 1 => {
                        if v == 0 {
                            r.set_observe_value(0);
                        }
                        Reply::Observe {
                            response: r,
                            observation: Observation {
                                token: req.get_token().to_vec(),
                                cuid: peer.cuid.to_string(),
                                client: client.to_string(),
                                target: Watched::Config,
                            },
                            register: v == 0,
                        }
                    }
                    _ => Reply::Response(r),
                }
            }
            Err(r) => Reply::Response(refusal(req, r)),
        },
        (Resource::Config { sid: Some(sid) }, RequestType::Put) => {
            let asked = session_config::decode_put(&req.payload, &engine.config(client)).map_err(
                |e| match e {
                    ConfigError::Bad(e) => Refusal::BadRequest(e.to_string()),
                    ConfigError::Unacceptable(t) => Refusal::Unprocessable(t),
                },
            );
            match asked.and_then(|c| engine.config_put(client, sid, c)) {
                Ok(true) => {
                    Reply::Response(response(req, ResponseType::Created, Vec::new(), false))
                }
                Ok(false) => {
                    Reply::Response(response(req, ResponseType::Changed, Vec::new(), false))
                }
                Err(r) => Reply::Response(refusal(req, r)),
            }
        }
        (Resource::Config { sid: None }, RequestType::Put) => Reply::Response(diagnostic(
            req,
            ResponseType::BadRequest,
            "sid is required in the path",
        )),
        (Resource::Config { .. }, RequestType::Delete) => match engine.config_delete(client) {
            Ok(()) => Reply::Response(response(req, ResponseType::Deleted, Vec::new(), false)),
            Err(r) => Reply::Response(refusal(req, r)),
        },
        (Resource::Config { .. }, _) => Reply::Response(diagnostic(
            req,
            ResponseType::MethodNotAllowed,
            "config takes GET, PUT and DELETE",
        )),
        (Resource::TelemetrySetup { tsid, .. }, RequestType::Get) => {
            match engine.tm_setup_get(client, tsid) {
                Ok(setup) => Reply::Response(response(
                    req,
                    ResponseType::Content,
                    setup.encode_get(tsid),
                    true,
                )),
                Err(r) => Reply::Response(refusal(req, r)),
            }
        }
        (
            Resource::TelemetrySetup {
                cuid,
                tsid: Some(tsid),
                ..
            },
            RequestType::Put,
        ) => match telemetry::decode_setup_put(&req.payload)
            .map_err(Refusal::from)
            .and_then(|item| engine.tm_setup_resolve(&cuid, item))
            .and_then(|item| engine.tm_setup_put(client, tsid, item, now))
        {
            Ok(true) => Reply::Response(response(req, ResponseType::Created, Vec::new(), false)),
            Ok(false) => Reply::Response(response(req, ResponseType::Changed, Vec::new(), false)),
            Err(r) => Reply::Response(refusal(req, r)),
        },
        (Resource::TelemetrySetup { tsid: None, .. }, RequestType::Put) => {
            Reply::Response(diagnostic(
                req,
                ResponseType::BadRequest,
                "tsid is required in the path",
            ))
        }
        (Resource::TelemetrySetup { tsid, .. }, RequestType::Delete) => {
            match engine.tm_setup_delete(client, tsid, now) {
                Ok(()) => Reply::Response(response(req, ResponseType::Deleted, Vec::new(), false)),
                Err(r) => Reply::Response(refusal(req, r)),
            }
        }
        (Resource::TelemetrySetup { .. }, _) => Reply::Response(diagnostic(
            req,
            ResponseType::MethodNotAllowed,
            "tm-setup takes GET, PUT and DELETE",
        )),
        (
            Resource::Telemetry {
                cuid,
                tmid: Some(tmid),
                ..
            },
            RequestType::Put,
        ) => match telemetry::decode_pre_mitigation(&req.payload)
            .map_err(Refusal::from)
            .and_then(|report| engine.tm_resolve(&cuid, report))
            .and_then(|report| engine.tm_put(client, tmid, report, now))
        {
            Ok(()) => Reply::Response(response(req, ResponseType::Changed, Vec::new(), false)),
            Err(r) => Reply::Response(refusal(req, r)),
        },
        (Resource::Telemetry { tmid: None, .. }, RequestType::Put) => Reply::Response(diagnostic(
            req,
            ResponseType::BadRequest,
            "tmid is required in the path",
        )),
        (Resource::Telemetry { tmid, .. }, RequestType::Get) => match engine.tm_get(client, tmid) {
            Ok(reports) => Reply::Response(response(
                req,
                ResponseType::Content,
                telemetry::encode_pre_mitigation(&reports),
                true,
            )),
            Err(r) => Reply::Response(refusal(req, r)),
        },
        (Resource::Telemetry { tmid, .. }, RequestType::Delete) => {
            engine.tm_delete(client, tmid, now);
            Reply::Response(response(req, ResponseType::Deleted, Vec::new(), false))
        }
        (Resource::Telemetry { .. }, _) => Reply::Response(diagnostic(
            req,
            ResponseType::MethodNotAllowed,
            "tm takes GET, PUT and DELETE",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::MemoryMitigator;
    use crate::engine::ClientPolicy;

    const FIG8: &[u8] = include_bytes!("../../tests/fixtures/rfc9132-fig8.cbor");
    const CUID: &str = "dz6pHjaADkaFTbjr0JGBpw";

    fn engine() -> Engine<MemoryMitigator> {
        Engine::new(
            MemoryMitigator::new(),
            vec![
                ClientPolicy::fixture("client-a", &["2001:db8:6401::/48", "198.51.100.0/24"]),
                ClientPolicy::fixture("client-b", &["203.0.113.0/24"]),
            ],
        )
    }

    fn request(method: RequestType, path: &[&str], body: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(method);
        p.set_token(vec![1, 2, 3, 4]);
        p.add_option(CoapOption::UriHost, b"dots.example".to_vec());
        for s in path {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        if !body.is_empty() {
            p.set_content_format(ContentFormat::ApplicationDotsCbor);
            p.payload = body.to_vec();
        }
        p
    }

    fn code(r: &Reply) -> ResponseType {
        match r {
            Reply::Response(p)
            | Reply::Heartbeat { response: p, .. }
            | Reply::Observe { response: p, .. } => match p.header.code {
                MessageClass::Response(c) => c,
                _ => panic!("not a response"),
            },
            Reply::Silence => panic!("silence"),
        }
    }

    const PEER: Peer<'static> = Peer {
        client: Some("client-a"),
        cuid: CUID,
    };

    #[test]
    fn figure_8_request_creates_then_reads_then_withdraws() {
        let mut e = engine();
        let path = [
            ".well-known",
            "dots",
            "mitigate",
            &format!("cuid={CUID}"),
            "mid=123",
        ];
        let path: Vec<&str> = path.iter().map(|s| s.as_ref()).collect();
        let r = handle(&mut e, &PEER, &request(RequestType::Put, &path, FIG8), 100);
        assert_eq!(code(&r), ResponseType::Created);
        let Reply::Response(p) = r else { panic!() };
        assert_eq!(p.get_token(), &[1, 2, 3, 4]);
        assert_eq!(
            p.payload,
            message::encode_created(123, message::Lifetime::Seconds(3600))
        );
        assert_eq!(e.mitigator().installed().len(), 1);
        let r = handle(&mut e, &PEER, &request(RequestType::Get, &path, &[]), 160);
        assert_eq!(code(&r), ResponseType::Content);
        let r = handle(
            &mut e,
            &PEER,
            &request(RequestType::Delete, &path, &[]),
            170,
        );
        assert_eq!(code(&r), ResponseType::Deleted);
    }

    #[test]
    fn error_paths_have_the_rfc_codes() {
        let mut e = engine();
        let p = |mid: &str| {
            vec![
                ".well-known".to_string(),
                "dots".into(),
                "mitigate".into(),
                format!("cuid={CUID}"),
                mid.into(),
            ]
        };
        let path = p("mid=1");
        let path: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
        // Unknown certificate holder.
        let stranger = Peer {
            client: None,
            cuid: "x",
        };
        assert_eq!(
            code(&handle(
                &mut e,
                &stranger,
                &request(RequestType::Put, &path, FIG8),
                0
            )),
            ResponseType::Unauthorized
        );
        // Wrong content format.
        let mut wrong = request(RequestType::Put, &path, FIG8);
        wrong.clear_option(CoapOption::ContentFormat);
        wrong.set_content_format(ContentFormat::ApplicationCBOR);
        assert_eq!(
            code(&handle(&mut e, &PEER, &wrong, 0)),
            ResponseType::UnsupportedContentFormat
        );
        // Malformed body, with a diagnostic.
        let r = handle(
            &mut e,
            &PEER,
            &request(RequestType::Put, &path, &[0xa1, 0x01]),
            0,
        );
        assert_eq!(code(&r), ResponseType::BadRequest);
        // Another client's cuid: client-b took it first (RFC 9132 §4.4.1.3: cuid
        // collision, conflict-cause 3).
        let other = [
            ".well-known",
            "dots",
            "mitigate",
            "cuid=someoneelse",
            "mid=1",
        ];
        let client_b = Peer {
            client: Some("client-b"),
            cuid: "cuid-of-b",
        };
        let r = handle(
            &mut e,
            &client_b,
            &request(RequestType::Get, &other, &[]),
            0,
        );
        assert_eq!(code(&r), ResponseType::NotFound, "taken, nothing there yet");
        let r = handle(&mut e, &PEER, &request(RequestType::Put, &other, FIG8), 0);
        assert_eq!(code(&r), ResponseType::Conflict);
        let Reply::Response(pk) = r else { panic!() };
        let v = super::super::diag::to_json(&cbor::parse(&pk.payload).unwrap());
        assert_eq!(
            v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["conflict-information"]
                ["conflict-cause"],
            3,
            "{v}"
        );
        assert!(e.mitigator().installed().is_empty());
        // A cuid of its own choosing (not its key's hash) is client-a's from then on.
        let chosen = [
            ".well-known",
            "dots",
            "mitigate",
            "cuid=operator-chosen-1",
            "mid=1",
        ];
        let v4 = message::encode_mitigation_request(&message::Scope::new(
            vec!["198.51.100.0/24".parse().unwrap()],
            message::Lifetime::Seconds(3600),
        ));
        let r = handle(&mut e, &PEER, &request(RequestType::Put, &chosen, &v4), 0);
        assert_eq!(code(&r), ResponseType::Created);
        assert_eq!(e.cuid_holder("operator-chosen-1"), Some("client-a"));
        let r = handle(
            &mut e,
            &client_b,
            &request(RequestType::Get, &chosen, &[]),
            0,
        );
        assert_eq!(code(&r), ResponseType::Conflict, "and nobody else's");
        // No mid on PUT; unknown resource; GET with nothing there.
        let nomid = [".well-known", "dots", "mitigate", &format!("cuid={CUID}")];
        let nomid: Vec<&str> = nomid.iter().map(|s| s.as_ref()).collect();
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Put, &nomid, FIG8),
                0
            )),
            ResponseType::BadRequest
        );
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Get, &[".well-known", "dots", "nope"], &[]),
                0
            )),
            ResponseType::NotFound
        );
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Get, &nomid, &[]),
                0
            )),
            ResponseType::NotFound
        );
        // Lower overlapping mid: 4.09 with conflict-information naming the newer mid.
        let p2 = p("mid=2");
        let p2: Vec<&str> = p2.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Put, &p2, FIG8),
                0
            )),
            ResponseType::Created
        );
        let r = handle(&mut e, &PEER, &request(RequestType::Put, &path, FIG8), 0);
        assert_eq!(code(&r), ResponseType::Conflict);
        let Reply::Response(pk) = r else { panic!() };
        let v = cbor::parse(&pk.payload).unwrap();
        assert!(
            format!("{v:?}").contains("Integer(2)"),
            "conflict names mid 2: {v:?}"
        );
        // Beside it the request's mid and lifetime, as go-dots' client reads a 4.09.
        let v = super::super::diag::to_json(&v);
        let entry = &v["ietf-dots-signal-channel:mitigation-scope"]["scope"][0];
        assert_eq!(
            (entry["mid"].as_u64(), entry["lifetime"].as_u64()),
            (Some(1), Some(3600)),
            "{v}"
        );
        // Efficacy update for an unknown mid: silently discarded.
        let p9 = p("mid=9");
        let p9: Vec<&str> = p9.iter().map(|s| s.as_str()).collect();
        let mut eff = request(RequestType::Put, &p9, FIG8);
        eff.add_option(CoapOption::IfMatch, Vec::new());
        assert!(matches!(handle(&mut e, &PEER, &eff, 0), Reply::Silence));
        // Withdrawing an unknown mid: 2.02 all the same (RFC 9132 §4.4.4), nothing changes.
        let held = e.mitigator().installed().len();
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Delete, &p9, &[]),
                0
            )),
            ResponseType::Deleted
        );
        assert_eq!(e.mitigator().installed().len(), held);
    }

    /// The body of a response as text (diagnostics are UTF-8).
    fn text(r: &Reply) -> String {
        match r {
            Reply::Response(p) => String::from_utf8_lossy(&p.payload).into_owned(),
            _ => panic!("not a plain response"),
        }
    }

    #[test]
    fn ids_with_a_second_spelling_and_unknown_required_keys_are_refused() {
        let mut e = engine();
        let cuid = format!("cuid={CUID}");
        for mid in ["mid=+1", "mid=01"] {
            let path = [".well-known", "dots", "mitigate", &cuid, mid];
            let r = handle(&mut e, &PEER, &request(RequestType::Put, &path, FIG8), 0);
            assert_eq!(code(&r), ResponseType::BadRequest, "{mid}");
            assert!(text(&r).contains(mid), "{mid}: {}", text(&r));
        }
        assert!(e.mitigator().installed().is_empty());
        // Key 0 in the scope (comprehension-required: not in an optional range).
        let body = cbor::encode(&cbor::map(vec![(
            1,
            cbor::map(vec![(
                2,
                ciborium::value::Value::Array(vec![cbor::map(vec![
                    (0, uint(1)),
                    (
                        6,
                        ciborium::value::Value::Array(vec![ciborium::value::Value::Text(
                            "198.51.100.0/24".into(),
                        )]),
                    ),
                    (14, uint(60)),
                ])]),
            )]),
        )]));
        let path = [".well-known", "dots", "mitigate", &cuid, "mid=1"];
        let r = handle(&mut e, &PEER, &request(RequestType::Put, &path, &body), 0);
        assert_eq!(code(&r), ResponseType::BadRequest);
        assert_eq!(text(&r), "unknown comprehension-required key(s) [0]");
        assert!(e.mitigator().installed().is_empty());
    }

    #[test]
    fn session_configuration_put_get_delete() {
        let mut e = engine();
        let cfg = [".well-known", "dots", "config"];
        let r = handle(&mut e, &PEER, &request(RequestType::Get, &cfg, &[]), 0);
        assert_eq!(code(&r), ResponseType::Content);
        let Reply::Response(p) = &r else {
            panic!("a response")
        };
        assert_eq!(
            p.get_first_option(CoapOption::MaxAge),
            Some(&vec![0xff, 0xff, 0xff, 0xff]),
            "Max-Age: no expiry"
        );
        let body = [
            0xa1, 0x18, 0x1e, 0xa1, 0x18, 0x20, 0xa1, 0x18, 0x21, 0xa1, 0x18, 0x24, 0x18, 0x3c,
        ];
        let with_sid = |sid: &str| {
            [
                ".well-known".to_string(),
                "dots".into(),
                "config".into(),
                format!("sid={sid}"),
            ]
        };
        let p5 = with_sid("5");
        let p5: Vec<&str> = p5.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Put, &p5, &body),
                0
            )),
            ResponseType::Created
        );
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Put, &p5, &body),
                0
            )),
            ResponseType::Changed
        );
        assert_eq!(
            e.config_get("client-a", Some(5))
                .unwrap()
                .mitigating
                .heartbeat_interval(),
            60
        );
        let p4 = with_sid("4");
        let p4: Vec<&str> = p4.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Put, &p4, &body),
                0
            )),
            ResponseType::BadRequest
        );
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Get, &p4, &[]),
                0
            )),
            ResponseType::NotFound
        );
        let too_fast = [
            0xa1, 0x18, 0x1e, 0xa1, 0x18, 0x20, 0xa1, 0x18, 0x21, 0xa1, 0x18, 0x24, 0x05,
        ];
        let p6 = with_sid("6");
        let p6: Vec<&str> = p6.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Put, &p6, &too_fast),
                0
            )),
            ResponseType::UnprocessableEntity
        );
        assert_eq!(
            code(&handle(
                &mut e,
                &PEER,
                &request(RequestType::Delete, &p5, &[]),
                0
            )),
            ResponseType::Deleted
        );
        assert_eq!(
            e.config_get("client-a", None).unwrap(),
            session_config::SessionConfig::default()
        );
    }

    #[test]
    fn observers_of_config_hear_of_changes_only() {
        let mut e = engine();
        let mut get = request(RequestType::Get, &[".well-known", "dots", "config"], &[]);
        get.set_observe_value(0);
        let Reply::Observe {
            response,
            observation,
            register: true,
        } = handle(&mut e, &PEER, &get, 0)
        else {
            panic!("an observation")
        };
        assert_eq!(response.get_observe_value(), Some(Ok(0)));
        assert_eq!(observation.target, Watched::Config);
        let mut last = fingerprint(&e, &observation, 0).unwrap();
        assert!(notification(&e, &observation, &mut last, true, 1, 1).is_none());
        let put = request(
            RequestType::Put,
            &[".well-known", "dots", "config", "sid=5"],
            &session_config::encode_put(true, &[(33, 60)]),
        );
        assert_eq!(code(&handle(&mut e, &PEER, &put, 2)), ResponseType::Created);
        let (n, end) = notification(&e, &observation, &mut last, false, 2, 3).expect("changed");
        assert!(!end);
        let c = session_config::decode_response(&n.payload).unwrap();
        assert_eq!(c.idle.heartbeat_interval(), 60);
        assert!(notification(&e, &observation, &mut last, false, 3, 4).is_none());
    }

    #[test]
    fn a_deactivated_preconfigured_request_is_announced_four_times() {
        let mut e = engine();
        let mitigate = |mid: &str| {
            [
                ".well-known",
                "dots",
                "mitigate",
                &format!("cuid={CUID}"),
                mid,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
        };
        let mut armed = message::Scope::new(
            vec!["198.51.100.0/24".parse().unwrap()],
            message::Lifetime::Seconds(3600),
        );
        armed.trigger_mitigation = false;
        let path = mitigate("mid=1");
        let path: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
        let body = message::encode_mitigation_request(&armed);
        let r = handle(&mut e, &PEER, &request(RequestType::Put, &path, &body), 0);
        assert_eq!(code(&r), ResponseType::Created);
        assert_eq!(e.session_lost(CUID, 10), vec![1]);
        let observation = Observation {
            token: vec![9],
            cuid: CUID.into(),
            client: "client-a".into(),
            target: Watched::Mitigation(Some(1)),
        };
        let mut last = fingerprint(&e, &observation, 10).unwrap();
        // The client is back and asks for mitigation itself: mid 1 is deactivated.
        let path2 = mitigate("mid=2");
        let path2: Vec<&str> = path2.iter().map(|s| s.as_str()).collect();
        let active = message::Scope::new(
            vec!["198.51.100.0/26".parse().unwrap()],
            message::Lifetime::Seconds(3600),
        );
        let body = message::encode_mitigation_request(&active);
        let r = handle(&mut e, &PEER, &request(RequestType::Put, &path2, &body), 20);
        assert_eq!(code(&r), ResponseType::Created);
        let mut statuses = Vec::new();
        for t in 20..30 {
            e.tick(t);
            if let Some((n, _)) = notification(&e, &observation, &mut last, false, t as u32, t) {
                let v = cbor::parse(&n.payload).unwrap();
                let j = super::super::diag::to_json(&v);
                let st = j["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]["status"]
                    .as_u64()
                    .unwrap();
                statuses.push(st);
            }
        }
        assert_eq!(
            statuses,
            vec![7, 7, 7, 7, 8],
            "withdrawn four times, then armed"
        );
    }

    #[test]
    fn a_pipe_capacity_from_telemetry_setup_caps_the_clients_mitigations() {
        use ciborium::value::Value;
        let mut e = engine();
        let mitigate = [
            ".well-known",
            "dots",
            "mitigate",
            &format!("cuid={CUID}"),
            "mid=1",
        ];
        let mitigate: Vec<&str> = mitigate.iter().map(|s| s.as_ref()).collect();
        let r = handle(
            &mut e,
            &PEER,
            &request(RequestType::Put, &mitigate, FIG8),
            0,
        );
        assert_eq!(code(&r), ResponseType::Created);
        let id = e.mitigator().installed()[0];
        assert_eq!(
            e.mitigator().spec(id).unwrap().countermeasures.scope_bps,
            None
        );
        let cuid = format!("cuid={CUID}");
        let setup =
            |tsid: &'static str| vec![".well-known", "dots", "tm-setup", cuid.as_str(), tsid];
        // 100 megabit/s (unit 8) on the client's uplink.
        let pipe = cbor::encode(&cbor::map(vec![(
            203,
            cbor::map(vec![(
                129,
                Value::Array(vec![cbor::map(vec![(
                    136,
                    Value::Array(vec![cbor::map(vec![
                        (137, Value::Text("uplink".into())),
                        (134, uint(8)),
                        (190, uint(100)),
                    ])]),
                )])]),
            )]),
        )]));
        let r = handle(
            &mut e,
            &PEER,
            &request(RequestType::Put, &setup("tsid=1"), &pipe),
            1,
        );
        assert_eq!(code(&r), ResponseType::Created);
        let cap = e.mitigator().spec(id).unwrap().countermeasures.scope_bps;
        assert_eq!(
            cap.map(|r| r.rate),
            Some(12_500_000),
            "100 Mbit/s in bytes/s"
        );
        let r = handle(
            &mut e,
            &PEER,
            &request(RequestType::Get, &setup("tsid=1"), &[]),
            2,
        );
        assert_eq!(code(&r), ResponseType::Content);
        let r = handle(
            &mut e,
            &PEER,
            &request(RequestType::Get, &setup("tsid=9"), &[]),
            2,
        );
        assert_eq!(code(&r), ResponseType::NotFound);
        let r = handle(
            &mut e,
            &PEER,
            &request(RequestType::Put, &setup("tsid=2"), b"\xa0"),
            3,
        );
        assert_eq!(code(&r), ResponseType::BadRequest);
        // A cuid client-b holds: 4.09 (cuid collision), as on the mitigate resource.
        let mut wrong = setup("tsid=3");
        wrong[3] = "cuid=someone-else";
        let client_b = Peer {
            client: Some("client-b"),
            cuid: "cuid-of-b",
        };
        let r = handle(
            &mut e,
            &client_b,
            &request(RequestType::Get, &wrong, &[]),
            3,
        );
        assert_eq!(code(&r), ResponseType::NotFound);
        let r = handle(&mut e, &PEER, &request(RequestType::Put, &wrong, &pipe), 3);
        assert_eq!(code(&r), ResponseType::Conflict);
        let r = handle(
            &mut e,
            &PEER,
            &request(RequestType::Delete, &setup("tsid=1"), &[]),
            4,
        );
        assert_eq!(code(&r), ResponseType::Deleted);
        assert_eq!(
            e.mitigator().spec(id).unwrap().countermeasures.scope_bps,
            None
        );
    }

    #[test]
    fn heartbeats_are_acknowledged() {
        let mut e = engine();
        let r = handle(
            &mut e,
            &PEER,
            &request(
                RequestType::Put,
                &[".well-known", "dots", "hb"],
                &message::encode_heartbeat(false),
            ),
            0,
        );
        assert!(matches!(
            r,
            Reply::Heartbeat {
                peer_hb_status: false,
                ..
            }
        ));
        assert_eq!(code(&r), ResponseType::Changed);
    }
}
