//! The DOTS data channel (RFC 8783): RESTCONF over HTTPS with mutual X.509 authentication.
//!
//! - [`restconf`]: error bodies and HTTP statuses (RFC 8040 §7), resource paths, host-meta.
//! - [`model`]: the `ietf-dots-data-channel` JSON model (aliases, ACLs, limits, views).
//! - [`mapping`]: ACLs onto the datapath's ACL entries, and the capabilities derived from
//!   that mapping.
//! - [`service`]: registrations, aliases and ACLs per client: request handling.
//! - [`state`]: registrations, aliases and ACLs per client, and their changes, applied by
//!   the engine (datapath and store) before they are made; the restart.
//! - [`source`]: the data channel as the engine asks it (aliases, RFC 9133 acl-list).
//! - [`gateway`]: what a DOTS gateway's data channel does not relay (ACLs: 501).
//! - [`client`]: the HTTPS client behind `dots-agent client data`.
//!
//! All but `client` are free of I/O; the server's HTTPS listener is `server::https`.

pub mod client;
pub mod gateway;
pub mod mapping;
pub mod model;
pub mod restconf;
pub mod service;
pub mod source;
pub mod state;

pub use source::SharedData;
pub use state::DataChannel;
