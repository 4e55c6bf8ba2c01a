//! Publish rate: `load_generator` against a bare async-nats loop, and against nats-py.
//!
//! All three publish the same number of messages of the same size to a subject without
//! subscribers, and time from the first publish to the end of the flush that follows
//! the last one. `load_generator` and the Python script build a fresh task (id, timestamp,
//! JSON) per message as a real publisher would. The bare loop publishes one pre-encoded
//! payload again and again, so it is the ceiling the client and server allow. A second
//! bare loop builds and encodes a task per message the way `load_generator` does, and
//! nothing else, so the ratio against it is the cost of `load_generator`'s own checks,
//! timeouts and progress output.

use std::time::Instant;

use anyhow::Context;
use async_nats::Subject;
use bytes::Bytes;
use common::Task;

use crate::child::Child;
use crate::stats::{Measured, Row, Sample, Unit};
use crate::{Bench, connect, start_server, task_payload};

/// Subject of every publish run; nothing subscribes to it.
const SUBJECT: &str = "bench.publish";
/// Prefix of `load_generator`'s task ids.
const PREFIX: &str = "PUB";

/// Measures every payload size, alternating the publishers within each run.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &payload_size in &bench.config.payload_sizes {
        let server = start_server();
        let url = server.client_url();
        let count = bench.config.publish_count;
        // The same size as each of load_generator's tasks: the id has the same width.
        let payload = task_payload(&format!("{PREFIX}-{count}"), payload_size);

        let (mut ours, mut bare, mut python) = (Sample::default(), Sample::default(), None);
        let mut encoding = Sample::default();
        for run in 1..=bench.config.runs {
            tracing::info!(payload_size, run, "publish rate");
            ours.push(load_generator(bench, &url, count, payload_size).await?);
            bare.push(bare_loop(&url, count, payload.clone()).await?);
            encoding.push(encoding_loop(&url, count, payload_size).await?);
            if let Some(interpreter) = &bench.python {
                let rate = interpreter
                    .publish(&url, SUBJECT, count, payload_size)
                    .await?;
                python.get_or_insert_with(Sample::default).push(rate);
            }
        }

        let case = format!("publish, {payload_size} B data");
        let note = format!("{count} tasks of {} B", payload.len());
        let ours = Measured::new("load_generator", ours);
        rows.push(Row {
            case: case.clone(),
            unit: Unit::MessagesPerSecond,
            ours: ours.clone(),
            reference: Some(Measured::new("bare async-nats loop", bare)),
            note: note.clone(),
        });
        rows.push(Row {
            case: case.clone(),
            unit: Unit::MessagesPerSecond,
            ours: ours.clone(),
            reference: Some(Measured::new("bare loop encoding each task", encoding)),
            note: note.clone(),
        });
        if let Some(python) = python {
            rows.push(Row {
                case,
                unit: Unit::MessagesPerSecond,
                ours,
                reference: Some(Measured::new("nats-py publisher", python)),
                note,
            });
        }
    }
    Ok(rows)
}

/// Runs `load_generator --json` and returns the rate it reports.
async fn load_generator(
    bench: &Bench,
    url: &str,
    count: u32,
    payload_size: usize,
) -> anyhow::Result<f64> {
    let args = [
        "--server",
        url,
        "--count",
        &count.to_string(),
        "--payload-size",
        &payload_size.to_string(),
        "--subject",
        SUBJECT,
        "--prefix",
        PREFIX,
        "--json",
    ];
    let figures = run_load_generator(bench, &args).await?;
    figures["rate_per_second"]
        .as_f64()
        .context("load_generator's JSON has no rate_per_second")
}

/// Runs `load_generator` with `args`, which must include `--json`, and parses its output.
pub(crate) async fn run_load_generator(
    bench: &Bench,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let mut child = Child::spawn(
        "load_generator",
        &bench.binary("load_generator"),
        &args,
        None,
    )?;
    let status = child.wait(bench.config.child_timeout).await?;
    if !status.success() {
        anyhow::bail!(
            "load_generator exited with {status}\n{}",
            child.transcript()
        );
    }
    // The JSON object has a few dozen lines at most, so all of them were kept.
    let json = child.stdout().join("\n");
    serde_json::from_str(&json).with_context(|| {
        format!(
            "load_generator did not print one JSON object\n{}",
            child.transcript()
        )
    })
}

/// Publishes `payload` `count` times with a plain loop and returns messages per second.
async fn bare_loop(url: &str, count: u32, payload: Bytes) -> anyhow::Result<f64> {
    let client = connect(url, None).await?;
    let subject = Subject::from_static(SUBJECT);
    let started = Instant::now();
    for _ in 0..count {
        client
            .publish(subject.clone(), payload.clone())
            .await
            .context("bare publish failed")?;
    }
    client.flush().await.context("bare flush failed")?;
    let rate = f64::from(count) / started.elapsed().as_secs_f64();
    client
        .drain()
        .await
        .context("cannot close the bare client")?;
    Ok(rate)
}

/// Builds, encodes and publishes `count` tasks with a plain loop, as `load_generator` does
/// without its checks, and returns messages per second.
async fn encoding_loop(url: &str, count: u32, payload_size: usize) -> anyhow::Result<f64> {
    let client = connect(url, None).await?;
    let subject = Subject::from_static(SUBJECT);
    let width = count.to_string().len().max(3);
    let filler = (payload_size > 0).then(|| "x".repeat(payload_size));
    let started = Instant::now();
    for number in 1..=count {
        let task = Task::new(format!("{PREFIX}-{number:0width$}"), filler.clone());
        client
            .publish(subject.clone(), task.to_bytes().into())
            .await
            .context("bare publish failed")?;
    }
    client.flush().await.context("bare flush failed")?;
    let rate = f64::from(count) / started.elapsed().as_secs_f64();
    client
        .drain()
        .await
        .context("cannot close the bare client")?;
    Ok(rate)
}
