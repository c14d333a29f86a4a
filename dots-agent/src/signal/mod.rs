//! The DOTS signal channel's protocol core (RFC 9132, RFC 9244 telemetry), free of I/O:
//! CBOR encoding with the comprehension rules, typed message bodies, resource paths, the
//! CoAP session (framing, message ids, duplicates, observers, heartbeats, block-wise) and
//! the handler that turns requests into engine calls. The transports (`server`, `client`)
//! shovel bytes around sessions.

pub mod cbor;
pub mod coap_tcp;
pub mod diag;
pub mod handler;
pub mod message;
pub mod session;
pub mod session_config;
pub mod telemetry;
pub mod uri;
