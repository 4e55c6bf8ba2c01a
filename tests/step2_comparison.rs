//! Step 2 end to end: `comparison_demo` in regular and in queue mode, fed by `publish`, on a
//! real `nats-server`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Instant;

use harness::{NatsServer, Process, WAIT, binary, unused_port, wait_until};

const IDS: [&str; 3] = ["A", "B", "C"];

/// Starts the demo with `args` and waits until all three subscribers have started.
fn start_demo(server: &NatsServer, args: &[&str], kind: &str) -> Process {
    let url = server.client_url();
    let mut all_args = args.to_vec();
    all_args.extend(["-s", &url]);
    let demo = Process::start("comparison_demo", all_args);
    wait_for_started(&demo, kind);
    demo
}

/// Waits for the three `Started` lines of subscribers of `kind` (`Regular` or `Queue`).
fn wait_for_started(demo: &Process, kind: &str) {
    for id in IDS {
        demo.wait_for_stdout(&format!("[{kind} Sub {id}] Started"), WAIT);
    }
}

/// Publishes `Message 1` … `Message <count>` to `demo.topic` and waits for the publisher.
fn publish(server: &NatsServer, count: usize) {
    let count_text = count.to_string();
    let mut publisher = Process::start(
        "publish",
        [
            "demo.topic",
            "Message {{Count}}",
            "--count",
            &count_text,
            "-s",
            &server.client_url(),
        ],
    );
    let status = publisher.wait_exit(WAIT);
    assert!(status.success(), "{}", publisher.transcript());
    let published = publisher
        .stdout()
        .iter()
        .filter(|line| line.starts_with("Published "))
        .count();
    assert_eq!(published, count, "{}", publisher.transcript());
}

/// Collects the `(number, payload)` pairs of the `[<label>] Message #N: <payload>` lines, in order.
fn messages(demo: &Process, label: &str) -> Vec<(usize, String)> {
    let prefix = format!("[{label}] Message #");
    demo.stdout()
        .iter()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (number, payload) = rest.split_once(": ")?;
            let number = number
                .parse()
                .unwrap_or_else(|_| panic!("no number in {line:?}"));
            Some((number, payload.to_owned()))
        })
        .collect()
}

fn payloads(demo: &Process, label: &str) -> Vec<String> {
    messages(demo, label)
        .into_iter()
        .map(|(_, payload)| payload)
        .collect()
}

/// Parses the N of the `[<label>] Received N messages` line.
fn received_count(demo: &Process, label: &str) -> usize {
    let line = demo.wait_for_stdout(&format!("[{label}] Received "), WAIT);
    line.split_whitespace()
        .nth(4)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

fn expected_messages(count: usize) -> Vec<String> {
    (1..=count).map(|n| format!("Message {n}")).collect()
}

fn total_received(demo: &Process, kind: &str) -> usize {
    IDS.iter()
        .map(|id| messages(demo, &format!("{kind} Sub {id}")).len())
        .sum()
}

/// Interrupts the demo as Ctrl-C would and checks that it drained and exited with 0.
fn interrupt_and_expect_success(demo: &mut Process) {
    demo.interrupt();
    let status = demo.wait_exit(WAIT);
    assert!(status.success(), "{}", demo.transcript());
    demo.wait_for_stdout("Shutting down: draining the subscriptions", WAIT);
    demo.wait_for_stdout("Shutdown complete", WAIT);
}

/// Three plain subscribers each receive all ten messages, in order, and count ten.
#[test]
fn regular_subscribers_each_get_every_message() {
    let server = NatsServer::start();
    let mut demo = start_demo(&server, &["--mode", "regular"], "Regular");
    demo.wait_for_stdout("[Regular Sub A] Started (no queue group)", WAIT);

    publish(&server, 10);
    wait_until(
        WAIT,
        || {
            IDS.iter()
                .all(|id| messages(&demo, &format!("Regular Sub {id}")).len() >= 10)
        },
        || demo.transcript(),
    );
    interrupt_and_expect_success(&mut demo);

    for id in IDS {
        let label = format!("Regular Sub {id}");
        assert_eq!(
            payloads(&demo, &label),
            expected_messages(10),
            "{label}\n{}",
            demo.transcript()
        );
        let numbers: Vec<usize> = messages(&demo, &label).iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, (1..=10).collect::<Vec<_>>(), "{label}");
        assert_eq!(received_count(&demo, &label), 10, "{label}");
    }
    demo.wait_for_stdout("Total: 30 messages received", WAIT);
}

/// In queue mode each of the ten messages is received exactly once, shared by the group.
#[test]
fn queue_subscribers_share_the_messages() {
    let server = NatsServer::start();
    let mut demo = start_demo(&server, &["--mode", "queue"], "Queue");
    demo.wait_for_stdout("[Queue Sub A] Started (queue: workers)", WAIT);

    publish(&server, 10);
    wait_until(
        WAIT,
        || total_received(&demo, "Queue") >= 10,
        || demo.transcript(),
    );
    interrupt_and_expect_success(&mut demo);

    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for id in IDS {
        let label = format!("Queue Sub {id}");
        let received = messages(&demo, &label);
        let numbers: Vec<usize> = received.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            numbers,
            (1..=received.len()).collect::<Vec<_>>(),
            "{label} numbers its own messages from 1"
        );
        assert_eq!(received_count(&demo, &label), received.len(), "{label}");
        for (_, payload) in received {
            *deliveries.entry(payload).or_insert(0) += 1;
        }
    }

    let delivered: BTreeSet<String> = deliveries.keys().cloned().collect();
    let expected: BTreeSet<String> = expected_messages(10).into_iter().collect();
    assert_eq!(delivered, expected, "every message arrived");
    for (payload, count) in &deliveries {
        assert_eq!(*count, 1, "{payload:?} was received {count} times");
    }
    assert_eq!(total_received(&demo, "Queue"), 10);
    demo.wait_for_stdout("Total: 10 messages received", WAIT);

    // The server picks a member at random per message, so all ten going to one member has
    // a probability of 3 × (1/3)^10, about 1 in 20 000.
    let busy = IDS
        .iter()
        .filter(|id| !messages(&demo, &format!("Queue Sub {id}")).is_empty())
        .count();
    assert!(busy >= 2, "the group shared the messages: {deliveries:?}");
}

/// Answering the prompt selects the mode: `1` regular, `2` queue.
#[test]
fn prompt_answer_selects_the_mode() {
    let server = NatsServer::start();
    for (answer, heading, kind, per_subscriber) in [
        ("2\n", "Starting 3 QUEUE subscribers...", "Queue", false),
        ("1\n", "Starting 3 REGULAR subscribers...", "Regular", true),
    ] {
        let mut demo = Process::start("comparison_demo", ["-s", &server.client_url()]);
        demo.write_stdin(answer);
        demo.wait_for_stdout(heading, WAIT);
        wait_for_started(&demo, kind);
        assert_eq!(
            demo.stdout().first().map(String::as_str),
            Some("Choose mode (1=Regular, 2=Queue): "),
            "the prompt comes first"
        );

        publish(&server, 3);
        let expected_total = if per_subscriber { 9 } else { 3 };
        wait_until(
            WAIT,
            || total_received(&demo, kind) >= expected_total,
            || demo.transcript(),
        );
        interrupt_and_expect_success(&mut demo);
        assert_eq!(total_received(&demo, kind), expected_total, "{kind}");
    }
}

/// An answer that names no mode is a usage error (status 2), reported before connecting.
#[test]
fn invalid_prompt_answer_exits_with_2() {
    // Nothing listens here: reaching the connect step would print a connection error.
    let url = format!("nats://127.0.0.1:{}", unused_port());
    let mut demo = Process::start("comparison_demo", ["-s", &url]);
    demo.write_stdin("3\n");
    let status = demo.wait_exit(WAIT);

    assert_eq!(status.code(), Some(2), "{}", demo.transcript());
    let stderr = demo.stderr();
    assert_eq!(stderr.len(), 1, "one line:\n{}", demo.transcript());
    assert!(stderr[0].contains(r#"invalid mode "3""#), "{}", stderr[0]);
    assert!(stderr[0].contains("--mode"), "names the fix: {}", stderr[0]);
    assert!(
        !demo.stdout().iter().any(|line| line.contains("Starting")),
        "{}",
        demo.transcript()
    );
}

/// Stdin that ends before an answer is a usage error too, not a silent choice.
#[test]
fn closed_stdin_exits_with_2() {
    let url = format!("nats://127.0.0.1:{}", unused_port());
    let mut command = Command::new(binary("comparison_demo"));
    command
        .args(["-s", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NATS_") {
            command.env_remove(key);
        }
    }
    let mut child = command.spawn().expect("comparison_demo starts");

    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("try_wait works").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("comparison_demo did not exit within {WAIT:?} after stdin ended");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output is collected");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("stdin ended before an answer"), "{stderr}");
    assert!(!stderr.contains("cannot connect"), "{stderr}");
}
