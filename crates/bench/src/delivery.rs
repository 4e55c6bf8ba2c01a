//! Queue group delivery: end-to-end messages per second through 1, 3 and 5 members.
//!
//! One bare async-nats publisher in this process sends the same pre-encoded task over and
//! over, as fast as the connection takes it, and the clock stops when the members have
//! received every message between them. The members are `worker --work-time 0
//! --no-results` processes (counted by their `Completed task` lines, which come after
//! decoding and printing), bare async-nats queue subscribers in this process (counted as
//! they arrive), and, with Python, the nats-py subscriber script.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use crate::child::{Child, POLL, processed_from_summary, wait_for_total};
use crate::stats::{Measured, Row, Sample, Unit};
use crate::{Bench, connect, start_server, task_payload};

/// Queue group every member joins.
const QUEUE: &str = "bench-delivery";
/// Bytes of `data` in each task.
const DATA_SIZE: usize = 64;

/// Measures each group size, alternating the kinds of member within each run.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let count = bench.config.delivery_count;
    for &members in &bench.config.group_sizes {
        let server = start_server();
        let url = server.client_url();
        let publisher = connect(&url, None).await?;
        let payload = task_payload("DELIVERY-000001", DATA_SIZE);
        // Room for a whole run, so that no member drops messages as a slow consumer.
        let capacity = count as usize + 1_000;

        let mut workers = Group::processes(bench, Kind::Worker, &url, members, capacity).await?;
        let mut bare = BareGroup::start(&url, members, capacity).await?;
        let mut python = match &bench.python {
            Some(_) => Some(Group::processes(bench, Kind::Python, &url, members, capacity).await?),
            None => None,
        };

        for run in 1..=bench.config.runs {
            tracing::info!(members, run, "queue group delivery");
            workers.measure(&publisher, &payload, count).await?;
            bare.measure(&publisher, &payload, count).await?;
            if let Some(python) = &mut python {
                python.measure(&publisher, &payload, count).await?;
            }
        }

        let case = if members == 1 {
            "delivery, 1 member".to_owned()
        } else {
            format!("delivery, {members} members")
        };
        let worker_shares = workers.shares.clone();
        let ours = Measured::new("worker", workers.rates.clone());
        workers.stop(bench).await?;
        rows.push(Row {
            case: case.clone(),
            unit: Unit::MessagesPerSecond,
            ours: ours.clone(),
            reference: Some(Measured::new(
                "bare async-nats subscribers",
                bare.rates.clone(),
            )),
            note: share_note(count, members, &worker_shares, &bare.shares),
        });
        if let Some(python) = python {
            let python_shares = python.shares.clone();
            let rates = python.rates.clone();
            python.stop(bench).await?;
            rows.push(Row {
                case,
                unit: Unit::MessagesPerSecond,
                ours,
                reference: Some(Measured::new("nats-py subscribers", rates)),
                note: share_note(count, members, &worker_shares, &python_shares),
            });
        }
    }
    Ok(rows)
}

/// Describes the message counts: the smallest and largest share any one member received,
/// over all runs, for ours and for the reference.
fn share_note(count: u32, members: usize, ours: &Sample, reference: &Sample) -> String {
    if members == 1 {
        return format!("{count} tasks of {DATA_SIZE} B data per run");
    }
    let percent = |value: f64| format!("{:.0}", value * 100.0);
    format!(
        "{count} tasks per run; member shares ours {}–{} %, reference {}–{} % (even: {} %)",
        percent(ours.min()),
        percent(ours.max()),
        percent(reference.min()),
        percent(reference.max()),
        percent(1.0 / members as f64)
    )
}

/// Publishes `payload` `count` times and flushes.
pub(crate) async fn publish_burst(
    client: &Client,
    subject: &str,
    payload: &Bytes,
    count: u32,
) -> anyhow::Result<()> {
    let subject = Subject::from(subject);
    for _ in 0..count {
        client
            .publish(subject.clone(), payload.clone())
            .await
            .context("publish failed")?;
    }
    client.flush().await.context("flush failed")
}

/// The kind of member process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Worker,
    Python,
}

/// Member processes of one queue group, with the figures of every run so far.
#[derive(Debug)]
struct Group {
    subject: String,
    members: Vec<Child>,
    rates: Sample,
    /// Each member's share of each run's messages, from 0 to 1.
    shares: Sample,
}

impl Group {
    async fn processes(
        bench: &Bench,
        kind: Kind,
        url: &str,
        members: usize,
        capacity: usize,
    ) -> anyhow::Result<Self> {
        let subject = match kind {
            Kind::Worker => "bench.delivery.worker",
            Kind::Python => "bench.delivery.python",
        };
        let mut children = Vec::with_capacity(members);
        for id in 1..=members {
            let mut child = bench.member(kind, url, subject, QUEUE, id, capacity)?;
            child
                .wait_for_line("Waiting for tasks", bench.config.child_timeout)
                .await?;
            children.push(child);
        }
        Ok(Self {
            subject: subject.to_owned(),
            members: children,
            rates: Sample::default(),
            shares: Sample::default(),
        })
    }

    async fn measure(
        &mut self,
        publisher: &Client,
        payload: &Bytes,
        count: u32,
    ) -> anyhow::Result<()> {
        let before: Vec<u64> = self.members.iter().map(Child::counted).collect();
        let target = before.iter().sum::<u64>() + u64::from(count);
        let started = Instant::now();
        publish_burst(publisher, &self.subject, payload, count).await?;
        let finished = wait_for_total(&mut self.members, target, run_timeout(count)).await?;
        self.rates
            .push(f64::from(count) / (finished - started).as_secs_f64());
        for (member, before) in self.members.iter().zip(before) {
            self.shares
                .push((member.counted() - before) as f64 / f64::from(count));
        }
        Ok(())
    }

    /// Stops every member and checks that each summary matches the lines counted.
    async fn stop(self, bench: &Bench) -> anyhow::Result<()> {
        for member in self.members {
            let counted = member.counted();
            let name = member.name().to_owned();
            let lines = member.stop(bench.config.child_timeout).await?;
            let processed = processed_from_summary(&lines);
            if processed != Some(counted) {
                bail!(
                    "{name} completed {counted} tasks but its summary reports {processed:?}: {lines:?}"
                );
            }
        }
        Ok(())
    }
}

/// Queue subscribers in this process, each on its own connection as separate processes
/// would be, counting messages and nothing else.
#[derive(Debug)]
struct BareGroup {
    counters: Vec<Arc<AtomicU64>>,
    /// Kept so that the connections stay open until the group is dropped.
    _clients: Vec<Client>,
    rates: Sample,
    shares: Sample,
}

/// Subject of the bare subscribers.
const BARE_SUBJECT: &str = "bench.delivery.bare";

impl BareGroup {
    async fn start(url: &str, members: usize, capacity: usize) -> anyhow::Result<Self> {
        let mut counters = Vec::with_capacity(members);
        let mut clients = Vec::with_capacity(members);
        for _ in 0..members {
            let client = connect(url, Some(capacity)).await?;
            let mut subscriber = client
                .queue_subscribe(BARE_SUBJECT, QUEUE.to_owned())
                .await
                .context("bare queue subscribe failed")?;
            client.flush().await.context("bare flush failed")?;
            let counter = Arc::new(AtomicU64::new(0));
            let count = Arc::clone(&counter);
            tokio::spawn(async move {
                while subscriber.next().await.is_some() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
            counters.push(counter);
            clients.push(client);
        }
        Ok(Self {
            counters,
            _clients: clients,
            rates: Sample::default(),
            shares: Sample::default(),
        })
    }

    fn total(&self) -> u64 {
        self.counters
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .sum()
    }

    async fn measure(
        &mut self,
        publisher: &Client,
        payload: &Bytes,
        count: u32,
    ) -> anyhow::Result<()> {
        let before: Vec<u64> = self
            .counters
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .collect();
        let target = before.iter().sum::<u64>() + u64::from(count);
        let timeout = run_timeout(count);
        let started = Instant::now();
        publish_burst(publisher, BARE_SUBJECT, payload, count).await?;
        while self.total() < target {
            if started.elapsed() > timeout {
                bail!(
                    "bare subscribers received {} of {count} messages within {timeout:?}",
                    self.total() - before.iter().sum::<u64>()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        self.rates
            .push(f64::from(count) / started.elapsed().as_secs_f64());
        for (counter, before) in self.counters.iter().zip(before) {
            let received = counter.load(Ordering::Relaxed) - before;
            self.shares.push(received as f64 / f64::from(count));
        }
        Ok(())
    }
}

/// Returns the maximum time one run may take: 30 s plus 0.5 ms per message, which leaves
/// room for one `worker`, which handles about 1,000 messages a second.
pub(crate) fn run_timeout(count: u32) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(u64::from(count) / 2)
}
