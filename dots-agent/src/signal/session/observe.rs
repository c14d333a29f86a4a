//! What a serving session keeps between messages: the peer's observations (RFC 7641, RFC
//! 9132 §4.4.2.1) and the heartbeats it sends (RFC 9132 §4.7).

use std::time::{Duration, Instant};

use coap_lite::{CoapOption, ContentFormat, MessageClass, Packet, RequestType};

use super::{Observation, Service};
use crate::signal::message;

/// How often an observed mitigation is re-sent even without a status change (its counters
/// move while it is active).
pub const PERIODIC_NOTIFY: Duration = Duration::from_secs(30);

/// An observation, what its notifications' bodies are kept under (the registering
/// request's resource), the fingerprint of what was last sent, and when.
struct Watched {
    obs: Observation,
    key: Vec<u8>,
    last: Vec<u8>,
    sent: Instant,
}

#[derive(Default)]
pub(super) struct Observations {
    list: Vec<Watched>,
    sequence: u32,
}

impl Observations {
    pub fn apply(
        &mut self,
        obs: Observation,
        register: bool,
        key: Vec<u8>,
        svc: &mut dyn Service,
        now: Instant,
        unix: u64,
    ) {
        self.list.retain(|w| w.obs.token != obs.token);
        if register {
            let last = svc.fingerprint(&obs, unix).unwrap_or_default();
            self.list.push(Watched {
                obs,
                key,
                last,
                sent: now,
            });
        }
    }

    /// Notifications due now (status changed, or the periodic one), each with its
    /// resource key; ends observations whose mitigation is gone, after telling the peer.
    pub fn due(
        &mut self,
        svc: &mut dyn Service,
        now: Instant,
        unix: u64,
    ) -> Vec<(Packet, Vec<u8>)> {
        let mut out = Vec::new();
        let sequence = &mut self.sequence;
        self.list.retain_mut(|w| {
            let periodic = now.duration_since(w.sent) >= PERIODIC_NOTIFY;
            *sequence = sequence.wrapping_add(1);
            match svc.notification(&w.obs, &mut w.last, periodic, *sequence, unix) {
                Some((p, ended)) => {
                    w.sent = now;
                    out.push((p, w.key.clone()));
                    !ended
                }
                None => true,
            }
        });
        out
    }
}

/// When to send the session's own heartbeats, and whether the peer's arrive.
pub(super) struct Heartbeats {
    sent: Instant,
    peer_seen: Option<Instant>,
    counter: u32,
}

impl Heartbeats {
    pub fn new(now: Instant) -> Self {
        Heartbeats {
            sent: now,
            peer_seen: None,
            counter: 0,
        }
    }

    pub fn heard(&mut self, now: Instant) {
        self.peer_seen = Some(now);
    }

    /// A PUT /hb to send now, if the heartbeat interval has passed since the last.
    pub fn due(&mut self, svc: &mut dyn Service, now: Instant) -> Option<Packet> {
        let interval = svc.heartbeat_interval();
        if interval == 0 || now.duration_since(self.sent) < Duration::from_secs(interval) {
            return None;
        }
        // Nothing from the peer since our last heartbeat, a whole interval ago: missed.
        if self.peer_seen.is_none_or(|t| t < self.sent) && self.counter > 0 {
            svc.heartbeat_missed();
        }
        self.sent = now;
        self.counter = self.counter.wrapping_add(1);
        let window = Duration::from_secs(2 * interval);
        let theirs_arrive = self
            .peer_seen
            .is_some_and(|t| now.duration_since(t) <= window);
        let mut token = b"hb".to_vec();
        token.extend_from_slice(&self.counter.to_be_bytes());
        Some(heartbeat_request(token, theirs_arrive))
    }
}

/// A heartbeat (RFC 9132 §4.7): PUT /hb telling the peer whether its own heartbeats reach
/// us.
pub fn heartbeat_request(token: Vec<u8>, peer_hb_status: bool) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Put);
    p.set_token(token);
    for s in [".well-known", "dots", "hb"] {
        p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
    }
    p.set_content_format(ContentFormat::ApplicationDotsCbor);
    p.payload = message::encode_heartbeat(peer_hb_status);
    p
}
