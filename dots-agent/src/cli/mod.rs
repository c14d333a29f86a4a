//! The `dots-agent` command line.
pub mod data;
pub mod exit;
pub mod follow;
pub mod pki;
pub mod server;
pub mod show;
pub mod signal;
pub mod store;
pub mod telemetry;
pub mod xdp;
mod xdp_status;
