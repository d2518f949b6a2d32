#!/bin/sh
# End-to-end benchmarks over real SSH on loopback: builds in release and runs them.
#
#   benches/ssh.sh [w1|big|all]   (default: all)
#
# Needs root (the sshds log in as the ordinary user `deployer-test`, created when missing) and
# OpenSSH server and client. Every sshd started is killed when its benchmark ends. Extra
# arguments go through env: W1_ARGS="ROUNDS COUNTS…" (default "7 1 5 20"), BIG_ARGS="ROUNDS".
set -eu
cd "$(dirname "$0")/.."
what="${1:-all}"
cargo build --release -p deployer-benches --bins
bin="${CARGO_TARGET_DIR:-target}/release"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
case "$what" in
w1 | all) "$bin/ssh_w1" ${W1_ARGS:-7 1 5 20} ;;
esac
case "$what" in
big | all) if [ -x "$bin/ssh_big" ]; then "$bin/ssh_big" ${BIG_ARGS:-5}; fi ;;
esac
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
