//! One CoAP session of the DOTS signal channel, free of I/O (the quinn-proto way): bytes
//! in, bytes out, time passed in. [`Session::on_message`] takes what arrived (one
//! datagram's plaintext over DTLS, any piece of the stream over TLS) and returns what to
//! send; [`Session::on_tick`] returns what is due (notifications, heartbeats,
//! retransmissions). A session holds what a CoAP endpoint keeps per peer: message ids and
//! tokens, the duplicate window (RFC 7252 §4.5), observations (RFC 7641), heartbeats
//! (RFC 9132 §4.7), block-wise transfers (RFC 7959 Block2, both ways) and the framing
//! (RFC 7252 datagrams, or RFC 8323 frames with CSM, Ping/Pong and Release).
//!
//! The application behind it is a [`Service`]: the engine's handler on a server, the
//! client's answers to server heartbeats on a client. A client sends requests with
//! [`Session::request`] and collects their responses (bodies put together from blocks)
//! with [`Session::response`]. DTLS and TLS transports shovel bytes around it; the server,
//! the client, and later a gateway use the same session.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};

pub mod blockwise;
mod inbound;
mod observe;
pub mod options;
#[cfg(test)]
mod tests;

use blockwise::{Assembly, Block, Received, Served};
pub use observe::{heartbeat_request, PERIODIC_NOTIFY};

use super::coap_tcp::{self, Frame};

/// Time as a session takes it: an instant for its timers, and seconds since the epoch for
/// the application.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub at: Instant,
    pub unix: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// CoAP over DTLS: one message per datagram, with types and message ids.
    Datagram,
    /// CoAP over TLS (RFC 8323): length-prefixed frames on a reliable stream.
    Stream,
}

/// Which end: a server sends heartbeats and serves observations; a client keeps what it
/// did not ask for (notifications, late answers) for its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// The largest CoAP message put in a datagram (RFC 9132 §7.3: it must fit the IPv6
/// minimum MTU with the DTLS overhead).
pub const MAX_DATAGRAM: usize = 1152;
/// RFC 8323 §5.3.1: what a peer takes until its CSM says otherwise.
const DEFAULT_MAX_MESSAGE: usize = 1152;
/// Request-Tag (RFC 9175): libcoap sends it with every block of a body.
const REQUEST_TAG: u16 = 292;
/// Answers remembered for duplicate detection (datagrams).
const DEDUP: usize = 16;
/// Notifications and unrelated responses kept for a client's caller (the oldest go first).
const STASH: usize = 64;

/// What the application answers to a message from the peer.
pub enum Reply {
    /// Send this response (the session sets type and message id).
    Response(Packet),
    /// Send nothing (an efficacy update for an unknown mitigation; traffic that needs no
    /// answer).
    Silence,
    /// A heartbeat arrived (2.04 to send, and liveness to record).
    Heartbeat {
        response: Packet,
        peer_hb_status: bool,
    },
    /// A GET with Observe 0 (register) or 1 (deregister): send the response and keep (or
    /// drop) the observation (RFC 7641, RFC 9132 §4.4.2.1).
    Observe {
        response: Packet,
        observation: Observation,
        register: bool,
    },
}

/// What a session watches for a client: its mitigations (one, or all), or its session
/// configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub token: Vec<u8>,
    pub cuid: String,
    /// The configured client (session configurations are kept per client).
    pub client: String,
    pub target: Watched,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// One mitigation, or all of the client's (None).
    Mitigation(Option<u32>),
    Config,
}

/// The application behind a session.
pub trait Service {
    /// Answers a request from the peer; also sees its responses to our requests and its
    /// empty messages (traffic; the answer is `Reply::Silence`).
    fn handle(&mut self, msg: &Packet, unix: u64) -> Reply;
    /// What an observation shows now (None: it is gone).
    fn fingerprint(&mut self, _obs: &Observation, _unix: u64) -> Option<Vec<u8>> {
        None
    }
    /// A notification for `obs` if one is due (`last`: what was last sent, updated), and
    /// whether the observation ends with it.
    fn notification(
        &mut self,
        _obs: &Observation,
        _last: &mut Vec<u8>,
        _periodic: bool,
        _sequence: u32,
        _unix: u64,
    ) -> Option<(Packet, bool)> {
        None
    }
    /// Seconds between the heartbeats this end sends (0: none).
    fn heartbeat_interval(&mut self) -> u64 {
        0
    }
    /// A heartbeat interval passed with nothing heard from the peer.
    fn heartbeat_missed(&mut self) {}
    /// A message could not be put on the wire (`why`); it was logged, and a response was
    /// replaced by a short 5.00 if that fits.
    fn unsendable(&mut self, _why: &str) {}
}

/// How a client's request is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Once (a stream delivers it); given up after `wait` without an answer.
    Once { wait: Duration },
    /// CON (RFC 7252 §4.2): sent again with the same message id, the timeout doubling from
    /// `first`, `retransmits` times.
    Confirmable { first: Duration, retransmits: u32 },
    /// NON, sent again with a new message id every `every`, `times` times in all (RFC
    /// 9132 §4.4.1: a client repeats a request it got no answer to).
    Repeated { every: Duration, times: u32 },
}

/// A request of ours waiting for its answer (or for the rest of a body).
struct Outstanding {
    /// The token the caller waits on.
    token: Vec<u8>,
    /// What is on the wire: the request, or the follow-up for the next block.
    packet: Packet,
    delivery: Delivery,
    /// Transmissions so far, and the timeout of the last one.
    sent: u32,
    timeout: Duration,
    next: Instant,
    /// A body coming in blocks, and the first block's message (its options).
    assembly: Option<(Assembly, Packet)>,
    /// It fetches the rest of a notification (delivered as one, under `token`).
    notification: bool,
}

pub struct Session {
    framing: Framing,
    role: Role,
    /// Bytes of a frame not complete yet (stream).
    inbox: Vec<u8>,
    message_id: u16,
    next_token: u32,
    /// Recent answers by request message id (datagrams): a retransmitted request gets the
    /// same answer again instead of being processed twice.
    answered: VecDeque<(u16, Vec<u8>)>,
    observations: observe::Observations,
    heartbeats: observe::Heartbeats,
    served: Served,
    /// Request bodies arriving in Block1 blocks.
    received: Received,
    /// The largest message the peer takes.
    peer_max: usize,
    /// Why the peer or the stream ended the session.
    closed: Option<String>,
    outstanding: Vec<Outstanding>,
    done: Vec<(Vec<u8>, Result<Packet, String>)>,
    stash: VecDeque<Packet>,
    /// Observations this end registered, by token: the request, to fetch the rest of a
    /// notification's body.
    observing: Vec<(Vec<u8>, Packet)>,
}

impl Session {
    /// A session; `message_id` is the first message id (random, from the caller).
    pub fn new(role: Role, framing: Framing, now: Instant, message_id: u16) -> Session {
        Session {
            framing,
            role,
            inbox: Vec::new(),
            message_id,
            next_token: 1,
            answered: VecDeque::new(),
            observations: Default::default(),
            heartbeats: observe::Heartbeats::new(now),
            served: Served::default(),
            received: Received::default(),
            peer_max: match framing {
                Framing::Datagram => MAX_DATAGRAM,
                Framing::Stream => DEFAULT_MAX_MESSAGE,
            },
            closed: None,
            outstanding: Vec::new(),
            done: Vec::new(),
            stash: VecDeque::new(),
            observing: Vec::new(),
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// What to send first: the CSM of a stream (RFC 8323 §5.3).
    pub fn start(&mut self) -> Vec<Vec<u8>> {
        match self.framing {
            Framing::Stream => vec![coap_tcp::csm()],
            Framing::Datagram => Vec::new(),
        }
    }

    /// Why the session ended (a Release or Abort, a malformed frame), if it did.
    pub fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Takes what arrived and returns what to send.
    pub fn on_message(&mut self, now: Now, bytes: &[u8], svc: &mut dyn Service) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        match self.framing {
            // Not CoAP: ignored, as a datagram that did not parse.
            Framing::Datagram => {
                if let Ok(p) = Packet::from_bytes(bytes) {
                    self.receive(now, p, svc, &mut out);
                }
            }
            Framing::Stream => {
                self.inbox.extend_from_slice(bytes);
                while self.closed.is_none() {
                    match coap_tcp::decode(&self.inbox) {
                        Ok(None) => break,
                        Ok(Some((frame, used))) => {
                            self.inbox.drain(..used);
                            self.frame(now, frame, svc, &mut out);
                        }
                        Err(e) => self.closed = Some(e.to_string()),
                    }
                }
            }
        }
        out
    }

    fn frame(&mut self, now: Now, frame: Frame, svc: &mut dyn Service, out: &mut Vec<Vec<u8>>) {
        match frame {
            Frame::Signal {
                code: coap_tcp::PING,
                token,
                ..
            } => out.push(coap_tcp::pong(&token)),
            Frame::Signal {
                code: coap_tcp::RELEASE | coap_tcp::ABORT,
                ..
            } => self.closed = Some("the peer released the connection".into()),
            Frame::Signal {
                code: coap_tcp::CSM,
                rest,
                ..
            } => {
                if let Some(n) = inbound::csm_max_message(&rest) {
                    self.peer_max = n;
                }
            }
            Frame::Signal { .. } => {} // Pong: nothing to answer
            Frame::Empty => {}
            Frame::Message(p) => self.receive(now, p, svc, out),
        }
    }

    fn receive(&mut self, now: Now, p: Packet, svc: &mut dyn Service, out: &mut Vec<Vec<u8>>) {
        if self.framing == Framing::Datagram
            && p.header.code == MessageClass::Empty
            && p.header.get_type() == MessageType::Confirmable
        {
            // A CoAP ping (RFC 7252 §4.3): answered with a Reset; it is traffic too.
            out.extend(self.encode(&reset(p.header.message_id), svc));
            if self.role == Role::Server {
                let _ = svc.handle(&p, now.unix);
            }
            return;
        }
        match p.header.code {
            MessageClass::Request(_) | MessageClass::Reserved(_) => self.serve(now, p, svc, out),
            MessageClass::Response(_) | MessageClass::Empty => {
                if self.answer(now, &p, out) {
                    return;
                }
                match self.role {
                    Role::Client => {
                        if self.stash.len() == STASH {
                            self.stash.pop_front();
                        }
                        self.stash.push_back(p);
                    }
                    // An answer to our heartbeat, or an empty ACK: traffic.
                    Role::Server => {
                        let _ = svc.handle(&p, now.unix);
                    }
                }
            }
        }
    }

    /// Answers a request of the peer.
    fn serve(&mut self, now: Now, req: Packet, svc: &mut dyn Service, out: &mut Vec<Vec<u8>>) {
        let datagram = self.framing == Framing::Datagram;
        if datagram {
            if let Some((_, again)) = self
                .answered
                .iter()
                .find(|(m, _)| *m == req.header.message_id)
            {
                out.push(again.clone());
                return;
            }
        }
        let confirmable = req.header.get_type() == MessageType::Confirmable;
        let Some(mut response) = self.respond(now, &req, svc) else {
            // No response (an efficacy update for an unknown mid): a CON request is still
            // acknowledged (RFC 7252 §4.2), so that the client stops retransmitting it.
            if datagram && confirmable {
                let mut ack = Packet::new();
                ack.header.code = MessageClass::Empty;
                ack.header.set_type(MessageType::Acknowledgement);
                ack.header.message_id = req.header.message_id;
                if let Some(bytes) = self.encode(&ack, svc) {
                    self.remember(req.header.message_id, &bytes);
                    out.push(bytes);
                }
            }
            return;
        };
        if datagram {
            if confirmable {
                // Piggybacked on the acknowledgement.
                response.header.set_type(MessageType::Acknowledgement);
                response.header.message_id = req.header.message_id;
            } else {
                response.header.set_type(MessageType::NonConfirmable);
                response.header.message_id = self.next_message_id();
            }
        }
        let bytes = match self.encode(&response, svc) {
            Some(b) => b,
            None => {
                // Still an answer: 5.00 saying why, rather than a request left hanging.
                let mut short = diagnostic(
                    &req,
                    ResponseType::InternalServerError,
                    "the response could not be encoded within the message size",
                );
                short.header = response.header.clone();
                short.header.code = MessageClass::Response(ResponseType::InternalServerError);
                let Some(b) = self.encode(&short, svc) else {
                    return;
                };
                b
            }
        };
        if datagram {
            self.remember(req.header.message_id, &bytes);
        }
        out.push(bytes);
    }

    /// Keeps the answer to a request for its retransmissions (datagrams).
    fn remember(&mut self, message_id: u16, bytes: &[u8]) {
        if self.answered.len() == DEDUP {
            self.answered.pop_front();
        }
        self.answered.push_back((message_id, bytes.to_vec()));
    }

    fn respond(&mut self, now: Now, req: &Packet, svc: &mut dyn Service) -> Option<Packet> {
        if let Some(n) = options::unrecognised_critical(req) {
            return Some(diagnostic(
                req,
                ResponseType::BadOption,
                &format!("critical option {n} is not supported by this server (RFC 7252 §5.4.1)"),
            ));
        }
        let Ok(block2) = Block::of(req, CoapOption::Block2) else {
            return Some(diagnostic(
                req,
                ResponseType::BadOption,
                "malformed Block2 option",
            ));
        };
        // Q-Block2 (go-dots) asks for a block-wise answer: given in Block2 of our size,
        // only when the body does not fit one message (see options.rs).
        let block2 = match (
            block2,
            Block::of(req, CoapOption::Unknown(options::Q_BLOCK2)),
        ) {
            (Some(b), _) => Some(b),
            (None, Ok(Some(q))) if q.num > 0 => Some(Block {
                num: q.num,
                more: false,
                szx: q.szx,
            }),
            _ => None,
        };
        let key = blockwise::resource_key(req);
        if let Some(b) = block2.filter(|b| b.num > 0) {
            // The next block of a body being served (else the request runs again).
            if let Some(mut p) = self.served.next(now.at, &key, self.block_for(b)) {
                p.set_token(req.get_token().to_vec());
                p.clear_option(CoapOption::Observe);
                return Some(p);
            }
        }
        let (whole, block1) = match self.block1(now, req) {
            Ok(Some((whole, b))) => (Some(whole), Some(b)),
            Ok(None) => (None, None),
            Err(answer) => return Some(answer),
        };
        let req = whole.as_ref().unwrap_or(req);
        let mut response = match svc.handle(req, now.unix) {
            Reply::Silence => return None,
            Reply::Response(p) => p,
            Reply::Heartbeat { response, .. } => {
                self.heartbeats.heard(now.at);
                response
            }
            Reply::Observe {
                response,
                observation,
                register,
            } => {
                self.observations
                    .apply(observation, register, key.clone(), svc, now.at, now.unix);
                response
            }
        };
        if let Some(b) = block1 {
            b.set(&mut response, CoapOption::Block1);
        }
        let asked = block2.map(|b| self.block_for(b));
        if self.too_big(&response) || asked.is_some_and(|b| response.payload.len() > b.size()) {
            let b = asked.unwrap_or(Block {
                num: 0,
                more: false,
                szx: self.largest_block(),
            });
            response = self.served.first(now.at, key, response, b);
        }
        Some(response)
    }

    /// What is due now: notifications and heartbeats (a server), retransmissions and
    /// give-ups (a client).
    pub fn on_tick(&mut self, now: Now, svc: &mut dyn Service) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.role == Role::Server {
            let mut due = self.observations.due(svc, now.at, now.unix);
            due.extend(self.heartbeats.due(svc, now.at).map(|p| (p, Vec::new())));
            // Notifications and heartbeats are NON (RFC 9132 §4.4.2.1, §4.7).
            for (mut p, key) in due {
                if self.too_big(&p) {
                    let b = Block {
                        num: 0,
                        more: false,
                        szx: self.largest_block(),
                    };
                    p = self.served.first(now.at, key, p, b);
                }
                p.header.set_type(MessageType::NonConfirmable);
                p.header.message_id = self.next_message_id();
                out.extend(self.encode(&p, svc));
            }
        }
        let mut failed = Vec::new();
        for i in 0..self.outstanding.len() {
            let o = &self.outstanding[i];
            if now.at < o.next {
                continue;
            }
            let resend = match o.delivery {
                Delivery::Once { wait } => {
                    failed.push((i, format!("no response within {} s", wait.as_secs())));
                    continue;
                }
                Delivery::Confirmable { retransmits, .. } if o.sent > retransmits => {
                    failed.push((
                        i,
                        format!("no acknowledgement after {retransmits} retransmissions"),
                    ));
                    continue;
                }
                Delivery::Repeated { times, .. } if o.sent >= times => {
                    failed.push((i, format!("no response after {times} tries")));
                    continue;
                }
                // The same message id: a retransmission.
                Delivery::Confirmable { .. } => (o.timeout * 2, None),
                // A new one: the request again.
                Delivery::Repeated { every, .. } => (every, Some(self.message_id.wrapping_add(1))),
            };
            if resend.1.is_some() {
                self.next_message_id();
            }
            let o = &mut self.outstanding[i];
            o.sent += 1;
            o.timeout = resend.0;
            o.next = now.at + resend.0;
            if let Some(mid) = resend.1 {
                o.packet.header.message_id = mid;
            }
            let p = o.packet.clone();
            out.extend(self.encode_request(&p));
        }
        for (i, why) in failed.into_iter().rev() {
            let o = self.outstanding.remove(i);
            if !o.notification {
                self.done.push((o.token, Err(why)));
            }
        }
        out
    }

    /// When [`Session::on_tick`] has something to do for a request of ours.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outstanding.iter().map(|o| o.next).min()
    }

    /// Sends a request (a client's): returns the token its answer carries and what to send.
    /// A GET with Observe 0 registers an observation whose notifications
    /// [`Session::notification`] returns.
    pub fn request(
        &mut self,
        now: Now,
        mut p: Packet,
        delivery: Delivery,
    ) -> (Vec<u8>, Vec<Vec<u8>>) {
        let token = self.next_token.to_be_bytes().to_vec();
        self.next_token = self.next_token.wrapping_add(1);
        p.set_token(token.clone());
        if p.get_observe_value() == Some(Ok(0)) {
            self.observing.retain(|(t, _)| *t != token);
            self.observing.push((token.clone(), p.clone()));
        }
        let (kind, timeout) = match delivery {
            Delivery::Once { wait } => (MessageType::NonConfirmable, wait),
            Delivery::Confirmable { first, .. } => (MessageType::Confirmable, first),
            Delivery::Repeated { every, .. } => (MessageType::NonConfirmable, every),
        };
        p.header.set_type(kind);
        p.header.message_id = self.next_message_id();
        let out = self.encode_request(&p).into_iter().collect();
        self.outstanding.push(Outstanding {
            token: token.clone(),
            packet: p,
            delivery,
            sent: 1,
            timeout,
            next: now.at + timeout,
            assembly: None,
            notification: false,
        });
        (token, out)
    }

    /// The answer to a request of ours once it is complete (a body in blocks put
    /// together), or why it failed.
    pub fn response(&mut self, token: &[u8]) -> Option<Result<Packet, String>> {
        let i = self.done.iter().position(|(t, _)| t == token)?;
        Some(self.done.remove(i).1)
    }

    /// The next notification (or late answer) carrying `token`.
    pub fn notification(&mut self, token: &[u8]) -> Option<Packet> {
        let i = self.stash.iter().position(|p| p.get_token() == token)?;
        self.stash.remove(i)
    }

    /// A message from the peer that answers a request of ours: consumed (the answer is
    /// stored, or the next block asked for).
    fn answer(&mut self, now: Now, p: &Packet, out: &mut Vec<Vec<u8>>) -> bool {
        if p.header.code == MessageClass::Empty {
            // An empty ACK of a CON request (by message id): the answer comes separately;
            // stop retransmitting and wait for it.
            let acked = self.outstanding.iter_mut().find(|o| {
                o.packet.header.message_id == p.header.message_id
                    && matches!(o.delivery, Delivery::Confirmable { .. })
            });
            let Some(o) = acked.filter(|_| p.header.get_type() == MessageType::Acknowledgement)
            else {
                return false;
            };
            o.delivery = Delivery::Once {
                wait: Duration::from_secs(10),
            };
            o.next = now.at + Duration::from_secs(10);
            return true;
        }
        let Some(i) = self
            .outstanding
            .iter()
            .position(|o| o.packet.get_token() == p.get_token())
        else {
            return self.notification_in_blocks(now, p, out);
        };
        let block = Block::of(p, CoapOption::Block2).unwrap_or_default();
        let mut o = self.outstanding.remove(i);
        let more = match block {
            Some(b) if b.more || o.assembly.is_some() => {
                let (a, _) = o.assembly.get_or_insert_with(|| {
                    (
                        Assembly {
                            body: Vec::new(),
                            etag: None,
                            next: 0,
                            szx: b.szx,
                        },
                        p.clone(),
                    )
                });
                if !a.add(b, p.get_first_option(CoapOption::ETag), &p.payload) {
                    self.finish(
                        o,
                        Err("the body changed during a block-wise transfer".into()),
                    );
                    return true;
                }
                b.more
            }
            _ => false,
        };
        if more {
            self.fetch_next(now, o, out);
            return true;
        }
        let whole = match o.assembly.take() {
            Some((a, mut head)) => {
                head.payload = a.body;
                head.clear_option(CoapOption::Block2);
                head.set_token(o.token.clone());
                head
            }
            None => p.clone(),
        };
        self.finish(o, Ok(whole));
        true
    }

    /// Asks for the next block of the body `o` is putting together.
    fn fetch_next(&mut self, now: Now, mut o: Outstanding, out: &mut Vec<Vec<u8>>) {
        let Some((a, _)) = &o.assembly else {
            return;
        };
        let block = Block {
            num: a.next,
            more: false,
            szx: a.szx,
        };
        let mut p = o.packet.clone();
        p.clear_option(CoapOption::Observe);
        block.set(&mut p, CoapOption::Block2);
        // A new token for each follow-up, as libcoap does.
        p.set_token(self.next_token.to_be_bytes().to_vec());
        self.next_token = self.next_token.wrapping_add(1);
        p.header.message_id = self.next_message_id();
        out.extend(self.encode_request(&p));
        o.packet = p;
        o.sent = 1;
        o.timeout = match o.delivery {
            Delivery::Once { wait } => wait,
            Delivery::Confirmable { first, .. } => first,
            Delivery::Repeated { every, .. } => every,
        };
        o.next = now.at + o.timeout;
        self.outstanding.push(o);
    }

    /// The first block of a notification of ours with more to come: fetch the rest.
    fn notification_in_blocks(&mut self, now: Now, p: &Packet, out: &mut Vec<Vec<u8>>) -> bool {
        let Some(Ok(_)) = p.get_observe_value() else {
            return false;
        };
        let Ok(Some(b)) = Block::of(p, CoapOption::Block2) else {
            return false;
        };
        let Some((_, req)) = self.observing.iter().find(|(t, _)| t == p.get_token()) else {
            return false;
        };
        if !b.more || b.num != 0 {
            return false;
        }
        let mut a = Assembly {
            body: Vec::new(),
            etag: None,
            next: 0,
            szx: b.szx,
        };
        if !a.add(b, p.get_first_option(CoapOption::ETag), &p.payload) {
            return false;
        }
        let o = Outstanding {
            token: p.get_token().to_vec(),
            packet: req.clone(),
            delivery: match self.framing {
                Framing::Stream => Delivery::Once {
                    wait: Duration::from_secs(10),
                },
                Framing::Datagram => Delivery::Repeated {
                    every: Duration::from_secs(2),
                    times: 4,
                },
            },
            sent: 1,
            timeout: Duration::from_secs(2),
            next: now.at,
            assembly: Some((a, p.clone())),
            notification: true,
        };
        self.fetch_next(now, o, out);
        true
    }

    fn finish(&mut self, o: Outstanding, result: Result<Packet, String>) {
        match (o.notification, result) {
            (true, Ok(p)) => {
                if self.stash.len() == STASH {
                    self.stash.pop_front();
                }
                self.stash.push_back(p);
            }
            (true, Err(_)) => {}
            (false, r) => self.done.push((o.token, r)),
        }
    }

    fn next_message_id(&mut self) -> u16 {
        self.message_id = self.message_id.wrapping_add(1);
        self.message_id
    }

    /// The block that answers a request for `b`: its number, at most our largest size.
    fn block_for(&self, b: Block) -> Block {
        Block {
            num: b.num,
            more: false,
            szx: b.szx.min(self.largest_block()),
        }
    }

    /// The SZX of the largest block that fits a message the peer takes.
    fn largest_block(&self) -> u8 {
        // Room for the header, token and the response's options.
        blockwise::szx_for(self.peer_max.saturating_sub(128).min(blockwise::MAX_BLOCK))
    }

    fn too_big(&self, p: &Packet) -> bool {
        let limit = self.peer_max.min(coap_tcp::MAX_MESSAGE);
        p.to_bytes_unlimited()
            .map_or(true, |b| b.len().saturating_sub(4) > limit)
    }

    /// A message as it goes on the wire (None: it cannot be encoded; logged and counted).
    fn encode(&self, p: &Packet, svc: &mut dyn Service) -> Option<Vec<u8>> {
        self.wire(p)
            .map_err(|why| {
                tracing::warn!("{why}");
                svc.unsendable(&why);
            })
            .ok()
    }

    /// A message as it goes on the wire, or why it cannot be encoded.
    fn wire(&self, p: &Packet) -> Result<Vec<u8>, String> {
        let encoded = match self.framing {
            Framing::Datagram => p.to_bytes().map_err(|e| format!("{e:?}")),
            Framing::Stream => coap_tcp::encode(p).map_err(|e| e.to_string()),
        };
        encoded.map_err(|e| {
            format!(
                "a CoAP message ({}, {} bytes of payload) could not be encoded: {e}",
                code_name(p),
                p.payload.len()
            )
        })
    }

    /// One of our own requests on the wire (None: it cannot be encoded; logged, and the
    /// request then times out for its caller).
    fn encode_request(&self, p: &Packet) -> Option<Vec<u8>> {
        self.wire(p).map_err(|why| tracing::warn!("{why}")).ok()
    }
}

/// A Reset answering message `message_id` (empty, no token).
fn reset(message_id: u16) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Empty;
    p.header.set_type(MessageType::Reset);
    p.header.message_id = message_id;
    p
}

/// "2.05" and the like, for logs.
fn code_name(p: &Packet) -> String {
    let c = u8::from(p.header.code);
    format!("{}.{:02}", c >> 5, c & 0x1f)
}

fn diagnostic(req: &Packet, code: ResponseType, text: &str) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(code);
    p.set_token(req.get_token().to_vec());
    p.payload = text.as_bytes().to_vec();
    p
}
