//! Shared by the signal-channel tests: the server's certificate paths in a `pki init`
//! directory, client-a's policy, and an engine on an in-memory datapath.

use std::path::Path;
use std::sync::Arc;

use dots_agent::datapath::{MemoryMitigator, Mitigator};
use dots_agent::server::{config::Tls, SharedEngine};
use dots_agent::signal::engine::{ClientPolicy, Engine};
use tokio::sync::Mutex;

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

/// An engine over a `MemoryMitigator`, with the given active-but-terminating period.
pub fn engine(policies: Vec<ClientPolicy>, terminating_seconds: u64) -> SharedEngine {
    let mitigator: Box<dyn Mitigator> = Box::new(MemoryMitigator::new());
    Arc::new(Mutex::new(
        Engine::new(mitigator, policies).with_terminating_period(terminating_seconds),
    ))
}
