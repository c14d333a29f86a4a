//! The `dots-agent` command line.
pub mod data;
pub mod pki;
pub mod signal;
pub mod telemetry;
pub mod xdp;
