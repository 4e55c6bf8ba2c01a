#!/usr/bin/env bash
# Makes a NATS server available for the tutorial binaries, starting a local one if needed.
#
# Usage: scripts/nats-server.sh [start|stop|status|install]
#
#   start    (default) If a NATS server responds at NATS_URL, reports it and does nothing
#            else. Otherwise starts nats-server in the background on loopback, with HTTP
#            monitoring and JetStream, and waits until it accepts connections.
#   stop     Stops the server that `start` started, and no other.
#   status   Reports whether a server responds at NATS_URL and whether this script started
#            it. Exit status 0 when one responds, 1 when none does.
#   install  Makes sure nats-server is installed and prints its path, and nothing else,
#            on stdout. It installs Debian's package with apt-get when it is missing and
#            this runs as root or with passwordless sudo.
#
# Environment:
#   NATS_URL           server to check, or to start on this machine; only the first URL of
#                      a comma-separated list is used (default nats://localhost:4222)
#   NATS_MONITOR_PORT  HTTP monitoring port of a server started here (default 8222)
#   NATS_SERVER_BIN    nats-server binary to use instead of searching PATH and /usr/sbin
#
# A server started here writes its log to .nats/nats-server.log, its pid to
# .nats/nats-server.pid and its JetStream data to .nats/jetstream, all under the repository.
# URLs are printed with any user, password or token replaced by ***.

set -euo pipefail

readonly DEFAULT_URL="nats://localhost:4222"
readonly DEFAULT_MONITOR_PORT=8222
# Seconds to wait for a started server to accept connections, or a stopped one to exit.
readonly WAIT_SECONDS=10

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly repo_root
readonly state_dir="$repo_root/.nats"
readonly pid_file="$state_dir/nats-server.pid"
readonly url_file="$state_dir/nats-server.url"
readonly log_file="$state_dir/nats-server.log"
# Set by find_nats_server.
nats_server_bin=""

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

fail() {
    echo "nats-server.sh: $*" >&2
    exit 1
}

# Runs a command with a time limit where coreutils' `timeout` exists (macOS lacks it).
run_with_timeout() {
    local seconds=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout "$seconds" "$@"
    else
        "$@"
    fi
}

# Splits the first URL of NATS_URL into url_scheme, url_host and url_port, and sets
# url_display to the URL with its credentials masked.
parse_server_url() {
    local list=${NATS_URL:-$DEFAULT_URL}
    local url=${list%%,*}
    url=$(printf '%s' "$url" | tr -d '[:space:]')

    local rest
    if [[ $url == *://* ]]; then
        url_scheme=${url%%://*}
        rest=${url#*://}
    else
        url_scheme=nats
        rest=$url
    fi

    local authority=${rest%%[/?#]*}
    local masked_userinfo=""
    if [[ $authority == *@* ]]; then
        local userinfo=${authority%@*}
        authority=${authority##*@}
        if [[ $userinfo == *:* ]]; then
            masked_userinfo="${userinfo%%:*}:***@"
        else
            masked_userinfo="***@"
        fi
    fi
    url_display="$url_scheme://$masked_userinfo$authority"

    if [[ $authority =~ ^\[([0-9A-Fa-f:.]+)\](:([0-9]+))?$ ]]; then
        url_host=${BASH_REMATCH[1]}
        url_port=${BASH_REMATCH[3]:-4222}
    elif [[ $authority =~ ^([^:]+)(:([0-9]+))?$ ]]; then
        url_host=${BASH_REMATCH[1]}
        url_port=${BASH_REMATCH[3]:-4222}
    else
        fail "invalid server URL $url_display in NATS_URL; expected nats://host:port"
    fi
}

# Returns 0 when a NATS server responds at host:port (it sends an INFO line first),
# 2 when something else listens there, and 1 when nothing accepts the connection.
probe_server() {
    local status=0
    # The child shell owns the socket, so the connection closes when it exits.
    # shellcheck disable=SC2016
    run_with_timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        IFS= read -r -t 2 line <&3 || exit 2
        [[ $line == INFO* ]] || exit 2
    ' probe "$1" "$2" 2>/dev/null || status=$?
    case $status in
        0) return 0 ;;
        2) return 2 ;;
        *) return 1 ;;
    esac
}

# Prints the pid from the pid file when that process is still a nats-server started by
# this script. Comparing the command line guards against a reused pid.
running_pid() {
    [[ -f $pid_file ]] || return 1
    local pid
    pid=$(tr -dc '0-9' <"$pid_file")
    [[ -n $pid ]] || return 1
    local args
    args=$(ps -p "$pid" -o args= 2>/dev/null) || return 1
    [[ $args == *nats-server* && $args == *"$pid_file"* ]] || return 1
    echo "$pid"
}

is_loopback() {
    case $1 in
        localhost | 127.* | ::1) return 0 ;;
        *) return 1 ;;
    esac
}

# Sets nats_server_bin to the path of nats-server: NATS_SERVER_BIN, then PATH, then the
# sbin directories that Debian's package uses and that a non-root user's PATH often lacks.
# Returns 1 when none is found, and exits when NATS_SERVER_BIN names no executable file.
find_nats_server() {
    if [[ -n ${NATS_SERVER_BIN:-} ]]; then
        [[ -f $NATS_SERVER_BIN && -x $NATS_SERVER_BIN ]] ||
            fail "NATS_SERVER_BIN is $NATS_SERVER_BIN, which is not an executable file; unset it or point it at nats-server"
        nats_server_bin=$NATS_SERVER_BIN
        return 0
    fi
    if nats_server_bin=$(command -v nats-server 2>/dev/null); then
        return 0
    fi
    local dir
    for dir in /usr/sbin /usr/local/sbin; do
        if [[ -x $dir/nats-server ]]; then
            nats_server_bin=$dir/nats-server
            return 0
        fi
    done
    return 1
}

# Installs Debian's nats-server package when apt-get exists and we are root or have
# passwordless sudo. Returns 1 without trying otherwise.
#
# On a host that runs systemd, the package (2.9.10 in Debian 12) also enables and starts
# nats-server.service, which listens on 127.0.0.1:4222 without monitoring or JetStream.
# In a container without systemd, installing starts nothing.
install_with_apt() {
    command -v apt-get >/dev/null 2>&1 || return 1

    local -a as_root=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            return 1
        fi
    fi

    echo "nats-server not found; installing Debian's package (apt-get install nats-server)..." >&2
    # The ${a[@]+...} form keeps an empty array legal under `set -u` in bash 3.2.
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
        fail "apt-get update failed; see its output above"
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >&2 ||
        fail "apt-get install nats-server failed; see its output above"
}

print_install_help() {
    cat >&2 <<EOF
nats-server.sh: nats-server was not found in PATH, /usr/sbin or /usr/local/sbin.
Get a server in one of these ways, then run this command again:
  - Debian or Ubuntu:  sudo apt-get update && sudo apt-get install -y nats-server
  - macOS:             brew install nats-server
  - any system:        download a release from https://github.com/nats-io/nats-server/releases
                       and set NATS_SERVER_BIN to its path
  - Docker:            docker compose up -d   (runs the official image on 127.0.0.1:4222)
EOF
}

# Sets nats_server_bin, installing nats-server first when it is missing and that is possible.
require_nats_server() {
    if find_nats_server; then
        return 0
    fi
    if install_with_apt && find_nats_server; then
        return 0
    fi
    print_install_help
    exit 1
}

cmd_install() {
    require_nats_server
    echo "$nats_server_bin"
}

cmd_status() {
    parse_server_url
    local reachable=1 pid
    if probe_server "$url_host" "$url_port"; then
        reachable=0
        echo "NATS server at $url_display: reachable"
    else
        echo "NATS server at $url_display: not reachable"
    fi

    if pid=$(running_pid); then
        echo "Started by this script: pid $pid, $(cat "$url_file" 2>/dev/null || echo "URL unknown"), log $log_file"
    else
        echo "Started by this script: none running"
    fi
    return "$reachable"
}

# Reports a failed start with the end of the server's log, ends the server if it is still
# running, and exits.
abort_start() {
    echo "nats-server.sh: $1; the end of $log_file:" >&2
    tail -n 5 "$log_file" >&2
    local pid
    if pid=$(running_pid); then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file" "$url_file"
    exit 1
}

cmd_start() {
    parse_server_url

    local probe=0
    probe_server "$url_host" "$url_port" || probe=$?
    if [[ $probe -eq 0 ]]; then
        echo "A NATS server is already running at $url_display; not starting another."
        return 0
    fi
    if [[ $probe -eq 2 ]]; then
        fail "something that is not a NATS server is listening on $url_host:$url_port; stop it, or set NATS_URL to another port"
    fi

    if [[ $url_scheme != nats ]] || ! is_loopback "$url_host"; then
        fail "no NATS server responds at $url_display, and this script only starts plain nats:// servers on this machine (localhost, 127.0.0.1 or ::1); start that server, or unset NATS_URL"
    fi
    local pid
    if pid=$(running_pid); then
        fail "the server this script started (pid $pid, $(cat "$url_file" 2>/dev/null || echo "URL unknown")) does not serve $url_display; run \`scripts/nats-server.sh stop\` first"
    fi

    require_nats_server
    local bin=$nats_server_bin
    local monitor_port=${NATS_MONITOR_PORT:-$DEFAULT_MONITOR_PORT}
    local bind_address=127.0.0.1
    if [[ $url_host == ::1 ]]; then
        bind_address=::1
    fi

    mkdir -p "$state_dir"
    rm -f "$pid_file" "$url_file"

    # setsid gives the server its own session, so a Ctrl-C meant for the calling script
    # (such as scripts/demo.sh) does not reach the server, and closing the terminal does
    # not stop it. `-sd` names the parent of the store: JetStream appends "jetstream".
    local -a detach=(nohup)
    command -v setsid >/dev/null 2>&1 && detach=(setsid)
    # Both the server's -l log and its stdout append to the same file, which is safe.
    # shellcheck disable=SC2094
    "${detach[@]}" "$bin" -a "$bind_address" -p "$url_port" -m "$monitor_port" \
        -js -sd "$state_dir" -l "$log_file" -P "$pid_file" \
        </dev/null >>"$log_file" 2>&1 &
    local launcher_pid=$!
    # An interrupted start leaves no server behind.
    trap 'abort_start "interrupted"' INT TERM

    local deadline=$((SECONDS + WAIT_SECONDS))
    until probe_server "$url_host" "$url_port"; do
        if ! kill -0 "$launcher_pid" 2>/dev/null && ! running_pid >/dev/null; then
            abort_start "nats-server exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            abort_start "nats-server did not accept connections on $bind_address:$url_port within ${WAIT_SECONDS}s"
        fi
        sleep 0.2
    done
    trap - INT TERM

    # An IPv6 address needs brackets inside a URL.
    local url_host_part=$url_host monitor_host_part=$bind_address
    if [[ $url_host == *:* ]]; then
        url_host_part="[$url_host]"
        monitor_host_part="[$bind_address]"
    fi
    local started_url="nats://$url_host_part:$url_port"
    echo "$started_url" >"$url_file"
    echo "Started nats-server $("$bin" --version 2>&1 | head -n 1 | sed 's/^nats-server: //') (pid $(running_pid || echo "$launcher_pid"))"
    echo "  clients:    $started_url"
    echo "  monitoring: http://$monitor_host_part:$monitor_port"
    echo "  log:        $log_file"
    echo "Stop it with: scripts/nats-server.sh stop"
}

cmd_stop() {
    local pid
    if ! pid=$(running_pid); then
        if [[ -f $pid_file ]]; then
            rm -f "$pid_file" "$url_file"
            echo "No server started by this script is running (removed a stale pid file)."
        else
            echo "No server started by this script is running."
        fi
        return 0
    fi

    # SIGTERM makes nats-server close client connections and exit cleanly.
    kill -TERM "$pid"
    local deadline=$((SECONDS + WAIT_SECONDS))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            fail "nats-server (pid $pid) did not exit within ${WAIT_SECONDS}s of SIGTERM; check $log_file, or end it with kill -KILL $pid"
        fi
        sleep 0.2
    done
    echo "Stopped nats-server (pid $pid, $(cat "$url_file" 2>/dev/null || echo "URL unknown"))."
    rm -f "$pid_file" "$url_file"
}

main() {
    case ${1:-start} in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        install) cmd_install ;;
        -h | --help | help) usage ;;
        *)
            echo "nats-server.sh: unknown command '$1'" >&2
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
