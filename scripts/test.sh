#!/usr/bin/env bash
# Runs the workspace's tests: `cargo test --workspace`, with any arguments passed on.
#
# Usage: scripts/test.sh [CARGO TEST ARGUMENTS...]
#   e.g. scripts/test.sh -p common          only the crate `common` (no --workspace then)
#        scripts/test.sh -- --nocapture     arguments after -- go to the test binaries
#
# The tests start their own nats-server processes on random loopback ports, so this
# script starts none and a server already running on 4222 does not matter. It only makes
# sure that nats-server is installed: when it is missing, scripts/nats-server.sh installs
# Debian's package if it can (root or passwordless sudo, and apt-get) and otherwise
# explains how to get it. NATS_SERVER_BIN, if set, names the binary the tests use.

set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly repo_root

server_path=$(bash "$repo_root/scripts/nats-server.sh" install)
server_version=$("$server_path" --version 2>&1 | head -n 1)
echo "Tests use nats-server ${server_version#nats-server: } ($server_path)"
# The test harness looks for nats-server by itself too. Exporting the path found here
# makes both agree, also when it came from a directory that the harness does not search.
export NATS_SERVER_BIN=$server_path

# `--workspace` would override a package selection, so it is added only when the
# arguments before `--` name no package.
scope=(--workspace)
for arg in "$@"; do
    case $arg in
        --) break ;;
        -p | -p?* | --package | --package=*) scope=() ;;
    esac
done

cd "$repo_root"
exec cargo test ${scope[@]+"${scope[@]}"} "$@"
