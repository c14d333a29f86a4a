//! The `dots-lab` command line where it spans modules: `run` (a scenario file to the lab,
//! its chain or the fleet) and `traffic`.
pub mod run;
pub mod traffic;
