//! The real daemons of a FlowSpec fleet: gobgpd (the DOTS server's speaker or route
//! reflector, and each node's), bird2 (a border router) and Prometheus (scraping the nodes),
//! each started inside a network namespace with its config and log in a directory of the
//! caller's, and killed by its pid when dropped. `dots-lab fleet` and the FlowSpec tests
//! (tests/support/bgp.rs) both start them from here.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};
use ipnet::IpNet;

use crate::lab::topology::command_in;

/// A daemon process started in a namespace; killed (SIGKILL, by its pid) and reaped on drop.
pub struct Daemon {
    child: Option<Child>,
    pub what: String,
}

impl Daemon {
    /// Starts `program ARGS` inside the namespace at `netns` (/run/netns/NAME), its output
    /// into `log`.
    pub fn start(netns: &Path, program: &str, args: &[&str], log: &Path) -> Result<Daemon> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command_in(netns, Path::new(program))?
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {program} (is it installed? scripts/setup.sh)"))?;
        Ok(Daemon {
            child: Some(child),
            what: format!("{program} in {}", netns.display()),
        })
    }

    /// Kills it now (SIGKILL: a crash, as far as its peers can tell).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is still running (not killed, not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
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

/// gobgpd's config: BGP on `local` only, FlowSpec (v4 and v6) to each neighbor
/// (../shared/reference/flowspec-bgp.md §3).
pub fn gobgpd_config(asn: u32, local: &[&str], neighbors: &[Neighbor]) -> String {
    let quoted: Vec<String> = local.iter().map(|a| format!("\"{a}\"")).collect();
    let mut conf = format!(
        "[global.config]\n  as = {asn}\n  router-id = \"{}\"\n  local-address-list = [{}]\n",
        local[0],
        quoted.join(", ")
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
    conf
}

/// Starts gobgpd in `netns` (config `dir/NAME.toml`, log `dir/NAME.log`), gRPC on
/// 127.0.0.1:50051 of that namespace.
pub fn gobgpd(
    netns: &Path,
    dir: &Path,
    name: &str,
    asn: u32,
    local: &[&str],
    neighbors: &[Neighbor],
) -> Result<Daemon> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, gobgpd_config(asn, local, neighbors))
        .with_context(|| format!("writing {}", path.display()))?;
    Daemon::start(
        netns,
        "/usr/bin/gobgpd",
        &[
            "-f",
            path.to_str().context("a UTF-8 path")?,
            "-p",
            "--api-hosts",
            "127.0.0.1:50051",
            "--pprof-disable",
        ],
        &dir.join(format!("{name}.log")),
    )
}

/// Runs `gobgp ARGS` against the gobgpd in `netns`: its output, or Err with what it said.
pub fn gobgp(netns: &Path, args: &[&str]) -> Result<String, String> {
    let out = command_in(netns, Path::new("/usr/bin/gobgp"))
        .map_err(|e| e.to_string())?
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

/// How many of gobgpd's neighbors are established (`gobgp neighbor`), or None if it does
/// not answer.
pub fn established(netns: &Path) -> Option<usize> {
    gobgp(netns, &["neighbor"])
        .ok()
        .map(|t| t.matches("Establ").count())
}

/// bird2 as a border router: eBGP from `local` (AS `asn`) to `neighbor` (AS `peer_as`),
/// importing every FlowSpec rule into tables flowtab4 and flowtab6.
pub struct Bird {
    pub daemon: Daemon,
    pub ctl: PathBuf,
}

pub fn bird(
    netns: &Path,
    dir: &Path,
    local: &str,
    asn: u32,
    neighbor: &str,
    peer_as: u32,
) -> Result<Bird> {
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
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    let ctl = dir.join("bird.ctl");
    let daemon = Daemon::start(
        netns,
        "/usr/sbin/bird",
        &[
            "-f",
            "-c",
            path.to_str().context("a UTF-8 path")?,
            "-s",
            ctl.to_str().context("a UTF-8 path")?,
        ],
        &dir.join("bird.log"),
    )?;
    Ok(Bird { daemon, ctl })
}

impl Bird {
    /// `birdc show ...` output (empty if bird does not answer yet).
    pub fn show(&self, what: &str) -> String {
        let mut args = vec!["-s", self.ctl.to_str().unwrap_or_default(), "show"];
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

    /// The destination prefixes of the rules in both FlowSpec tables.
    pub fn destinations(&self) -> Vec<IpNet> {
        ["flowtab4", "flowtab6"]
            .iter()
            .flat_map(|t| destinations_in(&self.show(&format!("route table {t}"))))
            .collect()
    }

    pub fn established(&self) -> bool {
        self.show("protocols upstream").contains("Established")
    }

    /// Each rule's destination and the time of day bird imported it (its own stamp, to the
    /// millisecond: `[upstream 13:02:53.400 from ...]`).
    pub fn import_times(&self) -> Vec<(IpNet, String)> {
        ["flowtab4", "flowtab6"]
            .iter()
            .flat_map(|t| import_times_in(&self.show(&format!("route table {t}"))))
            .collect()
    }
}

fn import_times_in(text: &str) -> Vec<(IpNet, String)> {
    text.lines()
        .filter(|l| l.starts_with("flow"))
        .filter_map(|l| {
            let dst = l
                .split("dst ")
                .nth(1)?
                .split(';')
                .next()?
                .trim()
                .parse()
                .ok()?;
            let stamp = l.split(" [").nth(1)?.split_whitespace().nth(1)?;
            Some((dst, stamp.to_string()))
        })
        .collect()
}

/// The `dst` of each rule line in `birdc show route table flowtabN` output.
fn destinations_in(text: &str) -> Vec<IpNet> {
    text.lines()
        .filter(|l| l.starts_with("flow"))
        .filter_map(|l| {
            let rest = l.split("dst ").nth(1)?;
            rest.split(';').next()?.trim().parse().ok()
        })
        .collect()
}

/// Prometheus in `netns`, listening on `listen`, scraping every second with these
/// `scrape_configs` entries (YAML lines), its data in `dir`.
pub fn prometheus(netns: &Path, dir: &Path, listen: &str, scrape_configs: &str) -> Result<Daemon> {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n{scrape_configs}"
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    Daemon::start(
        netns,
        "/usr/bin/prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            &format!("--web.listen-address={listen}"),
            "--log.level=warn",
        ],
        &dir.join("prometheus.log"),
    )
}

/// When a gobgpd's table first showed each FlowSpec destination arriving and leaving:
/// `gobgp monitor global rib -j` (one JSON line per event, stamped with the wall clock on
/// arrival here), read by
/// a thread of its own. Killed with the daemon's session (the monitor ends) or on drop.
pub struct RibWatch {
    child: Child,
    seen: Arc<Mutex<HashMap<(IpNet, bool), SystemTime>>>,
}

impl RibWatch {
    pub fn start(netns: &Path) -> Result<RibWatch> {
        let mut child = command_in(netns, Path::new("/usr/bin/gobgp"))?
            // `-a` does not filter the stream (flowspec-bgp.md §5): one monitor sees both.
            .args(["monitor", "global", "rib", "-a", "ipv4-flowspec", "-j"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting gobgp monitor")?;
        let out = child.stdout.take().context("the monitor's output")?;
        let seen: Arc<Mutex<HashMap<(IpNet, bool), SystemTime>>> = Arc::default();
        let shared = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let now = SystemTime::now();
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                for event in monitor_events(&line) {
                    s.entry(event).or_insert(now);
                }
            }
        });
        Ok(RibWatch { child, seen })
    }

    /// When `dst` was first announced (`withdrawn` false) or withdrawn (true).
    pub fn seen(&self, dst: &IpNet, withdrawn: bool) -> Option<SystemTime> {
        let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        s.get(&(*dst, withdrawn)).copied()
    }
}

/// (destination prefix, withdrawn) of each path in one `gobgp monitor -j` line
/// (flowspec-bgp.md §5: a JSON array of paths, `"withdrawal": true` on withdrawals).
fn monitor_events(line: &str) -> Vec<(IpNet, bool)> {
    let Ok(serde_json::Value::Array(paths)) = serde_json::from_str(line) else {
        return Vec::new();
    };
    paths
        .iter()
        .filter_map(|p| {
            let dst = p["nlri"]["value"]
                .as_array()?
                .iter()
                .find(|c| c["type"].as_u64() == Some(1))?["value"]["prefix"]
                .as_str()?
                .parse()
                .ok()?;
            Some((dst, p["withdrawal"].as_bool() == Some(true)))
        })
        .collect()
}

impl Drop for RibWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bird2's table and gobgp's monitor lines as ../shared/reference/flowspec-bgp.md §5
    /// shows them.
    #[test]
    fn bird_tables_and_gobgp_monitor_lines_give_their_destinations() {
        let bird = "Table flowtab4:\n\
            flow4 { dst 203.0.113.10/32; proto 17; sport 123; }  [gobgp_rr 03:39:08.546 from 192.0.2.5] * (100) [AS64512?]\n\
            \tBGP.ext_community: (generic, 0x80060000, 0x0)\n\
            flow6 { dst 2001:db8:6401::/48; next header 6; tcp flags !0x0/0x2; }  [x]\n";
        assert_eq!(
            import_times_in(bird)[0],
            (
                "203.0.113.10/32".parse().unwrap(),
                "03:39:08.546".to_string()
            )
        );
        assert_eq!(
            destinations_in(bird),
            vec![
                "203.0.113.10/32".parse::<IpNet>().unwrap(),
                "2001:db8:6401::/48".parse().unwrap()
            ]
        );
        let add = r#"[{"nlri":{"value":[{"type":1,"value":{"prefix":"198.51.100.20/32"}},{"type":3,"value":[{"op":129,"value":17}]}]},"best":false,"attrs":[]}]"#;
        let del = r#"[{"nlri":{"value":[{"type":1,"value":{"prefix":"2001:db8:6401::c8/128"},"offset":0}]},"withdrawal":true}]"#;
        assert_eq!(
            monitor_events(add),
            vec![("198.51.100.20/32".parse().unwrap(), false)]
        );
        assert_eq!(
            monitor_events(del),
            vec![("2001:db8:6401::c8/128".parse().unwrap(), true)]
        );
        assert!(monitor_events("not json").is_empty());
    }
}
