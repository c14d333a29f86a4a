//! The `dots-agent` command line.
pub mod traffic;
pub mod xdp;
