//! The local gobgpd, driven through its own command-line client `gobgp` (same Debian package,
//! so always the daemon's API version) with JSON output. Chosen over generated gRPC stubs:
//! no protoc/tonic build and no vendored .proto files to keep in step, and every command
//! here was run by hand against gobgpd 3.10 (../shared/reference/flowspec-bgp.md §4-5). The
//! cost is one process per change (about 15 ms), which the announcer pays off the control
//! thread.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::Value;

use super::rule::{fragment_of, ranges_of, tcp_flags_of, FlowAction, FlowMatch, FlowRule};
use crate::datapath::{PortRange, ValueRange};

/// A `gobgp` run that takes longer than this is killed and counted as a failure.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Gobgp {
    pub program: PathBuf,
    /// gobgpd's gRPC address (`--api-hosts`), host and port.
    pub host: String,
    pub port: u16,
}

/// A rule in the daemon's table as read back, or why it cannot be installed.
#[derive(Clone, Debug)]
pub struct TableRule {
    /// gobgp's text of the NLRI (its key in `global rib -j`).
    pub nlri: String,
    pub rule: Result<FlowRule, String>,
    /// The peer it came from; None for a rule this daemon originates.
    pub neighbor: Option<String>,
}

fn family(ipv6: bool) -> &'static str {
    if ipv6 {
        "ipv6-flowspec"
    } else {
        "ipv4-flowspec"
    }
}

impl Gobgp {
    pub(super) fn run(&self, args: &[String]) -> Result<String, String> {
        let mut child = Command::new(&self.program)
            .args(["-u", &self.host, "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.program.display()))?;
        // Both pipes are drained while it runs: a table larger than the pipe's buffer (64
        // KiB, about 90 rules as JSON) would otherwise block gobgp until the timeout.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut text);
                }
                text
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Ok(s),
                Ok(None) if started.elapsed() < COMMAND_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!(
                        "gobgp {} took over {COMMAND_TIMEOUT:?}",
                        args.join(" ")
                    ));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("waiting for gobgp: {e}"));
                }
            }
        };
        // The pipes close when it exits (or is killed), so the readers end.
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        let status = status?;
        if !status.success() {
            let said = format!("{} {}", err.trim(), out.trim());
            return Err(format!("gobgp {}: {}", args.join(" "), said.trim()));
        }
        Ok(out)
    }

    /// Announces `rule` (replacing the action of a rule with the same match).
    pub fn add(&self, rule: &FlowRule) -> Result<(), String> {
        let mut a = vec![
            "global",
            "rib",
            "-a",
            family(rule.matches.is_ipv6()),
            "add",
            "match",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        a.extend(rule.matches.gobgp_args());
        a.push("then".into());
        a.extend(rule.action.gobgp_args());
        self.run(&a).map(|_| ())
    }

    /// Withdraws the rule with this match (nothing happens if there is none).
    pub fn del(&self, m: &FlowMatch) -> Result<(), String> {
        let mut a = vec!["global", "rib", "-a", family(m.is_ipv6()), "del", "match"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        a.extend(m.gobgp_args());
        self.run(&a).map(|_| ())
    }

    /// Every FlowSpec rule in the daemon's table, both families.
    pub fn table(&self) -> Result<Vec<TableRule>, String> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let args: Vec<String> = ["global", "rib", "-a", family(v6), "-j"]
                .into_iter()
                .map(String::from)
                .collect();
            let text = self.run(&args)?;
            out.extend(parse_table(&text)?);
        }
        Ok(out)
    }

    /// (established, configured) BGP sessions of the daemon.
    pub fn sessions(&self) -> Result<(usize, usize), String> {
        let text = self.run(&["neighbor".to_string(), "-j".to_string()])?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("gobgp neighbor -j: {e}"))?;
        let peers = v.as_array().cloned().unwrap_or_default();
        let up = peers
            .iter()
            .filter(|p| p["state"]["session_state"].as_u64() == Some(6))
            .count();
        Ok((up, peers.len()))
    }
}

/// `gobgp global rib -a ipvN-flowspec -j`: an object keyed by the NLRI's text, each value
/// the paths to it; the best one (or the first) is the rule.
pub fn parse_table(text: &str) -> Result<Vec<TableRule>, String> {
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| format!("gobgp table: {e}"))?;
    let obj = v.as_object().ok_or("gobgp table: not an object")?;
    let mut out = Vec::new();
    for (nlri, paths) in obj {
        let paths = paths.as_array().cloned().unwrap_or_default();
        let Some(path) = paths
            .iter()
            .find(|p| p["best"].as_bool() == Some(true))
            .or(paths.first())
        else {
            continue;
        };
        out.push(TableRule {
            nlri: nlri.clone(),
            rule: parse_path(path),
            neighbor: path["neighbor-ip"].as_str().map(String::from),
        });
    }
    Ok(out)
}

/// One path: its NLRI components and its traffic-rate extended community.
pub fn parse_path(path: &Value) -> Result<FlowRule, String> {
    let matches = parse_match(path)?;
    let action = parse_action(path)?;
    Ok(FlowRule { matches, action })
}

/// A path's NLRI: the match of the rule.
fn parse_match(path: &Value) -> Result<FlowMatch, String> {
    let mut m = FlowMatch::default();
    let components = path["nlri"]["value"]
        .as_array()
        .ok_or("no NLRI components")?;
    for c in components {
        let ty = c["type"].as_u64().ok_or("a component without a type")?;
        match ty {
            1 | 2 => {
                let p: IpNet = c["value"]["prefix"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or("a prefix component without a prefix")?;
                if c["offset"].as_u64().unwrap_or(0) != 0 {
                    return Err("an IPv6 prefix offset (RFC 8956) the filter cannot match".into());
                }
                *(if ty == 1 {
                    &mut m.destination
                } else {
                    &mut m.source
                }) = Some(p);
            }
            _ => {
                let items: Vec<(u8, u64)> = c["value"]
                    .as_array()
                    .ok_or("a component without items")?
                    .iter()
                    .map(|i| {
                        (
                            i["op"].as_u64().unwrap_or(0) as u8,
                            i["value"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect();
                numeric_component(&mut m, ty, &items)?;
            }
        }
    }
    if m.destination.is_none() {
        return Err("no destination prefix: a node filters only named destinations".into());
    }
    Ok(m)
}

/// A path's traffic-rate extended community: discard (rate 0) or a byte rate.
fn parse_action(path: &Value) -> Result<FlowAction, String> {
    path["attrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"].as_u64() == Some(16))
        .flat_map(|a| a["value"].as_array().cloned().unwrap_or_default())
        .find(|e| e["type"].as_u64() == Some(128) && e["subtype"].as_u64() == Some(6))
        .map(|e| e["rate"].as_f64().unwrap_or(0.0))
        .map(|r| {
            if r <= 0.0 {
                FlowAction::Discard
            } else {
                FlowAction::RateBytes(r as f32)
            }
        })
        .ok_or_else(|| {
            "no traffic-rate action (only discard and traffic-rate are installed)".into()
        })
}

/// What one path in a `gobgp monitor global rib -j` line says.
#[derive(Clone, Debug, PartialEq)]
pub enum RibEvent {
    /// A best path for the rule (new or replacing one with the same match).
    Learned(FlowRule),
    /// No best path for this match any more; the key is [`FlowMatch::gobgp_args`] joined.
    Withdrawn(String),
    /// A path that cannot be installed. Its match's key, when the match could be read
    /// (a rule whose action changed to one the filter lacks must leave it), and why.
    Unusable(Option<String>, String),
}

/// One line of `gobgp monitor global rib -j` (a JSON array of paths), keeping the paths of
/// one family: gobgp 3.10 ignores `-a` here and prints every family on every monitor
/// (../shared/reference/flowspec-bgp.md §5), so the family is told by the destination.
pub fn parse_monitor_line(line: &str, ipv6: bool) -> Result<Vec<RibEvent>, String> {
    let v: Value = serde_json::from_str(line.trim()).map_err(|e| format!("gobgp monitor: {e}"))?;
    let paths = v.as_array().ok_or("gobgp monitor: not an array of paths")?;
    let mut out = Vec::new();
    for path in paths {
        let matches = match parse_match(path) {
            Ok(m) => m,
            Err(why) => {
                if path["withdrawal"].as_bool() != Some(true) {
                    out.push(RibEvent::Unusable(None, why));
                }
                continue;
            }
        };
        if matches
            .destination
            .is_some_and(|d| d.addr().is_ipv6() != ipv6)
        {
            continue;
        }
        let key = matches.gobgp_args().join(" ");
        if path["withdrawal"].as_bool() == Some(true) {
            out.push(RibEvent::Withdrawn(key));
            continue;
        }
        out.push(match parse_action(path) {
            Ok(action) => RibEvent::Learned(FlowRule { matches, action }),
            Err(why) => RibEvent::Unusable(Some(key), why),
        });
    }
    Ok(out)
}

fn single(items: &[(u8, u64)], what: &str, max: u64) -> Result<u8, String> {
    match ranges_of(items, max)?.as_slice() {
        [(a, b)] if a == b && *a <= 255 => Ok(*a as u8),
        _ => Err(format!("{what}: only a single value is installed")),
    }
}

fn numeric_component(m: &mut FlowMatch, ty: u64, items: &[(u8, u64)]) -> Result<(), String> {
    let ports = |items: &[(u8, u64)]| -> Result<Vec<PortRange>, String> {
        Ok(ranges_of(items, 65535)?
            .into_iter()
            .map(|(a, b)| PortRange::new(a.min(65535) as u16, b.min(65535) as u16))
            .map(|r| {
                if r.lower == r.upper() {
                    PortRange::single(r.lower)
                } else {
                    r
                }
            })
            .collect())
    };
    match ty {
        3 => {
            m.protocols = ranges_of(items, 255)?
                .into_iter()
                .flat_map(|(a, b)| a..=b.min(255))
                .map(|p| p as u8)
                .collect()
        }
        4 => return Err("a port component (either direction) the filter cannot match".into()),
        5 => m.destination_ports = ports(items)?,
        6 => m.source_ports = ports(items)?,
        7 => m.icmp_type = Some(single(items, "icmp-type", 255)?),
        8 => m.icmp_code = Some(single(items, "icmp-code", 255)?),
        9 => m.tcp_flags = Some(tcp_flags_of(items)?),
        10 => match ranges_of(items, 65535)?.as_slice() {
            [(a, b)] => {
                m.length = Some(ValueRange {
                    min: *a as u16,
                    max: (*b).min(65535) as u16,
                })
            }
            _ => return Err("packet-length: only one range is installed".into()),
        },
        11 => m.dscp = Some(single(items, "dscp", 63)?),
        12 => m.fragment = Some(fragment_of(items)?),
        other => return Err(format!("component type {other} the filter cannot match")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table read larger than a pipe's buffer comes back whole: a stand-in `gobgp` (a
    /// shell script) prints 200 KB, as gobgpd's JSON for about 280 rules would be.
    #[test]
    fn output_larger_than_a_pipe_buffer_is_read_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("gobgp");
        std::fs::write(
            &program,
            "#!/bin/sh\nhead -c 200000 /dev/zero | tr '\\0' x\necho 'said on stderr' >&2\n",
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let g = Gobgp {
            program,
            host: "127.0.0.1".into(),
            port: 50051,
        };
        let out = g.run(&["global".into()]).unwrap();
        assert_eq!(out.len(), 200_000);
    }

    /// What gobgpd 3.10 printed for rules added by the gobgp CLI (flowspec-bgp.md §4 and a
    /// run here), read back to the words that added them.
    #[test]
    fn gobgp_json_reads_back_to_the_rule_that_was_added() {
        let text = r#"{"[destination: 203.0.113.10/32][protocol: ==tcp][destination-port: >=8000&<=8080][tcp-flags: S][packet-length: >=1000][dscp: ==46][fragment: is-fragment]":[{"nlri":{"value":[{"type":1,"value":{"prefix":"203.0.113.10/32"}},{"type":3,"value":[{"op":129,"value":6}]},{"type":5,"value":[{"op":19,"value":8000},{"op":213,"value":8080}]},{"type":9,"value":[{"op":128,"value":2}]},{"type":10,"value":[{"op":147,"value":1000}]},{"type":11,"value":[{"op":129,"value":46}]},{"type":12,"value":[{"op":128,"value":2}]}]},"age":1796636508,"best":true,"attrs":[{"type":1,"value":2},{"type":16,"value":[{"type":128,"subtype":6,"as":0,"rate":125000}]}],"stale":false}],
        "[destination: 2001:db8:1::/48/0][protocol: ==udp][icmp-type: ==8]":[{"nlri":{"value":[{"type":1,"value":{"prefix":"2001:db8:1::/48"},"offset":0},{"type":3,"value":[{"op":129,"value":17}]},{"type":7,"value":[{"op":129,"value":8}]}]},"best":true,"attrs":[{"type":16,"value":[{"type":128,"subtype":6,"as":0,"rate":0}]}],"neighbor-ip":"192.0.2.1"}],
        "[destination: 203.0.113.20/32]":[{"nlri":{"value":[{"type":1,"value":{"prefix":"203.0.113.20/32"}}]},"best":true,"attrs":[{"type":16,"value":[{"type":128,"subtype":8,"value":"64514:100"}]}]}]}"#;
        let mut rules = parse_table(text).unwrap();
        rules.sort_by(|a, b| a.nlri.cmp(&b.nlri));
        assert_eq!(
            rules[1].rule.as_ref().unwrap().to_string(),
            "destination 203.0.113.10/32 protocol ==6 destination-port >=8000&<=8080 \
             tcp-flags S packet-length >=1000&<=65535 dscp ==46 fragment isf then rate-limit 125000"
                .replace("isf", "is-fragment")
        );
        assert_eq!(rules[1].neighbor, None);
        assert_eq!(
            rules[0].rule.as_ref().unwrap().to_string(),
            "destination 2001:db8:1::/48 protocol ==17 icmp-type ==8 then discard"
        );
        assert_eq!(rules[0].neighbor.as_deref(), Some("192.0.2.1"));
        assert!(rules[2]
            .rule
            .as_ref()
            .unwrap_err()
            .contains("no traffic-rate"));
    }

    /// Monitor lines: a learned rule, its withdrawal, another family's path (skipped), and
    /// a rule whose action the filter lacks (unusable, with its key so it leaves the filter).
    #[test]
    fn monitor_lines_become_rib_events() {
        let learned = r#"[{"nlri":{"value":[{"type":1,"value":{"prefix":"203.0.113.10/32"}},{"type":3,"value":[{"op":129,"value":17}]}]},"age":1796614748,"best":false,"attrs":[{"type":16,"value":[{"type":128,"subtype":6,"as":0,"rate":0}]},{"type":14,"nexthop":"0.0.0.0","afi":1,"safi":133}],"stale":false,"source-id":"192.0.2.1","neighbor-ip":"192.0.2.1"}]"#;
        let events = parse_monitor_line(learned, false).unwrap();
        let RibEvent::Learned(rule) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            rule.to_string(),
            "destination 203.0.113.10/32 protocol ==17 then discard"
        );
        assert!(
            parse_monitor_line(learned, true).unwrap().is_empty(),
            "the IPv6 monitor skips IPv4 paths"
        );
        let withdrawn = learned.replace(r#""stale":false"#, r#""stale":false,"withdrawal":true"#);
        assert_eq!(
            parse_monitor_line(&withdrawn, false).unwrap(),
            vec![RibEvent::Withdrawn(rule.matches.gobgp_args().join(" "))]
        );
        let redirect = learned.replace(
            r#""subtype":6,"as":0,"rate":0"#,
            r#""subtype":8,"value":"64514:100""#,
        );
        assert!(matches!(
            &parse_monitor_line(&redirect, false).unwrap()[..],
            [RibEvent::Unusable(Some(k), why)] if *k == rule.matches.gobgp_args().join(" ") && why.contains("no traffic-rate")
        ));
        assert!(parse_monitor_line("{not json", false).is_err());
    }
}
