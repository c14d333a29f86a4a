#!/usr/bin/env bash
# The main job for now: an XDP scrubber on a veth pair, attacked and mitigated.
#
# Builds everything, creates two network namespaces joined by a veth pair ("internet" with
# attackers and legitimate clients; "scrubber" whose ingress runs the XDP filter), sends
# legitimate traffic, then an attack without mitigation, then the same with the mitigation
# from examples/lab-mitigation.toml installed, and prints what arrived and the filter's
# counters. Needs root. Uses only its own namespaces and TEST-NET addresses; cleans up on
# exit, also when interrupted. Usage: sudo scripts/demo.sh [MITIGATION_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (sudo $0): it loads XDP programs and creates namespaces" >&2; exit 1; }
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
MITIGATION=${1:-examples/lab-mitigation.toml}
[ -f "$MITIGATION" ] || { echo "demo.sh: no mitigation file at $MITIGATION" >&2; exit 1; }

bash scripts/setup.sh >/dev/null
echo "demo: building (cargo build --release)"
cargo build --release --locked -q -p dots-agent -p dots-lab
BIN=$PWD/target/release/dots-agent
LAB=$PWD/target/release/dots-lab

TAG="dots-demo-$$"
NET="$TAG-net"; SCR="$TAG-scr"
PINS="/sys/fs/bpf/$TAG"
STATE=$(mktemp -d)
cleanup() {
  set +e
  "$BIN" xdp detach --all --purge --pin-root "$PINS" --state-dir "$STATE" >/dev/null 2>&1
  ip netns del "$NET" 2>/dev/null; ip netns del "$SCR" 2>/dev/null
  rm -rf "$STATE" "$PINS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_net() { nsenter --net="/run/netns/$NET" "$@"; }
in_scr() { nsenter --net="/run/netns/$SCR" "$@"; }

ip netns add "$NET"; ip netns add "$SCR"
ip link add veth-net netns "$NET" type veth peer name veth-scr netns "$SCR"
ip -n "$NET" link set veth-net up; ip -n "$SCR" link set veth-scr up
echo "demo: namespaces $NET and $SCR joined by a veth pair"
in_scr "$BIN" xdp attach --interface veth-scr --pin-root "$PINS" --state-dir "$STATE"

TARGET=198.51.100.10
LABELS=(--label legit=192.0.2.128/26 --label ntp-reflection=192.0.2.0/26
        --label syn-flood=192.0.2.64/26 --label udp-flood=203.0.113.0/26)
send() { in_net "$LAB" traffic send --interface veth-net --pps 20000 "$@" >/dev/null; }
legit() {
  send --src 192.0.2.128/26 --dst $TARGET --proto tcp --tcp-flags ack --sport 40000 --dport 443 --count 1000
  send --src 192.0.2.128/26 --dst $TARGET --proto udp --sport 40001 --dport 443 --count 1000
}
attack() {
  send --src 192.0.2.0/26 --dst $TARGET --proto udp --sport 123 --dport 4444 --count 3000 --payload 400
  send --src 192.0.2.64/26 --dst $TARGET --proto tcp --tcp-flags syn --sport 1024 --dport 80 --count 2000
  send --src 203.0.113.0/26 --dst $TARGET --proto udp --sport 5000 --dport 9999 --count 2000
}
# Runs traffic from the internet side while the scrubber side counts what gets through.
phase() {
  local title=$1; shift
  in_scr "$LAB" traffic count --interface veth-scr --seconds 3 "${LABELS[@]}" > "$STATE/arrived" &
  local counter=$!
  sleep 0.5
  "$@"
  wait $counter
  printf '\n== %s: what reached the scrubbed side (offered: legit 2000, ntp-reflection 3000, syn-flood 2000, udp-flood 2000)\n' "$title"
  sed 's/^/   /' "$STATE/arrived"
}

phase "1. legitimate traffic only" legit
phase "2. attack, no mitigation" bash -c "$(declare -f send legit attack in_net); LAB=$LAB NET=$NET TARGET=$TARGET; legit; attack"
echo; "$BIN" xdp mitigation add "$MITIGATION" --pin-root "$PINS" --state-dir "$STATE"
phase "3. attack, mitigation installed" bash -c "$(declare -f send legit attack in_net); LAB=$LAB NET=$NET TARGET=$TARGET; legit; attack"
echo; echo "== the filter's counters"
in_scr "$BIN" xdp status --interval 0 --pin-root "$PINS" --state-dir "$STATE"
"$BIN" xdp mitigation remove 1 --pin-root "$PINS" --state-dir "$STATE"
echo "demo: done (namespaces and pins are removed on exit)"
