//! Experiment: test-run cost of the lab bench's realistic rule set on the flood frame.
use dots_agent::datapath::{LoadOptions, Mitigator, XdpDatapath};
use dots_lab::packet::PacketSpec;
use dots_lab::testrun;

fn main() {
    let root = std::path::PathBuf::from(format!("/sys/fs/bpf/dots-exp-{}", std::process::id()));
    let mut o = LoadOptions::new(&root);
    o.max_entries.push(("SRC_RATE", 65_536));
    o.talker_sampling = std::env::var("NOSAMPLE").is_err();
    let mut dp = XdpDatapath::load(&o).unwrap();
    for m in dots_lab::lab::bench::rule_set() {
        dp.install(&m).unwrap();
    }
    let flood = PacketSpec::udp("203.0.113.7", "198.51.100.10", 40000, 9999).build();
    let legit = PacketSpec::udp("203.0.113.7", "198.51.100.10", 40000, 443).build();
    for (name, f) in [("flood (drop)", &flood), ("udp 443 (pass)", &legit)] {
        let p = dp.program().unwrap();
        let _ = testrun::run(p, f, 200_000);
        let mut v: Vec<f64> = (0..9).map(|_| testrun::run(p, f, 1_000_000).unwrap().wall_ns).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        println!("{name}: {:.1} ns (min {:.1})", v[4], v[0]);
    }
    let empty = testrun::load_trivial_xdp(1).unwrap();
    let xf = dots_lab::lab::bench::load_xdp_filter(&root).unwrap();
    let xfp: &aya::programs::Xdp = xf.program("xdpfilt_alw_all").unwrap().try_into().unwrap();
    for (name, p) in [("empty", empty.program()), ("xdp-filter", &*xfp)] {
        let _ = testrun::run(p, &flood, 200_000);
        let mut v: Vec<f64> = (0..9).map(|_| testrun::run(p, &flood, 1_000_000).unwrap().wall_ns).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        println!("{name} flood: {:.1} ns (min {:.1})", v[4], v[0]);
    }
    drop(dp);
    let _ = XdpDatapath::purge(&root);
    let _ = std::fs::remove_dir_all(&root);
}
