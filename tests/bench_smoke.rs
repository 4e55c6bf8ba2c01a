//! `bench --quick`: the benchmark command still runs every case end to end.
//!
//! The figures of a quick run on a debug build mean nothing, so this test checks only
//! that the command exits 0 and prints a table row for every case. The full benchmark is
//! `scripts/bench.sh`, kept out of the test suite because it takes minutes.

use std::time::Duration;

use harness::{Process, nats_server_bin};

/// The first cell of every row that `bench --quick` prints without Python.
const ROWS: [&str; 12] = [
    "publish, 64 B data",
    "publish, 1024 B data",
    "delivery, 1 member",
    "delivery, 3 members",
    "delivery, 5 members",
    "latency p50 at 1000 msg/s",
    "latency p99 at 1000 msg/s",
    "scaling, 1 worker",
    "scaling, 5 workers",
    "scaling, 1 worker, concurrency 5",
    "peak RSS after 1000 tasks",
    "start-up to subscription",
];

/// A quick run takes seconds alone; two busy cores and debug binaries can stretch it.
const QUICK_RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// `bench --quick` without Python exits 0 and prints one row per case, each with a
/// bare async-nats reference or none, and no nats-py row.
#[test]
fn quick_run_prints_every_row() {
    // `bench` runs these from its own folder; the harness builds only what a test names.
    for name in ["worker", "load_generator", "scalable_processor"] {
        harness::binary(name);
    }
    let server = nats_server_bin().unwrap_or_else(|error| panic!("{error}"));
    let server = server.to_string_lossy();
    let mut bench = Process::start_with_env("bench", ["--quick"], &[("NATS_SERVER_BIN", &server)]);

    let status = bench.wait_exit(QUICK_RUN_TIMEOUT);
    assert!(
        status.success(),
        "bench --quick exited with {status}\n{}",
        bench.transcript()
    );

    let stdout = bench.stdout();
    for case in ROWS {
        let prefix = format!("| {case} | ");
        assert!(
            stdout.iter().any(|line| line.starts_with(&prefix)),
            "no row {case:?} in the table\n{}",
            bench.transcript()
        );
    }
    assert!(
        !stdout
            .iter()
            .any(|line| line.contains("nats-py subscriber")),
        "nats-py rows without --python\n{}",
        bench.transcript()
    );
}
