//! `dots-lab bench --workload rate-limits`: does the filter admit what its rate limits
//! say while both CPUs run it? (A benchmark: it prints figures, it asserts nothing.)
//!
//! The rate limits are GCRA buckets shared by all CPUs and advanced with an atomic add
//! (`xdp-filter/src/rate.rs`); only an idle bucket's reset is not atomic. This measures the
//! outcome where it matters: a flood from two generator threads, one pinned to each CPU,
//! into a veth pair with two queues, so the scrubber's two NAPI instances run the filter
//! on both CPUs at once (transmit packet steering sends each thread's frames to the queue
//! of its CPU). Two cases, each with one mitigation of the customer's /24:
//! - **per-source**: 62 sources each far over a per-source packet limit; admitted packets
//!   against sources x limit;
//! - **scope-wide**: many sources over a scope-wide byte cap; admitted bytes against it.
//!
//! Admitted is the filter's own count of packets it let through in scope, taken from the
//! second half-second on (the buckets' initial bursts are over by then).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dots_agent::datapath::{
    AttachMode, Countermeasures, LoadOptions, MitigationSpec, Mitigator, Rate, XdpDatapath,
};

use super::bench::{median, BenchArgs};
use super::topology::{self, interrupted, Topology};
use crate::trafficgen::{self, socket::SocketSender, Flow, Pace, Protocol};

/// Per-source limit (packets/s) and the flood's sources (62 hosts of a /26).
const SOURCE_PPS: u64 = 2_000;
const SOURCES: &str = "203.0.113.0/26";
/// Scope-wide cap (bytes/s of frames as the filter counts them).
const SCOPE_BPS: u64 = 8_000_000;

/// A case's outcome: name, unit, configured rate, admitted rate per round.
type Outcome = (&'static str, &'static str, f64, Vec<f64>);

struct Case {
    name: &'static str,
    spec: MitigationSpec,
    /// What the limit admits per second, in packets or bytes.
    configured: f64,
    unit: &'static str,
    bytes: bool,
}

fn cases() -> Vec<Case> {
    let target = || vec!["198.51.100.0/24".parse().expect("constant")];
    let sources: u64 = 62;
    vec![
        Case {
            name: "per-source limit",
            spec: MitigationSpec {
                countermeasures: Countermeasures {
                    source_pps: Some(Rate {
                        rate: SOURCE_PPS,
                        burst: Some(SOURCE_PPS / 10),
                    }),
                    ..Default::default()
                },
                ..MitigationSpec::new(1, target())
            },
            configured: (sources * SOURCE_PPS) as f64,
            unit: "pps",
            bytes: false,
        },
        Case {
            name: "scope-wide cap",
            spec: MitigationSpec {
                countermeasures: Countermeasures {
                    scope_bps: Some(Rate::new(SCOPE_BPS)),
                    ..Default::default()
                },
                ..MitigationSpec::new(2, target())
            },
            configured: SCOPE_BPS as f64,
            unit: "B/s",
            bytes: true,
        },
    ]
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    if cpus < 2 {
        bail!("the rate-limit benchmark needs two CPUs (it runs the filter on both)");
    }
    topology::install_signal_handlers();
    let pid = std::process::id();
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/dots-bench-rates-{pid}"));
    struct Unpin(PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = XdpDatapath::purge(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unpin = Unpin(pin_root.clone());
    let topo = Topology::build_with(&format!("dbrate{pid}"), 2)?;
    // Transmit packet steering: a thread on CPU k sends on queue k (see the module docs).
    for q in 0..2 {
        let st = Command::new("ip")
            .args(["netns", "exec", &topo.inet.name, "sh", "-c"])
            .arg(format!(
                "echo {} > /sys/class/net/{}/queues/tx-{q}/xps_cpus",
                1 << q,
                topology::INET_IF
            ))
            .status()?;
        if !st.success() {
            bail!(
                "could not set transmit packet steering on {}",
                topology::INET_IF
            );
        }
    }
    let flood = Flow {
        sources: SOURCES.parse().expect("constant"),
        destination: topology::TARGET_V4.parse().expect("constant"),
        protocol: Protocol::Udp,
        source_port: 5000,
        destination_port: 5001,
        tcp_flags: 0,
        payload: a.payload,
        dst_mac: trafficgen::parse_mac(topology::SCR_IN_MAC)?,
        src_mac: [0x02, 0x00, 0x5e, 0x00, 0x01, 0x01],
    }
    .template()?;
    // One frame per source, sent round-robin: each batch of 64 touches every bucket.
    let frames: Vec<Vec<u8>> = (0..flood.sources).map(|k| flood.variant(k)).collect();
    println!(
        "bench: rate limits on both CPUs (namespaces dbrate{pid}-*); {} rounds x {} s; flood UDP from {} sources of {SOURCES}, {} B frames, one generator thread per CPU",
        a.rounds,
        a.seconds,
        flood.sources,
        frames[0].len()
    );
    let inet_path = topo.inet.path();
    let seconds = a.seconds;
    let rounds = a.rounds;
    let frames = Arc::new(frames);
    let results = topo.scrubber.run_in(move || -> Result<Vec<Outcome>> {
        let mut dp = XdpDatapath::load(&LoadOptions::new(&pin_root))?;
        dp.attach(topology::SCR_IN, AttachMode::Native)?;
        let ifindex = dots_agent::datapath::interface_index(topology::SCR_IN)
            .context("no scrubber ingress interface")?;
        let mut out = Vec::new();
        for case in cases() {
            dp.install(&case.spec)?;
            let mut admitted = Vec::new();
            for round in 0..rounds {
                if interrupted() {
                    bail!("interrupted");
                }
                let cpu0 = dp.interface_packets_per_cpu(ifindex)?;
                let stop = Arc::new(AtomicBool::new(false));
                let senders: Vec<_> = (0..2)
                    .map(|cpu| spawn_sender(&inet_path, frames.clone(), cpu, seconds, stop.clone()))
                    .collect::<Result<_>>()?;
                // Skip the initial bursts, then count over the rest of the run.
                std::thread::sleep(Duration::from_millis(500));
                let c0 = dp.counters(case.spec.id)?.context("installed")?;
                let t0 = Instant::now();
                std::thread::sleep(Duration::from_secs_f64((seconds - 0.6).max(0.2)));
                let c1 = dp.counters(case.spec.id)?.context("installed")?;
                let dt = t0.elapsed().as_secs_f64();
                stop.store(true, Ordering::SeqCst);
                let mut offered = 0;
                for s in senders {
                    offered += s.join().map_err(|_| anyhow::anyhow!("generator panicked"))??;
                }
                let cpu1 = dp.interface_packets_per_cpu(ifindex)?;
                let seen: Vec<u64> = cpu1.iter().zip(&cpu0).map(|(b, a)| b - a).collect();
                let total: u64 = seen.iter().sum::<u64>().max(1);
                let passed = c1.passed.since(&c0.passed);
                let rate = if case.bytes {
                    passed.bytes as f64 / dt
                } else {
                    passed.packets as f64 / dt
                };
                println!(
                    "round {} {:<18} configured {:>12.0} {}  admitted {:>12.0} {} ({:+.2}%)  offered {:.2} Mpps  filter runs per CPU: {}",
                    round + 1,
                    case.name,
                    case.configured,
                    case.unit,
                    rate,
                    case.unit,
                    100.0 * (rate / case.configured - 1.0),
                    offered as f64 / seconds / 1e6,
                    seen.iter()
                        .map(|n| format!("{:.0}%", 100.0 * *n as f64 / total as f64))
                        .collect::<Vec<_>>()
                        .join(" / ")
                );
                admitted.push(rate);
            }
            dp.remove(case.spec.id)?;
            dp.settle();
            out.push((case.name, case.unit, case.configured, admitted));
        }
        Ok(out)
    })??;
    println!("\n== rate limits, filter on both CPUs (median of rounds)");
    for (name, unit, configured, admitted) in results {
        let m = median(admitted);
        println!(
            "{name}: configured {configured:.0} {unit}, admitted {m:.0} {unit}: {:+.2}% (target within 5%)",
            100.0 * (m / configured - 1.0)
        );
    }
    Ok(())
}

/// A generator thread in the internet namespace, pinned to `cpu`, sending `frames` as fast
/// as it can until `stop` (or `seconds`); returns how many it sent.
fn spawn_sender(
    inet: &std::path::Path,
    frames: Arc<Vec<Vec<u8>>>,
    cpu: usize,
    seconds: f64,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<u64>>> {
    let file = std::fs::File::open(inet)?;
    Ok(std::thread::spawn(move || -> Result<u64> {
        // SAFETY: setns and sched_setaffinity on this thread only.
        unsafe {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                bail!(
                    "pinning a generator to CPU {cpu}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        let s = SocketSender::with_frames(frames.to_vec(), topology::INET_IF)?;
        let sent = AtomicU64::new(0);
        s.run(
            Pace {
                pps: 0,
                duration: Duration::from_secs_f64(seconds),
                count: u64::MAX,
            },
            &sent,
            &stop,
        )
    }))
}
