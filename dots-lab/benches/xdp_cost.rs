//! Per-packet cost of the XDP filter via BPF_PROG_TEST_RUN (a benchmark, not a test: it
//! prints figures and ratios, it asserts nothing about time).
//!
//! Method: every program runs the same frame `REPEAT` times in one BPF_PROG_TEST_RUN call;
//! each case is measured `ROUNDS` times and the median is reported. A case compared with a
//! reference is measured in alternation with it (case, reference, case, ...), and the ratio
//! is taken from those paired medians, so drift of a shared machine cancels out. "kernel" is
//! the kernel's own per-run average (whole ns): its timer pauses while the test run is
//! preempted, so a busy machine does not inflate it, and ratios and differences are taken
//! from it. "wall" is the syscall's wall time divided by the repeat count (sub-ns, but it
//! counts time other tasks took the CPU).
//! Baselines measured in the same run: an empty XDP_PASS program (`r0 = 2; exit`) and the
//! xdp-tools xdp-filter program that a plain `xdp-filter load` uses (`xdpfilt_alw_all.o`:
//! pass on miss, drop on hit) with an equivalent rule set.
//!
//! Run: `sudo scripts/bench.sh` (or `cargo bench -p dots-lab --bench xdp_cost` as root).

use std::path::Path;

use aya::maps::{PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::Xdp;
use aya::EbpfLoader;
use dots_agent::datapath::{
    AclAction, AclEntry, AclMatch, LoadOptions, MitigationSpec, Mitigator, PortRange, XdpDatapath,
};
use dots_lab::packet::PacketSpec;
use dots_lab::testrun;
use xdp_common::TALKER_SAMPLE;

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

struct Sample {
    ns: f64,
    kernel: u32,
    verdict: u32,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Measures the programs in alternation, ROUNDS times each; medians per program.
fn measure(progs: &[(&Xdp, &[u8])]) -> Vec<Sample> {
    for (p, f) in progs {
        let _ = testrun::run(p, f, REPEAT / 10).expect("warm-up"); // caches, predictors
    }
    let mut walls = vec![Vec::new(); progs.len()];
    let mut kernels = vec![Vec::new(); progs.len()];
    let mut verdicts = vec![0; progs.len()];
    for _ in 0..ROUNDS {
        for (i, (p, f)) in progs.iter().enumerate() {
            let t = testrun::run(p, f, REPEAT).expect("BPF_PROG_TEST_RUN");
            walls[i].push(t.wall_ns);
            kernels[i].push(t.kernel_ns as f64);
            verdicts[i] = t.return_value;
        }
    }
    walls
        .into_iter()
        .zip(kernels)
        .zip(verdicts)
        .map(|((w, k), verdict)| Sample {
            ns: median(w),
            kernel: median(k) as u32,
            verdict,
        })
        .collect()
}

struct Bench {
    rows: Vec<Row>,
}

/// Programs kept for re-measuring references in alternation with later cases.
struct Reference<'a> {
    name: String,
    prog: &'a Xdp,
    frame: Vec<u8>,
}

impl Bench {
    /// Measures a case; with a reference (a row measured earlier), measures both in
    /// alternation and takes the ratio from that pair.
    fn add(
        &mut self,
        case: &str,
        prog: &Xdp,
        frame: &[u8],
        reference: Option<&Reference<'_>>,
    ) -> f64 {
        let (sample, reference) = match reference {
            Some(r) => {
                let s = measure(&[(prog, frame), (r.prog, &r.frame)]);
                let [mine, theirs] = <[Sample; 2]>::try_from(s).ok().expect("two samples");
                (mine, Some((r.name.clone(), theirs.kernel as f64)))
            }
            None => (measure(&[(prog, frame)]).remove(0), None),
        };
        self.rows.push(Row {
            case: case.into(),
            ns: sample.ns,
            kernel: sample.kernel,
            verdict: sample.verdict,
            reference,
        });
        sample.ns
    }

    /// Measures `base` on `frame`, then `case` on the same frame in alternation with it.
    fn add_pair(&mut self, base: (&str, &Xdp), case: (&str, &Xdp), frame: &[u8]) {
        self.add(base.0, base.1, frame, None);
        let reference = Reference {
            name: base.0.into(),
            prog: base.1,
            frame: frame.to_vec(),
        };
        self.add(case.0, case.1, frame, Some(&reference));
    }

    /// The ratio of a row to its reference, as measured in alternation.
    fn ratio(&self, case: &str) -> f64 {
        self.rows
            .iter()
            .find(|r| r.case == case)
            .and_then(|r| r.reference.as_ref().map(|(_, base)| r.kernel as f64 / base))
            .unwrap_or(f64::NAN)
    }

    fn delta(&self, case: &str) -> f64 {
        self.rows
            .iter()
            .find(|r| r.case == case)
            .and_then(|r| r.reference.as_ref().map(|(_, base)| r.kernel as f64 - base))
            .unwrap_or(f64::NAN)
    }
}

fn pin_root(tag: &str) -> std::path::PathBuf {
    format!("/sys/fs/bpf/dots-bench-{tag}-{}", std::process::id()).into()
}

fn datapath(tag: &str) -> (XdpDatapath, std::path::PathBuf) {
    datapath_sampling(tag, true)
}

fn datapath_sampling(tag: &str, talker_sampling: bool) -> (XdpDatapath, std::path::PathBuf) {
    let root = pin_root(tag);
    let mut o = LoadOptions::new(&root);
    o.max_entries.push(("SRC_RATE", 65_536));
    o.talker_sampling = talker_sampling;
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

    let empty_prog = testrun::load_trivial_xdp(2).expect("loading the empty program");
    b.add("empty XDP_PASS program", empty_prog.program(), &legit, None);
    let empty = |frame: &[u8]| Reference {
        name: "empty XDP_PASS program".into(),
        prog: empty_prog.program(),
        frame: frame.to_vec(),
    };

    // --- Unmitigated fast path -----------------------------------------------------------
    let (mut dp, root) = datapath("fast");
    b.add(
        "ours, unmitigated, no targets",
        dp.program().unwrap(),
        &unmitigated,
        Some(&empty(&unmitigated)),
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
    let fd = dp.program().unwrap();
    b.add(
        "ours, unmitigated IPv4, 65,536+65,536 targets",
        fd,
        &unmitigated,
        Some(&empty(&unmitigated)),
    );
    b.add(
        "ours, unmitigated IPv6, 65,536+65,536 targets",
        fd,
        &unmitigated6,
        Some(&empty(&unmitigated6)),
    );
    let mitigated6 = PacketSpec::udp("2001:db8:1::20", "2001:db8:12:3400::9", 40000, 443).build();
    b.add(
        "ours, mitigated IPv6 target among 65,536 (pass)",
        fd,
        &mitigated6,
        Some(&empty(&mitigated6)),
    );
    let mitigated4 = PacketSpec::udp("192.0.2.20", "198.18.77.1", 40000, 443).build();
    b.add(
        "ours, mitigated IPv4 target among 65,536 (pass)",
        fd,
        &mitigated4,
        Some(&empty(&mitigated4)),
    );
    drop(dp);
    let _ = XdpDatapath::purge(&root);

    // --- Mitigated target: ACL size (each size in a datapath of its own, so the sizes can
    //     be measured in alternation with the 100-entry one) ------------------------------
    let (mut dp0, root0) = datapath("acl0");
    dp0.install(&mitigation(1, &["198.51.100.0/24"])).unwrap();
    b.add(
        "ours, mitigated, 0 ACL entries (pass)",
        dp0.program().unwrap(),
        &legit,
        Some(&empty(&legit)),
    );
    drop(dp0);
    let _ = XdpDatapath::purge(&root0);
    for (shapes, acl, frame_for) in [
        (
            "1 shape (drop)",
            acl_one_shape as fn(u32) -> Vec<AclEntry>,
            true,
        ),
        (
            "8 shapes (miss)",
            acl_eight_shapes as fn(u32) -> Vec<AclEntry>,
            false,
        ),
    ] {
        let frame = |n: u32| {
            if frame_for {
                let i = n - 1;
                PacketSpec::udp(
                    &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                    "198.51.100.7",
                    40000,
                    443,
                )
                .build()
            } else {
                legit.clone() // matches nothing: every tuple is probed (the worst case)
            }
        };
        let (mut base, base_root) = datapath("acl100");
        let mut m = mitigation(1, &["198.51.100.0/24"]);
        m.acl = acl(100);
        base.install(&m).unwrap();
        let base_name = format!("ours, 100 ACL entries, {shapes}");
        b.add(&base_name, base.program().unwrap(), &frame(100), None);
        for n in [1_000u32, 16_000] {
            let (mut dp, r) = datapath("aclN");
            m.acl = acl(n);
            dp.install(&m).unwrap();
            let reference = Reference {
                name: base_name.clone(),
                prog: base.program().unwrap(),
                frame: frame(100),
            };
            b.add(
                &format!("ours, {n} ACL entries, {shapes}"),
                dp.program().unwrap(),
                &frame(n),
                Some(&reference),
            );
            drop(dp);
            let _ = XdpDatapath::purge(&r);
        }
        drop(base);
        let _ = XdpDatapath::purge(&base_root);
    }
    // A miss costs one probe per shape: 8 shapes against 1, same entries' count.
    {
        let (mut one, one_root) = datapath("miss1");
        let (mut eight, eight_root) = datapath("miss8");
        let mut m = mitigation(1, &["198.51.100.0/24"]);
        m.acl = acl_one_shape(100);
        one.install(&m).unwrap();
        m.acl = acl_eight_shapes(100);
        eight.install(&m).unwrap();
        let (one_p, eight_p) = (one.program().unwrap(), eight.program().unwrap());
        b.add_pair(
            ("ours, 100 ACL entries, 1 shape (miss)", one_p),
            ("ours, 100 ACL entries, 8 shapes (miss) vs 1 shape", eight_p),
            &legit,
        );
        // A near miss: a source inside the entries' common prefix passes the tuples'
        // shared-bits test, so more tuples cost a hash and a filter probe.
        let near = PacketSpec::udp("10.0.13.77", "198.51.100.7", 40000, 444).build();
        b.add_pair(
            ("ours, 100 ACL entries, 1 shape (near miss)", one_p),
            (
                "ours, 100 ACL entries, 8 shapes (near miss) vs 1 shape",
                eight_p,
            ),
            &near,
        );
        drop((one, eight));
        let _ = XdpDatapath::purge(&one_root);
        let _ = XdpDatapath::purge(&eight_root);
    }

    let (mut dp, root) = datapath("drop");
    let mut m = mitigation(1, &["198.51.100.0/24"]);
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
        dp.program().unwrap(),
        &listed,
        Some(&empty(&listed)),
    );
    b.add(
        "ours, drop-list of 100,000 prefixes (miss)",
        dp.program().unwrap(),
        &legit,
        Some(&empty(&legit)),
    );
    drop(dp);
    let _ = XdpDatapath::purge(&root);

    // --- Talker sampling: the same rules and frames, loaded with sampling on and off -----
    let (mut off, off_root) = datapath_sampling("talk-off", false);
    let (mut on, on_root) = datapath("talk-on");
    let mut m = mitigation(1, &["198.51.100.0/24"]);
    m.drop_list = vec!["192.0.2.1/32".parse().unwrap()]; // from_listed, not legit
    off.install(&m).unwrap();
    on.install(&m).unwrap();
    for (what, frame) in [
        ("drop-list drop", &from_listed),
        ("drop-list miss, pass", &legit),
    ] {
        b.add_pair(
            (
                &format!("ours, {what}, talker sampling off"),
                off.program().unwrap(),
            ),
            (
                &format!("ours, {what}, talker sampling 1/{TALKER_SAMPLE}"),
                on.program().unwrap(),
            ),
            frame,
        );
    }
    // The sampled program dropped the listed frame in its warm-up and its rounds.
    let drops = REPEAT as u64 / 10 + ROUNDS as u64 * REPEAT as u64;
    for (ip, c) in on.top_talkers(1, 5) {
        println!(
            "top talker after {drops} drops from one source: {ip}, estimated {} ({:+.2}%)",
            c.packets,
            (c.packets as f64 / drops as f64 - 1.0) * 100.0
        );
    }
    drop((on, off));
    let _ = XdpDatapath::purge(&on_root);
    let _ = XdpDatapath::purge(&off_root);

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
    let peer_fd: &Xdp = peer.program("xdpfilt_alw_all").unwrap().try_into().unwrap();
    let theirs = |name: &str, frame: &[u8]| Reference {
        name: name.into(),
        prog: peer_fd,
        frame: frame.to_vec(),
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
    let ours = dp.program().unwrap();
    b.add(
        "ours: src-ip drop (10,000-entry drop-list)",
        ours,
        from_listed,
        Some(&theirs(
            "xdp-filter: src-ip drop (10,000 entries)",
            from_listed,
        )),
    );
    // The NTP frame's source is not on the drop-list here: it reaches the countermeasure.
    let ntp_other = PacketSpec::udp("192.0.2.9", "198.51.100.7", 123, 4444).build();
    b.add(
        "ours: udp src-port 123 drop (amplification)",
        ours,
        &ntp_other,
        Some(&theirs("xdp-filter: udp src-port 123 drop", ntp)),
    );
    b.add(
        "ours: no match, mitigated target (pass)",
        ours,
        legit,
        Some(&theirs("xdp-filter: no match (pass)", legit)),
    );
    b.add(
        "ours: unmitigated destination (pass)",
        ours,
        unmitigated,
        Some(&theirs("xdp-filter: no match (pass)", unmitigated)),
    );
    drop(dp);
    let _ = XdpDatapath::purge(&ours_root);
    drop(peer);
    let _ = std::fs::remove_dir_all(&root);

    // The veth bench's realistic rule set and flood frame, against xdp-filter with its
    // closest rule (udp dst port 9999): the same comparison without the live path.
    let (mut dp, ours_root) = datapath("realistic");
    for m in dots_lab::lab::bench_workloads::rule_set() {
        dp.install(&m).expect("installing the realistic rule set");
    }
    let xf_root = pin_root("xdpfilt-realistic");
    let xf = dots_lab::lab::bench_workloads::load_xdp_filter(
        &xf_root,
        dots_lab::lab::bench_workloads::Workload::Realistic,
    )
    .expect("loading xdp-filter");
    let flood = PacketSpec::udp("203.0.113.7", "198.51.100.10", 5000, 9999).build();
    let xf_prog: &Xdp = xf
        .program("xdpfilt_alw_all")
        .expect("program")
        .try_into()
        .expect("XDP");
    b.add_pair(
        ("xdp-filter: udp dport 9999 flood (drop)", xf_prog),
        (
            "ours: realistic rule set, udp dport 9999 flood (drop)",
            dp.program().unwrap(),
        ),
        &flood,
    );
    drop(dp);
    let _ = XdpDatapath::purge(&ours_root);
    drop(xf);
    let _ = std::fs::remove_dir_all(&xf_root);
}

fn print_table(b: &Bench) {
    println!("\nXDP per-packet cost, BPF_PROG_TEST_RUN, {REPEAT} runs x {ROUNDS} rounds, median");
    println!(
        "(a row with a reference was measured in alternation with it; its ratio is from that pair)"
    );
    println!(
        "{:<52} {:>8} {:>7} {:>8}  vs reference (kernel ns)",
        "case", "wall ns", "kernel", "verdict"
    );
    for r in &b.rows {
        let verdict = match r.verdict {
            1 => "DROP",
            2 => "PASS",
            _ => "other",
        };
        let vs = match &r.reference {
            Some((name, base)) => format!(
                "{:.2}x, {:+.0} ns vs {name} ({base:.0})",
                r.kernel as f64 / base,
                r.kernel as f64 - base
            ),
            None => String::new(),
        };
        println!(
            "{:<52} {:>8.1} {:>7} {:>8}  {}",
            r.case, r.ns, r.kernel, verdict, vs
        );
    }
    println!("\ntargets:");
    for case in [
        "ours, unmitigated IPv4, 65,536+65,536 targets",
        "ours, unmitigated IPv6, 65,536+65,536 targets",
    ] {
        let d = b.delta(case);
        println!(
            "  {case}: {d:+.1} ns over empty (goal <= +15 ns): {}",
            verdict(d <= 15.0)
        );
    }
    for shapes in ["1 shape (drop)", "8 shapes (miss)"] {
        let r = b.ratio(&format!("ours, 16000 ACL entries, {shapes}"));
        println!(
            "  16,000 vs 100 ACL entries, {shapes}: {r:.2}x (goal <= 1.2x): {}",
            verdict(r <= 1.2)
        );
    }
    let r = b.ratio("ours, 100 ACL entries, 8 shapes (miss) vs 1 shape");
    println!(
        "  ACL miss, 8 shapes vs 1 shape: {r:.2}x (goal <= 1.5x): {}",
        verdict(r <= 1.5)
    );
    let r = b.ratio("ours, 100 ACL entries, 8 shapes (near miss) vs 1 shape");
    println!("  ACL near miss (source inside the entries' prefix), 8 shapes vs 1 shape: {r:.2}x");
    for what in ["drop-list drop", "drop-list miss, pass"] {
        let case = format!("ours, {what}, talker sampling 1/{TALKER_SAMPLE}");
        println!(
            "  talker sampling, {what}: {:+.1} ns ({:.2}x) vs sampling off",
            b.delta(&case),
            b.ratio(&case)
        );
    }
    for ours in [
        "ours: src-ip drop (10,000-entry drop-list)",
        "ours: udp src-port 123 drop (amplification)",
        "ours: no match, mitigated target (pass)",
        "ours: realistic rule set, udp dport 9999 flood (drop)",
    ] {
        let r = b.ratio(ours);
        if r.is_finite() {
            println!(
                "  {ours} vs xdp-filter: {r:.2}x (goal <= 1.0x): {}",
                verdict(r <= 1.0)
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
