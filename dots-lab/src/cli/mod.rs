//! The `dots-lab` command line beyond the lab itself (see [`crate::lab`]).
pub mod traffic;
