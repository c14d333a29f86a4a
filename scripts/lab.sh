#!/usr/bin/env bash
# The main job: a DDoS signalled over DOTS and scrubbed by XDP, in network namespaces.
#
# Installs what is needed (scripts/setup.sh), builds dots-agent and dots-lab, and runs
# `dots-lab run` (which runs dots-agent for the server and the client) on the embedded
# scenario (examples/scenarios/reflection-syn-udp.toml) or on the scenario file given.
# Prints progress every second and a summary; writes the plot to lab.svg. Needs root. Uses
# only its own namespaces and TEST-NET addresses; about 30 s after the build; cleans up on
# exit, also on Ctrl-C. Usage: sudo scripts/lab.sh [SCENARIO.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "lab.sh: run as root (sudo $0): it creates namespaces and loads XDP programs" >&2; exit 1; }
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
if [ $# -gt 0 ] && [ ! -f "$1" ]; then
  echo "lab.sh: no scenario file at $1 (see examples/scenarios/)" >&2; exit 1
fi
bash scripts/setup.sh >/dev/null
echo "lab: building (cargo build --release)"
cargo build --release --locked -q -p dots-agent -p dots-lab
RUST_LOG=${RUST_LOG:-warn} exec target/release/dots-lab run "$@"
