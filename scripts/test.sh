#!/usr/bin/env bash
# Runs every test: unit tests, BPF packet tests (BPF_PROG_TEST_RUN) and end-to-end tests
# in network namespaces. Needs root (BPF, XDP, namespaces). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "test.sh: run as root (sudo $0): the tests load BPF programs and create network namespaces" >&2; exit 1; }
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
echo "test.sh: building and running all tests"
cargo test --workspace --locked 2>&1
