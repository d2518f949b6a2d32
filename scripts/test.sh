#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need when it is missing:
# the OpenSSH server (the SSH tests start their own sshd on 127.0.0.x ports), sudo, PostgreSQL
# (the deployer-store tests start their own throwaway server with initdb on 127.0.0.1), curl,
# python3, script, prlimit, setsid and dash, and Chromium with its WebDriver (the run viewer's end-to-end test
# drives a headless Chromium through chromedriver).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
# sudo: the tests of sudo uploads and commands log in as a user with passwordless sudo.
command -v sudo >/dev/null 2>&1 || need+=(sudo)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# curl: the monitors and the rollout checks; python3 (the system one, which an ordinary SSH
# login can run): the rollout test's HTTP service on each host; script (util-linux): the
# pseudo-terminal tests of prompts and progress bars.
command -v curl >/dev/null 2>&1 || need+=(curl)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v script >/dev/null 2>&1 || need+=(util-linux)
# prlimit (util-linux too): the open-files test runs deploy under a low ulimit -n.
command -v prlimit >/dev/null 2>&1 || need+=(util-linux)
# setsid (util-linux) and dash: the kill of a cancelled remote command is run under dash and
# bash, the login shells of remote users (deployer-remote, ssh/channel.rs).
command -v setsid >/dev/null 2>&1 || need+=(util-linux)
command -v dash >/dev/null 2>&1 || need+=(dash)
# chromium + chromium-driver: deployer-cli/tests/web_e2e.rs (fonts-liberation: legible
# screenshots in docs/screenshots/).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ -d /usr/share/fonts/truetype/liberation ] || need+=(fonts-liberation)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
    else
        echo "missing packages: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

cargo test --workspace --locked "$@"
# The host application outside the workspace (examples/downstream), on the same target directory.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" \
    cargo test --locked --manifest-path examples/downstream/Cargo.toml "$@"
