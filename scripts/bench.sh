#!/usr/bin/env bash
# Benchmarks (they print figures and ratios; they assert nothing about time):
#  xdp_cost: per-packet cost of the XDP filter (BPF_PROG_TEST_RUN), with an empty program and
#            xdp-tools' xdp-filter measured in the same run;
#  signal_cost: the dots-agent server binary with XDP attached on a veth pair and the data
#            channel on: time to mitigate (p50/p99), requests per second, PUT latency up to
#            4,000 mitigations, the restart with them stored, and server memory per idle
#            DTLS session with 1,000 and 10,000 sessions (about three minutes);
#  veth drop rate (`dots-lab bench`): packets per second the scrubber drops on the veth
#            lab with our filter, an empty XDP_DROP, xdp-filter and nftables netdev ingress,
#            with the time each spends in the program; then the harsh workload (cold
#            caches) and rate limits measured with the filter on both CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench.sh: run as root (sudo $0): BPF_PROG_TEST_RUN needs it" >&2; exit 1; }
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh >/dev/null
bench() { cargo bench --locked -p "$1" --bench "$2" 2>&1 | grep -v '^\s*\(Compiling\|Finished\|Running\)'; }
bench dots-lab xdp_cost
bench dots-agent signal_cost
cargo build --release --locked -q -p dots-lab
target/release/dots-lab bench --rounds 5 --seconds 3 --program-time
target/release/dots-lab bench --workload harsh --rounds 5 --seconds 3 --cases ours,xdp-filter --program-time
target/release/dots-lab bench --workload rate-limits --rounds 5 --seconds 3

