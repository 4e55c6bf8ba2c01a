//! Latency from publish to processing at a fixed, moderate rate.
//!
//! A publisher in this process sends tasks at `latency_rate` messages per second, each
//! stamped with the wall-clock time by `Task::new` just before `publish` (microseconds, as
//! on the wire). Two receivers are measured in turn on the same server:
//!
//! - a bare async-nats subscriber in this process, which decodes the task and subtracts its
//!   timestamp from the time of arrival;
//! - a `worker --work-time 0` process, whose completion report on `<subject>.done` carries
//!   `started_at`, the time it began the task after decoding and printing it.
//!
//! Both clocks are the same system clock, so the differences need no synchronisation.

use std::time::Duration;

use anyhow::Context;
use async_nats::{Client, Subject};
use chrono::{DateTime, Utc};
use common::Task;
use common::report::Completion;
use futures::StreamExt;

use crate::child::Child;
use crate::delivery::run_timeout;
use crate::stats::{Measured, Row, Sample, Unit};
use crate::{Bench, connect, start_server};

const BARE_SUBJECT: &str = "bench.latency.bare";
const WORKER_SUBJECT: &str = "bench.latency.worker";
const QUEUE: &str = "bench-latency";

/// Measures both receivers, alternating within each run, and returns the p50 and p99 rows.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let server = start_server();
    let url = server.client_url();
    let publisher = connect(&url, None).await?;
    let count = bench.config.latency_count;
    let rate = bench.config.latency_rate;

    let mut worker = bench.worker(&url, WORKER_SUBJECT, QUEUE, 1, 65_536, true)?;
    worker
        .wait_for_line("Waiting for tasks", bench.config.child_timeout)
        .await?;

    let (mut ours_p50, mut ours_p99) = (Sample::default(), Sample::default());
    let (mut bare_p50, mut bare_p99) = (Sample::default(), Sample::default());
    for run in 1..=bench.config.runs {
        tracing::info!(run, rate, count, "latency");
        let ours = through_worker(&publisher, &mut worker, count, rate).await?;
        ours_p50.push(ours.percentile(50.0));
        ours_p99.push(ours.percentile(99.0));
        let bare = through_bare_subscriber(&url, &publisher, count, rate).await?;
        bare_p50.push(bare.percentile(50.0));
        bare_p99.push(bare.percentile(99.0));
    }
    worker.stop(bench.config.child_timeout).await?;

    let note = format!(
        "{count} tasks per run; ours: worker's completion report (started_at), reference: arrival in a bare subscriber"
    );
    let row = |percentile: &str, ours: Sample, bare: Sample| Row {
        case: format!("latency {percentile} at {rate} msg/s"),
        unit: Unit::Microseconds,
        ours: Measured::new("worker", ours),
        reference: Some(Measured::new("bare async-nats subscriber", bare)),
        note: note.clone(),
    };
    Ok(vec![
        row("p50", ours_p50, bare_p50),
        row("p99", ours_p99, bare_p99),
    ])
}

/// Publishes `count` fresh tasks, `LAT-000000` onwards, at `rate` per second on `subject`
/// and returns their timestamps in order.
async fn publish_paced(
    client: &Client,
    subject: &str,
    count: u32,
    rate: u32,
) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let subject = Subject::from(subject);
    let mut timestamps = Vec::with_capacity(count as usize);
    let started = tokio::time::Instant::now();
    for number in 0..count {
        let due = started + Duration::from_secs_f64(f64::from(number) / f64::from(rate));
        tokio::time::sleep_until(due).await;
        let task = Task::new(format!("LAT-{number:06}"), None);
        timestamps.push(task.timestamp);
        client
            .publish(subject.clone(), task.to_bytes().into())
            .await
            .context("publish failed")?;
    }
    client.flush().await.context("flush failed")?;
    Ok(timestamps)
}

/// Microseconds from `from` to `to`.
fn micros_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64
}

async fn through_bare_subscriber(
    url: &str,
    publisher: &Client,
    count: u32,
    rate: u32,
) -> anyhow::Result<Sample> {
    let client = connect(url, None).await?;
    let mut subscriber = client
        .queue_subscribe(BARE_SUBJECT, QUEUE.to_owned())
        .await
        .context("bare subscribe failed")?;
    client.flush().await.context("bare flush failed")?;

    let receiving = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(count as usize);
        while latencies.len() < count as usize {
            let Some(message) = subscriber.next().await else {
                break;
            };
            let arrived = Utc::now();
            if let Ok(task) = Task::from_bytes(&message.payload) {
                latencies.push(micros_between(task.timestamp, arrived));
            }
        }
        latencies
    });
    publish_paced(publisher, BARE_SUBJECT, count, rate).await?;
    let latencies = tokio::time::timeout(run_timeout(count), receiving)
        .await
        .context("the bare subscriber did not receive every task in time")?
        .context("the bare subscriber's task failed")?;
    check_complete("the bare subscriber", latencies.len(), count)?;
    Ok(Sample::new(latencies))
}

async fn through_worker(
    publisher: &Client,
    worker: &mut Child,
    count: u32,
    rate: u32,
) -> anyhow::Result<Sample> {
    worker.check_running()?;
    let mut reports = publisher
        .subscribe(format!("{WORKER_SUBJECT}.done"))
        .await
        .context("cannot subscribe to the completion reports")?;
    publisher.flush().await.context("flush failed")?;

    let receiving = tokio::spawn(async move {
        let mut received = Vec::with_capacity(count as usize);
        while received.len() < count as usize {
            let Some(message) = reports.next().await else {
                break;
            };
            if let Ok(report) = Completion::from_bytes(&message.payload) {
                received.push(report);
            }
        }
        received
    });
    // The reports carry the task id but not its timestamp, so the ids index this list.
    let published = publish_paced(publisher, WORKER_SUBJECT, count, rate).await?;

    let reports = tokio::time::timeout(run_timeout(count), receiving)
        .await
        .context("the worker did not report every task in time")?
        .context("the report reader failed")?;
    check_complete("the worker", reports.len(), count)?;
    let latencies = reports
        .iter()
        .filter_map(|report| {
            let number: usize = report.task_id.strip_prefix("LAT-")?.parse().ok()?;
            Some(micros_between(*published.get(number)?, report.started_at))
        })
        .collect();
    Ok(Sample::new(latencies))
}

fn check_complete(receiver: &str, received: usize, count: u32) -> anyhow::Result<()> {
    if received < count as usize {
        anyhow::bail!("{receiver} received {received} of {count} tasks");
    }
    Ok(())
}
