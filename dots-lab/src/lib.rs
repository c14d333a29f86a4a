//! dots-lab: everything that exercises the dots-agent without being the agent.
//!
//! - [`lab`]: `dots-lab run`, a DDoS signalled and scrubbed in network namespaces, and
//!   `dots-lab bench`, the veth drop-rate benchmark.
//! - [`trafficgen`]: the generator's senders (XDP live frames, AF_PACKET), the bench's XDP
//!   fan-out and the labelled receiver.
//! - [`packet`]: the frame builder shared by tests, benchmarks and the traffic tools.
//! - [`cli`]: `dots-lab run` (a scenario to the lab, its chain or the fleet) and
//!   `dots-lab traffic send|generate|count`.
//! - [`testrun`]: BPF_PROG_TEST_RUN timing for the benchmarks.
//! - [`proof`]: `dots-lab soak|loss|bounds`, the server binary under hostile conditions.
//! - [`fleet`]: `dots-lab fleet measure|attack`, a scrubber fleet steered through BGP
//!   FlowSpec, with gobgpd, bird2 and Prometheus (also the FlowSpec tests' daemons).
//! - [`xdp_asm`]: the hand-assembled XDP programs' instructions and loading.
//!
//! It depends on `dots-agent` (datapath, client, signal); the agent never depends on it.

pub mod cli;
pub mod fleet;
pub mod lab;
pub mod packet;
pub mod proof;
pub mod testrun;
pub mod trafficgen;
pub mod xdp_asm;
