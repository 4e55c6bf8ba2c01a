//! Faults end to end: stop signals, a drain that takes too long, a server that restarts or
//! is not there yet, each with exact counts of what survived.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::{NatsServer, Process, WAIT, unused_port, wait_until};

fn start_worker(url: &str, id: &str, extra: &[&str]) -> Process {
    let mut args = vec![id, "-s", url];
    args.extend_from_slice(extra);
    let worker = Process::start("worker", args);
    worker.wait_for_stdout("Waiting for tasks", WAIT);
    worker
}

/// Publishes `count` tasks at once with `load_generator` and waits until it exits.
fn publish_burst(url: &str, prefix: &str, count: usize) {
    let count = count.to_string();
    let mut generator = Process::start(
        "load_generator",
        [
            "--count",
            &count,
            "--subject",
            "tasks.process",
            "--prefix",
            prefix,
            "-s",
            url,
        ],
    );
    assert!(
        generator.wait_exit(WAIT).success(),
        "{}",
        generator.transcript()
    );
}

fn completed(worker: &Process) -> Vec<String> {
    worker
        .stdout()
        .iter()
        .filter_map(|line| {
            line.split_once("Completed task ")
                .map(|(_, id)| id.to_owned())
        })
        .collect()
}

/// Returns the N in `abandoned N delivered message(s)`.
fn abandoned(worker: &Process) -> usize {
    let line = worker.wait_for_stdout("abandoned", WAIT);
    line.split_once("abandoned ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

/// A second signal stops at once; completed plus abandoned is everything delivered.
#[test]
fn second_signal_counts_abandoned_tasks() {
    let server = NatsServer::start();
    let mut worker = start_worker(&server.client_url(), "1", &["--work-time", "500ms"]);
    publish_burst(&server.client_url(), "TASK", 10);

    worker.wait_for_stdout("Processing message #1", WAIT);
    worker.interrupt();
    worker.wait_for_stdout("Shutting down", WAIT);
    worker.interrupt();
    let status = worker.wait_exit(WAIT);

    assert_eq!(status.code(), Some(1), "{}", worker.transcript());
    let done = completed(&worker).len();
    assert!(done < 10, "stopped before the end\n{}", worker.transcript());
    assert_eq!(done + abandoned(&worker), 10, "{}", worker.transcript());
}

/// SIGTERM drains like Ctrl-C, and `--drain-timeout` stops a drain that takes too long.
#[test]
fn drain_timeout_stops_and_counts() {
    let server = NatsServer::start();
    let mut worker = start_worker(
        &server.client_url(),
        "1",
        &["--work-time", "1s", "--drain-timeout", "300ms"],
    );
    publish_burst(&server.client_url(), "TASK", 5);

    worker.wait_for_stdout("Processing message #1", WAIT);
    let signalled = Instant::now();
    worker.terminate();
    let status = worker.wait_exit(WAIT);

    assert_eq!(status.code(), Some(1), "{}", worker.transcript());
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the timeout cut the drain short\n{}",
        worker.transcript()
    );
    worker.wait_for_stdout("drain timed out", WAIT);
    assert_eq!(
        completed(&worker).len() + abandoned(&worker),
        5,
        "{}",
        worker.transcript()
    );
}

/// SIGTERM with enough time drains everything and exits 0.
#[test]
fn sigterm_drains_everything() {
    let server = NatsServer::start();
    let mut worker = start_worker(&server.client_url(), "1", &["--work-time", "50ms"]);
    publish_burst(&server.client_url(), "TASK", 10);

    worker.wait_for_stdout("Processing message #1", WAIT);
    worker.terminate();
    let status = worker.wait_exit(WAIT);

    assert!(status.success(), "{}", worker.transcript());
    assert_eq!(completed(&worker).len(), 10, "{}", worker.transcript());
    worker.wait_for_stdout("Processed 10 messages", WAIT);
}

/// With `--wait-for-server` a worker started before its server joins once it appears.
#[test]
fn wait_for_server_joins_late() {
    let port = unused_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut worker = Process::start("worker", ["1", "--wait-for-server", "-s", &url]);
    worker.wait_for_stderr("waiting for the server", WAIT);

    let _server = NatsServer::builder().client_port(port).start();
    worker.wait_for_stdout("Waiting for tasks", WAIT);
    let mut publisher = Process::start(
        "task_publisher",
        ["--count", "3", "--interval", "0", "-s", &url],
    );
    assert!(
        publisher.wait_exit(WAIT).success(),
        "{}",
        publisher.transcript()
    );

    worker.wait_for_stdout("Completed task TASK-003", WAIT);
    worker.interrupt();
    assert!(worker.wait_exit(WAIT).success(), "{}", worker.transcript());
    assert_eq!(completed(&worker), ["TASK-001", "TASK-002", "TASK-003"]);
}

/// Ctrl-C ends a worker that is still waiting for its server.
#[test]
fn wait_for_server_can_be_interrupted() {
    let url = format!("nats://127.0.0.1:{}", unused_port());
    let mut worker = Process::start("worker", ["1", "--wait-for-server", "-s", &url]);
    worker.wait_for_stderr("waiting for the server", WAIT);
    worker.interrupt();

    let status = worker.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", worker.transcript());
    worker.wait_for_stderr("stopped while waiting for the server", WAIT);
}

/// Workers reconnect after a server restart and keep their queue group membership: a
/// batch published before and one published after are each completed exactly once.
#[test]
fn workers_survive_server_restart() {
    let mut server = NatsServer::start();
    let url = server.client_url();
    let mut workers: Vec<Process> = ["1", "2"]
        .iter()
        .map(|id| start_worker(&url, id, &["--work-time", "10ms"]))
        .collect();

    publish_burst(&url, "BEFORE", 20);
    wait_until(
        WAIT,
        || workers.iter().map(|w| completed(w).len()).sum::<usize>() >= 20,
        || workers.iter().map(Process::transcript).collect(),
    );

    server.stop();
    for worker in &workers {
        worker.wait_for_stderr("disconnected", WAIT);
    }
    server.restart();
    for worker in &workers {
        worker.wait_for_stderr("reconnected", WAIT);
    }

    publish_burst(&url, "AFTER", 20);
    wait_until(
        WAIT,
        || workers.iter().map(|w| completed(w).len()).sum::<usize>() >= 40,
        || workers.iter().map(Process::transcript).collect(),
    );
    for worker in &workers {
        worker.interrupt();
    }
    for worker in &mut workers {
        assert!(worker.wait_exit(WAIT).success(), "{}", worker.transcript());
    }

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for worker in &workers {
        for id in completed(worker) {
            *counts.entry(id).or_default() += 1;
        }
    }
    let mut expected: Vec<String> = (1..=20).map(|n| format!("AFTER-{n:03}")).collect();
    expected.extend((1..=20).map(|n| format!("BEFORE-{n:03}")));
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), expected);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    for worker in &workers {
        assert!(
            completed(worker).iter().any(|id| id.starts_with("AFTER")),
            "each worker is still a member after the restart\n{}",
            worker.transcript()
        );
    }
}

/// A publisher whose server goes away stops within its flush timeout and reports how many
/// tasks are unconfirmed; the worker completed only published tasks, each once.
#[test]
fn publisher_never_hangs_when_server_stops() {
    let mut server = NatsServer::start();
    let url = server.client_url();
    let mut worker = start_worker(&url, "1", &["--work-time", "1ms"]);
    let mut publisher = Process::start(
        "task_publisher",
        [
            "--count",
            "100",
            "--interval",
            "20ms",
            "--flush-timeout",
            "1s",
            "-s",
            &url,
        ],
    );
    publisher.wait_for_stdout("Published: TASK-010", WAIT);

    server.stop();
    let stopped = Instant::now();
    let status = publisher.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", publisher.transcript());
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "bounded by the flush timeout"
    );

    let confirmed: Vec<String> = publisher
        .stdout()
        .iter()
        .filter_map(|l| l.strip_prefix("Published: ").map(str::to_owned))
        .collect();
    let unconfirmed = 100 - confirmed.len();
    let error = publisher.stderr().join("\n");
    assert!(
        error.contains(&format!("{unconfirmed} of 100 tasks are unconfirmed")),
        "{}",
        publisher.transcript()
    );
    assert!(
        !publisher
            .stdout()
            .iter()
            .any(|l| l.contains("All tasks published")),
        "{}",
        publisher.transcript()
    );

    server.restart();
    worker.wait_for_stderr("reconnected", WAIT);
    worker.interrupt();
    assert!(worker.wait_exit(WAIT).success(), "{}", worker.transcript());

    // The task after the last confirmed one was sent but never confirmed; it may or may
    // not have reached the server.
    let attempted = format!("TASK-{:03}", confirmed.len() + 1);
    let done = completed(&worker);
    let mut unique = done.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), done.len(), "no task twice: {done:?}");
    assert!(
        done.iter()
            .all(|id| confirmed.contains(id) || *id == attempted),
        "only published tasks were completed: {done:?}"
    );
    // A confirmed task is one the server had. A killed server can still lose the last
    // one before writing it to the worker: core NATS keeps nothing on disk.
    assert!(
        done.len() + 1 >= confirmed.len(),
        "confirmed {confirmed:?}, completed {done:?}"
    );
}

/// Messages the server delivered to the connection named `name`, from `/connz`.
fn delivered_to(server: &NatsServer, name: &str) -> u64 {
    let connz = server.monitor_json("/connz?subs=1");
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|connection| connection["name"] == name)
        .and_then(|connection| connection["out_msgs"].as_u64())
        .unwrap_or_else(|| panic!("no connection named {name} in {connz}"))
}

/// SIGKILL loses every task the killed member held, and only those: a plain subscriber on
/// the same subject saw every task, and the server's count of what it gave the killed
/// member accounts for the gap exactly.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_loses_what_the_member_held() {
    use futures::StreamExt;

    let server = NatsServer::start();
    let url = server.client_url();
    let observer = async_nats::connect(&url).await.unwrap();
    let mut plain = observer.subscribe("tasks.process").await.unwrap();
    observer.flush().await.unwrap();

    let killed = start_worker(&url, "killed", &["--work-time", "200ms"]);
    let mut survivor = start_worker(&url, "survivor", &["--work-time", "10ms"]);
    publish_burst(&url, "TASK", 40);

    let mut seen = Vec::new();
    while seen.len() < 40 {
        let message = tokio::time::timeout(WAIT, plain.next())
            .await
            .expect("the plain subscriber receives every task")
            .unwrap();
        seen.push(common::Task::from_bytes(&message.payload).unwrap().task_id);
    }

    killed.wait_for_stdout("Completed task", WAIT);
    let given_to_killed = delivered_to(&server, "worker-killed");
    killed.kill();
    let mut killed = killed;
    let status = killed.wait_exit(WAIT);
    assert_eq!(status.code(), None, "killed by a signal, no exit code");

    wait_until(
        WAIT,
        || completed(&survivor).len() as u64 + given_to_killed >= 40,
        || survivor.transcript(),
    );
    survivor.interrupt();
    assert!(
        survivor.wait_exit(WAIT).success(),
        "{}",
        survivor.transcript()
    );

    let done_by_killed = completed(&killed).len() as u64;
    let done_by_survivor = completed(&survivor).len() as u64;
    let lost = given_to_killed - done_by_killed;
    assert!(lost > 0, "the killed member held tasks when it died");
    assert_eq!(done_by_killed + done_by_survivor + lost, 40);
    assert_eq!(seen.len(), 40, "the plain subscriber saw everything");

    let mut done: Vec<String> = completed(&killed);
    done.extend(completed(&survivor));
    let missing: Vec<&String> = seen.iter().filter(|id| !done.contains(id)).collect();
    assert_eq!(missing.len() as u64, lost, "{missing:?}");
}

/// How to run one worker-type binary slowly enough that tasks wait in its buffer.
struct SlowMember {
    binary: &'static str,
    args: &'static [&'static str],
    subject: &'static str,
    ready: &'static str,
    started: &'static str,
    completed: &'static str,
}

const SLOW_MEMBERS: &[SlowMember] = &[
    SlowMember {
        binary: "worker",
        args: &["1", "--work-time", "400ms"],
        subject: "tasks.process",
        ready: "Waiting for tasks",
        started: "Processing message #1",
        completed: "Completed task TASK-",
    },
    SlowMember {
        binary: "scalable_processor",
        args: &["1", "400ms"],
        subject: "tasks.heavy",
        ready: "Ready for tasks",
        started: "Processing TASK-",
        completed: "✓ TASK-",
    },
    SlowMember {
        binary: "resilient_worker",
        args: &["1", "--work-time", "400ms", "--failure-rate", "0"],
        subject: "tasks.risky",
        ready: "Waiting for tasks",
        started: "Started",
        completed: "✓ Completed TASK-",
    },
];

/// Starts `member` with `extra` flags, publishes `count` tasks to it and waits until it
/// has started on them.
fn loaded_member(
    server: &NatsServer,
    member: &SlowMember,
    extra: &[&str],
    count: usize,
) -> Process {
    let url = server.client_url();
    let mut args: Vec<&str> = member.args.to_vec();
    args.extend_from_slice(extra);
    args.extend(["-s", &url]);
    let process = Process::start(member.binary, args);
    process.wait_for_stdout(member.ready, WAIT);

    let count = count.to_string();
    let mut generator = Process::start(
        "load_generator",
        [
            "--count",
            &count,
            "--subject",
            member.subject,
            "--prefix",
            "TASK",
            "-s",
            &url,
        ],
    );
    assert!(
        generator.wait_exit(WAIT).success(),
        "{}",
        generator.transcript()
    );
    process.wait_for_stdout(member.started, WAIT);
    process
}

fn completed_count(process: &Process, marker: &str) -> usize {
    process
        .stdout()
        .iter()
        .filter(|l| l.contains(marker))
        .count()
}

/// Every worker-type binary drains on SIGTERM: all delivered tasks complete, exit 0.
#[test]
fn every_member_drains_on_sigterm() {
    for member in SLOW_MEMBERS {
        let server = NatsServer::start();
        let mut process = loaded_member(&server, member, &[], 4);
        process.terminate();
        let status = process.wait_exit(WAIT);

        assert!(
            status.success(),
            "{}: {}",
            member.binary,
            process.transcript()
        );
        assert_eq!(
            completed_count(&process, member.completed),
            4,
            "{}: {}",
            member.binary,
            process.transcript()
        );
    }
}

/// Every worker-type binary stops at once on a second signal and accounts for every
/// delivered task as completed or abandoned.
#[test]
fn every_member_stops_at_once_on_second_signal() {
    for member in SLOW_MEMBERS {
        let server = NatsServer::start();
        let mut process = loaded_member(&server, member, &[], 6);
        process.interrupt();
        process.wait_for_stdout("Shutting down", WAIT);
        process.interrupt();
        let status = process.wait_exit(WAIT);

        assert_eq!(
            status.code(),
            Some(1),
            "{}: {}",
            member.binary,
            process.transcript()
        );
        let done = completed_count(&process, member.completed);
        assert_eq!(
            done + abandoned(&process),
            6,
            "{}: {}",
            member.binary,
            process.transcript()
        );
    }
}

/// Every worker-type binary gives up a drain that outlasts `--drain-timeout`.
#[test]
fn every_member_honours_drain_timeout() {
    for member in SLOW_MEMBERS {
        let server = NatsServer::start();
        let mut process = loaded_member(&server, member, &["--drain-timeout", "300ms"], 6);
        process.terminate();
        let status = process.wait_exit(WAIT);

        assert_eq!(
            status.code(),
            Some(1),
            "{}: {}",
            member.binary,
            process.transcript()
        );
        process.wait_for_stdout("drain timed out", WAIT);
        let done = completed_count(&process, member.completed);
        assert_eq!(
            done + abandoned(&process),
            6,
            "{}: {}",
            member.binary,
            process.transcript()
        );
    }
}

/// A client pointed at the monitoring port, which never sends the NATS INFO line, fails
/// within its timeout with a hint that it has the wrong kind of port.
#[test]
fn monitoring_port_as_server_names_the_mistake() {
    let server = NatsServer::start();
    let monitor = server.monitor_url().replace("http://", "nats://");
    let mut worker = Process::start("worker", ["1", "--connect-timeout", "1s", "-s", &monitor]);
    let status = worker.wait_exit(WAIT);

    assert_eq!(status.code(), Some(1), "{}", worker.transcript());
    let stderr = worker.stderr();
    assert_eq!(stderr.len(), 1, "one line\n{}", worker.transcript());
    assert!(stderr[0].contains(&monitor), "{}", stderr[0]);
    assert!(
        stderr[0].contains("not a NATS client port"),
        "{}",
        stderr[0]
    );
}
