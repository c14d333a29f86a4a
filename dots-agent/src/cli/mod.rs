//! The `dots-agent` command line.
pub mod pki;
pub mod traffic;
pub mod xdp;
