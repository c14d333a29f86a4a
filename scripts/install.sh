#!/bin/sh
# Installs dots-agent as a service: the release binary to /usr/local/bin, the systemd unit
# to /etc/systemd/system, an example server.toml to /etc/dots-agent (only if none is
# there), the state directory /var/lib/dots-agent. Idempotent: a second run changes
# nothing and says so. Build first: cargo build --release.
# ROOT=/some/dir installs under that directory instead of / (for packaging and tests).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
root=${ROOT:-}
bin=${BIN:-$here/target/release/dots-agent}
changed=0

if [ ! -x "$bin" ]; then
    echo "install.sh: $bin not found: build it first (cargo build --release)" >&2
    exit 1
fi

# put SRC DEST MODE: copies when DEST is missing or differs.
put() {
    if ! cmp -s "$1" "$2" 2>/dev/null; then
        install -D -m "$3" "$1" "$2"
        echo "installed $2"
        changed=1
    fi
}

for d in "$root/var/lib/dots-agent:0700" "$root/etc/dots-agent:0750"; do
    dir=${d%:*}
    if [ ! -d "$dir" ]; then
        install -d -m "${d#*:}" "$dir"
        echo "created $dir"
        changed=1
    fi
done

put "$bin" "$root/usr/local/bin/dots-agent" 0755
put "$here/scripts/dots-agent.service" "$root/etc/systemd/system/dots-agent.service" 0644
if [ ! -e "$root/etc/dots-agent/server.toml" ]; then
    put "$here/examples/server.toml" "$root/etc/dots-agent/server.toml" 0640
    echo "edit $root/etc/dots-agent/server.toml and put the certificates in $root/etc/dots-agent/pki"
    echo "  (dots-agent pki init --dir $root/etc/dots-agent/pki ...), then:"
    echo "  dots-agent server --check --config $root/etc/dots-agent/server.toml"
fi
if [ "$changed" = 0 ]; then
    echo "nothing to do: dots-agent is installed"
elif [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "systemd reloaded: systemctl enable --now dots-agent (or restart it)"
fi
