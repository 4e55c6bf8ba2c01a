//! Step 1 end to end: `worker` processes in one queue group and `task_publisher`, on a
//! real `nats-server`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::{NatsServer, Process, WAIT, unused_port, wait_until};

/// Starts worker `id` with a short work time and waits until it is a member of the group.
fn start_worker(server: &NatsServer, id: &str, work_time: &str) -> Process {
    let worker = Process::start(
        "worker",
        [id, "--work-time", work_time, "-s", &server.client_url()],
    );
    worker.wait_for_stdout("Waiting for tasks", WAIT);
    worker
}

/// Returns the task ids in a worker's `Completed task` lines, in order.
fn completed_tasks(worker: &Process) -> Vec<String> {
    worker
        .stdout()
        .iter()
        .filter_map(|line| {
            line.split_once("Completed task ")
                .map(|(_, id)| id.to_owned())
        })
        .collect()
}

/// Returns the N of a worker's `Processed N messages` line.
fn processed_count(worker: &Process) -> usize {
    let line = worker.wait_for_stdout("Processed ", WAIT);
    line.split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

fn expected_ids(count: usize) -> Vec<String> {
    (1..=count).map(|n| format!("TASK-{n:03}")).collect()
}

/// Counts how often each task id was completed across `workers`.
fn completions(workers: &[Process]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for worker in workers {
        for id in completed_tasks(worker) {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

fn total_completed(workers: &[Process]) -> usize {
    workers.iter().map(|w| completed_tasks(w).len()).sum()
}

fn transcripts(workers: &[Process]) -> String {
    workers
        .iter()
        .map(Process::transcript)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every task is completed exactly once across three workers, and the work is shared.
#[test]
fn three_workers_share_twenty_tasks() {
    let server = NatsServer::start();
    let mut workers: Vec<Process> = ["1", "2", "3"]
        .iter()
        .map(|id| start_worker(&server, id, "50ms"))
        .collect();

    let mut publisher = Process::start(
        "task_publisher",
        ["--interval", "10ms", "-s", &server.client_url()],
    );
    assert!(
        publisher.wait_exit(WAIT).success(),
        "{}",
        publisher.transcript()
    );
    let published = publisher.stdout();
    assert_eq!(
        published
            .iter()
            .filter(|l| l.starts_with("Published: "))
            .count(),
        20
    );
    assert_eq!(
        published.last().map(String::as_str),
        Some("All tasks published!")
    );

    wait_until(
        WAIT,
        || total_completed(&workers) >= 20,
        || transcripts(&workers),
    );
    for worker in &workers {
        worker.interrupt();
    }
    for worker in &mut workers {
        let status = worker.wait_exit(WAIT);
        assert!(status.success(), "{}", worker.transcript());
    }

    let counts = completions(&workers);
    let ids: Vec<String> = counts.keys().cloned().collect();
    assert_eq!(ids, expected_ids(20), "every task id is completed");
    for (id, count) in &counts {
        assert_eq!(*count, 1, "{id} was completed {count} times");
    }

    let busy_workers = workers
        .iter()
        .filter(|w| !completed_tasks(w).is_empty())
        .count();
    assert!(busy_workers >= 2, "the group shared the work: {counts:?}");

    for worker in &workers {
        assert_eq!(
            processed_count(worker),
            completed_tasks(worker).len(),
            "{}",
            worker.transcript()
        );
    }
}

/// SIGINT drains: tasks already delivered to the worker are completed before it exits.
#[test]
fn sigint_finishes_delivered_tasks() {
    let server = NatsServer::start();
    let mut slow = start_worker(&server, "slow", "200ms");
    let mut other = start_worker(&server, "other", "10ms");

    // Published in one burst, so about half the tasks wait in the slow worker's buffer.
    let mut publisher = Process::start(
        "task_publisher",
        ["--interval", "0", "-s", &server.client_url()],
    );
    assert!(
        publisher.wait_exit(WAIT).success(),
        "{}",
        publisher.transcript()
    );

    slow.wait_for_stdout("Processing message #1", WAIT);
    slow.interrupt();
    let status = slow.wait_exit(WAIT);
    assert!(status.success(), "{}", slow.transcript());

    let lines = slow.stdout();
    let drain_at = lines
        .iter()
        .position(|l| l.contains("Shutting down"))
        .unwrap_or_else(|| panic!("no drain line\n{}", slow.transcript()));
    let completed_after_signal = lines[drain_at..]
        .iter()
        .filter(|l| l.contains("Completed task"))
        .count();
    assert!(
        completed_after_signal >= 2,
        "tasks waiting in the buffer were finished after the signal\n{}",
        slow.transcript()
    );
    let started = lines
        .iter()
        .filter(|l| l.contains("Processing message"))
        .count();
    assert_eq!(
        started,
        completed_tasks(&slow).len(),
        "no task was left half done"
    );

    wait_until(
        WAIT,
        || completed_tasks(&slow).len() + completed_tasks(&other).len() >= 20,
        || format!("{}\n{}", slow.transcript(), other.transcript()),
    );
    other.interrupt();
    assert!(other.wait_exit(WAIT).success(), "{}", other.transcript());

    let workers = [slow, other];
    let counts = completions(&workers);
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), expected_ids(20));
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

/// With no server listening, both binaries fail fast with one line that names the URL.
#[test]
fn missing_server_is_one_clear_error() {
    let url = format!("nats://127.0.0.1:{}", unused_port());
    for (binary, extra) in [("worker", vec!["1"]), ("task_publisher", vec![])] {
        let started = Instant::now();
        let mut args = extra;
        args.extend(["-s", &url, "--connect-timeout", "2s"]);
        let mut process = Process::start(binary, args);
        let status = process.wait_exit(WAIT);

        assert_eq!(status.code(), Some(1), "{}", process.transcript());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{binary} failed fast"
        );

        let stderr = process.stderr();
        assert_eq!(stderr.len(), 1, "one line:\n{}", process.transcript());
        assert!(stderr[0].contains(&url), "{}", stderr[0]);
        assert!(
            stderr[0].contains("scripts/nats-server.sh"),
            "{}",
            stderr[0]
        );
        assert!(!stderr[0].contains("panicked"), "{}", stderr[0]);
        assert!(
            !process.stdout().iter().any(|l| l.contains("ublished")),
            "nothing was reported as published\n{}",
            process.transcript()
        );
    }
}

/// Payloads that are not tasks are reported one line each; the worker carries on.
#[tokio::test(flavor = "multi_thread")]
async fn bad_payloads_are_reported_and_skipped() {
    let server = NatsServer::start();
    let mut worker = start_worker(&server, "1", "10ms");
    let client = async_nats::connect(server.client_url()).await.unwrap();

    let bad: [&[u8]; 4] = [
        b"not json at all",
        b"",
        br#"{"timestamp": "2026-01-31T12:00:00Z", "data": "no id"}"#,
        b"\xff\xfe\xfd",
    ];
    for payload in bad {
        client
            .publish("tasks.process", payload.to_vec().into())
            .await
            .unwrap();
    }
    let valid = common::Task::new("TASK-900", None);
    client
        .publish("tasks.process", valid.to_bytes().into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    worker.wait_for_stdout("Completed task TASK-900", WAIT);
    worker.interrupt();
    assert!(worker.wait_exit(WAIT).success(), "{}", worker.transcript());

    let reports: Vec<String> = worker
        .stderr()
        .into_iter()
        .filter(|l| l.contains("not a task"))
        .collect();
    assert_eq!(reports.len(), 4, "{}", worker.transcript());
    for (report, reason) in reports.iter().zip([
        "expected",
        "empty payload",
        "missing field `task_id`",
        "not UTF-8",
    ]) {
        assert!(report.contains(reason), "{report}");
        assert!(
            report.contains("tasks.process"),
            "names the subject: {report}"
        );
        assert!(report.contains("size="), "gives the size: {report}");
    }
    assert_eq!(processed_count(&worker), 1);
    worker.wait_for_stdout("Rejected 4 message(s)", WAIT);
}

/// Queue group names NATS would reject stop the worker before it connects.
#[test]
fn invalid_queue_group_is_rejected_before_connecting() {
    // Nothing listens here: reaching the connect step would print a connection error.
    let url = format!("nats://127.0.0.1:{}", unused_port());
    for (queue, reason) in [("job worker", "whitespace"), ("", "empty")] {
        let mut worker = Process::start("worker", ["1", "--queue", queue, "-s", &url]);
        let status = worker.wait_exit(WAIT);

        assert_eq!(status.code(), Some(2), "{}", worker.transcript());
        let stderr = worker.stderr().join("\n");
        assert!(stderr.contains(reason), "{stderr}");
        assert!(!stderr.contains("cannot connect"), "{stderr}");
    }
}
