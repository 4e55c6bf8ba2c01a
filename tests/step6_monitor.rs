//! Step 6 end to end: `queue_monitor` reading a real `nats-server`'s HTTP monitoring while
//! real workers join and leave queue groups.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use harness::{NatsServer, Process, WAIT, unused_port};
use serde_json::Value;

/// Runs `queue_monitor --once --json` against `monitor_urls` and returns its report.
fn report_once(monitor_urls: &str) -> Value {
    let mut monitor = Process::start(
        "queue_monitor",
        ["--once", "--json", "--monitor-url", monitor_urls],
    );
    let status = monitor.wait_exit(WAIT);
    assert!(status.success(), "{}", monitor.transcript());
    let stdout = monitor.stdout();
    assert_eq!(stdout.len(), 1, "one JSON object\n{}", monitor.transcript());
    serde_json::from_str(&stdout[0])
        .unwrap_or_else(|error| panic!("--json output: {error}\n{}", monitor.transcript()))
}

/// Polls with `report_once` until `done` holds for a report, and returns that report.
///
/// The server counts a delivery when it writes the message to the member's connection,
/// so the counts settle soon after the publisher's flush, though not at the same instant.
fn wait_for_report(monitor_urls: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let report = report_once(monitor_urls);
        if done(&report) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "the report did not reach the expected state within {WAIT:?}: {report:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Finds the report's group for `subject` and `queue`.
fn group<'a>(report: &'a Value, subject: &str, queue: &str) -> Option<&'a Value> {
    report["queue_groups"]
        .as_array()
        .expect("queue_groups is an array")
        .iter()
        .find(|group| group["subject"] == subject && group["queue"] == queue)
}

fn member_names(group: &Value) -> Vec<String> {
    group["members"]
        .as_array()
        .expect("members is an array")
        .iter()
        .map(|member| member["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn delivered_total(group: &Value) -> u64 {
    group["members"]
        .as_array()
        .expect("members is an array")
        .iter()
        .map(|member| member["delivered"].as_u64().expect("delivered is a count"))
        .sum()
}

/// Starts a Step 1 worker named `name` and waits until it is a member of its group.
fn start_worker(server: &NatsServer, id: &str, name: &str) -> Process {
    let worker = Process::start(
        "worker",
        [
            id,
            "--name",
            name,
            "--work-time",
            "10ms",
            "-s",
            &server.client_url(),
        ],
    );
    worker.wait_for_stdout("Waiting for tasks", WAIT);
    worker
}

/// Publishes `count` tasks to `tasks.process` at once and waits until the server has them.
fn publish_tasks(server: &NatsServer, count: &str) {
    let mut publisher = Process::start(
        "task_publisher",
        [
            "--count",
            count,
            "--interval",
            "0",
            "-s",
            &server.client_url(),
        ],
    );
    assert!(
        publisher.wait_exit(WAIT).success(),
        "{}",
        publisher.transcript()
    );
}

fn stop(process: &mut Process) {
    process.interrupt();
    let status = process.wait_exit(WAIT);
    assert!(status.success(), "{}", process.transcript());
}

/// Both tutorial groups are listed with their members by name, and the 30 deliveries add
/// up; once the workers stop, their group is gone.
#[test]
fn lists_groups_members_and_deliveries() {
    let server = NatsServer::start();
    let monitor_url = server.monitor_url();
    let mut workers: Vec<Process> = [("a", "worker-1"), ("b", "worker-2"), ("c", "worker-3")]
        .into_iter()
        .map(|(id, name)| start_worker(&server, id, name))
        .collect();
    let mut demo = Process::start(
        "comparison_demo",
        ["--mode", "queue", "-s", &server.client_url()],
    );
    for id in ["A", "B", "C"] {
        demo.wait_for_stdout(&format!("[Queue Sub {id}] Started"), WAIT);
    }

    publish_tasks(&server, "30");
    let report = wait_for_report(&monitor_url, |report| {
        group(report, "tasks.process", "processors").is_some_and(|g| delivered_total(g) == 30)
    });

    let servers = report["servers"].as_array().expect("servers is an array");
    assert_eq!(servers.len(), 1, "{report:#}");
    assert_eq!(servers[0]["url"], monitor_url.as_str());
    assert!(servers[0]["error"].is_null(), "{report:#}");
    assert!(servers[0]["connections"].as_u64() >= Some(6), "{report:#}");

    let processors = group(&report, "tasks.process", "processors").expect("processors");
    assert_eq!(processors["member_count"], 3, "{report:#}");
    assert_eq!(
        member_names(processors),
        ["worker-1", "worker-2", "worker-3"]
    );
    assert_eq!(processors["delivered"], 30, "{report:#}");
    let shares: f64 = processors["members"]
        .as_array()
        .expect("members is an array")
        .iter()
        .map(|member| member["share_percent"].as_f64().expect("a share"))
        .sum();
    assert!(
        (shares - 100.0).abs() < 0.01,
        "shares add up to 100%: {shares}"
    );
    assert!(
        processors["rate_per_second"].is_null(),
        "--once has no previous poll to compare with: {report:#}"
    );

    let demo_group = group(&report, "demo.topic", "workers").expect("workers");
    assert_eq!(demo_group["member_count"], 3, "{report:#}");
    assert_eq!(
        member_names(demo_group),
        [
            "comparison_demo-A",
            "comparison_demo-B",
            "comparison_demo-C"
        ]
    );
    assert_eq!(demo_group["delivered"], 0, "{report:#}");

    assert_eq!(
        report["queue_groups"].as_array().map(Vec::len),
        Some(2),
        "plain and internal subscriptions are left out: {report:#}"
    );

    for worker in &mut workers {
        stop(worker);
    }
    let after = wait_for_report(&monitor_url, |report| {
        group(report, "tasks.process", "processors").is_none()
    });
    assert!(
        group(&after, "demo.topic", "workers").is_some(),
        "{after:#}"
    );

    stop(&mut demo);
    let mut monitor = Process::start("queue_monitor", ["--once", "--monitor-url", &monitor_url]);
    assert!(
        monitor.wait_exit(WAIT).success(),
        "{}",
        monitor.transcript()
    );
    monitor.wait_for_stdout("No queue groups: start a worker", WAIT);
}

/// The text report names each member and shows its share as a percentage.
#[test]
fn text_report_shows_shares() {
    let server = NatsServer::start();
    let mut worker = start_worker(&server, "1", "worker-1");
    publish_tasks(&server, "4");
    wait_for_report(&server.monitor_url(), |report| {
        group(report, "tasks.process", "processors").is_some_and(|g| delivered_total(g) == 4)
    });

    let mut monitor = Process::start(
        "queue_monitor",
        ["--once", "--monitor-url", &server.monitor_url()],
    );
    assert!(
        monitor.wait_exit(WAIT).success(),
        "{}",
        monitor.transcript()
    );
    monitor.wait_for_stdout(
        "Queue group 'processors' on tasks.process: 1 member(s), 4 delivered",
        WAIT,
    );
    let line = monitor.wait_for_stdout("worker-1", WAIT);
    assert!(line.contains("100.0%"), "{line}");
    assert!(line.contains(&"█".repeat(20)), "{line}");
    assert!(
        !monitor.stdout().iter().any(|line| line.contains("RATE")),
        "--once has no rates\n{}",
        monitor.transcript()
    );
    assert!(monitor.stderr().is_empty(), "{}", monitor.transcript());

    stop(&mut worker);
}

/// With nothing on the monitoring port, `--once` fails at once with the `-m 8222` hint.
#[test]
fn closed_monitoring_port_gives_hint() {
    let mut stopped = NatsServer::start();
    let stopped_url = stopped.monitor_url();
    stopped.stop();
    let never_used = format!("http://127.0.0.1:{}", unused_port());
    // Builds the binaries now, so that the build does not count against "failed fast".
    harness::binary("queue_monitor");

    for url in [stopped_url, never_used] {
        let started = Instant::now();
        // Given through the environment this time, as a learner may set it once.
        let mut monitor = Process::start_with_env(
            "queue_monitor",
            ["--once"],
            &[("NATS_MONITOR_URL", url.as_str())],
        );
        let status = monitor.wait_exit(WAIT);

        assert_eq!(status.code(), Some(1), "{}", monitor.transcript());
        assert!(started.elapsed() < Duration::from_secs(5), "failed fast");
        assert!(monitor.stdout().is_empty(), "{}", monitor.transcript());
        let stderr = monitor.stderr();
        assert_eq!(stderr.len(), 1, "one line\n{}", monitor.transcript());
        assert!(stderr[0].contains(&url), "{}", stderr[0]);
        assert!(stderr[0].contains("nats-server -m 8222"), "{}", stderr[0]);
        assert!(stderr[0].contains("docker compose up -d"), "{}", stderr[0]);
    }
}

/// A monitoring URL that points at the client port says so instead of a parse error.
#[test]
fn client_port_is_recognized() {
    let server = NatsServer::start();
    let client_port_url = format!("http://127.0.0.1:{}", server.client_port());

    for format in [None, Some("--json")] {
        let mut args = vec!["--once", "--monitor-url", &client_port_url];
        args.extend(format);
        let mut monitor = Process::start("queue_monitor", args);
        let status = monitor.wait_exit(WAIT);

        assert_eq!(status.code(), Some(1), "{}", monitor.transcript());
        let error = monitor.wait_for_stderr("error:", WAIT);
        assert!(
            error.contains("is a NATS client port, not HTTP monitoring"),
            "{error}"
        );
        if format.is_some() {
            let report: Value = serde_json::from_str(&monitor.stdout().join("\n"))
                .unwrap_or_else(|e| panic!("{e}\n{}", monitor.transcript()));
            let server_error = report["servers"][0]["error"].as_str().unwrap_or("");
            assert!(server_error.contains("client port"), "{report:#}");
        }
    }
}

/// A port that accepts connections but never responds costs `--timeout`, not a hang.
#[test]
fn silent_port_times_out() {
    // The kernel completes the handshake for the listen backlog, so the connection opens
    // and nothing is ever written back.
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("a loopback port can be bound");
    let url = format!(
        "http://127.0.0.1:{}",
        listener.local_addr().expect("a bound address").port()
    );

    harness::binary("queue_monitor");
    let started = Instant::now();
    let mut monitor = Process::start(
        "queue_monitor",
        ["--once", "--timeout", "500ms", "--monitor-url", &url],
    );
    let status = monitor.wait_exit(WAIT);

    assert_eq!(status.code(), Some(1), "{}", monitor.transcript());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let error = monitor.wait_for_stderr("error:", WAIT);
    assert!(error.contains("timed out"), "{error}");
    assert!(error.contains("0.5s"), "{error}");
}

/// Left running, the monitor reports the outage, retries, and reports the group again
/// once the server and its worker are back.
#[test]
fn survives_server_restart() {
    let mut server = NatsServer::start();
    let mut worker = start_worker(&server, "1", "worker-1");
    let mut monitor = Process::start(
        "queue_monitor",
        [
            "--interval",
            "200ms",
            "--monitor-url",
            &server.monitor_url(),
        ],
    );
    const GROUP_LINE: &str = "Queue group 'processors' on tasks.process: 1 member(s)";
    monitor.wait_for_stdout(GROUP_LINE, WAIT);

    server.stop();
    let outage = monitor.wait_for_stdout("cannot reach NATS monitoring", WAIT);
    assert!(outage.contains("nats-server -m 8222"), "{outage}");
    let warning = monitor.wait_for_stderr("cannot reach NATS monitoring", WAIT);
    assert!(warning.contains("retry_in"), "{warning}");

    let reports_before = monitor
        .stdout()
        .iter()
        .filter(|line| line.contains(GROUP_LINE))
        .count();
    server.restart();
    // The worker reconnects by itself and subscribes again, and the retrying monitor
    // reports its group.
    monitor.wait_for_stdout_count(GROUP_LINE, reports_before + 1, WAIT);
    monitor.wait_for_stderr("monitoring responds again", WAIT);
    let repeated_warnings = monitor
        .stderr()
        .iter()
        .filter(|line| line.contains("cannot reach NATS monitoring"))
        .count();
    assert_eq!(
        repeated_warnings,
        1,
        "the outage is logged once, not at every retry\n{}",
        monitor.transcript()
    );

    stop(&mut monitor);
    monitor.wait_for_stdout("Monitor stopped", WAIT);
    stop(&mut worker);
}

/// `--json` without `--once` prints one object per poll, with rates from the second on.
#[test]
fn json_stream_has_rates() {
    let server = NatsServer::start();
    let mut worker = start_worker(&server, "1", "worker-1");
    let mut monitor = Process::start(
        "queue_monitor",
        [
            "--json",
            "--interval",
            "200ms",
            "--monitor-url",
            &server.monitor_url(),
        ],
    );
    let lines = monitor.wait_for_stdout_count("\"queue_groups\"", 3, WAIT);
    stop(&mut monitor);
    assert!(
        !monitor
            .stdout()
            .iter()
            .any(|l| l.contains("Monitor stopped")),
        "JSON output stays JSON\n{}",
        monitor.transcript()
    );

    let reports: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
        .collect();
    let first = group(&reports[0], "tasks.process", "processors").expect("processors");
    assert!(first["rate_per_second"].is_null(), "{first:#}");
    let third = group(&reports[2], "tasks.process", "processors").expect("processors");
    assert_eq!(third["rate_per_second"].as_f64(), Some(0.0), "{third:#}");
    assert_eq!(
        third["members"][0]["rate_per_second"].as_f64(),
        Some(0.0),
        "{third:#}"
    );

    stop(&mut worker);
}

/// Several monitoring URLs: members are labelled per server, totals cover all of them, and
/// a server reached under two URLs is counted once.
#[test]
fn several_servers_are_totalled() {
    let east = NatsServer::start();
    let west = NatsServer::start();
    let mut workers = vec![
        start_worker(&east, "1", "worker-east"),
        start_worker(&west, "2", "worker-west"),
    ];
    publish_tasks(&east, "3");
    publish_tasks(&west, "5");

    // `localhost` reaches the same server as 127.0.0.1, so it must not be counted twice.
    let east_again = east.monitor_url().replace("127.0.0.1", "localhost");
    let urls = format!("{},{},{east_again}", east.monitor_url(), west.monitor_url());
    let report = wait_for_report(&urls, |report| {
        group(report, "tasks.process", "processors").is_some_and(|g| delivered_total(g) == 8)
    });

    let processors = group(&report, "tasks.process", "processors").expect("processors");
    assert_eq!(processors["member_count"], 2, "{report:#}");
    assert_eq!(processors["delivered"], 8, "{report:#}");
    let per_server: Vec<(String, u64)> = processors["servers"]
        .as_array()
        .expect("servers is an array")
        .iter()
        .map(|share| {
            (
                share["server"].as_str().unwrap_or("").to_owned(),
                share["delivered"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mut expected = vec![(east.monitor_url(), 3), (west.monitor_url(), 5)];
    expected.sort();
    assert_eq!(per_server, expected, "{report:#}");
    for member in processors["members"].as_array().expect("members") {
        let on_east = member["server"] == east.monitor_url().as_str();
        let expected_name = if on_east {
            "worker-east"
        } else {
            "worker-west"
        };
        assert_eq!(member["name"], expected_name, "{report:#}");
    }
    assert_eq!(
        report["servers"][2]["same_server_as"],
        east.monitor_url().as_str(),
        "{report:#}"
    );

    for worker in &mut workers {
        stop(worker);
    }
}

/// Mistyped URLs are rejected before any request, with the reason.
#[test]
fn invalid_monitor_urls_are_rejected() {
    for (url, reason) in [
        ("localhost:8222", "missing http://"),
        ("nats://127.0.0.1:4222", "NATS client URL"),
        ("http://127.0.0.1:8222/connz", "without /connz"),
        ("http://127.0.0.1:8222,,http://127.0.0.1:8223", "empty"),
    ] {
        let mut monitor = Process::start("queue_monitor", ["--once", "--monitor-url", url]);
        let status = monitor.wait_exit(WAIT);
        assert_eq!(status.code(), Some(2), "{}", monitor.transcript());
        let stderr = monitor.stderr().join("\n");
        assert!(stderr.contains(reason), "{url}: {stderr}");
    }
}
