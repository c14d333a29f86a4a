//! The DOTS signal channel's protocol core (RFC 9132), free of I/O: CBOR encoding with the
//! comprehension rules, typed message bodies, and resource paths. Transports (DTLS, TLS with
//! RFC 8323 framing) and the session/mitigation engine build on this.
//!
//! Status: message model and paths; the engine and transports are the rest of issue 3.

pub mod cbor;
pub mod message;
pub mod uri;
