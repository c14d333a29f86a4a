//! The `dots-agent` command line.
pub mod data;
pub mod exit;
pub mod pki;
pub mod show;
pub mod signal;
pub mod telemetry;
pub mod xdp;
