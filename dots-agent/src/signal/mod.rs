//! The DOTS signal channel's protocol core (RFC 9132), free of I/O: CBOR encoding with the
//! comprehension rules, typed message bodies, and resource paths. Transports (DTLS, TLS with
//! RFC 8323 framing) and the session/mitigation engine build on this.
//!
//! Status: message model, paths and the mitigation engine; the CoAP handler, transports,
//! session configuration and heartbeats, the store and the client are the rest of issue 3.

pub mod cbor;
pub mod coap_tcp;
pub mod diag;
pub mod engine;
pub mod handler;
pub mod message;
pub mod session_config;
pub mod uri;
