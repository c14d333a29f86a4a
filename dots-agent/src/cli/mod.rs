//! The `dots-agent` command line.
pub mod pki;
pub mod signal;
pub mod traffic;
pub mod xdp;
