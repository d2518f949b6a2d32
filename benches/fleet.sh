#!/bin/sh
# W1 at fleet scale: the deployer (`deploy --tasklist`, release build) against pyinfra and
# Fabric on the same TestFleet, in one run; or the failure-budget case.
#
#   benches/fleet.sh [COUNTS…]     (default: 100 300 1000)
#   benches/fleet.sh budget        (200 hosts, 10 of them refusing; max_failures 10, then 9)
#
# Needs root (the sshds log in as the ordinary user `deployer-test`, created when missing),
# OpenSSH server and client, python3 with venv. pyinfra and Fabric are installed with pip into
# a virtualenv under target/fleet-venv (FLEET_VENV to use another). FLEET_TOOLS picks a subset
# of deployer,deployer-pg,workers,pyinfra,fabric (default deployer,pyinfra,fabric; deployer-pg
# and workers, 2 `deploy worker` + `deploy --submit`, start a throwaway PostgreSQL: the
# postgresql package's initdb); FLEET_TIMEOUT the seconds a run may take (default 600). Every
# sshd started is killed when the benchmark ends, also when it panics or is killed.
set -eu
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo build --release -p deployer-cli --bin deploy
cargo build --release -p deployer-benches --bin fleet_w1
if [ "${1:-}" != budget ]; then
    venv="${FLEET_VENV:-$target/fleet-venv}"
    if [ ! -x "$venv/bin/pyinfra" ] || [ ! -x "$venv/bin/fab" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet pyinfra fabric
    fi
    FLEET_VENV="$(cd "$venv" && pwd)"
    export FLEET_VENV
    "$FLEET_VENV/bin/pip" list 2>/dev/null | grep -Ei '^(pyinfra|fabric|paramiko|gevent) ' || true
fi
# Up to 1000 connections at once: one descriptor each, and more for the peers' threads.
ulimit -n 20000 2>/dev/null || true
sshd -V 2>&1 | head -1 || true
FLEET_DEPLOY="$target/release/deploy" "$target/release/fleet_w1" "$@"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
