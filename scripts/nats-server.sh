#!/usr/bin/env bash
# Makes a NATS server available for the tutorial binaries, starting a local one if needed.
#
# Usage: scripts/nats-server.sh [start|stop|status|install|cluster-start|cluster-stop|cluster-status]
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
#   cluster-start   Starts a three-server cluster on loopback (node-a, node-b, node-c, joined
#                   by routes, with HTTP monitoring and without JetStream), waits until each
#                   server has a route to both others, and prints the URLs to use. When some
#                   of the three run already, starts only the others.
#   cluster-stop    Stops the servers that cluster-start started, and no others.
#   cluster-status  Reports each cluster server: reachable or not, its pid, and how many of
#                   the other two it has a route to. Exit status 0 when all three respond.
#
# Environment:
#   NATS_URL           server to check, or to start on this machine; only the first URL of
#                      a comma-separated list is used (default nats://localhost:4222)
#   NATS_MONITOR_PORT  HTTP monitoring port of a server started here (default 8222)
#   NATS_SERVER_BIN    nats-server binary to use instead of searching PATH and /usr/sbin
#   NATS_CLUSTER_CLIENT_PORT   first cluster server's client port; the other two use the
#                              next two ports (default 4223, so 4223-4225)
#   NATS_CLUSTER_MONITOR_PORT  the same for HTTP monitoring (default 8223, so 8223-8225)
#   NATS_CLUSTER_ROUTE_PORT    the same for the routes between the servers (default 6223)
#
# A server started here writes its log to .nats/nats-server.log, its pid to
# .nats/nats-server.pid and its JetStream data to .nats/jetstream, all under the repository.
# The cluster's servers write their logs and pid files to .nats/cluster/.
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
readonly cluster_dir="$state_dir/cluster"
readonly cluster_nodes=(node-a node-b node-c)
# Shared by the three servers: a server rejects routes from one with another cluster name.
readonly cluster_name=queue-groups
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

# Prints the pid from a pid file (default: the single server's) when that process is still
# a nats-server started by this script. Comparing the command line guards against a reused
# pid.
running_pid() {
    local file=${1:-$pid_file}
    [[ -f $file ]] || return 1
    local pid
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid ]] || return 1
    local args
    args=$(ps -p "$pid" -o args= 2>/dev/null) || return 1
    [[ $args == *nats-server* && $args == *"$file"* ]] || return 1
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

# Prints the three ports that start at the value of variable $1, or at $2 when it is unset.
three_ports() {
    local base=${!1:-$2}
    if ! [[ $base =~ ^[0-9]+$ ]] || ((base < 1 || base > 65533)); then
        fail "$1 is '$base'; expected a port number from 1 to 65533 (the servers use it and the next two)"
    fi
    echo "$base $((base + 1)) $((base + 2))"
}

# Sets cluster_client_ports, cluster_monitor_ports and cluster_route_ports, one entry per
# node, from the NATS_CLUSTER_*_PORT variables.
cluster_ports() {
    local ports
    ports=$(three_ports NATS_CLUSTER_CLIENT_PORT 4223)
    read -r -a cluster_client_ports <<<"$ports"
    ports=$(three_ports NATS_CLUSTER_MONITOR_PORT 8223)
    read -r -a cluster_monitor_ports <<<"$ports"
    ports=$(three_ports NATS_CLUSTER_ROUTE_PORT 6223)
    read -r -a cluster_route_ports <<<"$ports"
}

cluster_pid_file() {
    echo "$cluster_dir/$1.pid"
}

# Prints the response body of GET path from a loopback HTTP server: host, port, path.
http_get() {
    # shellcheck disable=SC2016
    run_with_timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$3" "$1" >&3
        sed "1,/^\r\{0,1\}$/d" <&3
    ' http_get "$1" "$2" "$3" 2>/dev/null
}

# Prints how many different servers the server with monitoring port $1 has a route to.
# Two servers that dial each other at once briefly hold two routes, so the routes' remote
# server ids are counted, not the routes.
route_peers() {
    local routez
    routez=$(http_get 127.0.0.1 "$1" /routez) || {
        echo 0
        return
    }
    printf '%s\n' "$routez" | grep -o '"remote_id": *"[A-Z0-9]*"' | sort -u | wc -l | tr -d ' '
}

cluster_urls() {
    local -a urls=()
    local port
    for port in "${cluster_client_ports[@]}"; do
        urls+=("nats://127.0.0.1:$port")
    done
    local IFS=,
    echo "${urls[*]}"
}

# Kills every cluster server this script started, after a failed start, and exits.
# NOTE: this also ends servers that were running before a cluster-start that only
# restarted the others.
abort_cluster_start() {
    echo "nats-server.sh: $1" >&2
    local node pid
    for node in "${cluster_nodes[@]}"; do
        if pid=$(running_pid "$(cluster_pid_file "$node")"); then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$(cluster_pid_file "$node")"
    done
    exit 1
}

cmd_cluster_start() {
    cluster_ports
    local index node pid
    # Indexes of the servers to start: all three, or those of a partly running cluster
    # that are not running, such as one stopped to watch its clients move.
    local -a missing=()
    for index in 0 1 2; do
        if pid=$(running_pid "$(cluster_pid_file "${cluster_nodes[index]}")"); then
            echo "${cluster_nodes[index]} is already running (pid $pid)."
        else
            missing+=("$index")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "The cluster is already running; not starting another."
        echo "  clients: -s $(cluster_urls)"
        return 0
    fi

    # A port in use would make one server exit at startup; naming it here is clearer.
    local port
    for index in "${missing[@]}"; do
        for port in "${cluster_client_ports[index]}" "${cluster_monitor_ports[index]}" "${cluster_route_ports[index]}"; do
            local probe=0
            probe_server 127.0.0.1 "$port" || probe=$?
            if ((probe != 1)); then
                fail "port $port on 127.0.0.1, needed by ${cluster_nodes[index]}, is in use; stop what listens there, or move the cluster with NATS_CLUSTER_CLIENT_PORT, NATS_CLUSTER_MONITOR_PORT and NATS_CLUSTER_ROUTE_PORT"
            fi
        done
    done

    require_nats_server
    mkdir -p "$cluster_dir"
    local -a detach=(nohup)
    command -v setsid >/dev/null 2>&1 && detach=(setsid)
    trap 'abort_cluster_start "interrupted; stopped the cluster servers"' INT TERM

    for index in "${missing[@]}"; do
        node=${cluster_nodes[index]}
        local -a routes=()
        local peer
        for peer in 0 1 2; do
            ((peer == index)) || routes+=("nats://127.0.0.1:${cluster_route_ports[peer]}")
        done
        local route_list log
        route_list=$(IFS=,; echo "${routes[*]}")
        log="$cluster_dir/$node.log"
        rm -f "$(cluster_pid_file "$node")"
        # shellcheck disable=SC2094
        "${detach[@]}" "$nats_server_bin" -a 127.0.0.1 \
            -p "${cluster_client_ports[index]}" -m "${cluster_monitor_ports[index]}" \
            --server_name "$node" --cluster_name "$cluster_name" \
            --cluster "nats://127.0.0.1:${cluster_route_ports[index]}" --routes "$route_list" \
            -l "$log" -P "$(cluster_pid_file "$node")" \
            </dev/null >>"$log" 2>&1 &
    done

    local deadline=$((SECONDS + WAIT_SECONDS))
    for index in 0 1 2; do
        node=${cluster_nodes[index]}
        until probe_server 127.0.0.1 "${cluster_client_ports[index]}"; do
            if ((SECONDS >= deadline)); then
                abort_cluster_start "$node did not accept connections on 127.0.0.1:${cluster_client_ports[index]} within ${WAIT_SECONDS}s; see the end of $cluster_dir/$node.log"
            fi
            sleep 0.2
        done
    done
    for index in 0 1 2; do
        node=${cluster_nodes[index]}
        until [[ $(route_peers "${cluster_monitor_ports[index]}") -ge 2 ]]; do
            if ((SECONDS >= deadline)); then
                abort_cluster_start "$node has no route to both other servers after ${WAIT_SECONDS}s; see $cluster_dir/$node.log"
            fi
            sleep 0.2
        done
    done
    trap - INT TERM

    local -a started_nodes=()
    for index in "${missing[@]}"; do
        started_nodes+=("${cluster_nodes[index]}")
    done
    echo "Started ${started_nodes[*]}. The NATS cluster '$cluster_name' runs on 127.0.0.1 without JetStream, each server with a route to both others:"
    for index in 0 1 2; do
        node=${cluster_nodes[index]}
        echo "  $node: clients nats://127.0.0.1:${cluster_client_ports[index]}, monitoring http://127.0.0.1:${cluster_monitor_ports[index]}, routes on ${cluster_route_ports[index]}, pid $(running_pid "$(cluster_pid_file "$node")" || echo unknown)"
    done
    local monitor_urls
    monitor_urls=$(printf 'http://127.0.0.1:%s,' "${cluster_monitor_ports[@]}")
    echo "Connect with:  -s $(cluster_urls)"
    echo "Monitor with:  queue_monitor --monitor-url ${monitor_urls%,}"
    echo "Logs:          $cluster_dir/node-{a,b,c}.log"
    echo "Stop it with:  scripts/nats-server.sh cluster-stop"
}

cmd_cluster_stop() {
    local node pid stopped=0
    for node in "${cluster_nodes[@]}"; do
        local file
        file=$(cluster_pid_file "$node")
        if ! pid=$(running_pid "$file"); then
            rm -f "$file"
            continue
        fi
        # SIGTERM makes nats-server close its client connections and routes and exit.
        kill -TERM "$pid"
        local deadline=$((SECONDS + WAIT_SECONDS))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                fail "$node (pid $pid) did not exit within ${WAIT_SECONDS}s of SIGTERM; check $cluster_dir/$node.log, or end it with kill -KILL $pid"
            fi
            sleep 0.2
        done
        rm -f "$file"
        echo "Stopped $node (pid $pid)."
        stopped=$((stopped + 1))
    done
    if ((stopped == 0)); then
        echo "No cluster server started by this script is running."
    fi
}

cmd_cluster_status() {
    cluster_ports
    local index node pid responding=0
    for index in 0 1 2; do
        node=${cluster_nodes[index]}
        local url="nats://127.0.0.1:${cluster_client_ports[index]}" state started="not started by this script"
        if probe_server 127.0.0.1 "${cluster_client_ports[index]}"; then
            responding=$((responding + 1))
            state="reachable, routes to $(route_peers "${cluster_monitor_ports[index]}") of 2 other servers"
        else
            state="not reachable"
        fi
        local pid_file_of_node
        pid_file_of_node=$(cluster_pid_file "$node")
        if pid=$(running_pid "$pid_file_of_node"); then
            started="pid $pid"
        elif [[ -f $pid_file_of_node ]]; then
            started="started by this script as pid $(tr -dc '0-9' <"$pid_file_of_node"), which has exited; cluster-start starts it again"
        fi
        echo "$node at $url: $state ($started)"
    done
    ((responding == 3))
}

main() {
    case ${1:-start} in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        install) cmd_install ;;
        cluster-start) cmd_cluster_start ;;
        cluster-stop) cmd_cluster_stop ;;
        cluster-status) cmd_cluster_status ;;
        -h | --help | help) usage ;;
        *)
            echo "nats-server.sh: unknown command '$1'" >&2
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
