//! dots-agent: a DOTS (DDoS Open Threat Signaling) agent that steers an XDP scrubber.
//!
//! - [`datapath`]: the XDP program's loader, its maps and the [`datapath::Mitigator`] seam.
//! - [`signal`]: the DOTS signal channel's I/O-free protocol core (CBOR, messages, paths).
//! - [`pki`]: lab CA and certificates, cuid derivation.
//! - [`af_packet`]: the AF_PACKET socket (send, batch send, receive, count, statistics).
//! - [`server`], [`client`]: the signal channel's transports (DTLS and TLS).
//! - [`metrics`]: Prometheus exposition of the signal channel and the datapath.
//! - [`measure`]: what a client measures on its interface for telemetry.
//! - [`data`]: the DOTS data channel (RFC 8783): aliases and ACLs that drive the filter.
//! - [`store`]: the embedded SQLite store of mitigations and session configurations.
//! - [`cli`]: the command line.
//!
//! The lab, the traffic generator, the packet builder and the veth and BPF benchmarks live in
//! the `dots-lab` crate, which depends on this one.

pub mod af_packet;
pub mod app;
pub mod cli;
pub mod client;
pub mod clock;
pub mod control;
pub mod data;
pub mod datapath;
pub mod dtls_io;
pub mod engine;
pub mod measure;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod signal;
pub mod store;
