//! Shared by the signal-channel tests: a server as the composition root assembles it
//! (`app::start`), on loopback and an in-memory datapath, from a server.toml written for
//! the test; client-a's prefixes.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use dots_agent::app::Running;
use dots_agent::datapath::MemoryMitigator;
use dots_agent::server::ServerConfig;

/// client-a may ask for mitigation of 2001:db8:6401::/48 (no countermeasures).
pub const CLIENT_A: &str =
    "[[client]]\nname = \"client-a\"\nprefixes = [\"2001:db8:6401::/48\"]\ncountermeasures = {}\n";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Starts a server with the certificates `pki::init` wrote into `dir`: the signal channel
/// on `bind` (TLS and DTLS, one port), the given `[signal]` settings and `[[client]]`
/// tables, its store in a directory of its own under `dir`.
pub async fn server(dir: &Path, bind: &str, signal: &str, clients: &str) -> Running {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("server-{n}.toml"));
    std::fs::write(
        &path,
        format!(
            "[signal]\nlisten = [\"{bind}\"]\n{signal}\n\
             [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             [store]\ndir = \"state-{n}\"\n{clients}"
        ),
    )
    .unwrap();
    let config = ServerConfig::load(&path).unwrap();
    dots_agent::app::start(&config, Box::new(MemoryMitigator::new()))
        .await
        .unwrap()
}

/// The same with client-a and an active-but-terminating period.
pub async fn server_for_client_a(dir: &Path, terminating_seconds: u64) -> Running {
    server(
        dir,
        "127.0.0.1:0",
        &format!("terminating_seconds = {terminating_seconds}"),
        CLIENT_A,
    )
    .await
}
