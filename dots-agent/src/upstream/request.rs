//! What a server checks of a request before its handler when gateways are involved: the
//! cdid a trusted server-domain gateway names (RFC 9132 §4.4.1.2; 4.03 from anyone else),
//! and on a relaying server the Hop-Limit (RFC 8768; 5.08 when it runs out). What arrived
//! is handed to the engine and the relay for the operation, and cleared after it.

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};

use super::hop;
use super::relay::{Arrived, Relay};
use crate::datapath::Mitigator;
use crate::engine::{Engine, Refusal};
use crate::signal::handler::Peer;
use crate::signal::message::decode_mitigation_request;
use crate::signal::session::Reply;
use crate::signal::telemetry::decode_pre_mitigation;
use crate::signal::uri::{self, Resource};

/// The resource a request's Uri-Path names (None when it names none: the handler answers
/// that).
fn path_resource(msg: &Packet) -> Option<Resource> {
    let segments: Vec<String> = msg
        .get_option(CoapOption::UriPath)?
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let segs: Vec<&str> = segments.iter().map(|s| s.as_str()).collect();
    uri::parse(&segs).ok()
}

/// The cdid a request's Uri-Path carries.
fn path_cdid(msg: &Packet) -> Option<String> {
    match path_resource(msg)? {
        Resource::Mitigate { cdid, .. }
        | Resource::TelemetrySetup { cdid, .. }
        | Resource::Telemetry { cdid, .. } => cdid,
        Resource::Config { .. } | Resource::Heartbeat => None,
    }
}

/// Before the handler: Err with the reply that ends the request (4.03 for a cdid from a
/// client not trusted with one, 4.00 or 5.08 for its Hop-Limit).
#[allow(clippy::result_large_err)] // a Reply is what the session sends; made once per refusal
pub fn admit<M: Mitigator>(
    engine: &mut Engine<M>,
    peer: &Peer<'_>,
    msg: &Packet,
) -> Result<(), Reply> {
    let Some(client) = peer.client else {
        return Ok(()); // an unknown certificate: the handler's 4.01
    };
    let cdid = path_cdid(msg);
    if let Err(Refusal::Forbidden(why)) = engine.begin_request_cdid(client, cdid.as_deref()) {
        return Err(hop::refuse(msg, ResponseType::Forbidden, why));
    }
    let Some(relay) = engine.escalation_mut::<Relay>() else {
        return Ok(()); // not relaying: Hop-Limit is for proxies
    };
    let hop = match msg.header.code == MessageClass::Request(RequestType::Put) {
        true => hop::check(msg, relay.here(), client)?,
        false => None,
    };
    if let Some(h) = hop {
        if let Some(reply) = looped(relay, msg, h, client) {
            return Err(reply);
        }
    }
    // An efficacy update (RFC 9132 §4.4.3: a PUT with an empty If-Match) is relayed as one.
    let efficacy = msg
        .get_option(CoapOption::IfMatch)
        .is_some_and(|l| l.iter().any(|v| v.is_empty()))
        .then(|| decode_mitigation_request(&msg.payload).ok())
        .flatten();
    relay.set_arrived(Arrived {
        hop,
        cdid,
        identity: Some(peer.cuid.to_string()),
        efficacy,
    });
    Ok(())
}

/// After the handler answered `reply`: a relaying server relays the client's
/// pre-or-ongoing-mitigation telemetry (RFC 9244 §8) it accepted; then what arrived with
/// the request no longer applies.
pub fn after<M: Mitigator>(engine: &mut Engine<M>, peer: &Peer<'_>, msg: &Packet, reply: &Reply) {
    if let Some(client) = peer.client {
        relay_telemetry(engine, client, msg, reply);
    }
    done(engine);
}

fn relay_telemetry<M: Mitigator>(
    engine: &mut Engine<M>,
    client: &str,
    msg: &Packet,
    reply: &Reply,
) {
    let Some(Resource::Telemetry { cuid, tmid, .. }) = path_resource(msg) else {
        return;
    };
    let accepted = match reply {
        Reply::Response(r) => matches!(
            r.header.code,
            MessageClass::Response(ResponseType::Changed | ResponseType::Deleted)
        ),
        _ => false,
    };
    if !accepted || engine.escalation_mut::<Relay>().is_none() {
        return;
    }
    let report = match msg.header.code {
        MessageClass::Request(RequestType::Put) => {
            // The handler accepted it, so it decodes and resolves as it did there.
            let Ok(decoded) = decode_pre_mitigation(&msg.payload) else {
                return;
            };
            let Ok(resolved) = engine.tm_resolve(&cuid, decoded) else {
                return;
            };
            Some(resolved)
        }
        MessageClass::Request(RequestType::Delete) => None,
        _ => return,
    };
    let keep: Vec<u32> = engine
        .tm_get(client, None)
        .map(|all| all.into_iter().filter_map(|(t, _)| t).collect())
        .unwrap_or_default();
    engine.escalation_event::<Relay, ()>(|r| {
        ((), r.telemetry_changed(&cuid, client, tmid, report, &keep))
    });
}

/// A relayed PUT that is this server's own relayed request come back (two gateways each
/// other's upstream, or a longer ring): 5.08 naming the loop, rather than the conflict with
/// the mitigation it is a copy of (RFC 8768 ends loops in 5.08; the Hop-Limit alone would
/// take 16 hops to run out).
fn looped(relay: &Relay, msg: &Packet, hop: u8, from: &str) -> Option<Reply> {
    let scope = decode_mitigation_request(&msg.payload).ok()?;
    let cuid = match path_resource(msg)? {
        Resource::Mitigate { cuid, .. } => cuid,
        _ => return None,
    };
    let (mid, client, sent) = relay.came_back(&scope, hop, &cuid)?;
    let here = relay.here();
    let targets: Vec<String> = scope.target_prefix.iter().map(|p| p.to_string()).collect();
    Some(hop::refuse(
        msg,
        ResponseType::HopLimitReached,
        format!(
            "loop of DOTS gateways: {here} relayed mid {mid} of {client} ({}) to {} with \
             Hop-Limit {sent}, and it came back from {from} with Hop-Limit {hop}: {here} -> \
             {} -> ... -> {from} -> {here}; fix the [upstream] of one of them",
            targets.join(", "),
            relay.upstream_name(),
            relay.upstream_name(),
        ),
    ))
}

/// What arrived with the request no longer applies.
fn done<M: Mitigator>(engine: &mut Engine<M>) {
    engine.end_request_cdid();
    if let Some(relay) = engine.escalation_mut::<Relay>() {
        relay.set_arrived(Arrived::default());
    }
}
