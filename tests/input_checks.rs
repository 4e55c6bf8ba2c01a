//! Bad input end to end: payloads that are not tasks, names NATS rejects, and messages
//! larger than the server's `max_payload`.

use std::time::Duration;

use harness::{NatsServer, Process, WAIT, unused_port};

/// A worker-type binary: how to start it on its default subject, and how it reports.
struct Member {
    binary: &'static str,
    args: &'static [&'static str],
    subject: &'static str,
    ready: &'static str,
    /// Text of the stderr line reporting a payload that is not a task.
    rejected: &'static str,
    /// Text of the stdout line reporting a completed task, followed by its id.
    completed: &'static str,
    /// Text of the summary line that counts rejected payloads, before the count.
    rejected_summary: &'static str,
}

const MEMBERS: &[Member] = &[
    Member {
        binary: "worker",
        args: &["1", "--work-time", "10ms"],
        subject: "tasks.process",
        ready: "Waiting for tasks",
        rejected: "not a task",
        completed: "Completed task ",
        rejected_summary: "Rejected ",
    },
    Member {
        binary: "scalable_processor",
        args: &["1", "10ms"],
        subject: "tasks.heavy",
        ready: "Ready for tasks",
        rejected: "not a task",
        completed: "✓ ",
        rejected_summary: "Rejected (not a task): ",
    },
    Member {
        binary: "resilient_worker",
        args: &["1", "--work-time", "10ms", "--failure-rate", "0"],
        subject: "tasks.risky",
        ready: "Waiting for tasks",
        rejected: "not a task",
        completed: "✓ Completed ",
        rejected_summary: "Rejected payloads: ",
    },
];

/// Payloads that are not tasks, each with a word its error line must contain.
fn bad_payloads(max_payload: usize) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let long_id = format!(
        r#"{{"task_id": "{}", "timestamp": "2026-01-31T12:00:00Z"}}"#,
        "x".repeat(10_000)
    );
    vec![
        ("text", b"hello, worker".to_vec(), "expected"),
        ("empty", Vec::new(), "empty payload"),
        ("non-UTF-8", vec![0xff, 0xfe, 0x00, 0x80], "not UTF-8"),
        (
            "wrong shape",
            br#"{"id": 1, "when": "now"}"#.to_vec(),
            "missing field",
        ),
        (
            "task_id of the wrong type",
            br#"{"task_id": 42, "timestamp": "2026-01-31T12:00:00Z"}"#.to_vec(),
            "invalid type",
        ),
        (
            "very long task_id",
            long_id.into_bytes(),
            "more than the limit",
        ),
        ("deeply nested", nested.into_bytes(), "not a task"),
        // 1 KiB below the limit leaves room for the dead-letter headers that
        // resilient_worker adds when it passes the payload on.
        (
            "near max_payload",
            vec![b'x'; max_payload - 1024],
            "not a task",
        ),
    ]
}

/// Every worker-type binary reports each bad payload on one line, counts it, keeps
/// running, and completes the valid tasks sent after them.
#[tokio::test(flavor = "multi_thread")]
async fn bad_payloads_are_reported_for_every_member() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.client_url()).await.unwrap();
    let max_payload = client.server_info().max_payload;
    let payloads = bad_payloads(max_payload);

    for member in MEMBERS {
        let mut args: Vec<&str> = member.args.to_vec();
        let url = server.client_url();
        args.extend(["-s", &url]);
        let mut process = Process::start(member.binary, args);
        process.wait_for_stdout(member.ready, WAIT);

        for (_, payload, _) in &payloads {
            client
                .publish(member.subject, payload.clone().into())
                .await
                .unwrap();
        }
        for n in 1..=3 {
            let task = common::Task::new(format!("VALID-{n}"), None);
            client
                .publish(member.subject, task.to_bytes().into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();

        for n in 1..=3 {
            process.wait_for_stdout(&format!("{}VALID-{n}", member.completed), WAIT);
        }
        process.interrupt();
        assert!(
            process.wait_exit(WAIT).success(),
            "{}",
            process.transcript()
        );

        let reports: Vec<String> = process
            .stderr()
            .into_iter()
            .filter(|line| line.contains(member.rejected))
            .collect();
        assert_eq!(
            reports.len(),
            payloads.len(),
            "{}: one line per bad payload\n{}",
            member.binary,
            process.transcript()
        );
        for (report, (name, _, reason)) in reports.iter().zip(&payloads) {
            assert!(
                report.contains(reason),
                "{}: {name}: {report}",
                member.binary
            );
            assert!(
                report.len() < 1000,
                "{}: {name}: line is short",
                member.binary
            );
        }
        process.wait_for_stdout(
            &format!("{}{}", member.rejected_summary, payloads.len()),
            WAIT,
        );
    }
}

/// A binary and the flags that take a subject or a queue group name.
struct NameFlags {
    binary: &'static str,
    leading: &'static [&'static str],
    /// Flags whose subject is published to: wildcards are rejected there too.
    publish_subjects: &'static [&'static str],
    subscribe_subjects: &'static [&'static str],
    queues: &'static [&'static str],
}

const NAME_FLAGS: &[NameFlags] = &[
    NameFlags {
        binary: "worker",
        leading: &[],
        publish_subjects: &["--results-subject"],
        subscribe_subjects: &["--subject"],
        queues: &["--queue"],
    },
    NameFlags {
        binary: "task_publisher",
        leading: &[],
        publish_subjects: &["--subject"],
        subscribe_subjects: &[],
        queues: &[],
    },
    NameFlags {
        binary: "comparison_demo",
        leading: &["--mode", "queue"],
        publish_subjects: &[],
        subscribe_subjects: &["--subject"],
        queues: &["--queue"],
    },
    NameFlags {
        binary: "scalable_processor",
        leading: &[],
        publish_subjects: &["--results-subject"],
        subscribe_subjects: &["--subject"],
        queues: &["--queue"],
    },
    NameFlags {
        binary: "load_generator",
        leading: &[],
        publish_subjects: &["--subject"],
        subscribe_subjects: &["--results-subject"],
        queues: &[],
    },
    NameFlags {
        binary: "mixed_subscriptions",
        leading: &[],
        publish_subjects: &[],
        subscribe_subjects: &["--subject"],
        queues: &["--queue"],
    },
];

/// Runs `binary` with `args` against a port where nothing listens and checks that it
/// stops with a usage error naming `reason` before it tries to connect.
fn assert_rejected(binary: &str, args: &[&str], reason: &str) {
    let url = format!("nats://127.0.0.1:{}", unused_port());
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-s", &url]);
    let mut process = Process::start(binary, &all);
    let status = process.wait_exit(WAIT);
    let stderr = process.stderr().join("\n");

    assert_eq!(status.code(), Some(2), "{binary} {args:?}\n{stderr}");
    assert!(stderr.contains(reason), "{binary} {args:?}: {stderr}");
    assert!(
        !stderr.contains("cannot connect"),
        "{binary} {args:?}: {stderr}"
    );
}

/// Subjects and queue group names that NATS rejects are refused before connecting, with
/// the reason, by every binary that takes one.
#[test]
fn invalid_names_are_rejected_by_every_binary() {
    let bad_subjects = [
        ("tasks process", "whitespace"),
        ("tasks..process", "'..'"),
        ("tasks.", "ends with '.'"),
        (".tasks", "starts with '.'"),
        ("", "empty"),
    ];
    let wildcards = [("tasks.*", "wildcard"), ("tasks.>", "wildcard")];
    let bad_queues = [("job worker", "whitespace"), ("", "empty")];

    let mut checked = 0;
    for flags in NAME_FLAGS {
        for flag in flags
            .subscribe_subjects
            .iter()
            .chain(flags.publish_subjects)
        {
            for (value, reason) in bad_subjects {
                let mut args = flags.leading.to_vec();
                args.extend([*flag, value]);
                assert_rejected(flags.binary, &args, reason);
                checked += 1;
            }
        }
        for flag in flags.publish_subjects {
            for (value, reason) in wildcards {
                let mut args = flags.leading.to_vec();
                args.extend([*flag, value]);
                assert_rejected(flags.binary, &args, reason);
                checked += 1;
            }
        }
        for flag in flags.queues {
            for (value, reason) in bad_queues {
                let mut args = flags.leading.to_vec();
                args.extend([*flag, value]);
                assert_rejected(flags.binary, &args, reason);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 61, "every flag of the table was tried");
}

/// A message larger than the server's max_payload fails before it is sent, and the error
/// names both sizes; nothing reaches the workers.
#[test]
fn oversized_publish_names_both_sizes() {
    let server = NatsServer::builder().config("max_payload: 1024\n").start();
    let url = server.client_url();
    let mut worker = Process::start("worker", ["1", "--work-time", "1ms", "-s", &url]);
    worker.wait_for_stdout("Waiting for tasks", WAIT);

    let big_body = "x".repeat(2000);
    let runs: [(&str, Vec<&str>); 2] = [
        ("publish", vec!["tasks.process", &big_body]),
        (
            "load_generator",
            vec!["--subject", "tasks.process", "--payload-size", "2000"],
        ),
    ];
    for (binary, mut args) in runs {
        args.extend(["-s", &url]);
        let mut process = Process::start(binary, &args);
        let status = process.wait_exit(WAIT);
        assert_eq!(status.code(), Some(1), "{}", process.transcript());

        let errors: Vec<String> = process
            .stderr()
            .into_iter()
            .filter(|line| line.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "one line\n{}", process.transcript());
        let size: usize = errors[0]
            .split_once("a message of ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no size in {}", errors[0]));
        assert!(size >= 2000, "{}", errors[0]);
        assert!(
            errors[0].contains("bytes for tasks.process"),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].contains("max_payload of 1024 bytes"),
            "{}",
            errors[0]
        );
    }

    // A message that fits still gets through, and nothing oversized reached the worker.
    let mut publisher = Process::start(
        "task_publisher",
        ["--count", "1", "--interval", "0", "-s", &url],
    );
    assert!(
        publisher.wait_exit(WAIT).success(),
        "{}",
        publisher.transcript()
    );
    worker.wait_for_stdout("Completed task TASK-001", WAIT);
    std::thread::sleep(Duration::from_millis(200));
    worker.interrupt();
    assert!(worker.wait_exit(WAIT).success(), "{}", worker.transcript());
    worker.wait_for_stdout("Processed 1 messages", WAIT);
    assert!(!worker.stderr().iter().any(|l| l.contains("not a task")));
}
