#!/usr/bin/env bash
# Runs the benchmarks: builds the release binaries, prepares nats-py, and runs `bench`.
#
# Usage: scripts/bench.sh [BENCH ARGUMENTS...]
#   e.g. scripts/bench.sh                  the full run, a few minutes on 2 cores
#        scripts/bench.sh --quick          a tiny configuration, seconds
#        scripts/bench.sh --runs 3         fewer runs per case
#
# `bench` starts its own nats-server on random loopback ports for each case, so a server
# already running on 4222 does not matter. The nats-py rows need python3 with venv: the
# script creates target/bench-venv and installs nats-py from PyPI into it once. Without
# python3, or when the install fails, it prints why and `bench` runs without those rows.
# Before the table it prints the machine and the versions that BENCHMARKS.md records.

set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly repo_root
readonly venv="$repo_root/target/bench-venv"

cd "$repo_root"
server_path=$(bash "$repo_root/scripts/nats-server.sh" install)
export NATS_SERVER_BIN=$server_path

cargo build --release --quiet --workspace --bins

python_args=()
if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 not found: leaving out the nats-py rows" >&2
elif [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import nats" 2>/dev/null; then
    python_args=(--python "$venv/bin/python")
elif python3 -m venv "$venv" >&2 && "$venv/bin/pip" install --quiet nats-py >&2; then
    python_args=(--python "$venv/bin/python")
else
    echo "could not create $venv with nats-py (is python3-venv installed, is PyPI reachable?): leaving out the nats-py rows" >&2
fi

async_nats_version=$(grep -A1 '^name = "async-nats"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
echo "Machine: $(nproc) cores, $(free -h | awk '/^Mem:/ {print $2}') memory"
echo "nats-server $("$server_path" --version 2>&1 | sed 's/^nats-server: //'), async-nats $async_nats_version, $(rustc --version)"
echo "Command: scripts/bench.sh $*"
echo

exec "$repo_root/target/release/bench" ${python_args[@]+"${python_args[@]}"} "$@"
