//! The DOTS signal channel's protocol core (RFC 9132, RFC 9244 telemetry), free of I/O:
//! CBOR encoding with the comprehension rules, typed message bodies, resource paths, the
//! mitigation engine and the CoAP handler. The transports (`server`, `client`) and the
//! store build on this.

pub mod cbor;
pub mod coap_tcp;
pub mod diag;
pub mod handler;
pub mod message;
pub mod session_config;
pub mod telemetry;
pub mod uri;
