#!/usr/bin/env bash
# Per-packet cost of the XDP filter (BPF_PROG_TEST_RUN), with an empty program and
# xdp-tools' xdp-filter measured in the same run. Prints a table; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench.sh: run as root (sudo $0): BPF_PROG_TEST_RUN needs it" >&2; exit 1; }
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh >/dev/null
cargo bench --locked -p dots-agent --bench xdp_cost 2>&1 | grep -v '^\s*\(Compiling\|Finished\|Running\)'
