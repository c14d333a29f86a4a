//! Shared by the signal-channel tests: the server's certificate paths in a `pki init`
//! directory, client-a's policy, and a control plane on an in-memory datapath.

use std::path::Path;

use dots_agent::control::{Control, ControlHandle};
use dots_agent::data::{DataChannel, SharedData};
use dots_agent::datapath::{MemoryMitigator, Mitigator};
use dots_agent::engine::{ClientPolicy, Engine};
use dots_agent::server::config::Tls;

/// The server's CA, certificate and key as `pki::init` wrote them into `dir`.
pub fn server_tls(dir: &Path) -> Tls {
    Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// client-a may ask for mitigation of 2001:db8:6401::/48.
pub fn client_a() -> ClientPolicy {
    ClientPolicy {
        name: "client-a".into(),
        prefixes: vec!["2001:db8:6401::/48".parse().unwrap()],
        countermeasures: Default::default(),
        acl: Vec::new(),
        allow_indefinite: false,
        max_lifetime: 86_400,
    }
}

/// An engine over a `MemoryMitigator`, without a data channel or a store.
pub fn memory_engine(policies: Vec<ClientPolicy>) -> Engine<Box<dyn Mitigator>> {
    Engine::new(Box::new(MemoryMitigator::new()), policies)
}

/// Runs `engine` on a control thread of its own.
pub fn control(engine: Engine<Box<dyn Mitigator>>) -> ControlHandle {
    let data = SharedData::new(DataChannel::new(Default::default()));
    ControlHandle::spawn(Control::new(engine, data)).unwrap()
}

/// A control plane over a `MemoryMitigator`, with the given active-but-terminating period.
pub fn engine(policies: Vec<ClientPolicy>, terminating_seconds: u64) -> ControlHandle {
    control(memory_engine(policies).with_terminating_period(terminating_seconds))
}
