//! Real daemons for the FlowSpec tests: gobgpd (the DOTS server's and the nodes'
//! speaker), bird2 (a border router) and Prometheus (scraping the nodes), each started inside
//! a test namespace with its own
//! config and log in the test's directory, peering only with addresses in the test's
//! namespaces, and killed by its pid when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Netns;

/// A daemon process started in a namespace; killed (by pid) and reaped on drop.
pub struct Daemon {
    child: Option<Child>,
    pub what: String,
}

impl Daemon {
    fn start(ns: &Netns, program: &str, args: &[&str], log: &Path) -> Daemon {
        let log_file = std::fs::File::create(log).expect("daemon log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} (run scripts/setup.sh): {e}"));
        Daemon {
            child: Some(child),
            what: format!("{program} in {}", ns.name),
        }
    }

    /// Kills it now (SIGKILL: a crash, as far as its peers can tell).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gobgpd neighbor: address, AS, whether it is a route-reflector client.
pub struct Neighbor<'a> {
    pub address: &'a str,
    pub asn: u32,
    pub rr_client: bool,
}

/// Starts gobgpd in `ns` with BGP on `local` only, FlowSpec (v4 and v6) to each neighbor,
/// gRPC on 127.0.0.1:50051 of that namespace.
pub fn gobgpd(
    ns: &Netns,
    dir: &Path,
    name: &str,
    asn: u32,
    local: &[&str],
    neighbors: &[Neighbor],
) -> Daemon {
    let mut conf = format!(
        "[global.config]\n  as = {asn}\n  router-id = \"{}\"\n  local-address-list = [{}]\n",
        local[0],
        local
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for n in neighbors {
        conf += &format!(
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}\n  [neighbors.timers.config]\n    connect-retry = 1\n",
            n.address, n.asn
        );
        if n.rr_client {
            conf += &format!(
                "  [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = \"{}\"\n",
                local[0]
            );
        }
        for f in ["ipv4-flowspec", "ipv6-flowspec"] {
            conf += &format!(
                "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{f}\"\n"
            );
        }
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, conf).expect("gobgpd config");
    Daemon::start(
        ns,
        "gobgpd",
        &[
            "-f",
            path.to_str().expect("utf-8 path"),
            "-p",
            "--api-hosts",
            "127.0.0.1:50051",
            "--pprof-disable",
        ],
        &dir.join(format!("{name}.log")),
    )
}

/// Runs `gobgp ARGS` against the gobgpd in `ns`; its output, or Err with what it said.
pub fn gobgp(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg("gobgp")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// bird2 as a border router in `ns`: eBGP from `local` (AS `asn`) to `neighbor` (AS
/// `peer_as`), importing every FlowSpec rule into tables flowtab4 and flowtab6.
pub struct Bird {
    pub daemon: Daemon,
    pub ctl: PathBuf,
}

pub fn bird(ns: &Netns, dir: &Path, local: &str, asn: u32, neighbor: &str, peer_as: u32) -> Bird {
    let conf = format!(
        r#"router id {local};
log "{log}" all;
protocol device {{ }}
flow4 table flowtab4;
flow6 table flowtab6;
protocol bgp upstream {{
  local {local} as {asn};
  neighbor {neighbor} as {peer_as};
  connect retry time 1;
  error wait time 1, 2;
  flow4 {{ table flowtab4; import all; export none; }};
  flow6 {{ table flowtab6; import all; export none; }};
}}
"#,
        log = dir.join("bird-events.log").display()
    );
    let path = dir.join("bird.conf");
    std::fs::write(&path, conf).expect("bird config");
    let ctl = dir.join("bird.ctl");
    let daemon = Daemon::start(
        ns,
        "bird",
        &[
            "-f",
            "-c",
            path.to_str().expect("utf-8"),
            "-s",
            ctl.to_str().expect("utf-8"),
        ],
        &dir.join("bird.log"),
    );
    Bird { daemon, ctl }
}

impl Bird {
    /// `birdc show ...` output (empty if bird does not answer yet).
    pub fn show(&self, what: &str) -> String {
        let mut args = vec!["-s", self.ctl.to_str().expect("utf-8"), "show"];
        args.extend(what.split_whitespace());
        Command::new("birdc")
            .args(&args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The rule lines of a FlowSpec table ("flow4 { ... }"), sorted, each with the
    /// extended community that carries its action.
    pub fn flow_rules(&self, table: &str) -> Vec<String> {
        let text = self.show(&format!("route table {table} all"));
        let mut out = Vec::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if line.starts_with("flow") {
                out.extend(current.take());
                let rule = line.split("  [").next().unwrap_or(line).trim();
                current = Some(rule.to_string());
            } else if let (Some(c), Some(ec)) = (
                current.as_mut(),
                line.trim().strip_prefix("BGP.ext_community: "),
            ) {
                c.push_str(&format!(" => {ec}"));
            }
        }
        out.extend(current);
        out.sort();
        out
    }

    pub fn established(&self) -> bool {
        self.show("protocols upstream").contains("Established")
    }
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

/// Prometheus in `ns`, listening on `listen`, scraping every second with these
/// `scrape_configs` entries (YAML lines), its data in `dir`.
pub fn prometheus(ns: &Netns, dir: &Path, listen: &str, scrape_configs: &str) -> Daemon {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n{scrape_configs}"
        ),
    )
    .expect("prometheus.yml");
    Daemon::start(
        ns,
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            &format!("--web.listen-address={listen}"),
            "--log.level=warn",
        ],
        &dir.join("prometheus.log"),
    )
}
