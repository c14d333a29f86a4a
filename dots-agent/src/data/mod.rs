//! The DOTS data channel (RFC 8783): RESTCONF over HTTPS with mutual X.509 authentication.
//!
//! - [`restconf`]: error bodies and HTTP statuses (RFC 8040 §7), resource paths, host-meta.
//! - [`model`]: the `ietf-dots-data-channel` JSON model, its mapping onto the datapath's
//!   ACL entries, and the capabilities derived from that mapping.
//! - [`service`]: registrations, aliases and ACLs per client: request handling; changes go
//!   to the engine (datapath and store) before they are made.
//! - [`client`]: the HTTPS client behind `dots-agent client data`.
//!
//! All but `client` are free of I/O; the server's HTTPS listener is `server::https`.

pub mod client;
pub mod model;
pub mod restconf;
pub mod service;

pub use service::{DataChannel, SharedData};
