//! Per-packet cost of the XDP filter via BPF_PROG_TEST_RUN (a benchmark, not a test: it
//! prints figures and ratios, it asserts nothing about time).
//!
//! Method: every program runs the same frame `REPEAT` times in one BPF_PROG_TEST_RUN call;
//! each case is measured `ROUNDS` times and the median is reported. "ns" is the wall time of
//! the syscall divided by the repeat count (sub-ns resolution; the syscall's fixed cost is
//! spread over two million runs); "kernel" is the kernel's own per-run average (whole ns).
//! Baselines measured in the same run: an empty XDP_PASS program (`r0 = 2; exit`) and the
//! xdp-tools xdp-filter program that a plain `xdp-filter load` uses (`xdpfilt_alw_all.o`:
//! pass on miss, drop on hit) with an equivalent rule set.
//!
//! Run: `sudo scripts/bench.sh` (or `cargo bench -p dots-agent --bench xdp_cost` as root).

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use aya::maps::{PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::Xdp;
use aya::EbpfLoader;
use dots_agent::datapath::{
    testrun, AclAction, AclEntry, AclMatch, Countermeasures, LoadOptions, MitigationSpec,
    Mitigator, PortRange, XdpDatapath,
};
use dots_agent::packet::PacketSpec;

const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 7;
const XDP_FILTER_OBJ: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o";

struct Row {
    case: String,
    ns: f64,
    kernel: u32,
    verdict: u32,
    reference: Option<(String, f64)>,
}

fn measure(prog: BorrowedFd<'_>, frame: &[u8]) -> (f64, u32, u32) {
    let _ = testrun::run(prog, frame, REPEAT / 10).expect("warm-up"); // caches, branch predictors
    let mut walls = Vec::with_capacity(ROUNDS);
    let mut kernels = Vec::with_capacity(ROUNDS);
    let mut verdict = 0;
    for _ in 0..ROUNDS {
        let t = testrun::run(prog, frame, REPEAT).expect("BPF_PROG_TEST_RUN");
        walls.push(t.wall_ns);
        kernels.push(t.kernel_ns);
        verdict = t.return_value;
    }
    walls.sort_by(|a, b| a.total_cmp(b));
    kernels.sort_unstable();
    (walls[ROUNDS / 2], kernels[ROUNDS / 2], verdict)
}

struct Bench {
    rows: Vec<Row>,
}

impl Bench {
    fn add(
        &mut self,
        case: &str,
        prog: BorrowedFd<'_>,
        frame: &[u8],
        reference: Option<&str>,
    ) -> f64 {
        let (ns, kernel, verdict) = measure(prog, frame);
        let reference = reference.map(|r| {
            let base = self
                .rows
                .iter()
                .find(|row| row.case == r)
                .unwrap_or_else(|| panic!("no row {r}"))
                .ns;
            (r.to_string(), base)
        });
        self.rows.push(Row {
            case: case.into(),
            ns,
            kernel,
            verdict,
            reference,
        });
        ns
    }

    fn get(&self, case: &str) -> f64 {
        self.rows
            .iter()
            .find(|r| r.case == case)
            .map(|r| r.ns)
            .unwrap_or(f64::NAN)
    }
}

fn pin_root(tag: &str) -> std::path::PathBuf {
    format!("/sys/fs/bpf/dots-bench-{tag}-{}", std::process::id()).into()
}

fn datapath(tag: &str) -> (XdpDatapath, std::path::PathBuf) {
    let root = pin_root(tag);
    let mut o = LoadOptions::new(&root);
    o.max_entries.push(("SRC_RATE", 65_536));
    (
        XdpDatapath::load(&o).expect("loading the datapath (root?)"),
        root,
    )
}

fn mitigation(id: u64, targets: &[&str]) -> MitigationSpec {
    MitigationSpec::new(id, targets.iter().map(|t| t.parse().unwrap()).collect())
}

/// `n` "drop source /32" entries (one shape); the last matches 10.x.y.z for index n-1.
fn acl_one_shape(n: u32) -> Vec<AclEntry> {
    (0..n)
        .map(|i| AclEntry {
            name: format!("e{i}"),
            matches: AclMatch {
                source: Some(
                    format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255)
                        .parse()
                        .unwrap(),
                ),
                ..Default::default()
            },
            action: AclAction::Drop,
        })
        .collect()
}

/// `n` entries spread over 8 shapes (prefix lengths and port fields), like a real ACL.
fn acl_eight_shapes(n: u32) -> Vec<AclEntry> {
    (0..n)
        .map(|i| {
            let k = i / 8;
            let addr = format!("10.{}.{}.0", (k >> 8) & 255, k & 255);
            let m = match i % 8 {
                0 => AclMatch {
                    source: Some(format!("{addr}/24").parse().unwrap()),
                    ..Default::default()
                },
                1 => AclMatch {
                    source: Some(format!("{addr}/28").parse().unwrap()),
                    protocol: Some(17),
                    ..Default::default()
                },
                2 => AclMatch {
                    source: Some(format!("{addr}/32").parse().unwrap()),
                    protocol: Some(6),
                    ..Default::default()
                },
                3 => AclMatch {
                    protocol: Some(17),
                    source_port: Some(PortRange::single(1 + k as u16)),
                    ..Default::default()
                },
                4 => AclMatch {
                    protocol: Some(6),
                    destination_port: Some(PortRange::single(1 + k as u16)),
                    ..Default::default()
                },
                5 => AclMatch {
                    source: Some(format!("{addr}/26").parse().unwrap()),
                    destination_port: Some(PortRange::single(443)),
                    ..Default::default()
                },
                6 => AclMatch {
                    icmp_type: Some((k % 256) as u8),
                    source: Some(format!("{addr}/30").parse().unwrap()),
                    ..Default::default()
                },
                _ => AclMatch {
                    source: Some(format!("{addr}/31").parse().unwrap()),
                    protocol: Some(17),
                    ..Default::default()
                },
            };
            AclEntry {
                name: format!("e{i}"),
                matches: m,
                action: AclAction::Drop,
            }
        })
        .collect()
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xdp_cost: run as root (BPF_PROG_TEST_RUN needs CAP_BPF/CAP_NET_ADMIN)");
        std::process::exit(1);
    }
    let mut b = Bench { rows: Vec::new() };
    let legit = PacketSpec::udp("192.0.2.20", "198.51.100.7", 40000, 443).build();
    let unmitigated = PacketSpec::udp("192.0.2.20", "203.0.113.9", 40000, 443).build();
    let unmitigated6 =
        PacketSpec::udp("2001:db8:1::20", "2001:db8:ffff:ffff::9", 40000, 443).build();
    let ntp = PacketSpec::udp("192.0.2.1", "198.51.100.7", 123, 4444).build();
    let from_listed = PacketSpec::udp("192.0.2.1", "198.51.100.7", 40000, 443).build();

    let empty = testrun::load_trivial_xdp(2).expect("loading the empty program");
    b.add("empty XDP_PASS program", empty.as_fd(), &legit, None);

    // --- Unmitigated fast path -----------------------------------------------------------
    let (mut dp, root) = datapath("fast");
    b.add(
        "ours, unmitigated, no targets",
        dp.program_fd().unwrap(),
        &unmitigated,
        Some("empty XDP_PASS program"),
    );
    let t4: Vec<String> = (0..65_536u32)
        .map(|i| format!("198.18.{}.{}/32", i >> 8, i & 255))
        .collect();
    // 65,536 /56s under 2001:db8::/40 (256 distinct /48s).
    let t6: Vec<String> = (0..65_536u32)
        .map(|i| format!("2001:db8:{:x}:{:x}00::/56", i >> 8, i & 255))
        .collect();
    for (chunk, id) in t4.chunks(16_384).zip(100u64..) {
        let refs: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
        dp.install(&mitigation(id, &refs))
            .expect("installing IPv4 targets");
    }
    for (chunk, id) in t6.chunks(16_384).zip(200u64..) {
        let refs: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
        dp.install(&mitigation(id, &refs))
            .expect("installing IPv6 targets");
    }
    let occ = dp.occupancy();
    assert_eq!(
        (occ[1].1, occ[2].1),
        (65_536, 65_536),
        "all targets installed"
    );
    b.add(
        "ours, unmitigated IPv4, 65,536+65,536 targets",
        dp.program_fd().unwrap(),
        &unmitigated,
        Some("empty XDP_PASS program"),
    );
    b.add(
        "ours, unmitigated IPv6, 65,536+65,536 targets",
        dp.program_fd().unwrap(),
        &unmitigated6,
        Some("empty XDP_PASS program"),
    );
    let mitigated6 = PacketSpec::udp("2001:db8:1::20", "2001:db8:12:3400::9", 40000, 443).build();
    b.add(
        "ours, mitigated IPv6 target among 65,536 (pass)",
        dp.program_fd().unwrap(),
        &mitigated6,
        Some("empty XDP_PASS program"),
    );
    let mitigated4 = PacketSpec::udp("192.0.2.20", "198.18.77.1", 40000, 443).build();
    b.add(
        "ours, mitigated IPv4 target among 65,536 (pass)",
        dp.program_fd().unwrap(),
        &mitigated4,
        Some("empty XDP_PASS program"),
    );
    drop(dp);
    let _ = XdpDatapath::purge(&root);

    // --- Mitigated target: ACL size ------------------------------------------------------
    let (mut dp, root) = datapath("acl");
    let mut m = mitigation(1, &["198.51.100.0/24"]);
    dp.install(&m).unwrap();
    b.add(
        "ours, mitigated, 0 ACL entries (pass)",
        dp.program_fd().unwrap(),
        &legit,
        Some("empty XDP_PASS program"),
    );
    for n in [100u32, 1_000, 16_000] {
        m.acl = acl_one_shape(n);
        dp.install(&m).unwrap();
        let hit = PacketSpec::udp(
            &format!(
                "10.{}.{}.{}",
                (n - 1) >> 16,
                ((n - 1) >> 8) & 255,
                (n - 1) & 255
            ),
            "198.51.100.7",
            40000,
            443,
        )
        .build();
        let reference = (n != 100).then_some("ours, 100 ACL entries, 1 shape (drop)");
        b.add(
            &format!("ours, {n} ACL entries, 1 shape (drop)"),
            dp.program_fd().unwrap(),
            &hit,
            reference,
        );
    }
    for n in [100u32, 1_000, 16_000] {
        m.acl = acl_eight_shapes(n);
        dp.install(&m).unwrap();
        // Matches nothing: every one of the 8 tuples is probed (the worst case).
        let reference = (n != 100).then_some("ours, 100 ACL entries, 8 shapes (miss)");
        b.add(
            &format!("ours, {n} ACL entries, 8 shapes (miss)"),
            dp.program_fd().unwrap(),
            &legit,
            reference,
        );
    }
    m.acl.clear();
    m.drop_list = (0..100_000u32)
        .map(|i| {
            format!("100.{}.{}.{}/32", (i >> 16) & 255, (i >> 8) & 255, i & 255)
                .parse()
                .unwrap()
        })
        .collect();
    dp.install(&m).unwrap();
    let listed = PacketSpec::udp("100.1.134.159", "198.51.100.7", 40000, 443).build();
    b.add(
        "ours, drop-list of 100,000 prefixes (drop)",
        dp.program_fd().unwrap(),
        &listed,
        Some("empty XDP_PASS program"),
    );
    b.add(
        "ours, drop-list of 100,000 prefixes (miss)",
        dp.program_fd().unwrap(),
        &legit,
        Some("empty XDP_PASS program"),
    );
    drop(dp);
    let _ = XdpDatapath::purge(&root);

    // --- Against xdp-filter, same rules --------------------------------------------------
    if Path::new(XDP_FILTER_OBJ).exists() {
        compare_with_xdp_filter(&mut b, &legit, &ntp, &from_listed, &unmitigated);
    } else {
        eprintln!(
            "{XDP_FILTER_OBJ} not found (Debian libxdp1): skipping the xdp-filter comparison"
        );
    }

    print_table(&b);
}

fn compare_with_xdp_filter(
    b: &mut Bench,
    legit: &[u8],
    ntp: &[u8],
    from_listed: &[u8],
    unmitigated: &[u8],
) {
    // xdp-filter pins its maps by name; give it a private directory.
    let root = pin_root("xdpfilt");
    std::fs::create_dir_all(&root).expect("pin dir");
    let mut peer = EbpfLoader::new()
        .default_map_pin_directory(&root)
        .allow_unsupported_maps()
        .load_file(XDP_FILTER_OBJ)
        .expect("loading xdpfilt_alw_all.o");
    let prog: &mut Xdp = peer
        .program_mut("xdpfilt_alw_all")
        .expect("program")
        .try_into()
        .expect("xdp");
    prog.load().expect("verifying xdpfilt_alw_all");
    let ncpu = aya::util::nr_cpus().expect("cpus");
    const MAP_FLAG_SRC: u64 = 1;
    const MAP_FLAG_UDP: u64 = 1 << 3;
    let mut ports: PerCpuArray<_, u64> =
        PerCpuArray::try_from(peer.map_mut("filter_ports").expect("filter_ports")).expect("type");
    // Keys are the port as the program reads it from the header: network order in a u32.
    let port_key = u16::from_ne_bytes(123u16.to_be_bytes()) as u32;
    ports
        .set(
            port_key,
            PerCpuValues::try_from(vec![MAP_FLAG_SRC | MAP_FLAG_UDP; ncpu]).unwrap(),
            0,
        )
        .unwrap();
    let mut ipv4: PerCpuHashMap<_, u32, u64> =
        PerCpuHashMap::try_from(peer.map_mut("filter_ipv4").expect("filter_ipv4")).expect("type");
    for i in 0..9_999u32 {
        let a = u32::from_ne_bytes([100, 64, (i >> 8) as u8, i as u8]);
        ipv4.insert(
            a,
            PerCpuValues::try_from(vec![MAP_FLAG_SRC; ncpu]).unwrap(),
            0,
        )
        .unwrap();
    }
    ipv4.insert(
        u32::from_ne_bytes([192, 0, 2, 1]),
        PerCpuValues::try_from(vec![MAP_FLAG_SRC; ncpu]).unwrap(),
        0,
    )
    .unwrap();
    let peer_fd = {
        let p: &Xdp = peer.program("xdpfilt_alw_all").unwrap().try_into().unwrap();
        p.fd().unwrap().as_fd()
    };
    b.add(
        "xdp-filter: src-ip drop (10,000 entries)",
        peer_fd,
        from_listed,
        None,
    );
    b.add("xdp-filter: udp src-port 123 drop", peer_fd, ntp, None);
    b.add("xdp-filter: no match (pass)", peer_fd, legit, None);

    let (mut dp, ours_root) = datapath("cmp");
    let mut m = mitigation(1, &["198.51.100.0/24"]);
    m.drop_list = (0..9_999u32)
        .map(|i| format!("100.64.{}.{}/32", i >> 8, i & 255).parse().unwrap())
        .collect();
    m.drop_list.push("192.0.2.1/32".parse().unwrap());
    m.countermeasures.amplification = true;
    dp.install(&m).unwrap();
    dp.set_amplification_ports(&[123]).unwrap();
    let ours = dp.program_fd().unwrap();
    b.add(
        "ours: src-ip drop (10,000-entry drop-list)",
        ours,
        from_listed,
        Some("xdp-filter: src-ip drop (10,000 entries)"),
    );
    // The NTP frame's source is not on the drop-list here: it reaches the countermeasure.
    let ntp_other = PacketSpec::udp("192.0.2.9", "198.51.100.7", 123, 4444).build();
    b.add(
        "ours: udp src-port 123 drop (amplification)",
        ours,
        &ntp_other,
        Some("xdp-filter: udp src-port 123 drop"),
    );
    b.add(
        "ours: no match, mitigated target (pass)",
        ours,
        legit,
        Some("xdp-filter: no match (pass)"),
    );
    b.add(
        "ours: unmitigated destination (pass)",
        ours,
        unmitigated,
        Some("xdp-filter: no match (pass)"),
    );
    drop(dp);
    let _ = XdpDatapath::purge(&ours_root);
    drop(peer);
    let _ = std::fs::remove_dir_all(&root);
}

fn print_table(b: &Bench) {
    println!("\nXDP per-packet cost, BPF_PROG_TEST_RUN, {REPEAT} runs x {ROUNDS} rounds, median");
    println!(
        "{:<52} {:>8} {:>7} {:>8}  {}",
        "case", "ns", "kernel", "verdict", "vs reference"
    );
    for r in &b.rows {
        let verdict = match r.verdict {
            1 => "DROP",
            2 => "PASS",
            _ => "other",
        };
        let vs = match &r.reference {
            Some((name, base)) => format!("{:.2}x, {:+.1} ns vs {name}", r.ns / base, r.ns - base),
            None => String::new(),
        };
        println!(
            "{:<52} {:>8.1} {:>7} {:>8}  {}",
            r.case, r.ns, r.kernel, verdict, vs
        );
    }
    let empty = b.get("empty XDP_PASS program");
    println!("\ntargets:");
    for case in [
        "ours, unmitigated IPv4, 65,536+65,536 targets",
        "ours, unmitigated IPv6, 65,536+65,536 targets",
    ] {
        let d = b.get(case) - empty;
        println!(
            "  {case}: {d:+.1} ns over empty (goal <= +15 ns): {}",
            verdict(d <= 15.0)
        );
    }
    for shapes in ["1 shape (drop)", "8 shapes (miss)"] {
        let r = b.get(&format!("ours, 16000 ACL entries, {shapes}"))
            / b.get(&format!("ours, 100 ACL entries, {shapes}"));
        println!(
            "  16,000 vs 100 ACL entries, {shapes}: {r:.2}x (goal <= 2x): {}",
            verdict(r <= 2.0)
        );
    }
    for (ours, theirs) in [
        (
            "ours: src-ip drop (10,000-entry drop-list)",
            "xdp-filter: src-ip drop (10,000 entries)",
        ),
        (
            "ours: udp src-port 123 drop (amplification)",
            "xdp-filter: udp src-port 123 drop",
        ),
        (
            "ours: no match, mitigated target (pass)",
            "xdp-filter: no match (pass)",
        ),
    ] {
        let r = b.get(ours) / b.get(theirs);
        if r.is_finite() {
            println!(
                "  {ours} vs xdp-filter: {r:.2}x (goal <= 1.2x): {}",
                verdict(r <= 1.2)
            );
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
