#!/usr/bin/env bash
# Idempotent set-up for building and testing dots-agent on Debian 12 (run as root).
# Installs the Debian packages the build and tests need, Debian's rustc-web toolchain (the
# only one here with rust-src, which -Z build-std=core needs for bpfel-unknown-none) and a
# pinned bpf-linker built against the same LLVM major as that rustc. A second run changes
# nothing and says so.
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
LLVM_SO=/usr/lib/x86_64-linux-gnu/libLLVM.so.22.1
LLVM_PREFIX=/opt/dots-agent/llvm22
TOOLS_ROOT=/usr/local          # bpf-linker lands in /usr/local/bin, which is on PATH

PACKAGES=(
  # eBPF toolchain: rustc/cargo 1.96 with library source, and the LLVM it links
  rustc-web cargo-web rust-web-src libllvm22
  # user-space build: openssl-sys
  libssl-dev pkg-config
  # network lab and end-to-end tests
  iproute2 iputils-ping openssl ethtool nftables
  # peers for interop tests and benchmarks
  libcoap3-bin xdp-tools libxdp1 bpftool
  # a real Prometheus server for the metrics end-to-end test
  prometheus
  # an independent HTTPS client for the data-channel tests
  curl
  # BGP FlowSpec: gobgpd (and its gobgp client) speaks for the server and the nodes, bird2
  # plays the border router in the tests and the lab
  gobgpd bird2
)

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
trap 'die "step failed at line $LINENO (command: $BASH_COMMAND)"' ERR

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0): it installs Debian packages and bpf-linker"
command -v apt-get >/dev/null || die "apt-get not found: this script targets Debian 12"

changed=0

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  changed=1
  # The tests and the lab run their own BGP daemons inside namespaces: the packages' units
  # (a gobgpd and a bird on the host's addresses) are not wanted. Only just installed ones.
  if [ -d /run/systemd/system ]; then
    for unit in gobgpd bird; do
      if printf '%s\n' "${missing[@]}" | grep -qx "${unit/bird/bird2}"; then
        systemctl disable --now "$unit.service" >/dev/null 2>&1 || true
      fi
    done
  fi
fi

[ -e "$LLVM_SO" ] || die "$LLVM_SO missing after installing libllvm22"
if [ "$(readlink -f "$LLVM_PREFIX/lib/libLLVM.so" 2>/dev/null)" != "$(readlink -f "$LLVM_SO")" ]; then
  log "linking $LLVM_PREFIX/lib/libLLVM.so -> $LLVM_SO"
  mkdir -p "$LLVM_PREFIX/lib"
  ln -sfn "$LLVM_SO" "$LLVM_PREFIX/lib/libLLVM.so"
  changed=1
fi

have_linker_version() {
  command -v bpf-linker >/dev/null && bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"
}
if ! have_linker_version; then
  log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about a minute)"
  LLVM_PREFIX="$LLVM_PREFIX" cargo install --quiet --locked --force \
    --root "$TOOLS_ROOT" --version "$BPF_LINKER_VERSION" \
    --no-default-features --features llvm-22 bpf-linker
  have_linker_version || die "bpf-linker $BPF_LINKER_VERSION not usable after install"
  changed=1
fi

# bpffs: the agent pins maps and links here so filtering survives an agent restart.
if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
  changed=1
fi

if [ "$changed" -eq 0 ]; then
  log "nothing to do: packages, bpf-linker $BPF_LINKER_VERSION and bpffs already in place"
else
  log "done"
fi
