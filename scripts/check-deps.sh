#!/usr/bin/env bash
# Checks the crate family's boundaries (ARCHITECTURE.md, "Crates and arrows"):
# - deployer-core's normal dependencies include none of the heavy or concern-specific crates;
# - a host application on `deployer` with default features off plus `deployer-commands`
#   (examples/downstream's library, outside the workspace) builds without russh, sqlx or cel;
# - no library crate keeps process-global mutable state.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
forbid() { # forbid WHAT TREE-OUTPUT CRATE...
    local what=$1 tree=$2; shift 2
    for crate in "$@"; do
        if grep -qE "^${crate} v" <<<"$tree"; then
            echo "check-deps: $what depends on $crate" >&2
            fail=1
        fi
    done
}

core=$(cargo tree --locked -e normal -p deployer-core --prefix none)
forbid deployer-core "$core" cel antlr4rust petgraph semver sqlx russh ring indicatif tracing-subscriber

downstream=$(cargo tree --locked -e normal --prefix none --no-default-features \
    --manifest-path examples/downstream/Cargo.toml)
forbid "examples/downstream (deployer without default features + deployer-commands)" \
    "$downstream" russh ring rsa sqlx cel antlr4rust

# No process-global mutable state in library crates (test fixtures aside): values are passed.
globals=$(grep -rnE 'static .*(Mutex|RwLock)|thread_local!' deployer*/src | grep -vE '/(testing|fixture)(\.rs|/)' || true)
if [ -n "$globals" ]; then
    echo "check-deps: process-global mutable state in a library crate:" >&2
    echo "$globals" >&2
    fail=1
fi

[ "$fail" -eq 0 ] && echo "check-deps: ok ($(sort -u <<<"$downstream" | wc -l) packages in examples/downstream's tree)"
exit "$fail"
