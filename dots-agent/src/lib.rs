//! dots-agent: a DOTS (DDoS Open Threat Signaling) agent that steers an XDP scrubber.
//!
//! - [`app`]: the composition root: the one place that assembles the server;
//!   [`preflight`]: what a start checks before it touches anything; [`admin`]: the
//!   server's control socket (reload, operator mitigations).
//! - [`control`]: the one writer: engine, data channel and signal sessions on one thread.
//! - [`engine`]: mitigation state without I/O, the only writer to the datapath and the store.
//! - [`datapath`]: the XDP program's loader, its maps and the [`datapath::Mitigator`] seam.
//! - [`signal`]: the DOTS signal channel's I/O-free protocol core (CBOR, messages, paths,
//!   the CoAP session, the handler).
//! - [`pki`]: lab CA and certificates, cuid derivation.
//! - [`af_packet`]: the AF_PACKET socket (send, batch send, receive, count, statistics).
//! - [`server`]: the listeners (DTLS, TLS, the data channel's HTTPS, metrics) and server.toml.
//! - [`client`]: the DOTS client over DTLS or TLS; [`tls_failure`]: which side refused
//!   a handshake, and what.
//! - [`metrics`]: Prometheus exposition of the signal channel and the datapath.
//! - [`measure`]: what a client measures on its interface for telemetry.
//! - [`flowspec`]: BGP FlowSpec through gobgpd: announce mitigations, follow them on a node.
//! - [`data`]: the DOTS data channel (RFC 8783): aliases and ACLs that drive the filter.
//! - [`store`]: the embedded SQLite store, the engine's journal; [`clock`]: the process's
//!   time, which the core takes as an argument.
//! - [`upstream`]: gateways and recursive signalling: the relay of accepted mitigations to
//!   the next DOTS server, over one client session of the server's own.
//! - [`cli`]: the command line.
//!
//! The lab, the traffic generator, the packet builder and the veth and BPF benchmarks live in
//! the `dots-lab` crate, which depends on this one.

pub mod admin;
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
pub mod flowspec;
pub mod measure;
pub mod metrics;
pub mod pki;
pub mod preflight;
pub mod server;
pub mod signal;
pub mod store;
pub mod tls_failure;
pub mod upstream;
