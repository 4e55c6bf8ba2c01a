//! `publish`, the stand-in for `nats pub`, against a real `nats-server`, read by a plain
//! async-nats subscriber.

use std::time::{Duration, Instant};

use async_nats::Subscriber;
use futures::StreamExt;
use harness::{NatsServer, Process, WAIT, unused_port};

/// Subscribes to `subject` and waits until the server has the subscription.
async fn subscribe(server: &NatsServer, subject: &str) -> (async_nats::Client, Subscriber) {
    let client = async_nats::connect(server.client_url())
        .await
        .expect("the test server accepts connections");
    let subscriber = client
        .subscribe(subject.to_owned())
        .await
        .expect("the subscription is sent");
    client
        .flush()
        .await
        .expect("the server confirms the subscription");
    (client, subscriber)
}

/// Runs `publish` with `args` against `server` and waits for it to succeed.
fn run_publish(server: &NatsServer, args: &[&str]) -> Process {
    let url = server.client_url();
    let mut all_args = args.to_vec();
    all_args.extend(["-s", &url]);
    let mut publisher = Process::start("publish", all_args);
    let status = publisher.wait_exit(WAIT);
    assert!(status.success(), "{}", publisher.transcript());
    publisher
}

async fn next_message(subscriber: &mut Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, subscriber.next())
        .await
        .expect("a message arrives in time")
        .expect("the subscription is open")
}

/// `{{Count}}` numbers the messages from 1, and they arrive in the order published.
#[tokio::test(flavor = "multi_thread")]
async fn count_numbers_messages_in_order() {
    let server = NatsServer::start();
    let (_client, mut subscriber) = subscribe(&server, "demo.topic").await;

    let publisher = run_publish(
        &server,
        &["demo.topic", "Message {{Count}}", "--count", "5"],
    );

    for n in 1..=5 {
        let message = next_message(&mut subscriber).await;
        assert_eq!(message.subject.as_str(), "demo.topic");
        assert_eq!(message.payload, format!("Message {n}").as_bytes());
        assert!(message.headers.is_none(), "no headers were asked for");
    }
    let extra = tokio::time::timeout(Duration::from_millis(200), subscriber.next()).await;
    assert!(extra.is_err(), "exactly five messages: {extra:?}");

    assert_eq!(
        publisher.stdout(),
        vec![r#"Published 9 bytes to "demo.topic""#; 5],
        "{}",
        publisher.transcript()
    );
}

/// `--header` values are sent with each message, with `{{Count}}` filled in.
#[tokio::test(flavor = "multi_thread")]
async fn headers_carry_the_message_number() {
    let server = NatsServer::start();
    let (_client, mut subscriber) = subscribe(&server, "demo.headers").await;

    run_publish(
        &server,
        &[
            "demo.headers",
            "body",
            "--count",
            "2",
            "-H",
            "Seq:{{ Count }}",
            "--header",
            "Source: publish test ",
        ],
    );

    for n in 1..=2 {
        let message = next_message(&mut subscriber).await;
        let headers = message.headers.expect("headers were sent");
        assert_eq!(
            headers.get("Seq").map(|v| v.as_str()),
            Some(n.to_string().as_str())
        );
        assert_eq!(
            headers.get("Source").map(|v| v.as_str()),
            Some("publish test")
        );
        assert_eq!(message.payload, "body".as_bytes());
    }
}

/// `--sleep` pauses between messages: three messages take at least two pauses.
#[test]
fn sleep_spaces_the_messages() {
    let server = NatsServer::start();
    let started = Instant::now();
    let publisher = run_publish(
        &server,
        &["demo.topic", "x", "--count", "3", "--sleep", "300ms"],
    );
    let elapsed = started.elapsed();

    assert!(
        elapsed >= Duration::from_millis(600),
        "two pauses of 300 ms: {elapsed:?}"
    );
    assert_eq!(publisher.stdout().len(), 3, "{}", publisher.transcript());
}

/// With no server listening, `publish` fails fast with one line that names the URL.
#[test]
fn missing_server_is_one_clear_error() {
    let url = format!("nats://127.0.0.1:{}", unused_port());
    let started = Instant::now();
    let mut publisher = Process::start(
        "publish",
        ["demo.topic", "x", "-s", &url, "--connect-timeout", "2s"],
    );
    let status = publisher.wait_exit(WAIT);

    assert_eq!(status.code(), Some(1), "{}", publisher.transcript());
    assert!(started.elapsed() < Duration::from_secs(10), "failed fast");
    let stderr = publisher.stderr();
    assert_eq!(stderr.len(), 1, "one line:\n{}", publisher.transcript());
    assert!(stderr[0].contains(&url), "{}", stderr[0]);
    assert!(!stderr[0].contains("panicked"), "{}", stderr[0]);
    assert!(
        publisher.stdout().is_empty(),
        "nothing was reported as published\n{}",
        publisher.transcript()
    );
}

/// Subjects NATS would reject are usage errors (status 2), with the reason, before connecting.
#[test]
fn invalid_subject_is_rejected_before_connecting() {
    // Nothing listens here: reaching the connect step would print a connection error.
    let url = format!("nats://127.0.0.1:{}", unused_port());
    for (subject, reason) in [
        ("demo topic", "whitespace"),
        ("demo.*", "wildcard"),
        ("demo.>", "wildcard"),
        ("demo..topic", "'..'"),
        ("", "empty"),
    ] {
        let mut publisher = Process::start("publish", [subject, "x", "-s", &url]);
        let status = publisher.wait_exit(WAIT);

        assert_eq!(status.code(), Some(2), "{}", publisher.transcript());
        let stderr = publisher.stderr().join("\n");
        assert!(stderr.contains(reason), "{subject:?}: {stderr}");
        assert!(!stderr.contains("cannot connect"), "{stderr}");
    }
}

/// Bad option values are usage errors that name the value.
#[test]
fn invalid_options_are_usage_errors() {
    let url = format!("nats://127.0.0.1:{}", unused_port());
    for (option, value, reason) in [
        ("--count", "0", "at least 1"),
        ("--sleep", "soon", "invalid duration"),
        ("--header", "no-colon", "expected KEY:VALUE"),
        ("--header", "bad key:v", "invalid header key"),
    ] {
        let mut publisher =
            Process::start("publish", ["demo.topic", "x", option, value, "-s", &url]);
        let status = publisher.wait_exit(WAIT);

        assert_eq!(status.code(), Some(2), "{}", publisher.transcript());
        let stderr = publisher.stderr().join("\n");
        assert!(stderr.contains(reason), "{option} {value}: {stderr}");
        assert!(stderr.contains(value), "names the value: {stderr}");
    }
}
