//! Real daemons for the FlowSpec tests: gobgpd (the DOTS server's speaker and the nodes'),
//! bird2 (a border router) and Prometheus (scraping the nodes), started inside a test
//! namespace by dots-lab's fleet module (`dots_lab::fleet::daemons`, which `dots-lab fleet`
//! uses too), with config and log in the test's directory, killed by pid when dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dots_lab::fleet::daemons;
pub use dots_lab::fleet::daemons::{Bird, Daemon, Neighbor};

use super::Netns;

fn path(ns: &Netns) -> PathBuf {
    Path::new("/run/netns").join(&ns.name)
}

/// gobgpd in `ns` with BGP on `local` only, FlowSpec (v4 and v6) to each neighbor, gRPC on
/// 127.0.0.1:50051 of that namespace.
pub fn gobgpd(
    ns: &Netns,
    dir: &Path,
    name: &str,
    asn: u32,
    local: &[&str],
    neighbors: &[Neighbor],
) -> Daemon {
    daemons::gobgpd(&path(ns), dir, name, asn, local, neighbors)
        .unwrap_or_else(|e| panic!("gobgpd in {} (run scripts/setup.sh): {e:#}", ns.name))
}

/// Runs `gobgp ARGS` against the gobgpd in `ns`; its output, or Err with what it said.
pub fn gobgp(ns: &Netns, args: &[&str]) -> Result<String, String> {
    daemons::gobgp(&path(ns), args)
}

/// bird2 as a border router in `ns`: eBGP from `local` (AS `asn`) to `neighbor` (AS
/// `peer_as`), importing every FlowSpec rule into tables flowtab4 and flowtab6.
pub fn bird(ns: &Netns, dir: &Path, local: &str, asn: u32, neighbor: &str, peer_as: u32) -> Bird {
    daemons::bird(&path(ns), dir, local, asn, neighbor, peer_as)
        .unwrap_or_else(|e| panic!("bird in {} (run scripts/setup.sh): {e:#}", ns.name))
}

/// Prometheus in `ns`, listening on `listen`, scraping every second with these
/// `scrape_configs` entries (YAML lines), its data in `dir`.
pub fn prometheus(ns: &Netns, dir: &Path, listen: &str, scrape_configs: &str) -> Daemon {
    daemons::prometheus(&path(ns), dir, listen, scrape_configs)
        .unwrap_or_else(|e| panic!("prometheus in {} (run scripts/setup.sh): {e:#}", ns.name))
}

/// Polls `f` every 50 ms until it gives Some, for at most `limit`; panics naming `what`
/// (with the last value seen) otherwise. The bound keeps a broken daemon from hanging the
/// test; the figure is not a performance assertion.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
