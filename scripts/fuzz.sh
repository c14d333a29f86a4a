#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of every parser that reads hostile bytes:
#   coap_datagram  CoAP over DTLS: datagrams into a server session (handler, engine) and a
#                  client session; what they send back must be CoAP
#   coap_stream    RFC 8323 framing: a stream cut into reads, into server and client sessions;
#                  the frame decoder re-encodes what it decodes
#   signal_bodies  the CBOR reader and every DOTS body decoder, with encoder round trips
#   uri_path       the signal channel's Uri-Path parser, with a round trip
#   restconf       the data channel (RFC 8783 JSON) through the control plane, as sequences
#                  of requests; never a 500
#   xdp_parse      the XDP program's parse.rs compiled for user space: raw frames ending at
#                  an unreadable page, and frames from the packet builder checked field by field
# Each target starts from seeds written by fuzz/src/bin/seed_corpus.rs (the RFC vectors, the
# test fixtures, our encoders) plus what earlier runs kept in fuzz/corpus/TARGET, and runs
# until --runs executions or --seconds, whichever comes first. Prints per target: executions,
# seconds, executions/s, coverage (edges) when the seeds were loaded and at the end, features
# and corpus size. A crash stops that target; its input is left in fuzz/artifacts/TARGET/ and
# the script exits 1.
#
# Usage: scripts/fuzz.sh [--runs N] [--seconds S] [--nice N] [--no-build] [TARGET...]
#   (default 1000000 runs, 1200 s per target; --no-build runs the binaries as last built)
# Builds and runs at nice 19 unless --nice says otherwise (at 19 on a machine busy with
# other work a target gets almost no CPU: use --nice 0 to reach --runs in --seconds).
# Needs Debian's rustc-web (scripts/setup.sh): libFuzzer's instrumentation takes nightly
# flags, which that rustc gives with RUSTC_BOOTSTRAP=1 (rustup's stable does not).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=1000000
SECONDS_PER_TARGET=1200
TARGETS=()
NO_BUILD=0
NICE=19
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --seconds) SECONDS_PER_TARGET=$2; shift 2 ;;
        --nice) NICE=$2; shift 2 ;;
        --no-build) NO_BUILD=1; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
ALL=(coap_datagram coap_stream signal_bodies uri_path restconf xdp_parse)
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
    [[ " ${ALL[*]} " == *" $t "* ]] || { echo "fuzz.sh: no target $t (targets: ${ALL[*]})" >&2; exit 2; }
done

[ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || {
    echo "fuzz.sh: Debian's rustc-web is missing: run sudo scripts/setup.sh" >&2; exit 1; }
export PATH="/usr/bin:$HOME/.cargo/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz.sh: installing cargo-fuzz 0.13.2 (once)"
    nice -n 19 "$HOME/.cargo/bin/cargo" install --locked --quiet cargo-fuzz@0.13.2
fi

# Debian's cargo and rustc (first on PATH), no sanitizer runtime (none ships with them):
# coverage instrumentation only; the XDP target guards its frames with an unreadable page.
export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
echo "fuzz.sh: building the targets (fuzz/target; the first build takes several minutes)"
BIN=fuzz/target/x86_64-unknown-linux-gnu/release
SEEDER=fuzz/target/plain/release/seed_corpus
build() {  # a build's output only when it fails
    local log; log=$(mktemp)
    if ! (cd fuzz && nice -n "$NICE" "$@") >"$log" 2>&1; then
        grep -E '^(error|warning: unused)' -A5 "$log" | head -40 >&2; rm -f "$log"
        echo "fuzz.sh: the build failed: $*" >&2; exit 1
    fi
    rm -f "$log"
}
if [ $NO_BUILD = 0 ]; then
    for t in "${TARGETS[@]}"; do build cargo fuzz build --sanitizer none "$t"; done
fi
# The seed writer is an ordinary program: built without the coverage instrumentation, which
# only a binary linked with libFuzzer can resolve.
[ $NO_BUILD = 1 ] || build cargo build --release --locked --bin seed_corpus --target-dir target/plain
for t in "${TARGETS[@]}"; do
    [ -x "$BIN/$t" ] || { echo "fuzz.sh: no $BIN/$t: run without --no-build" >&2; exit 1; }
done
[ -x "$SEEDER" ] || { echo "fuzz.sh: building seed_corpus failed" >&2; exit 1; }

SHARED=${DOTS_SHARED:-$ROOT/../shared}
VECTORS=$SHARED/vectors
[ -f "$VECTORS/rfc9132-fig8.cbor" ] || VECTORS=$ROOT/dots-agent/tests/fixtures
"$SEEDER" "$ROOT" "$VECTORS/rfc9132-fig8.cbor" fuzz/corpus

printf '\n%-14s %10s %8s %8s %18s %9s %7s  %s\n' target executions seconds exec/s \
    'coverage start>end' features corpus result
failed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/artifacts/$t"
    log=$(mktemp)
    start=$(date +%s.%N)
    set +e
    nice -n "$NICE" "$BIN/$t" "fuzz/corpus/$t" -runs="$RUNS" -max_total_time="$SECONDS_PER_TARGET" \
        -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    # libFuzzer's status lines: "#N<TAB>KIND cov: C ft: F corp: K/..." (a line may be
    # interleaved with other output, so each figure is looked up on its own).
    status() { grep -aE "^#[0-9]+[[:space:]]+($1)" "$log" || true; }
    figure() { grep -oE "$1: [0-9]+" | grep -oE '[0-9]+' | tail -1 || true; }
    inited=$(status INITED | head -1 | figure cov)
    last=$(status 'DONE|NEW|REDUCE|pulse|INITED' | tail -1)
    cov=$(figure cov <<<"$last"); ft=$(figure ft <<<"$last"); corp=$(figure corp <<<"$last")
    execs=$(grep -aoE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' || true)
    [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' <<<"$last" | tr -d '#' || true)
    inited=${inited:-?} cov=${cov:-?} ft=${ft:-?} corp=${corp:-?} execs=${execs:-0}
    if [ $rc -eq 0 ]; then result="ok, no crash"; else
        result="CRASH (exit $rc): $(ls -t "fuzz/artifacts/$t" | head -1)"; failed=1; fi
    printf '%-14s %10s %8.0f %8.0f %8s > %-7s %9s %7s  %s\n' "$t" "$execs" "$secs" \
        "$(awk -v e="$execs" -v s="$secs" 'BEGIN { print e / s }')" "$inited" "$cov" "$ft" "$corp" "$result"
    if [ $rc -ne 0 ]; then
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|deadly signal' "$log" | head -5 | sed 's/^/    /'
        cp "$log" "fuzz/artifacts/$t/log.txt"
    fi
    rm -f "$log"
done
echo "(coverage: libFuzzer's count of instrumented edges reached; 'start' once the corpus"
echo " was loaded, so start>end is what this run found new)"
exit $failed
