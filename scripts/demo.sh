#!/usr/bin/env bash
# Runs Step 1 end to end: three workers in the queue group "processors" share 20 tasks.
#
# Usage: scripts/demo.sh
#
# Builds the binaries, uses the NATS server at NATS_URL or starts one with
# scripts/nats-server.sh, starts `worker 1`, `worker 2` and `worker 3`, runs
# `task_publisher`, and waits until the workers have completed the tasks. It then sends
# each worker SIGINT, which makes it drain and print its summary, and prints which worker
# completed each task. It exits with status 0 only when every task was completed exactly
# once, and with 1 when one was not or a step failed (with cargo's status when the build
# fails, and 130 after Ctrl-C).
#
# On every exit, including errors and Ctrl-C, the demo stops the workers it started and
# the server if it started one. A server that was already running keeps running.
#
# Environment:
#   NATS_URL        server to use (default nats://localhost:4222)
#   DEMO_WORK_TIME  simulated work per task, as for `worker --work-time` (default 0.3s)
#   DEMO_TIMEOUT    seconds to wait for the workers to complete all tasks (default 60)

set -euo pipefail

WORKER_IDS=(1 2 3)
readonly WORKER_IDS
readonly TASK_COUNT=20
readonly WORK_TIME=${DEMO_WORK_TIME:-0.3s}
readonly COMPLETION_TIMEOUT_SECONDS=${DEMO_TIMEOUT:-60}
# Connecting may take up to the workers' --connect-timeout (5 s) before they fail.
readonly STARTUP_TIMEOUT_SECONDS=15
readonly SHUTDOWN_TIMEOUT_SECONDS=10

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly script_dir
readonly repo_root="$script_dir/.."

# Set by build_binaries.
bin_dir=""
# Pids of the running workers, in the order of WORKER_IDS.
worker_pids=()
started_server=false
# Temporary directory for the output of cargo, the workers and the publisher.
log_dir=""

say() {
    echo "==> $*"
}

fail() {
    echo "demo.sh: $*" >&2
    exit 1
}

# Stops the workers and the server that the demo started and that still run. SIGTERM makes
# a worker drain, or stop at once if a Ctrl-C in the terminal already reached it.
cleanup() {
    local status=$?
    trap - EXIT INT TERM

    local pid
    for pid in ${worker_pids[@]+"${worker_pids[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    local deadline=$((SECONDS + SHUTDOWN_TIMEOUT_SECONDS))
    for pid in ${worker_pids[@]+"${worker_pids[@]}"}; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done

    if [[ $started_server == true ]]; then
        "$script_dir/nats-server.sh" stop || status=1
    fi

    # The output is kept for a failed run only. After Ctrl-C (130) or SIGTERM (143) it goes.
    if [[ -n $log_dir ]]; then
        if [[ $status -eq 1 ]]; then
            echo "demo.sh: the output of the workers and the publisher is kept in $log_dir" >&2
        else
            rm -rf "$log_dir"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints how many lines of the files match the awk pattern (0 when none does).
count_lines() {
    local pattern=$1
    shift
    cat "$@" 2>/dev/null | awk -v pattern="$pattern" '$0 ~ pattern { n++ } END { print n + 0 }'
}

join_lines() {
    printf '%s\n' "$1" | paste -s -d ' ' -
}

# Fails with the worker's error output when the worker has exited.
check_worker_running() {
    local id=$1 pid=$2
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "demo.sh: worker $id exited early; its error output:" >&2
        sed 's/^/  /' "$log_dir/worker-$id.err" >&2
        exit 1
    fi
}

# Builds the workspace's binaries and sets bin_dir to the directory that contains them.
# The debug profile builds much faster than release, and the demo does little work.
build_binaries() {
    say "Building the binaries (cargo build --bins)"
    local artifacts="$log_dir/cargo-artifacts.json"
    # Cargo's JSON messages name each executable it built, wherever the target directory is.
    (cd "$repo_root" && cargo build --bins --message-format=json-render-diagnostics) >"$artifacts"

    local worker_path
    worker_path=$(sed -n 's/.*"executable":"\([^"]*\/worker\)".*/\1/p' "$artifacts" | head -n 1)
    [[ -n $worker_path ]] || fail "cargo build did not report a worker binary"
    bin_dir=$(dirname "$worker_path")
    [[ -x $bin_dir/task_publisher ]] || fail "task_publisher is missing from $bin_dir after the build"
}

ensure_server() {
    local status_output
    if status_output=$("$script_dir/nats-server.sh" status); then
        # The first line reads "NATS server at <URL, credentials masked>: reachable".
        local url=${status_output%%$'\n'*}
        url=${url#NATS server at }
        say "Using the NATS server that is already running at ${url%: reachable}"
    else
        say "No NATS server is running; starting one with scripts/nats-server.sh"
        # The demo stops this server itself, so the script's hint on stopping it is dropped.
        "$script_dir/nats-server.sh" start | sed '/^Stop it with/d'
        # Set only now: when `start` fails, the server in the pid file is not the demo's.
        started_server=true
    fi
}

start_workers() {
    local id
    for id in "${WORKER_IDS[@]}"; do
        "$bin_dir/worker" "$id" --work-time "$WORK_TIME" \
            >"$log_dir/worker-$id.out" 2>"$log_dir/worker-$id.err" &
        worker_pids+=($!)
    done
    say "Started workers ${WORKER_IDS[*]} (--work-time $WORK_TIME) in queue group 'processors'"

    # Each worker prints this line after the server has confirmed its subscription, so
    # no task published afterwards can miss it.
    local deadline=$((SECONDS + STARTUP_TIMEOUT_SECONDS)) index
    for index in "${!WORKER_IDS[@]}"; do
        id=${WORKER_IDS[$index]}
        until grep -q 'Waiting for tasks' "$log_dir/worker-$id.out"; do
            check_worker_running "$id" "${worker_pids[$index]}"
            ((SECONDS < deadline)) ||
                fail "worker $id did not print 'Waiting for tasks' within ${STARTUP_TIMEOUT_SECONDS}s"
            sleep 0.1
        done
    done
}

publish_tasks() {
    say "Publishing $TASK_COUNT tasks on tasks.process (task_publisher --count $TASK_COUNT)"
    if ! "$bin_dir/task_publisher" --count "$TASK_COUNT" 2>"$log_dir/task_publisher.err"; then
        echo "demo.sh: task_publisher failed; its error output:" >&2
        sed 's/^/  /' "$log_dir/task_publisher.err" >&2
        exit 1
    fi
}

# Waits until the workers report TASK_COUNT completions. Returns 1 on timeout, so that
# the caller can still stop the workers and report what was completed.
wait_for_completion() {
    local deadline=$((SECONDS + COMPLETION_TIMEOUT_SECONDS)) completed index
    while true; do
        completed=$(count_lines 'Completed task' "$log_dir"/worker-*.out)
        if ((completed >= TASK_COUNT)); then
            say "The workers completed $completed tasks"
            return 0
        fi
        for index in "${!WORKER_IDS[@]}"; do
            check_worker_running "${WORKER_IDS[$index]}" "${worker_pids[$index]}"
        done
        if ((SECONDS >= deadline)); then
            echo "demo.sh: timed out after ${COMPLETION_TIMEOUT_SECONDS}s: the workers completed $completed of $TASK_COUNT tasks" >&2
            return 1
        fi
        sleep 0.2
    done
}

# Sends SIGINT, as Ctrl-C would, and waits for each worker to drain and exit.
stop_workers() {
    say "Stopping the workers with SIGINT (each drains, then prints its summary)"
    local pid
    for pid in "${worker_pids[@]}"; do
        kill -INT "$pid"
    done

    local deadline=$((SECONDS + SHUTDOWN_TIMEOUT_SECONDS)) index id status
    for index in "${!WORKER_IDS[@]}"; do
        id=${WORKER_IDS[$index]}
        pid=${worker_pids[$index]}
        while kill -0 "$pid" 2>/dev/null; do
            ((SECONDS < deadline)) ||
                fail "worker $id (pid $pid) did not exit within ${SHUTDOWN_TIMEOUT_SECONDS}s of SIGINT"
            sleep 0.1
        done
        status=0
        wait "$pid" || status=$?
        grep '^\[Worker .*\] Processed ' "$log_dir/worker-$id.out" | sed 's/^/  /' || true
        if [[ $status -ne 0 ]]; then
            echo "demo.sh: worker $id exited with status $status; its error output:" >&2
            sed 's/^/  /' "$log_dir/worker-$id.err" >&2
            exit 1
        fi
    done
    worker_pids=()
}

# Prints which worker completed each task and the totals per worker, then checks that
# every task was completed exactly once. Returns 1 when one was not.
report() {
    local completions="$log_dir/completions"
    local id
    for id in "${WORKER_IDS[@]}"; do
        sed -n "s/^\[Worker $id\] Completed task \([^ ]*\)\$/\1 $id/p" "$log_dir/worker-$id.out"
    done | sort >"$completions"

    echo
    printf '%-10s %s\n' "Task" "Completed by"
    awk '{ printf "%-10s worker %s\n", $1, $2 }' "$completions"
    echo
    printf '%-10s %s\n' "Worker" "Tasks"
    for id in "${WORKER_IDS[@]}"; do
        printf '%-10s %s\n' "worker $id" "$(awk -v id="$id" '$2 == id { n++ } END { print n + 0 }' "$completions")"
    done
    printf '%-10s %s\n' "total" "$(wc -l <"$completions" | tr -d ' ')"
    echo

    local expected missing duplicated unexpected
    expected=$(seq -f 'TASK-%03g' 1 "$TASK_COUNT")
    missing=$(comm -23 <(echo "$expected") <(cut -d ' ' -f 1 "$completions" | sort -u))
    duplicated=$(cut -d ' ' -f 1 "$completions" | uniq -d)
    unexpected=$(comm -13 <(echo "$expected") <(cut -d ' ' -f 1 "$completions" | sort -u))

    if [[ -z $missing && -z $duplicated && -z $unexpected ]]; then
        echo "Every one of the $TASK_COUNT tasks was completed exactly once."
        return 0
    fi
    echo "demo.sh: expected each of the $TASK_COUNT tasks to be completed exactly once" >&2
    if [[ -n $missing ]]; then
        echo "  never completed: $(join_lines "$missing")" >&2
        echo "  A missing task was most likely delivered to another member of queue group 'processors' on the same server. Stop that subscriber, or point NATS_URL at a server that only the demo uses." >&2
    fi
    if [[ -n $duplicated ]]; then
        echo "  completed more than once: $(join_lines "$duplicated")" >&2
    fi
    if [[ -n $unexpected ]]; then
        echo "  completed but not published by this demo: $(join_lines "$unexpected")" >&2
        echo "  Another publisher on tasks.process was running at the same time." >&2
    fi
    return 1
}

main() {
    log_dir=$(mktemp -d "${TMPDIR:-/tmp}/queue-groups-demo.XXXXXX")
    build_binaries
    ensure_server

    start_workers
    publish_tasks

    local completed_in_time=true
    wait_for_completion || completed_in_time=false
    stop_workers

    local report_status=0
    report || report_status=$?
    if [[ $completed_in_time == false || $report_status -ne 0 ]]; then
        exit 1
    fi
}

main "$@"
