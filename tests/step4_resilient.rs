//! Step 4 end to end: `resilient_worker` retries, dead letters and `replay_dead_letters`, on
//! a real `nats-server`.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::{Client, HeaderMap, Message, Subscriber};
use common::Task;
use common::dead_letter::{
    ATTEMPTS_HEADER, DeadLetter, REASON_HEADER, SUBJECT_HEADER, WORKER_HEADER,
};
use common::report::{Completion, Outcome};
use futures::{FutureExt, StreamExt};
use harness::{NatsServer, Process, WAIT, unused_port, wait_until};

const SUBJECT: &str = "tasks.risky";
const DEAD_LETTER_SUBJECT: &str = "tasks.risky.dead";
const RESULTS_SUBJECT: &str = "tasks.risky.done";

/// Starts worker `id` with short work times and backoffs and waits until it is a member.
/// `extra` may set its own `--backoff`.
fn start_worker(server: &NatsServer, id: &str, extra: &[&str]) -> Process {
    let url = server.client_url();
    let mut args = vec![id, "--work-time", "5ms", "-s", &url];
    if !extra.contains(&"--backoff") {
        args.extend(["--backoff", "5ms"]);
    }
    args.extend(extra);
    let worker = Process::start("resilient_worker", args);
    worker.wait_for_stdout("Waiting for tasks", WAIT);
    worker
}

/// Stops a worker with one SIGINT and checks that it drained and exited with status 0.
fn drain(worker: &mut Process) {
    worker.interrupt();
    let status = worker.wait_exit(WAIT);
    assert!(status.success(), "{}", worker.transcript());
}

async fn connect(server: &NatsServer) -> Client {
    async_nats::connect(server.client_url())
        .await
        .expect("the test client connects")
}

async fn subscribe(client: &Client, subject: &str) -> Subscriber {
    let subscriber = client
        .subscribe(subject.to_owned())
        .await
        .expect("subscribe");
    client
        .flush()
        .await
        .expect("the server has the subscription");
    subscriber
}

fn task_ids(count: usize) -> Vec<String> {
    (1..=count).map(|n| format!("RISKY-{n:03}")).collect()
}

/// Publishes one task per id, flushes, and returns each task's exact payload.
async fn publish_tasks(client: &Client, ids: &[String]) -> BTreeMap<String, Vec<u8>> {
    let mut payloads = BTreeMap::new();
    for id in ids {
        let payload = Task::new(id.clone(), Some("risky work".into())).to_bytes();
        client
            .publish(SUBJECT, payload.clone().into())
            .await
            .expect("publish");
        payloads.insert(id.clone(), payload);
    }
    client.flush().await.expect("the server has every task");
    payloads
}

/// Receives `count` messages, waiting at most [`WAIT`] for each. On a timeout the panic
/// message includes `describe()`, the output of the processes involved.
async fn receive(
    subscriber: &mut Subscriber,
    count: usize,
    describe: impl Fn() -> String,
) -> Vec<Message> {
    let mut messages = Vec::with_capacity(count);
    while messages.len() < count {
        match tokio::time::timeout(WAIT, subscriber.next()).await {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => panic!(
                "the subscription ended after {} messages\n{}",
                messages.len(),
                describe()
            ),
            Err(_) => panic!(
                "received {} of {count} messages within {WAIT:?}\n{}",
                messages.len(),
                describe()
            ),
        }
    }
    messages
}

/// Returns the messages already delivered to `subscriber` and not yet read.
///
/// The server replies to the flush's PING after every message it had routed to this
/// connection, so once the flush returns all of them are in the subscriber's buffer.
async fn leftovers(client: &Client, subscriber: &mut Subscriber) -> Vec<Message> {
    client.flush().await.expect("flush");
    let mut messages = Vec::new();
    while let Some(Some(message)) = subscriber.next().now_or_never() {
        messages.push(message);
    }
    messages
}

fn header(message: &Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(name))
        .map(|value| value.as_str().to_owned())
}

fn task_id_of(message: &Message) -> String {
    Task::from_bytes(&message.payload)
        .unwrap_or_else(|error| panic!("a dead letter carries a task: {error}"))
        .task_id
}

/// Collects the first word after `marker` on each stdout line that contains it.
fn ids_after(worker: &Process, marker: &str) -> Vec<String> {
    worker
        .stdout()
        .iter()
        .filter_map(|line| line.split_once(marker))
        .filter_map(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn completed_ids(worker: &Process) -> Vec<String> {
    ids_after(worker, "✓ Completed ")
}

/// Ids of the tasks a worker sent to the dead-letter subject, leaving out rejected payloads.
fn dead_lettered_ids(worker: &Process) -> Vec<String> {
    ids_after(worker, "☠ ")
        .into_iter()
        .filter(|id| id != "Payload")
        .collect()
}

fn count_lines(worker: &Process, text: &str) -> usize {
    worker
        .stdout()
        .iter()
        .filter(|line| line.contains(text))
        .count()
}

/// Reads the number on the summary line that starts with `label`, such as `Succeeded:`.
fn stat(worker: &Process, label: &str) -> u64 {
    let line = worker.wait_for_stdout(&format!("  {label} "), WAIT);
    line.trim()
        .strip_prefix(label)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

fn transcripts(workers: &[Process]) -> String {
    workers
        .iter()
        .map(Process::transcript)
        .collect::<Vec<_>>()
        .join("\n")
}

/// With every attempt failing, each task reaches the dead-letter subject once, unchanged,
/// after three attempts.
#[tokio::test(flavor = "multi_thread")]
async fn failing_tasks_reach_dead_letter_subject() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut dead_letters = subscribe(&client, DEAD_LETTER_SUBJECT).await;
    let mut reports = subscribe(&client, RESULTS_SUBJECT).await;
    let mut worker = start_worker(&server, "1", &["--failure-rate", "1.0"]);

    let ids = task_ids(10);
    let payloads = publish_tasks(&client, &ids).await;
    let received = receive(&mut dead_letters, 10, || worker.transcript()).await;
    let reported = receive(&mut reports, 10, || worker.transcript()).await;
    worker.wait_for_stdout_count("☠ ", 10, WAIT);
    drain(&mut worker);
    assert!(
        leftovers(&client, &mut dead_letters).await.is_empty(),
        "no task was dead-lettered twice"
    );

    let mut seen = BTreeMap::new();
    for message in &received {
        let id = task_id_of(message);
        assert_eq!(
            message.payload.as_ref(),
            payloads[&id].as_slice(),
            "{id}: payload unchanged"
        );
        assert_eq!(
            header(message, ATTEMPTS_HEADER).as_deref(),
            Some("3"),
            "{id}"
        );
        assert_eq!(
            header(message, REASON_HEADER).as_deref(),
            Some("simulated failure"),
            "{id}"
        );
        assert_eq!(header(message, WORKER_HEADER).as_deref(), Some("1"), "{id}");
        assert_eq!(
            header(message, SUBJECT_HEADER).as_deref(),
            Some(SUBJECT),
            "{id}"
        );
        *seen.entry(id).or_insert(0) += 1;
    }
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ids);
    assert!(seen.values().all(|&count| count == 1), "{seen:?}");

    for report in &reported {
        let completion = Completion::from_bytes(&report.payload).expect("a completion report");
        assert_eq!(completion.outcome, Outcome::DeadLettered, "{completion:?}");
        assert_eq!(completion.attempts, 3, "{completion:?}");
    }

    assert_eq!(count_lines(&worker, "✗ Failed processing"), 30);
    assert_eq!(count_lines(&worker, "(attempt 3/3): simulated failure"), 10);
    assert!(completed_ids(&worker).is_empty(), "{}", worker.transcript());
    assert_eq!(stat(&worker, "Succeeded:"), 0);
    assert_eq!(stat(&worker, "Dead-lettered:"), 10);
    assert_eq!(stat(&worker, "Lost:"), 0);
}

/// With random failures in two workers, each of 100 tasks either succeeds or is
/// dead-lettered, exactly once, and the output, dead letters and reports agree.
#[tokio::test(flavor = "multi_thread")]
async fn random_failures_account_for_every_task() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut dead_letters = subscribe(&client, DEAD_LETTER_SUBJECT).await;
    let mut reports = subscribe(&client, RESULTS_SUBJECT).await;
    let mut workers = vec![
        start_worker(&server, "1", &["--failure-rate", "0.3", "--seed", "7"]),
        start_worker(&server, "2", &["--failure-rate", "0.3", "--seed", "8"]),
    ];

    let ids = task_ids(100);
    publish_tasks(&client, &ids).await;
    // One report per task, whatever its outcome, so 100 reports mean every task is done.
    let reported = receive(&mut reports, 100, || transcripts(&workers)).await;
    for worker in &mut workers {
        drain(worker);
    }
    let mut received = leftovers(&client, &mut dead_letters).await;
    assert!(leftovers(&client, &mut reports).await.is_empty());
    received.sort_by_key(task_id_of);

    let completed: Vec<String> = workers.iter().flat_map(completed_ids).collect();
    let dead: Vec<String> = workers.iter().flat_map(dead_lettered_ids).collect();
    let completed_set: BTreeSet<&String> = completed.iter().collect();
    let dead_set: BTreeSet<&String> = dead.iter().collect();
    assert_eq!(
        completed_set.len(),
        completed.len(),
        "no task completed twice"
    );
    assert_eq!(dead_set.len(), dead.len(), "no task dead-lettered twice");
    assert!(
        completed_set.is_disjoint(&dead_set),
        "no task both completed and dead-lettered\n{}",
        transcripts(&workers)
    );
    let all: BTreeSet<&String> = completed_set.union(&dead_set).copied().collect();
    assert_eq!(all, ids.iter().collect(), "every task has an outcome");

    let dead_letter_ids: Vec<String> = received.iter().map(task_id_of).collect();
    let mut dead_sorted = dead.clone();
    dead_sorted.sort();
    assert_eq!(
        dead_letter_ids, dead_sorted,
        "dead letters match the ☠ lines"
    );
    for message in &received {
        assert_eq!(header(message, ATTEMPTS_HEADER).as_deref(), Some("3"));
    }

    let mut report_outcomes = BTreeMap::new();
    for report in &reported {
        let completion = Completion::from_bytes(&report.payload).expect("a completion report");
        let previous = report_outcomes.insert(completion.task_id.clone(), completion.outcome);
        assert!(previous.is_none(), "one report for {}", completion.task_id);
    }
    for id in &completed {
        assert_eq!(report_outcomes[id], Outcome::Completed, "{id}");
    }
    for id in &dead {
        assert_eq!(report_outcomes[id], Outcome::DeadLettered, "{id}");
    }

    let succeeded: u64 = workers.iter().map(|w| stat(w, "Succeeded:")).sum();
    let dead_lettered: u64 = workers.iter().map(|w| stat(w, "Dead-lettered:")).sum();
    let retried: u64 = workers.iter().map(|w| stat(w, "Retried:")).sum();
    assert_eq!(succeeded + dead_lettered, 100);
    assert_eq!(succeeded, completed.len() as u64);
    for worker in &workers {
        assert_eq!(stat(worker, "Lost:"), 0, "{}", worker.transcript());
        assert_eq!(stat(worker, "Rejected payloads:"), 0);
        assert!(
            !completed_ids(worker).is_empty(),
            "both workers got tasks\n{}",
            transcripts(&workers)
        );
    }
    // At a 30% failure rate, 100 tasks without a single retry are as good as impossible.
    assert!(retried > 0, "{}", transcripts(&workers));
}

/// A printed seed, passed back with `--seed`, fails the same attempts for the same tasks.
#[tokio::test(flavor = "multi_thread")]
async fn printed_seed_repeats_the_run() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let ids = task_ids(20);

    let mut runs = Vec::new();
    let mut seed = None;
    for _ in 0..2 {
        let mut extra = vec!["--failure-rate".to_owned(), "0.5".to_owned()];
        if let Some(seed) = &seed {
            extra.extend(["--seed".to_owned(), format!("{seed}")]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut worker = start_worker(&server, "1", &extra);
        let seed_line = worker.wait_for_stdout("Random seed: ", WAIT);
        let printed: u64 = seed_line
            .split_once("Random seed: ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no seed in {seed_line:?}"));
        seed.get_or_insert(printed);
        assert_eq!(seed, Some(printed), "the worker uses the seed it was given");

        publish_tasks(&client, &ids).await;
        wait_until(
            WAIT,
            || completed_ids(&worker).len() + dead_lettered_ids(&worker).len() >= 20,
            || worker.transcript(),
        );
        drain(&mut worker);
        let outcomes: Vec<String> = worker
            .stdout()
            .into_iter()
            .filter(|line| ["✗", "✓", "☠"].iter().any(|mark| line.contains(mark)))
            .collect();
        runs.push(outcomes);
    }

    assert!(
        runs[0].iter().any(|line| line.contains("✗")),
        "half the attempts fail: {:?}",
        runs[0]
    );
    assert_eq!(runs[0], runs[1], "the same seed gives the same failures");
}

/// A payload that is not a task is dead-lettered after one attempt, with the decode error
/// as the reason and its own headers kept. The worker carries on.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_payload_is_dead_lettered_at_once() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut dead_letters = subscribe(&client, DEAD_LETTER_SUBJECT).await;
    let mut worker = start_worker(&server, "1", &["--failure-rate", "0"]);

    let mut headers = HeaderMap::new();
    headers.insert("Trace-Id", "trace-42");
    client
        .publish_with_headers(SUBJECT, headers, "not json at all".into())
        .await
        .expect("publish");
    publish_tasks(&client, &task_ids(1)).await;

    let received = receive(&mut dead_letters, 1, || worker.transcript()).await;
    worker.wait_for_stdout("✓ Completed RISKY-001", WAIT);
    drain(&mut worker);
    assert!(leftovers(&client, &mut dead_letters).await.is_empty());

    let message = &received[0];
    assert_eq!(message.payload.as_ref(), b"not json at all");
    assert_eq!(header(message, ATTEMPTS_HEADER).as_deref(), Some("1"));
    let reason = header(message, REASON_HEADER).expect("a reason header");
    assert!(reason.contains("not a task"), "{reason}");
    assert!(reason.contains("expected"), "the JSON error: {reason}");
    assert_eq!(header(message, SUBJECT_HEADER).as_deref(), Some(SUBJECT));
    assert_eq!(header(message, "Trace-Id").as_deref(), Some("trace-42"));

    assert_eq!(count_lines(&worker, "✗ Failed processing"), 0, "no retries");
    assert_eq!(count_lines(&worker, "☠ Payload \"not json at all\""), 1);
    assert_eq!(stat(&worker, "Rejected payloads:"), 1);
    assert_eq!(stat(&worker, "Succeeded:"), 1);
    assert_eq!(stat(&worker, "Dead-lettered:"), 0);
    worker.wait_for_stderr("not a task", WAIT);
}

/// The replay tool sends a dead letter back unchanged, a healthy worker completes it, and
/// messages it cannot replay are skipped.
#[tokio::test(flavor = "multi_thread")]
async fn replayed_dead_letter_is_completed() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut dead_letters = subscribe(&client, DEAD_LETTER_SUBJECT).await;

    // A worker that fails every attempt turns the task into a dead letter.
    let mut failing = start_worker(
        &server,
        "failing",
        &["--failure-rate", "1", "--max-attempts", "2"],
    );
    let mut headers = HeaderMap::new();
    headers.insert("Trace-Id", "trace-7");
    let task = Task::new("RISKY-001", None).to_bytes();
    client
        .publish_with_headers(SUBJECT, headers, task.clone().into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    let dead_letter = receive(&mut dead_letters, 1, || failing.transcript())
        .await
        .remove(0);
    drain(&mut failing);
    assert_eq!(header(&dead_letter, ATTEMPTS_HEADER).as_deref(), Some("2"));
    dead_letters.unsubscribe().await.expect("unsubscribe");

    // The test keeps the dead letter until the failing worker is gone and a healthy one
    // has joined, then hands it to the replay tool, so that only the healthy one can get it.
    let mut healthy = start_worker(&server, "healthy", &["--failure-rate", "0"]);
    let mut work = subscribe(&client, SUBJECT).await;
    let mut replay = Process::start(
        "replay_dead_letters",
        ["--count", "3", "-s", &server.client_url()],
    );
    replay.wait_for_stdout("Waiting for dead letters", WAIT);

    let looping = DeadLetter {
        subject: DEAD_LETTER_SUBJECT.to_owned(),
        reason: "test".to_owned(),
        attempts: 1,
        worker: "test".to_owned(),
    };
    client
        .publish(DEAD_LETTER_SUBJECT, "no headers".into())
        .await
        .expect("publish");
    client
        .publish_with_headers(DEAD_LETTER_SUBJECT, looping.headers(None), "loops".into())
        .await
        .expect("publish");
    client
        .publish_with_headers(
            DEAD_LETTER_SUBJECT,
            dead_letter.headers.clone().expect("dead-letter headers"),
            dead_letter.payload.clone(),
        )
        .await
        .expect("publish");
    client.flush().await.expect("flush");

    let status = replay.wait_exit(WAIT);
    assert!(status.success(), "{}", replay.transcript());
    healthy.wait_for_stdout("✓ Completed RISKY-001", WAIT);
    drain(&mut healthy);

    let replayed = receive(&mut work, 1, || replay.transcript())
        .await
        .remove(0);
    assert!(
        leftovers(&client, &mut work).await.is_empty(),
        "replayed once"
    );
    assert_eq!(
        replayed.payload.as_ref(),
        task.as_slice(),
        "payload unchanged"
    );
    assert_eq!(header(&replayed, "Trace-Id").as_deref(), Some("trace-7"));
    for name in [
        ATTEMPTS_HEADER,
        REASON_HEADER,
        WORKER_HEADER,
        SUBJECT_HEADER,
    ] {
        assert_eq!(header(&replayed, name), None, "{name} is stripped");
    }

    let lines = replay.stdout();
    let replayed_lines: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("Replayed RISKY-001 to tasks.risky"))
        .collect();
    assert_eq!(replayed_lines.len(), 1, "{}", replay.transcript());
    assert!(
        replayed_lines[0].contains("worker failing gave up after 2 attempts: simulated failure"),
        "{}",
        replayed_lines[0]
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("Skipped \"")).count(),
        2,
        "{}",
        replay.transcript()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Skipped \"no headers\": the message has no headers")),
        "{}",
        replay.transcript()
    );
    assert!(
        lines.iter().any(|l| l.contains("would loop")),
        "{}",
        replay.transcript()
    );
    replay.wait_for_stdout("Replayed 1 dead letter(s)", WAIT);
    assert_eq!(count_lines(&healthy, "✗ Failed processing"), 0);
}

/// A dead letter the server does not confirm counts as lost, and the summary shows it.
#[tokio::test(flavor = "multi_thread")]
async fn unconfirmed_dead_letter_counts_as_lost() {
    let mut server = NatsServer::start();
    let client = connect(&server).await;
    // The one-second backoff leaves time to stop the server between the two attempts.
    let mut worker = start_worker(
        &server,
        "1",
        &[
            "--failure-rate",
            "1",
            "--max-attempts",
            "2",
            "--backoff",
            "1s",
            "--flush-timeout",
            "300ms",
        ],
    );
    publish_tasks(&client, &task_ids(1)).await;
    worker.wait_for_stdout("(attempt 1/2)", WAIT);

    server.stop();
    worker.wait_for_stdout("RISKY-001 lost", WAIT);
    worker.wait_for_stderr("cannot publish the dead letter", WAIT);
    server.restart();
    worker.wait_for_stderr("reconnected", WAIT);
    drain(&mut worker);

    assert_eq!(stat(&worker, "Lost:"), 1);
    assert_eq!(stat(&worker, "Dead-lettered:"), 0);
    assert_eq!(count_lines(&worker, "☠ "), 0);
}

/// Values the worker and the replay tool cannot use are usage errors, before connecting.
#[test]
fn invalid_options_are_rejected_before_connecting() {
    // Nothing listens here: reaching the connect step would print a connection error.
    let url = format!("nats://127.0.0.1:{}", unused_port());
    let cases: [(&str, &[&str], &str); 9] = [
        (
            "resilient_worker",
            &["--failure-rate", "1.5"],
            "invalid failure rate",
        ),
        (
            "resilient_worker",
            &["--failure-rate", "-0.1"],
            "invalid failure rate",
        ),
        (
            "resilient_worker",
            &["--failure-rate", "often"],
            "invalid failure rate",
        ),
        ("resilient_worker", &["--max-attempts", "0"], "at least 1"),
        (
            "resilient_worker",
            &["--dead-letter-subject", "tasks.*"],
            "wildcard",
        ),
        (
            "resilient_worker",
            &[
                "--subject",
                "tasks.>",
                "--dead-letter-subject",
                "tasks.risky.dead",
            ],
            "matched by --subject",
        ),
        ("resilient_worker", &["--max-attempts", "-1"], "at least 1"),
        ("replay_dead_letters", &["--count", "0"], "at least 1"),
        ("replay_dead_letters", &["--count", "-3"], "at least 1"),
    ];
    for (binary, extra, reason) in cases {
        let mut args = extra.to_vec();
        args.extend(["-s", &url]);
        let mut process = Process::start(binary, args);
        let status = process.wait_exit(WAIT);

        assert_eq!(
            status.code(),
            Some(2),
            "{extra:?}\n{}",
            process.transcript()
        );
        let stderr = process.stderr().join("\n");
        assert!(stderr.contains(reason), "{extra:?}: {stderr}");
        assert!(!stderr.contains("cannot connect"), "{extra:?}: {stderr}");
    }
}

/// A task that always fails is replayed `--max-replays` times and then skipped, so it
/// cannot go round between the worker and the replay tool forever.
#[tokio::test(flavor = "multi_thread")]
async fn replays_stop_at_the_limit() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut dead_letters = subscribe(&client, DEAD_LETTER_SUBJECT).await;
    let mut worker = start_worker(&server, "1", &["--failure-rate", "1.0"]);
    let url = server.client_url();
    let mut replay = Process::start(
        "replay_dead_letters",
        ["--max-replays", "2", "--count", "3", "-s", &url],
    );
    replay.wait_for_stdout("Waiting for dead letters", WAIT);

    publish_tasks(&client, &task_ids(1)).await;
    let received = receive(&mut dead_letters, 3, || {
        format!("{}\n{}", worker.transcript(), replay.transcript())
    })
    .await;
    let status = replay.wait_exit(WAIT);
    assert!(status.success(), "{}", replay.transcript());
    drain(&mut worker);
    assert!(
        leftovers(&client, &mut dead_letters).await.is_empty(),
        "nothing was replayed after the limit"
    );

    let replays: Vec<Option<String>> = received
        .iter()
        .map(|message| header(message, "Dead-Letter-Replays"))
        .collect();
    assert_eq!(replays, [None, Some("1".into()), Some("2".into())]);
    assert_eq!(
        count_lines(&replay, "Replayed RISKY-001"),
        2,
        "{}",
        replay.transcript()
    );
    let skipped = replay.wait_for_stdout("Skipped RISKY-001", WAIT);
    assert!(skipped.contains("already replayed 2 time(s)"), "{skipped}");
    assert_eq!(stat(&worker, "Dead-lettered:"), 3);
}
