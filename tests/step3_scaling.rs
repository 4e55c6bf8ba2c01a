//! Step 3 end to end: `scalable_processor` workers, `load_generator --wait`, and what a
//! slow consumer loses, on a real `nats-server`.

use std::collections::BTreeMap;
use std::time::Duration;

use harness::{NatsServer, Process, WAIT};
use serde_json::Value;

/// Starts a Step 3 worker and waits until it is a member of the group.
fn start_processor(server: &NatsServer, id: &str, time: &str, extra: &[&str]) -> Process {
    let url = server.client_url();
    let mut args = vec![id, time, "-s", &url];
    args.extend_from_slice(extra);
    let worker = Process::start("scalable_processor", args);
    worker.wait_for_stdout("Ready for tasks", WAIT);
    worker
}

/// Runs `load_generator --wait --json` and returns its figures.
fn generate_and_wait(server: &NatsServer, count: &str) -> Value {
    let mut generator = Process::start(
        "load_generator",
        [
            "--count",
            count,
            "--wait",
            "--wait-timeout",
            "60s",
            "--json",
            "-s",
            &server.client_url(),
        ],
    );
    let status = generator.wait_exit(Duration::from_secs(90));
    assert!(status.success(), "{}", generator.transcript());
    serde_json::from_str(&generator.stdout().join("\n"))
        .unwrap_or_else(|error| panic!("--json output: {error}\n{}", generator.transcript()))
}

/// Returns the task ids in a worker's `✓ HEAVY-007 done` lines.
fn done_tasks(worker: &Process) -> Vec<String> {
    worker
        .stdout()
        .iter()
        .filter_map(|line| line.split_once("✓ "))
        .filter_map(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn stop_all(workers: &mut [Process]) {
    for worker in workers.iter() {
        worker.interrupt();
    }
    for worker in workers.iter_mut() {
        assert!(worker.wait_exit(WAIT).success(), "{}", worker.transcript());
    }
}

/// Five workers finish 50 tasks once each, between the ideal and the one-worker time.
#[test]
fn five_workers_measured_makespan() {
    let server = NatsServer::start();
    let mut workers: Vec<Process> = ["1", "2", "3", "4", "5"]
        .iter()
        .map(|id| start_processor(&server, id, "100ms", &[]))
        .collect();

    let figures = generate_and_wait(&server, "50");
    stop_all(&mut workers);
    let completion = &figures["completion"];

    assert_eq!(completion["completed"], 50, "{figures}");
    assert_eq!(completion["missing"], 0, "{figures}");
    assert_eq!(completion["duplicates"], 0, "{figures}");

    let per_worker: BTreeMap<String, u64> =
        serde_json::from_value(completion["tasks_per_worker"].clone()).unwrap();
    assert_eq!(per_worker.values().sum::<u64>(), 50, "{figures}");

    let mut seen = BTreeMap::new();
    for worker in &workers {
        for id in done_tasks(worker) {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    let expected: Vec<String> = (1..=50).map(|n| format!("HEAVY-{n:03}")).collect();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), expected);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    for (id, worker) in ["1", "2", "3", "4", "5"].iter().zip(&workers) {
        let reported = per_worker.get(*id).copied().unwrap_or(0);
        assert_eq!(reported, done_tasks(worker).len() as u64, "worker {id}");
    }

    let makespan = completion["makespan_seconds"].as_f64().unwrap();
    let ideal = completion["ideal_makespan_seconds"].as_f64().unwrap();
    let single_worker = completion["sequential_seconds"].as_f64().unwrap();
    assert!(
        ideal >= 1.0,
        "ten tasks of 0.1 s per worker at best: {figures}"
    );
    assert!(
        makespan >= ideal * 0.95,
        "no faster than the ideal: {figures}"
    );
    assert!(
        makespan < single_worker,
        "faster than one worker: {figures}"
    );
}

/// `--concurrency 4` lets one process finish sleeping tasks about four times sooner.
#[test]
fn concurrency_four_shortens_makespan() {
    let server = NatsServer::start();
    let mut workers = vec![start_processor(
        &server,
        "1",
        "200ms",
        &["--concurrency", "4"],
    )];

    let figures = generate_and_wait(&server, "20");
    stop_all(&mut workers);
    let completion = &figures["completion"];

    assert_eq!(completion["completed"], 20, "{figures}");
    let makespan = completion["makespan_seconds"].as_f64().unwrap();
    let sequential = completion["sequential_seconds"].as_f64().unwrap();
    // Four at a time would take a quarter of the sequential 4 s; half leaves room for a
    // loaded machine while still failing if the tasks ran one after another.
    assert!(sequential >= 3.9, "{figures}");
    assert!(makespan < sequential / 2.0, "{figures}");
    assert_eq!(
        completion["slots"], 4,
        "the worker reports its concurrency: {figures}"
    );
    let ideal = completion["ideal_makespan_seconds"].as_f64().unwrap();
    assert!(
        makespan >= ideal * 0.95,
        "no faster than the ideal: {figures}"
    );
    assert_eq!(done_tasks(&workers[0]).len(), 20);
}

/// A worker-type binary with a small buffer: how to run it and read its output.
struct SmallBuffer {
    binary: &'static str,
    args: &'static [&'static str],
    subject: &'static str,
    ready: &'static str,
    completed: &'static str,
}

const SMALL_BUFFERS: &[SmallBuffer] = &[
    SmallBuffer {
        binary: "worker",
        args: &["1", "--work-time", "5ms"],
        subject: "tasks.process",
        ready: "Waiting for tasks",
        completed: "Completed task",
    },
    SmallBuffer {
        binary: "scalable_processor",
        args: &["1", "5ms"],
        subject: "tasks.heavy",
        ready: "Ready for tasks",
        completed: "✓ ",
    },
    SmallBuffer {
        binary: "resilient_worker",
        args: &["1", "--work-time", "5ms", "--failure-rate", "0"],
        subject: "tasks.risky",
        ready: "Waiting for tasks",
        completed: "✓ Completed",
    },
];

/// Returns the number after `Dropped` in a summary line such as `Dropped: 12 (…)`.
fn dropped_count(line: &str) -> usize {
    line.split_once("Dropped")
        .map(|(_, rest)| rest.trim_start_matches([':', ' ']))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

/// Every worker-type binary whose buffer overflows counts each dropped task, so completed
/// plus dropped equals what the server delivered, and it warns only a few times.
#[test]
fn slow_consumer_drops_are_counted() {
    let published = 2000;
    for member in SMALL_BUFFERS {
        let server = NatsServer::start();
        let url = server.client_url();
        let mut args: Vec<&str> = member.args.to_vec();
        args.extend(["--capacity", "8", "--no-results", "-s", &url]);
        let mut worker = Process::start(member.binary, args);
        worker.wait_for_stdout(member.ready, WAIT);

        let mut generator = Process::start(
            "load_generator",
            [
                "--count",
                &published.to_string(),
                "--subject",
                member.subject,
                "--prefix",
                "TASK",
                "--payload-size",
                "256",
                "-s",
                &url,
            ],
        );
        assert!(
            generator.wait_exit(WAIT).success(),
            "{}",
            generator.transcript()
        );

        // The worker is done once its small buffer is empty, well within half a second.
        std::thread::sleep(Duration::from_millis(500));
        worker.interrupt();
        assert!(worker.wait_exit(WAIT).success(), "{}", worker.transcript());

        let completed = worker
            .stdout()
            .iter()
            .filter(|line| line.contains(member.completed))
            .count();
        let dropped = dropped_count(&worker.wait_for_stdout("Dropped", WAIT));
        assert!(dropped > 0, "{}: {}", member.binary, worker.transcript());
        assert_eq!(
            completed + dropped,
            published,
            "{}: {}",
            member.binary,
            worker.transcript()
        );

        let warnings = worker
            .stderr()
            .iter()
            .filter(|line| line.contains("slow consumer"))
            .count();
        assert!(
            (1..=5).contains(&warnings),
            "{}: rate-limited warnings, got {warnings}\n{}",
            member.binary,
            worker.transcript()
        );
    }
}
