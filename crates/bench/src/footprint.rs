//! Memory and start-up of one queue group member: `worker`, and the nats-py subscriber.
//!
//! Peak RSS is `VmHWM` from `/proc/PID/status`, read after the member has processed
//! `memory_count` tasks and before it is stopped. The publisher keeps at most `WINDOW`
//! tasks outstanding, so the figure is the member's own footprint at a steady pace and
//! not a backlog of buffered messages.
//!
//! Start-up is the time from spawning the process to the server listing its subscription
//! in `/connz?subs=1`, polled every millisecond. That is the moment a publisher's tasks
//! can reach the member, and it does not depend on how the member prints.

use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::{Client, Subject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::child::{Child, POLL};
use crate::delivery::{Kind, run_timeout};
use crate::stats::{Measured, Row, Sample, Unit};
use crate::{Bench, connect, start_server, task_payload};

/// Tasks published but not yet counted as processed, at most.
const WINDOW: u64 = 1_000;
const QUEUE: &str = "bench-footprint";
const MEBIBYTE: f64 = 1024.0 * 1024.0;

/// Measures peak RSS and start-up for `worker` and, with Python, the nats-py subscriber.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let server = start_server();
    let url = server.client_url();
    let monitor = server.monitor_url();
    let publisher = connect(&url, None).await?;
    let kinds: &[Kind] = if bench.python.is_some() {
        &[Kind::Worker, Kind::Python]
    } else {
        &[Kind::Worker]
    };

    let mut memory = vec![Sample::default(); kinds.len()];
    let mut startup = vec![Sample::default(); kinds.len()];
    let mut run_number = 0;
    for run in 1..=bench.config.runs {
        tracing::info!(run, "memory and start-up");
        for (index, &kind) in kinds.iter().enumerate() {
            run_number += 1;
            let subject = format!("bench.footprint.{run_number}");
            let started = Instant::now();
            let mut member = bench.member(kind, &url, &subject, QUEUE, run_number, 65_536)?;
            wait_for_subscription(&monitor, &subject, &mut member, bench.config.child_timeout)
                .await?;
            startup[index].push(started.elapsed().as_secs_f64() * 1000.0);

            member
                .wait_for_line("Waiting for tasks", bench.config.child_timeout)
                .await?;
            let count = bench.config.memory_count;
            publish_windowed(&publisher, &subject, &mut member, count).await?;
            memory[index].push(member.peak_rss_bytes()? as f64 / MEBIBYTE);
            member.stop(bench.config.child_timeout).await?;
        }
    }

    let label = |kind: Kind| match kind {
        Kind::Worker => "worker",
        Kind::Python => "nats-py subscriber",
    };
    let mut memory = memory.into_iter();
    let mut startup = startup.into_iter();
    let ours_memory = Measured::new(label(Kind::Worker), memory.next().unwrap_or_default());
    let ours_startup = Measured::new(label(Kind::Worker), startup.next().unwrap_or_default());
    let memory_row = |reference: Option<Measured>| Row {
        case: format!("peak RSS after {} tasks", bench.config.memory_count),
        unit: Unit::Mebibytes,
        ours: ours_memory.clone(),
        reference,
        note: format!("VmHWM; at most {WINDOW} tasks outstanding"),
    };
    let startup_row = |reference: Option<Measured>| Row {
        case: "start-up to subscription".to_owned(),
        unit: Unit::Milliseconds,
        ours: ours_startup.clone(),
        reference,
        note: "spawn until /connz?subs=1 lists the subscription".to_owned(),
    };
    let mut rows = vec![memory_row(None), startup_row(None)];
    if let (Some(python_memory), Some(python_startup)) = (memory.next(), startup.next()) {
        rows.push(memory_row(Some(Measured::new(
            label(Kind::Python),
            python_memory,
        ))));
        rows.push(startup_row(Some(Measured::new(
            label(Kind::Python),
            python_startup,
        ))));
    }
    Ok(rows)
}

/// Publishes `count` tasks to `member`, never more than [`WINDOW`] ahead of its count.
async fn publish_windowed(
    client: &Client,
    subject: &str,
    member: &mut Child,
    count: u32,
) -> anyhow::Result<()> {
    let payload = task_payload("MEMORY-000001", 64);
    let subject = Subject::from(subject);
    let target = member.counted() + u64::from(count);
    let mut published = member.counted();
    let deadline = Instant::now() + run_timeout(count);
    while member.counted() < target {
        while published < target && published - member.counted() < WINDOW {
            client
                .publish(subject.clone(), payload.clone())
                .await
                .context("publish failed")?;
            published += 1;
        }
        client.flush().await.context("flush failed")?;
        member.check_running()?;
        if Instant::now() >= deadline {
            bail!(
                "{} processed {} of {count} tasks in time",
                member.name(),
                member.counted()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Polls the server's monitor until a connection lists a subscription on `subject`.
async fn wait_for_subscription(
    monitor_url: &str,
    subject: &str,
    member: &mut Child,
    timeout: Duration,
) -> anyhow::Result<()> {
    let address = monitor_url
        .strip_prefix("http://")
        .with_context(|| format!("monitor URL {monitor_url} is not http://HOST:PORT"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let connz = fetch(address, "/connz?subs=1").await?;
        let listed = connz["connections"].as_array().is_some_and(|connections| {
            connections.iter().any(|connection| {
                connection["subscriptions_list"]
                    .as_array()
                    .is_some_and(|subjects| subjects.iter().any(|listed| listed == subject))
            })
        });
        if listed {
            return Ok(());
        }
        member.check_running()?;
        if Instant::now() >= deadline {
            bail!(
                "the server listed no subscription on {subject} within {timeout:?}\n{}",
                member.transcript()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Fetches a monitoring endpoint with a plain HTTP/1.0 request and parses its JSON body.
async fn fetch(address: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot reach the monitor at {address}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).with_context(|| format!("{path} did not return JSON"))
}
