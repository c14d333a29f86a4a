//! `dots-lab bench`: how many packets per second the scrubber drops on the veth lab,
//! with four droppers measured in alternation in one run (a benchmark: it prints figures
//! and ratios and asserts nothing about time).
//!
//! Method. The lab topology (internet -> scrubber -> customer). On the internet side the
//! generator sends, as fast as it goes, UDP to 198.51.100.10 port 9999 from the addresses of
//! 203.0.113.0/24 (the flood), and a second generator sends legitimate TCP to port 443 at a
//! fixed rate. The flood reaches the scrubber as xdp_frames, as from a NIC: from XDP live
//! frames where the kernel allows them, else from an AF_PACKET socket whose frames an XDP
//! broadcast multiplies (`trafficgen::fanout`). On the scrubber's ingress, in turn:
//! - **dots-agent**: our XDP filter with a realistic rule set: the customer's mitigation
//!   (amplification ports, SYN and per-source limits, an ACL of 20 entries whose
//!   `udp dport 9999` entry drops the flood) among 1,000 other mitigated IPv6 prefixes;
//! - **XDP_DROP**: an empty program that drops everything (the ceiling; it drops the
//!   legitimate traffic too);
//! - **xdp-filter**: xdp-tools' program (`xdpfilt_alw_all.o`, what `xdp-filter load` runs)
//!   with the equivalent rule `udp dst port 9999 drop`, loaded with aya (the `xdp-filter`
//!   tool's loader does not work on this kernel);
//! - **nftables**: `netdev` ingress hook on the same interface, `udp dport 9999 drop`.
//!
//! Dropped per second is the kernel's count for the dropper: the veth's `xdp_drops`
//! (ethtool -S, the same counter for the three XDP programs; our own counters are shown
//! beside it) and the nft rule's counter. Legitimate delivered is the customer interface's
//! receive counter. The generator and the dropper share the machine's CPUs (the veth's NAPI
//! runs on the sending CPU), as they would on one host; the ratios are what the comparison
//! is about, and each round measures every case once, in turn.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::topology::{self, interrupted, Topology};
use crate::trafficgen::{self, Backend, Flow, Pace, Protocol, Sender};
use dots_agent::datapath::{
    AclAction, AclEntry, AclMatch, AttachMode, Countermeasures, LoadOptions, MitigationSpec,
    Mitigator, PortRange, Rate, XdpDatapath,
};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Rounds (each measures every case once, in turn).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Legitimate packets per second sent alongside the flood.
    #[arg(long, default_value_t = 10_000)]
    pub legit_pps: u64,
    /// Run the scrubber's veth NAPI in its own kernel thread (threaded NAPI), so the filter
    /// and the generator can use different CPUs; off: NAPI runs on the sending CPU.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub threaded_napi: bool,
    /// Source prefix of the flood (up to 4,094 of its addresses; a /32 sends from one).
    #[arg(long, default_value = "203.0.113.0/24")]
    pub flood_sources: ipnet::IpNet,
    /// Frame payload of the flood (bytes after the UDP header).
    #[arg(long, default_value_t = 18)]
    pub payload: usize,
    /// Droppers to measure, comma-separated (ratios need `ours` and the other case).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ours,empty,xdp-filter,nftables"
    )]
    pub cases: Vec<CaseName>,
    /// Also read the kernel's per-program run statistics and print the time each XDP
    /// program spends per packet. A diagnosis aid: the statistics add two clock reads to
    /// every run, which narrows the differences between droppers.
    #[arg(long)]
    pub program_time: bool,
    /// How the generators send: XDP live frames, an AF_PACKET socket, or live frames where
    /// the kernel allows them (auto).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub sender: Backend,
    /// With the socket sender: copies of each flood frame the XDP fan-out makes (0: send
    /// the flood as skbs straight from the socket).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=128))]
    pub fanout: u32,
}

/// The fan-out's veth pair in the internet namespace (socket -> FANOUT_SEND -> FANOUT_IN).
const FANOUT_SEND: &str = "gen-send";
const FANOUT_IN: &str = "gen-fan";

/// A dropper as named on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseName {
    Ours,
    Empty,
    XdpFilter,
    Nftables,
}

const XDP_FILTER_OBJ: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Ours,
    Empty,
    XdpFilter,
    Nftables,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Ours => "dots-agent XDP filter",
            Case::Empty => "empty XDP_DROP (ceiling)",
            Case::XdpFilter => "xdp-filter (xdp-tools)",
            Case::Nftables => "nftables netdev ingress",
        }
    }
}

#[derive(Clone, Copy, Default, Debug)]
struct Measure {
    offered_pps: f64,
    dropped_pps: f64,
    /// Our own counter (dots-agent case only).
    own_dropped_pps: Option<f64>,
    legit_delivered_pct: f64,
    /// Nanoseconds per run inside the XDP program (kernel statistics, `--program-time`).
    program_ns: Option<f64>,
}

/// The customer's mitigation and 1,000 other mitigated prefixes.
fn rule_set() -> Vec<MitigationSpec> {
    let mut acl = Vec::new();
    for (i, port) in [53u16, 123, 161, 389, 1900, 11211, 19, 17, 111, 137]
        .iter()
        .enumerate()
    {
        acl.push(AclEntry {
            name: format!("rate-udp-{port}"),
            matches: AclMatch {
                protocol: Some(17),
                source_port: Some(PortRange::single(*port)),
                ..Default::default()
            },
            action: AclAction::RateLimit(dots_agent::datapath::RateLimit::PacketsPerSecond(Rate {
                rate: 1000 + i as u64,
                burst: Some(100),
            })),
        });
    }
    for p in [9999u16, 6666, 4444, 3074, 27015, 1434, 5060, 10001, 7, 3283] {
        acl.push(AclEntry {
            name: format!("udp-{p}-flood"),
            matches: AclMatch {
                protocol: Some(17),
                destination_port: Some(PortRange::single(p)),
                ..Default::default()
            },
            action: AclAction::Drop,
        });
    }
    let customer = MitigationSpec {
        acl,
        countermeasures: Countermeasures {
            amplification: true,
            fragments: true,
            source_pps: Some(Rate {
                rate: 1_000_000,
                burst: Some(1_000_000),
            }),
            syn_pps: Some(Rate {
                rate: 100,
                burst: Some(200),
            }),
            scope_bps: None,
        },
        ..MitigationSpec::new(
            1,
            vec![
                "198.51.100.0/24".parse().expect("constant"),
                "2001:db8:6401::/48".parse().expect("constant"),
            ],
        )
    };
    let mut v = vec![customer];
    for i in 0..1000u64 {
        let mut m = MitigationSpec::new(
            10 + i,
            vec![format!("2001:db8:{:x}::/48", 0x8000 + i)
                .parse()
                .expect("valid")],
        );
        m.countermeasures.amplification = true;
        v.push(m);
    }
    v
}

/// The veth's XDP drop counter (ethtool -S: the sum of every `*xdp_drops` line), read in the
/// calling thread's namespace.
fn veth_xdp_drops(iface: &str) -> Result<u64> {
    let out = Command::new("ethtool")
        .args(["-S", iface])
        .output()
        .context("running ethtool")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sum = 0;
    let mut found = false;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().ends_with("xdp_drops") && !k.contains("peer") {
                sum += v.trim().parse::<u64>().unwrap_or(0);
                found = true;
            }
        }
    }
    if !found {
        bail!("ethtool -S {iface} has no xdp_drops counter:\n{text}");
    }
    Ok(sum)
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut c = Command::new("nft");
    c.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c
        .spawn()
        .context("running nft (install nftables: scripts/setup.sh)")?;
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(s.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nft_drop_counter() -> Result<u64> {
    let out = nft(
        &["-j", "list", "chain", "netdev", "dotsbench", "ingress"],
        None,
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let mut n = 0;
    for item in v["nftables"].as_array().into_iter().flatten() {
        for e in item["rule"]["expr"].as_array().into_iter().flatten() {
            if let Some(p) = e["counter"]["packets"].as_u64() {
                n += p;
            }
        }
    }
    Ok(n)
}

/// Everything that runs inside the scrubber's namespace.
struct Scrubber {
    ours: XdpDatapath,
    pin_root: PathBuf,
    empty: crate::xdp_asm::HandXdp,
    xdpfilter: Option<aya::Ebpf>,
    xdpfilter_link: Option<aya::programs::xdp::XdpLinkId>,
    empty_link: Option<aya::programs::xdp::XdpLinkId>,
    ifindex: u32,
}

impl Scrubber {
    fn setup(pin_root: PathBuf) -> Result<Scrubber> {
        let mut ours = XdpDatapath::load(&LoadOptions::new(&pin_root))?;
        for m in rule_set() {
            ours.install(&m)
                .with_context(|| format!("installing mitigation {}", m.id))?;
        }
        let empty = crate::testrun::load_trivial_xdp(1)?;
        let xdpfilter = match load_xdp_filter(&pin_root) {
            Ok(e) => Some(e),
            Err(e) => {
                println!("xdp-filter: skipped ({e:#})");
                None
            }
        };
        let ifindex = dots_agent::datapath::interface_index(topology::SCR_IN)
            .context("no scrubber ingress interface")?;
        Ok(Scrubber {
            ours,
            pin_root,
            empty,
            xdpfilter,
            xdpfilter_link: None,
            empty_link: None,
            ifindex,
        })
    }

    /// Installs the case's dropper on the ingress interface.
    fn engage(&mut self, case: Case) -> Result<()> {
        match case {
            Case::Ours => {
                self.ours.attach(topology::SCR_IN, AttachMode::Native)?;
            }
            Case::Empty => {
                self.empty_link = Some(
                    self.empty
                        .program_mut()
                        .attach(topology::SCR_IN, aya::programs::xdp::XdpMode::Driver)
                        .context("attaching the empty program")?,
                )
            }
            Case::XdpFilter => {
                let e = self.xdpfilter.as_mut().context("xdp-filter not loaded")?;
                let p: &mut aya::programs::Xdp = e
                    .program_mut("xdpfilt_alw_all")
                    .context("program")?
                    .try_into()?;
                self.xdpfilter_link =
                    Some(p.attach(topology::SCR_IN, aya::programs::xdp::XdpMode::Driver)?);
            }
            Case::Nftables => {
                nft(
                    &["-f", "-"],
                    Some(&format!(
                        "table netdev dotsbench {{\n chain ingress {{\n  type filter hook ingress device \"{}\" priority 0; policy accept;\n  udp dport 9999 counter drop\n }}\n}}\n",
                        topology::SCR_IN
                    )),
                )?;
            }
        }
        Ok(())
    }

    /// Removes the case's dropper.
    fn disengage(&mut self, case: Case) {
        match case {
            Case::Ours => {
                let _ = XdpDatapath::detach(&self.pin_root, topology::SCR_IN);
            }
            Case::Empty => {
                if let Some(id) = self.empty_link.take() {
                    let _ = self.empty.program_mut().detach(id);
                }
            }
            Case::XdpFilter => {
                if let (Some(e), Some(id)) = (self.xdpfilter.as_mut(), self.xdpfilter_link.take()) {
                    if let Some(p) = e.program_mut("xdpfilt_alw_all") {
                        let p: Result<&mut aya::programs::Xdp, _> = p.try_into();
                        if let Ok(p) = p {
                            let _ = p.detach(id);
                        }
                    }
                }
            }
            Case::Nftables => {
                let _ = nft(&["delete", "table", "netdev", "dotsbench"], None);
            }
        }
    }

    fn dropped(&self, case: Case) -> Result<u64> {
        match case {
            Case::Nftables => nft_drop_counter(),
            _ => veth_xdp_drops(topology::SCR_IN),
        }
    }

    /// The case's XDP program's (run time ns, runs), if it is an XDP program. Both stay 0
    /// unless the kernel's statistics are on (`--program-time`).
    fn program_stats(&self, case: Case) -> Option<(u64, u64)> {
        let p: &aya::programs::Xdp = match case {
            Case::Ours => self.ours.program()?,
            Case::Empty => self.empty.program(),
            Case::XdpFilter => self
                .xdpfilter
                .as_ref()?
                .program("xdpfilt_alw_all")?
                .try_into()
                .ok()?,
            Case::Nftables => return None,
        };
        let info = p.info().ok()?;
        Some((
            u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            info.run_count(),
        ))
    }

    fn own_dropped(&self) -> u64 {
        self.ours
            .interface_counters(self.ifindex)
            .map(|c| c.stats.dropped)
            .unwrap_or(0)
    }
}

/// xdp-tools' program with `udp dst port 9999 drop` in its port map.
fn load_xdp_filter(pin_root: &std::path::Path) -> Result<aya::Ebpf> {
    use aya::maps::{PerCpuArray, PerCpuValues};
    if !std::path::Path::new(XDP_FILTER_OBJ).exists() {
        bail!("{XDP_FILTER_OBJ} not found (Debian package libxdp1)");
    }
    let dir = pin_root.join("xdpfilt");
    std::fs::create_dir_all(&dir)?;
    let mut e = aya::EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .allow_unsupported_maps()
        .load_file(XDP_FILTER_OBJ)
        .context("loading xdpfilt_alw_all.o")?;
    let p: &mut aya::programs::Xdp = e
        .program_mut("xdpfilt_alw_all")
        .context("no xdpfilt_alw_all program")?
        .try_into()?;
    p.load().context("verifying xdpfilt_alw_all")?;
    const MAP_FLAG_DST: u64 = 1 << 1;
    const MAP_FLAG_UDP: u64 = 1 << 3;
    let ncpu = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let mut ports: PerCpuArray<_, u64> =
        PerCpuArray::try_from(e.map_mut("filter_ports").context("filter_ports map")?)?;
    // The program reads the port from the header: network order in a u32 key.
    let key = u16::from_ne_bytes(9999u16.to_be_bytes()) as u32;
    ports.set(
        key,
        PerCpuValues::try_from(vec![MAP_FLAG_DST | MAP_FLAG_UDP; ncpu])?,
        0,
    )?;
    Ok(e)
}

pub fn run(a: &BenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (namespaces, XDP): run it with sudo");
    }
    if !(0.5..=60.0).contains(&a.seconds) {
        bail!("--seconds must be between 0.5 and 60");
    }
    topology::install_signal_handlers();
    let pid = std::process::id();
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/dots-bench-{pid}"));
    struct Unpin(PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = XdpDatapath::purge(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unpin = Unpin(pin_root.clone());
    let topo = Topology::build(&format!("dbench{pid}"))?;
    if a.threaded_napi {
        // /sys/class/net shows the namespace sysfs was mounted in: `ip netns exec` mounts
        // the scrubber's for this one command.
        let st = Command::new("ip")
            .args(["netns", "exec", &topo.scrubber.name, "sh", "-c"])
            .arg(format!(
                "echo 1 > /sys/class/net/{}/threaded",
                topology::SCR_IN
            ))
            .status()?;
        if !st.success() {
            bail!("could not turn on threaded NAPI on {}", topology::SCR_IN);
        }
    }
    let dst_mac = trafficgen::parse_mac(topology::SCR_IN_MAC)?;
    let src_mac = [0x02, 0x00, 0x5e, 0x00, 0x01, 0x01];
    let flood = Flow {
        sources: a.flood_sources,
        destination: topology::TARGET_V4.parse().expect("constant"),
        protocol: Protocol::Udp,
        source_port: 5000,
        destination_port: 9999,
        tcp_flags: 0,
        payload: a.payload,
        dst_mac,
        src_mac,
    }
    .template()?;
    let legit = Flow {
        sources: "192.0.2.128/26".parse().expect("constant"),
        destination: topology::TARGET_V4.parse().expect("constant"),
        protocol: Protocol::Tcp,
        source_port: 40000,
        destination_port: 443,
        tcp_flags: crate::packet::TCP_ACK,
        payload: 100,
        dst_mac,
        src_mac,
    }
    .template()?;
    println!(
        "bench: veth lab (namespaces dbench{pid}-*); {} rounds x {} cases x {} s; flood UDP :9999 from {} source(s) in {}, {} B frames; legitimate TCP :443 at {} pps; {} NAPI",
        a.rounds,
        a.cases.len(),
        a.seconds,
        flood.sources,
        a.flood_sources,
        14 + 20 + 8 + a.payload,
        a.legit_pps,
        if a.threaded_napi { "threaded" } else { "inline" }
    );
    // Every case uses the same sender: resolve "auto" once.
    let backend = {
        let t = flood.clone();
        let want = a.sender;
        let (name, backend, fallback) = topo.inet.run_in(move || -> Result<_> {
            let (s, fallback) = Sender::open(&t, topology::INET_IF, want)?;
            Ok((s.name(), s.backend(), fallback))
        })??;
        println!("{}", trafficgen::announce(name, fallback.as_deref()));
        backend
    };
    // With a socket sender, the flood goes through the fan-out (see trafficgen::fanout):
    // socket -> FANOUT_SEND => FANOUT_IN (XDP broadcast) => INET_IF as xdp_frames.
    let (_fanout, copies) = if backend == Backend::Socket && a.fanout > 0 {
        topo.inet.ip(&[
            "link",
            "add",
            FANOUT_SEND,
            "type",
            "veth",
            "peer",
            "name",
            FANOUT_IN,
        ])?;
        for i in [FANOUT_SEND, FANOUT_IN] {
            topo.inet.ip(&["link", "set", i, "up"])?;
        }
        let n = a.fanout;
        let f = topo.inet.run_in(move || {
            trafficgen::fanout::Fanout::attach(FANOUT_IN, topology::INET_IF, n)
        })??;
        println!("flood: socket frames multiplied {n}x into XDP frames by an XDP broadcast (trafficgen::fanout)");
        (Some(f), Some(n))
    } else {
        (None, None)
    };
    let cust_path = topo.customer.path();
    let inet = &topo.inet;
    let seconds = a.seconds;
    let rounds = a.rounds;
    let legit_pps = a.legit_pps;
    let mut wanted = a.cases.clone();
    wanted.dedup();
    // The statistics cost every program a clock read per run, for as long as this fd lives.
    let _stats_on = if a.program_time {
        Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("turning on the kernel's BPF run statistics")?,
        )
    } else {
        None
    };
    // The scrubber's side runs on this thread, inside its namespace.
    let results = topo.scrubber.run_in({
        let inet_path = inet.path();
        move || -> Result<Vec<(Case, Vec<Measure>)>> {
            let mut scr = Scrubber::setup(pin_root)?;
            let cases: Vec<Case> = wanted
                .iter()
                .filter_map(|c| match c {
                    CaseName::Ours => Some(Case::Ours),
                    CaseName::Empty => Some(Case::Empty),
                    CaseName::XdpFilter => scr.xdpfilter.is_some().then_some(Case::XdpFilter),
                    CaseName::Nftables => Some(Case::Nftables),
                })
                .collect();
            let mut results: Vec<(Case, Vec<Measure>)> =
                cases.iter().map(|c| (*c, Vec::new())).collect();
            for round in 0..rounds {
                for (ci, &case) in cases.iter().enumerate() {
                    if interrupted() {
                        bail!("interrupted");
                    }
                    scr.engage(case)?;
                    std::thread::sleep(Duration::from_millis(200));
                    let d0 = scr.dropped(case)?;
                    let own0 = scr.own_dropped();
                    let p0 = scr.program_stats(case);
                    let l0 = rx_in(&cust_path, topology::CUST_IF)?;
                    let (offered, legit_sent, secs) =
                        send_both(
                            &inet_path, &flood, &legit, legit_pps, seconds, backend, copies,
                        )?;
                    std::thread::sleep(Duration::from_millis(100));
                    let d1 = scr.dropped(case)?;
                    let own1 = scr.own_dropped();
                    let p1 = scr.program_stats(case);
                    let l1 = rx_in(&cust_path, topology::CUST_IF)?;
                    scr.disengage(case);
                    let m = Measure {
                        offered_pps: offered as f64 / secs,
                        dropped_pps: (d1 - d0) as f64 / secs,
                        own_dropped_pps: (case == Case::Ours).then(|| (own1 - own0) as f64 / secs),
                        legit_delivered_pct: if legit_sent > 0 {
                            100.0 * (l1 - l0) as f64 / legit_sent as f64
                        } else {
                            0.0
                        },
                        program_ns: match (p0, p1) {
                            (Some((t0, n0)), Some((t1, n1))) if n1 > n0 => {
                                Some((t1 - t0) as f64 / (n1 - n0) as f64)
                            }
                            _ => None,
                        },
                    };
                    println!(
                        "round {} {:<26} offered {:>6.2} Mpps  dropped {:>6.2} Mpps{}  legit delivered {:>5.1}%{}",
                        round + 1,
                        case.name(),
                        m.offered_pps / 1e6,
                        m.dropped_pps / 1e6,
                        m.own_dropped_pps
                            .map(|o| format!(" (own counter {:.2})", o / 1e6))
                            .unwrap_or_default(),
                        m.legit_delivered_pct,
                        m.program_ns
                            .map(|n| format!("  {n:.0} ns/packet in the program"))
                            .unwrap_or_default()
                    );
                    results[ci].1.push(m);
                }
            }
            Ok(results)
        }
    })??;
    print_table(&results);
    Ok(())
}

/// Packets received on an interface of another namespace (/proc/net/dev of a thread there).
fn rx_in(ns: &std::path::Path, iface: &'static str) -> Result<u64> {
    let file = std::fs::File::open(ns)?;
    std::thread::spawn(move || -> Result<u64> {
        // SAFETY: setns on this short-lived thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        dots_agent::client::guard::rx_packets(iface)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("rx counter thread panicked"))?
}

/// Runs the flood (as fast as possible) and the legitimate flow (paced) from the internet
/// namespace for `seconds`; returns (flood sent, legit sent, seconds).
fn send_both(
    inet: &std::path::Path,
    flood: &trafficgen::Template,
    legit: &trafficgen::Template,
    legit_pps: u64,
    seconds: f64,
    backend: Backend,
    fanout: Option<u32>,
) -> Result<(u64, u64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let dur = Duration::from_secs_f64(seconds);
    let spawn = |t: trafficgen::Template, pps: u64, iface: &'static str| -> Result<_> {
        let file = std::fs::File::open(inet)?;
        let stop = stop.clone();
        Ok(std::thread::spawn(move || -> Result<u64> {
            // SAFETY: setns on this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let (s, _) = Sender::open(&t, iface, backend)?;
            let sent = AtomicU64::new(0);
            s.run(
                Pace {
                    pps,
                    duration: dur,
                    count: u64::MAX,
                },
                &sent,
                &stop,
            )
        }))
    };
    let t0 = Instant::now();
    let l = spawn(legit.clone(), legit_pps, topology::INET_IF)?;
    let f = match fanout {
        Some(_) => spawn(flood.clone(), 0, FANOUT_SEND)?,
        None => spawn(flood.clone(), 0, topology::INET_IF)?,
    };
    let fs = f
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))??
        * fanout.unwrap_or(1) as u64;
    let secs = t0.elapsed().as_secs_f64().min(seconds.max(1e-3) + 0.05);
    stop.store(true, Ordering::SeqCst);
    let ls = l
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))??;
    Ok((fs, ls, secs))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}

fn print_table(results: &[(Case, Vec<Measure>)]) {
    let med = |c: Case, f: fn(&Measure) -> f64| {
        results
            .iter()
            .find(|r| r.0 == c)
            .map(|r| median(r.1.iter().map(f).collect()))
    };
    println!("\n== veth drop rate (median of rounds)");
    println!(
        "{:<28} {:>14} {:>14} {:>16}",
        "DROPPER", "OFFERED Mpps", "DROPPED Mpps", "LEGIT DELIVERED"
    );
    for (c, _) in results {
        println!(
            "{:<28} {:>14.2} {:>14.2} {:>15.1}%",
            c.name(),
            med(*c, |m| m.offered_pps).unwrap_or(0.0) / 1e6,
            med(*c, |m| m.dropped_pps).unwrap_or(0.0) / 1e6,
            med(*c, |m| m.legit_delivered_pct).unwrap_or(0.0)
        );
    }
    // Ratios are paired within each round (ours and the other case measured back to back),
    // then the median over rounds, so the drift of a shared machine cancels out.
    let pair = |a: Case, b: Case| {
        let x = &results.iter().find(|r| r.0 == a)?.1;
        let y = &results.iter().find(|r| r.0 == b)?.1;
        Some(median(
            x.iter()
                .zip(y)
                .map(|(p, q)| p.dropped_pps / q.dropped_pps.max(1.0))
                .collect(),
        ))
    };
    let ratio = |c: Case| pair(Case::Ours, c);
    if let Some(r) = ratio(Case::Empty) {
        println!(
            "dots-agent / empty XDP_DROP: {:.1}% (median of per-round ratios; target >= 85%)",
            100.0 * r
        );
    }
    if let Some(r) = ratio(Case::Nftables) {
        println!("dots-agent / nftables netdev: {r:.2}x (target >= 3x)");
    }
    if let Some(r) = ratio(Case::XdpFilter) {
        println!("dots-agent / xdp-filter: {r:.2}x");
    }
    // What the path allows at best: the empty program against nftables, same rounds.
    if let Some(r) = pair(Case::Empty, Case::Nftables) {
        println!(
            "empty XDP_DROP / nftables netdev: {r:.2}x (the most any XDP program can reach against nftables on this path)"
        );
    }
}
