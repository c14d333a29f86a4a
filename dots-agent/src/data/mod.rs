//! The DOTS data channel (RFC 8783): RESTCONF over HTTPS with mutual X.509 authentication.
//!
//! - [`restconf`]: error bodies and HTTP statuses (RFC 8040 §7), resource paths, host-meta.
//! - [`model`]: the `ietf-dots-data-channel` JSON model, its mapping onto the datapath's
//!   ACL entries, and the capabilities derived from that mapping.
//! - [`service`]: registrations, aliases and ACLs per client: request handling, store.
//! - [`layer`]: the [`datapath::Mitigator`](crate::datapath::Mitigator) wrapper that puts
//!   ACLs into the XDP filter (immediate / activate-when-mitigating).
//! - [`https`]: the HTTPS server; [`client`]: the HTTPS client behind `dots-agent client data`.
//!
//! All but `https` and `client` are free of I/O.

pub mod client;
pub mod https;
pub mod layer;
pub mod model;
pub mod restconf;
pub mod service;

pub use layer::{AclHandle, AclLayer};
pub use service::DataChannel;
