//! Step 5 end to end: `mixed_subscriptions`, with its logger and its two queue group
//! workers on one subject, on a real `nats-server`.

use std::collections::BTreeSet;

use harness::{NatsServer, Process, WAIT, unused_port, wait_until};

/// Orders published by the main test.
const ORDER_COUNT: usize = 1_000;

const LOGGER_LINE: &str = "[LOGGER] Logged: ";
const WORKER_1_LINE: &str = "[WORKER-1] Processing: ";
const WORKER_2_LINE: &str = "[WORKER-2] Processing: ";

/// Collects the order numbers of the lines that start with `prefix`, in the order printed.
fn order_numbers(lines: &[String], prefix: &str) -> Vec<usize> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix(prefix))
        .map(|order| {
            order
                .strip_prefix("Order-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not an order: {order:?}"))
        })
        .collect()
}

/// Parses the N of the summary line `<tag> <verb> N messages`.
fn summary_count(lines: &[String], tag_and_verb: &str) -> usize {
    let line = lines
        .iter()
        .find(|line| line.starts_with(tag_and_verb) && line.ends_with(" messages"))
        .unwrap_or_else(|| panic!("no summary line {tag_and_verb:?} in {lines:#?}"));
    line[tag_and_verb.len()..]
        .trim_end_matches(" messages")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no count in {line:?}"))
}

fn to_set(numbers: &[usize]) -> BTreeSet<usize> {
    numbers.iter().copied().collect()
}

/// The logger receives every order and the two workers share them, each order once.
#[tokio::test(flavor = "multi_thread")]
async fn logger_sees_all_workers_share() {
    let server = NatsServer::start();
    let mut mixed = Process::start("mixed_subscriptions", ["-s", &server.client_url()]);
    mixed.wait_for_stdout("Waiting for messages...", WAIT);

    let client = async_nats::connect(server.client_url()).await.unwrap();
    for n in 1..=ORDER_COUNT {
        client
            .publish("events.order", format!("Order-{n}").into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let received = |prefix: &str| order_numbers(&mixed.stdout(), prefix).len();
    wait_until(
        WAIT,
        || {
            received(LOGGER_LINE) >= ORDER_COUNT
                && received(WORKER_1_LINE) + received(WORKER_2_LINE) >= ORDER_COUNT
        },
        || mixed.transcript(),
    );
    mixed.interrupt();
    let status = mixed.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{}", mixed.transcript());

    let lines = mixed.stdout();
    let all_orders: BTreeSet<usize> = (1..=ORDER_COUNT).collect();

    let logged = order_numbers(&lines, LOGGER_LINE);
    assert_eq!(logged.len(), ORDER_COUNT, "logger lines");
    assert_eq!(to_set(&logged), all_orders, "the logger saw every order");

    let worker_1 = order_numbers(&lines, WORKER_1_LINE);
    let worker_2 = order_numbers(&lines, WORKER_2_LINE);
    assert_eq!(
        worker_1.len() + worker_2.len(),
        ORDER_COUNT,
        "worker lines together"
    );
    let mut processed = to_set(&worker_1);
    processed.extend(&worker_2);
    assert_eq!(processed, all_orders, "the workers processed every order");
    assert!(!worker_1.is_empty(), "worker 1 got some orders");
    assert!(!worker_2.is_empty(), "worker 2 got some orders");

    assert_eq!(summary_count(&lines, "[LOGGER] Logged "), logged.len());
    assert_eq!(
        summary_count(&lines, "[WORKER-1] Processed "),
        worker_1.len()
    );
    assert_eq!(
        summary_count(&lines, "[WORKER-2] Processed "),
        worker_2.len()
    );
    let check =
        format!("Workers together: {ORDER_COUNT} of the {ORDER_COUNT} messages the logger saw");
    assert!(lines.contains(&check), "{}", mixed.transcript());
    assert!(
        !lines.iter().any(|line| line.contains("counts differ")),
        "{}",
        mixed.transcript()
    );
}

/// Queue group names and subjects NATS would reject stop the program before it connects.
#[test]
fn invalid_names_are_rejected_before_connecting() {
    // Nothing listens here: reaching the connect step would print a connection error.
    let url = format!("nats://127.0.0.1:{}", unused_port());
    let cases = [
        ("--queue", "order processors", "whitespace"),
        ("--queue", "", "empty"),
        ("--subject", "events..order", "'..'"),
    ];
    for (flag, value, reason) in cases {
        let mut mixed = Process::start("mixed_subscriptions", [flag, value, "-s", &url]);
        let status = mixed.wait_exit(WAIT);

        assert_eq!(
            status.code(),
            Some(2),
            "{flag} {value:?}\n{}",
            mixed.transcript()
        );
        let stderr = mixed.stderr().join("\n");
        assert!(stderr.contains(reason), "{flag} {value:?}: {stderr}");
        assert!(
            !stderr.contains("cannot connect"),
            "{flag} {value:?}: {stderr}"
        );
        assert!(mixed.stdout().is_empty(), "{}", mixed.transcript());
    }
}
