//! `dots-agent xdp ...`: the datapath without DOTS, in the spirit of xdp-tools' xdp-filter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use xdp_common::{Counter, DropReason, TALKER_SAMPLE};

use crate::datapath::{
    compile, AttachMode, MitigationCounters, MitigationSpec, Mitigator, XdpDatapath,
    DEFAULT_AMPLIFICATION_PORTS, DEFAULT_PIN_ROOT,
};

#[derive(Subcommand, Debug)]
pub enum XdpCommand {
    /// Load the XDP filter and attach it to interfaces (pinned: it keeps running after exit).
    Attach {
        /// Interface to attach to (repeat for several).
        #[arg(short, long = "interface", required = true)]
        interfaces: Vec<String>,
        /// native (driver), skb (generic) or auto (native, else skb with a note why).
        #[arg(long, value_enum, default_value = "auto")]
        mode: AttachMode,
        /// UDP source ports dropped by the amplification countermeasure (comma-separated).
        /// Default on first attach: the well-known reflection ports.
        #[arg(long, value_delimiter = ',')]
        amplification_ports: Option<Vec<u16>>,
        #[command(flatten)]
        pins: Pins,
    },
    /// Detach from interfaces; with --purge also drop the pinned maps (all mitigations).
    Detach {
        /// Interface to detach from (repeat for several).
        #[arg(short, long = "interface")]
        interfaces: Vec<String>,
        /// Detach from every interface.
        #[arg(long)]
        all: bool,
        /// After detaching, remove the pinned maps too.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        pins: Pins,
    },
    /// Show interfaces, mitigations, counters and rates.
    Status {
        /// Seconds between the two samples rates are computed from (0: counters only).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Repeat until interrupted (on a terminal the screen is redrawn in place).
        #[arg(long)]
        watch: bool,
        /// Print JSON (with --watch: one object per line).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: Pins,
    },
    /// Install, replace, remove and list mitigations from TOML or JSON files.
    #[command(subcommand)]
    Mitigation(MitigationCommand),
}

#[derive(Subcommand, Debug)]
pub enum MitigationCommand {
    /// Install (or atomically replace) the mitigations in a file.
    Add {
        /// A TOML or JSON mitigation file (see examples/lab-mitigation.toml).
        file: PathBuf,
        #[command(flatten)]
        pins: Pins,
    },
    /// Check a mitigation file without touching the datapath.
    Check {
        /// A TOML or JSON mitigation file.
        file: PathBuf,
    },
    /// Remove a mitigation by id.
    Remove {
        /// The mitigation's id (as in `mitigation list`).
        id: u64,
        #[command(flatten)]
        pins: Pins,
    },
    /// List installed mitigations.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: Pins,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct Pins {
    /// bpffs directory holding the pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// Where the specs installed from the command line are kept (for names in `status`).
    #[arg(long, default_value = "/run/dots-agent")]
    pub state_dir: PathBuf,
}

impl Pins {
    fn spec_dir(&self) -> PathBuf {
        self.state_dir.join("xdp-mitigations")
    }

    fn saved_spec(&self, id: u64) -> Option<MitigationSpec> {
        let text = std::fs::read_to_string(self.spec_dir().join(format!("{id}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// A mitigation file: one mitigation at top level, or several as `[[mitigation]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MitigationFile {
    mitigation: Vec<MitigationSpec>,
}

pub fn read_mitigation_file(path: &Path) -> Result<Vec<MitigationSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let specs = if is_json {
        match serde_json::from_str::<MitigationFile>(&text) {
            Ok(f) => f.mitigation,
            Err(_) => vec![serde_json::from_str::<MitigationSpec>(&text)
                .with_context(|| format!("{} is not a mitigation (JSON)", path.display()))?],
        }
    } else {
        match toml::from_str::<MitigationFile>(&text) {
            Ok(f) => f.mitigation,
            Err(_) => vec![toml::from_str::<MitigationSpec>(&text)
                .with_context(|| format!("{} is not a mitigation (TOML)", path.display()))?],
        }
    };
    let mut ids = std::collections::HashSet::new();
    for s in &specs {
        compile::validate(s).with_context(|| format!("{}: mitigation {}", path.display(), s.id))?;
        if !ids.insert(s.id) {
            bail!("{}: mitigation id {} appears twice", path.display(), s.id);
        }
    }
    Ok(specs)
}

pub fn run(cmd: XdpCommand) -> Result<()> {
    match cmd {
        XdpCommand::Attach {
            interfaces,
            mode,
            amplification_ports,
            pins,
        } => {
            let mut dp = XdpDatapath::open_pinned(&pins.pin_root)
                .or_else(|_| XdpDatapath::load(&crate::datapath::LoadOptions::new(&pins.pin_root)))
                .context("loading the XDP datapath")?;
            match amplification_ports {
                Some(p) => dp.set_amplification_ports(&p)?,
                None if dp.amplification_ports()?.is_empty() => {
                    dp.set_amplification_ports(DEFAULT_AMPLIFICATION_PORTS)?
                }
                None => {}
            }
            for iface in &interfaces {
                let out = dp.attach(iface, mode)?;
                if let Some(why) = &out.fallback {
                    eprintln!("note: {iface}: {why}");
                }
                if out.replaced {
                    println!("{iface}: already attached; program replaced atomically");
                } else {
                    println!("{iface}: attached in {} mode", out.mode);
                }
            }
            println!("maps and links pinned under {}", dp.pin_dir().display());
            Ok(())
        }
        XdpCommand::Detach {
            interfaces,
            all,
            purge,
            pins,
        } => {
            let targets = if all {
                XdpDatapath::attached(&pins.pin_root)
            } else {
                interfaces
            };
            if targets.is_empty() && !purge {
                bail!("name interfaces with --interface, or use --all");
            }
            for iface in &targets {
                if XdpDatapath::detach(&pins.pin_root, iface)? {
                    println!("{iface}: detached");
                } else {
                    println!("{iface}: was not attached");
                }
            }
            if purge {
                XdpDatapath::purge(&pins.pin_root)?;
                let _ = std::fs::remove_dir_all(pins.spec_dir());
                println!("pinned maps removed");
            }
            Ok(())
        }
        XdpCommand::Status {
            interval,
            watch,
            json,
            pins,
        } => loop {
            let report = status(&pins, interval)?;
            if json && watch {
                println!("{}", serde_json::to_string(&report)?);
            } else if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                if watch && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    // Cursor home, clear the screen: the next sample replaces the last.
                    print!("\x1b[H\x1b[2J");
                }
                print!("{}", render(&report));
            }
            if !watch {
                return Ok(());
            }
            if interval <= 0.0 {
                std::thread::sleep(Duration::from_secs(1));
            }
        },
        XdpCommand::Mitigation(m) => run_mitigation(m),
    }
}

fn run_mitigation(cmd: MitigationCommand) -> Result<()> {
    match cmd {
        MitigationCommand::Check { file } => {
            let specs = read_mitigation_file(&file)?;
            println!(
                "{}: {} mitigation(s), all valid",
                file.display(),
                specs.len()
            );
            Ok(())
        }
        MitigationCommand::Add { file, pins } => {
            let specs = read_mitigation_file(&file)?;
            let mut dp = XdpDatapath::open_pinned(&pins.pin_root)?;
            std::fs::create_dir_all(pins.spec_dir())
                .with_context(|| format!("creating {}", pins.spec_dir().display()))?;
            for s in &specs {
                let replacing = dp.installed().contains(&s.id);
                let t0 = Instant::now();
                dp.install(s)
                    .with_context(|| format!("installing mitigation {}", s.id))?;
                let path = pins.spec_dir().join(format!("{}.json", s.id));
                std::fs::write(&path, serde_json::to_vec_pretty(s)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!(
                    "mitigation {}: {} ({} targets, {} ACL entries) in {:.1} ms",
                    s.id,
                    if replacing { "replaced" } else { "installed" },
                    s.targets.len(),
                    s.acl.len(),
                    t0.elapsed().as_secs_f64() * 1e3
                );
            }
            Ok(())
        }
        MitigationCommand::Remove { id, pins } => {
            let mut dp = XdpDatapath::open_pinned(&pins.pin_root)?;
            match dp.remove(id)? {
                Some(c) => {
                    let _ = std::fs::remove_file(pins.spec_dir().join(format!("{id}.json")));
                    let d = c.dropped_total();
                    println!(
                        "mitigation {id}: removed ({} packets in scope, {} dropped)",
                        c.in_scope.packets, d.packets
                    );
                }
                None => {
                    bail!("no mitigation {id} is installed (see `dots-agent xdp mitigation list`)")
                }
            }
            Ok(())
        }
        MitigationCommand::List { json, pins } => {
            let dp = XdpDatapath::open_pinned(&pins.pin_root)?;
            let rows: Vec<(u64, Vec<String>)> = dp
                .installed()
                .into_iter()
                .map(|id| {
                    (
                        id,
                        dp.targets(id)
                            .unwrap_or_default()
                            .iter()
                            .map(|t| t.to_string())
                            .collect(),
                    )
                })
                .collect();
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(id, t)| serde_json::json!({"id": id, "targets": t}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if rows.is_empty() {
                println!("no mitigations installed");
            } else {
                for (id, t) in rows {
                    println!("{id:>8}  {}", t.join(" "));
                }
            }
            Ok(())
        }
    }
}

#[derive(Serialize, Clone, Copy, Default)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for Count {
    fn from(c: Counter) -> Self {
        Count {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

#[derive(Serialize, Default)]
pub struct Rate {
    pub pps: f64,
    pub bps: f64,
}

#[derive(Serialize)]
pub struct InterfaceReport {
    pub name: String,
    pub ifindex: Option<u32>,
    pub rx: Count,
    pub rx_rate: Option<Rate>,
    pub to_target: u64,
    pub dropped: u64,
    pub parse_errors: u64,
    pub non_ip: u64,
}

#[derive(Serialize)]
pub struct AclReport {
    pub name: String,
    pub matched: Count,
}

/// A source of dropped traffic; counts are estimates from sampled drops.
#[derive(Serialize)]
pub struct TalkerReport {
    pub source: String,
    pub dropped: Count,
}

/// Top talkers shown per mitigation.
const TOP_TALKERS: usize = 5;

#[derive(Serialize)]
pub struct MitigationReport {
    pub id: u64,
    pub targets: Vec<String>,
    pub in_scope: Count,
    pub passed: Count,
    pub accepted: Count,
    pub dropped: Count,
    pub dropped_by_reason: BTreeMap<&'static str, Count>,
    pub rate_limited: Count,
    pub drop_rate: Option<Rate>,
    pub pass_rate: Option<Rate>,
    pub acl: Vec<AclReport>,
    /// Sources with the most dropped packets, most first (sampled estimates).
    pub top_talkers: Vec<TalkerReport>,
}

#[derive(Serialize)]
pub struct StatusReport {
    pub pin_dir: String,
    pub interfaces: Vec<InterfaceReport>,
    pub mitigations: Vec<MitigationReport>,
    pub occupancy: Vec<(&'static str, usize, usize)>,
}

fn rate(a: Counter, b: Counter, secs: f64) -> Rate {
    Rate {
        pps: b.packets.saturating_sub(a.packets) as f64 / secs,
        bps: b.bytes.saturating_sub(a.bytes) as f64 * 8.0 / secs,
    }
}

fn status(pins: &Pins, interval: f64) -> Result<StatusReport> {
    let dp = XdpDatapath::open_pinned(&pins.pin_root)?;
    let names = XdpDatapath::attached(&pins.pin_root);
    let ifindexes: Vec<Option<u32>> = names
        .iter()
        .map(|n| crate::datapath::interface_index(n))
        .collect();
    let sample = |dp: &XdpDatapath| -> Result<(Vec<Counter>, BTreeMap<u64, MitigationCounters>)> {
        let ifs = ifindexes
            .iter()
            .map(|i| {
                Ok(i.map(|i| dp.interface_counters(i))
                    .transpose()?
                    .map(|c| c.stats.rx)
                    .unwrap_or_default())
            })
            .collect::<Result<Vec<_>>>()?;
        let mut ms = BTreeMap::new();
        for id in dp.installed() {
            if let Some(c) = dp.counters(id)? {
                ms.insert(id, c);
            }
        }
        Ok((ifs, ms))
    };
    let first = if interval > 0.0 {
        Some(sample(&dp)?)
    } else {
        None
    };
    let t0 = Instant::now();
    if interval > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(interval.min(60.0)));
    }
    let (_, now) = sample(&dp)?;
    let secs = t0.elapsed().as_secs_f64();

    let mut interfaces = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (stats, rx_rate) = match ifindexes[i] {
            Some(ix) => {
                let s = dp.interface_counters(ix)?.stats;
                let r = first.as_ref().map(|(f, _)| rate(f[i], s.rx, secs));
                (s, r)
            }
            None => (Default::default(), None),
        };
        interfaces.push(InterfaceReport {
            name: name.clone(),
            ifindex: ifindexes[i],
            rx: stats.rx.into(),
            rx_rate,
            to_target: stats.to_target,
            dropped: stats.dropped,
            parse_errors: stats.parse_errors,
            non_ip: stats.non_ip,
        });
    }
    let mut talkers = dp.top_talkers_all(TOP_TALKERS)?;
    let mut mitigations = Vec::new();
    for (id, c) in &now {
        let before = first.as_ref().and_then(|(_, m)| m.get(id));
        let spec = pins.saved_spec(*id);
        let acl = c
            .acl
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let name = spec
                    .as_ref()
                    .and_then(|s| {
                        s.acl
                            .iter()
                            .find(|e| compile::name_hash(&e.name) == a.name_hash)
                    })
                    .map(|e| e.name.clone())
                    .unwrap_or_else(|| format!("#{i}"));
                AclReport {
                    name,
                    matched: a.matched.into(),
                }
            })
            .collect();
        mitigations.push(MitigationReport {
            id: *id,
            targets: dp
                .targets(*id)
                .unwrap_or_default()
                .iter()
                .map(|t| t.to_string())
                .collect(),
            in_scope: c.in_scope.into(),
            passed: c.passed.into(),
            accepted: c.accepted.into(),
            dropped: c.dropped_total().into(),
            dropped_by_reason: DropReason::ALL
                .iter()
                .filter(|r| c.dropped(**r).packets > 0)
                .map(|r| (r.label(), c.dropped(*r).into()))
                .collect(),
            rate_limited: c.rate_limited().into(),
            drop_rate: before.map(|b| rate(b.dropped_total(), c.dropped_total(), secs)),
            pass_rate: before.map(|b| rate(b.passed, c.passed, secs)),
            acl,
            top_talkers: talkers
                .remove(id)
                .unwrap_or_default()
                .into_iter()
                .map(|(a, c)| TalkerReport {
                    source: a.to_string(),
                    dropped: c.into(),
                })
                .collect(),
        });
    }
    Ok(StatusReport {
        pin_dir: dp.pin_dir().display().to_string(),
        interfaces,
        mitigations,
        occupancy: dp.occupancy(),
    })
}

fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

pub fn render(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "XDP datapath at {}", r.pin_dir);
    if r.interfaces.is_empty() {
        let _ = writeln!(o, "not attached to any interface");
    } else {
        let _ = writeln!(
            o,
            "\n{:<16} {:>7} {:>12} {:>9} {:>12} {:>12} {:>10} {:>10}",
            "INTERFACE",
            "IFINDEX",
            "RX PKTS",
            "RX PPS",
            "TO TARGET",
            "DROPPED",
            "PARSE ERR",
            "NON-IP"
        );
        for i in &r.interfaces {
            let _ = writeln!(
                o,
                "{:<16} {:>7} {:>12} {:>9} {:>12} {:>12} {:>10} {:>10}",
                i.name,
                i.ifindex.map_or("-".into(), |x| x.to_string()),
                i.rx.packets,
                i.rx_rate.as_ref().map_or("-".into(), |r| si(r.pps)),
                i.to_target,
                i.dropped,
                i.parse_errors,
                i.non_ip
            );
        }
    }
    if r.mitigations.is_empty() {
        let _ = writeln!(o, "\nno mitigations installed");
    }
    for m in &r.mitigations {
        let _ = writeln!(o, "\nmitigation {}  targets {}", m.id, m.targets.join(" "));
        let _ = writeln!(
            o,
            "  in scope {} pkts / {} B   passed {} pkts   dropped {} pkts / {} B   rate-limited {} pkts",
            m.in_scope.packets, m.in_scope.bytes, m.passed.packets, m.dropped.packets, m.dropped.bytes, m.rate_limited.packets
        );
        if let (Some(d), Some(p)) = (&m.drop_rate, &m.pass_rate) {
            let _ = writeln!(
                o,
                "  now: dropping {} pps ({}bit/s), passing {} pps",
                si(d.pps),
                si(d.bps),
                si(p.pps)
            );
        }
        if !m.dropped_by_reason.is_empty() {
            let reasons: Vec<String> = m
                .dropped_by_reason
                .iter()
                .map(|(k, v)| format!("{k}={}", v.packets))
                .collect();
            let _ = writeln!(o, "  dropped by reason: {}", reasons.join("  "));
        }
        for a in &m.acl {
            let _ = writeln!(
                o,
                "  acl {:<24} {:>12} pkts {:>14} B",
                a.name, a.matched.packets, a.matched.bytes
            );
        }
        if !m.top_talkers.is_empty() {
            let _ = writeln!(
                o,
                "  top talkers (dropped, estimated from 1 in {TALKER_SAMPLE} drops):"
            );
            for t in &m.top_talkers {
                let _ = writeln!(
                    o,
                    "    {:<39} {:>12} pkts {:>14} B",
                    t.source, t.dropped.packets, t.dropped.bytes
                );
            }
        }
    }
    let busy: Vec<String> = r
        .occupancy
        .iter()
        .filter(|(_, u, _)| *u > 0)
        .map(|(n, u, c)| format!("{n} {u}/{c}"))
        .collect();
    if !busy.is_empty() {
        let _ = writeln!(o, "\nmap occupancy: {}", busy.join(", "));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_lists_top_talkers() {
        let m = MitigationReport {
            id: 3,
            targets: vec!["198.51.100.0/24".into()],
            in_scope: Count::default(),
            passed: Count::default(),
            accepted: Count::default(),
            dropped: Count::default(),
            dropped_by_reason: BTreeMap::new(),
            rate_limited: Count::default(),
            drop_rate: None,
            pass_rate: None,
            acl: Vec::new(),
            top_talkers: vec![TalkerReport {
                source: "2001:db8::1".into(),
                dropped: Count {
                    packets: 1600,
                    bytes: 67_200,
                },
            }],
        };
        let text = render(&StatusReport {
            pin_dir: "/x".into(),
            interfaces: Vec::new(),
            mitigations: vec![m],
            occupancy: Vec::new(),
        });
        assert!(text.contains("top talkers"), "{text}");
        let line = text.lines().find(|l| l.contains("2001:db8::1")).unwrap();
        assert!(
            line.contains("1600 pkts") && line.contains("67200 B"),
            "{line}"
        );
    }
}
