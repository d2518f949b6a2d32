#!/usr/bin/env bash
# Measures what a host application pays to link the library: builds examples/downstream
# (`deployer` with default features off plus `deployer-commands`) from cold, in a fresh target
# directory, and prints the wall time and the number of crates compiled (README, "Build cost").
set -euo pipefail
cd "$(dirname "$0")/.."

target=$(mktemp -d)
trap 'rm -rf "$target"' EXIT
start=$(date +%s%N)
CARGO_TARGET_DIR="$target" cargo build --locked --no-default-features \
    --manifest-path examples/downstream/Cargo.toml \
    2>"$target/build.log"
end=$(date +%s%N)
crates=$(grep -c '^ *Compiling ' "$target/build.log" || true)
ms=$(( (end - start) / 1000000 ))
printf 'examples/downstream: cold build %d.%01d s, %d crates compiled\n' $((ms / 1000)) $((ms % 1000 / 100)) "$crates"
