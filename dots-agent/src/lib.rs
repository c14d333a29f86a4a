//! dots-agent: a DOTS (DDoS Open Threat Signaling) agent that steers an XDP scrubber.
//!
//! - [`datapath`]: the XDP program's loader, its maps and the [`datapath::Mitigator`] seam.
//! - [`signal`]: the DOTS signal channel's I/O-free protocol core (CBOR, messages, paths).
//! - [`pki`]: lab CA and certificates, cuid derivation.
//! - [`packet`]: frame builder shared by tests, benchmarks and traffic tools.
//! - [`traffic`]: AF_PACKET sender and counting receiver.
//! - [`trafficgen`]: the fast generator (XDP live frames) and the labelled receiver.
//! - [`lab`]: `dots-agent lab`, the scenario in namespaces, and the veth benchmark.
//! - [`server`], [`client`]: the signal channel's transports (TLS today).
//! - [`store`]: the embedded SQLite store of mitigations and session configurations.
//! - [`cli`]: the command line.

pub mod cli;
pub mod client;
pub mod datapath;
pub mod dtls_io;
pub mod lab;
pub mod packet;
pub mod pki;
pub mod server;
pub mod signal;
pub mod store;
pub mod traffic;
pub mod trafficgen;
