#!/bin/sh
# Run as root after cargo build --release: sudo scripts/store-full.sh (loopback in a namespace of its own; cleans up).
# 600 PUTs with the store on a 256 KiB tmpfs, kill -9, then what the store holds for a restart
# (`dots-agent store check`): acknowledged must equal stored.
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
B=${BIN:-$HERE/target/release/dots-agent}
W=$(mktemp -d); NS=dots-meas-$$
cleanup() { [ -n "${PID:-}" ] && kill -9 $PID 2>/dev/null; umount $W/small 2>/dev/null; ip netns del $NS 2>/dev/null; rm -rf $W; }
trap cleanup EXIT
ip netns add $NS; ip -n $NS link set lo up
E="nsenter --net=/run/netns/$NS $B"
cd $W && $B pki init --dir pki --server-name dots.example --server-ip 127.0.0.1 --client client-a >/dev/null
mkdir small && mount -t tmpfs -o size=256k tmpfs small
cat > server.toml <<T
[signal]
listen = ["127.0.0.1:4646"]
[tls]
ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server.key"
[store]
dir = "small/state"
[[client]]
name = "client-a"
prefixes = ["2001:db8:6401::/48"]
T
cp $HERE/examples/client.toml .
$E server --config server.toml 2>server.log & PID=$!
for i in $(seq 1 100); do [ -S small/state/control.sock ] && break; sleep 0.1; done
ok=0; refused=0; other=0
for mid in $(seq 1 600); do
  out=$($E client --config client.toml mitigate --mid $mid --target 2001:db8:6401:$(printf %x $mid)::/64 2>/dev/null | cut -c1-4)
  case "$out" in 2.01) ok=$((ok+1));; 5.03) refused=$((refused+1));; *) other=$((other+1));; esac
done
kill -9 $PID; wait $PID 2>/dev/null; PID=
mount -o remount,size=16m small
restored=$($E store check --dir small/state | sed -n 's/.*: \([0-9]*\) mitigation(s) of.*/\1/p')
echo "600 PUTs on a 256 KiB tmpfs: $ok answered 2.01, $refused answered 5.03, $other other; after kill -9 the store holds $restored"
