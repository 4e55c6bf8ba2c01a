//! Step 3: more members in a queue group finish a batch sooner, and this one measures it.
//!
//! Start one worker, publish a batch, and note the time; then do the same with five:
//!
//! ```text
//! cargo run --bin scalable_processor -- 1 2.0
//! cargo run --bin load_generator -- --wait
//!
//! cargo run --bin scalable_processor -- 1 2.0      # and 2, 3, 4, 5 in four more terminals
//! cargo run --bin load_generator -- --wait
//! ```
//!
//! Each worker prints `[Worker 1] ✓ HEAVY-007 done in 2.00s (avg: 2.00s, total: 3)`, and
//! `load_generator --wait` prints how long the batch took against the ideal for that many
//! workers. The server picks a member at random for each task, so five workers rarely get
//! exactly ten tasks each and the batch takes a little longer than a fifth of the time.
//!
//! `--concurrency N` lets one process work on N tasks at once, which helps when a task
//! mostly waits (on a database, a remote API) rather than computes.

use std::cell::Cell;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::Message;
use chrono::Utc;
use clap::Parser;
use common::connection::ClientSettings;
use common::consume::{MemberArgs, consume, dropped_messages};
use common::report::{Completion, Outcome, ReportArgs, Reporter};
use common::task::preview;
use common::{ConnectArgs, Shutdown, Task, names, parse_duration};

/// Subject `load_generator` publishes the heavy tasks on.
const DEFAULT_SUBJECT: &str = "tasks.heavy";
/// Queue group of the Step 3 workers.
const DEFAULT_QUEUE: &str = "heavy-workers";

/// A queue group member whose tasks take a fixed time, for measuring how a group scales.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Worker id, shown in every line and in the default connection name
    /// `scalable_processor-<ID>`.
    #[arg(default_value = "1")]
    id: String,

    /// Time each task takes (seconds, or 500ms, 2s, 1m).
    #[arg(default_value = "2.0", value_parser = parse_duration)]
    processing_time: Duration,

    /// Tasks this process works on at the same time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,

    /// Subject to receive tasks on.
    #[arg(long, default_value = DEFAULT_SUBJECT, value_parser = names::subscribe_subject)]
    subject: String,

    /// Queue group to join; workers with the same group share the tasks.
    #[arg(long, default_value = DEFAULT_QUEUE, value_parser = names::queue_group)]
    queue: String,

    #[command(flatten)]
    member: MemberArgs,

    #[command(flatten)]
    reports: ReportArgs,

    #[command(flatten)]
    connect: ConnectArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let secrets = args.connect.secrets();
    common::logging::init(env!("CARGO_CRATE_NAME"), secrets.clone());

    match run(args, Shutdown::from_signals()).await {
        Ok(code) => code,
        Err(error) => common::logging::report_error(&error, &secrets),
    }
}

async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<ExitCode> {
    let settings = ClientSettings {
        default_name: format!("scalable_processor-{}", args.id),
        subscription_capacity: Some(args.member.capacity),
    };
    let (client, _events) = args.connect.connect_or_stop(&settings, &shutdown).await?;

    let subscriber = client
        .queue_subscribe(args.subject.clone(), args.queue.clone())
        .await
        .context("cannot subscribe")?;
    // Once the flush returns the server has the subscription, so no task published after
    // the "Ready" line can miss this worker.
    client
        .flush()
        .await
        .context("the server did not confirm the subscription")?;

    let worker = Processor {
        id: args.id,
        concurrency: args.concurrency,
        processing_time: args.processing_time,
        reporter: Reporter::new(client.clone(), args.reports.subject(&args.subject)),
        stats: Stats::default(),
    };
    println!("[Worker {}] Started", worker.id);
    println!(
        "[Worker {}] Processing time: {:.2}s per task, {} at a time",
        worker.id,
        args.processing_time.as_secs_f64(),
        args.concurrency
    );
    println!("[Worker {}] Ready for tasks", worker.id);
    println!();

    let on_drain = || {
        println!();
        println!(
            "[Worker {}] Shutting down: finishing the tasks already delivered...",
            worker.id
        );
    };
    let ending = consume(
        subscriber,
        &shutdown,
        args.member.consume_options(usize::from(args.concurrency)),
        on_drain,
        async |message| worker.handle(&message).await,
    )
    .await?;

    let abandoned = ending.abandoned();
    let handed_out = worker.stats.processed.get() + worker.stats.rejected.get() + abandoned;
    worker.print_stats(dropped_messages(&client, handed_out), args.member.capacity);

    if let Some(line) = ending.abandoned_message() {
        println!("[Worker {}] {line}", worker.id);
        return Ok(ExitCode::FAILURE);
    }
    client
        .drain()
        .await
        .context("cannot close the connection")?;
    Ok(ExitCode::SUCCESS)
}

/// Counts of one worker. `Cell`s, because tasks running at once share them on one thread.
#[derive(Debug, Default)]
struct Stats {
    processed: Cell<u64>,
    rejected: Cell<u64>,
    total_time: Cell<Duration>,
}

#[derive(Debug)]
struct Processor {
    id: String,
    /// Tasks handled at once, reported so that a publisher can compute the ideal makespan.
    concurrency: u16,
    processing_time: Duration,
    reporter: Reporter,
    stats: Stats,
}

impl Processor {
    async fn handle(&self, message: &Message) {
        let started = Instant::now();
        let started_at = Utc::now();
        let task = match Task::from_bytes(&message.payload) {
            Ok(task) => task,
            Err(error) => {
                self.stats.rejected.set(self.stats.rejected.get() + 1);
                tracing::warn!(
                    subject = %message.subject,
                    size = message.payload.len(),
                    payload = %preview(&message.payload),
                    "skipped a message that is not a task: {error}"
                );
                return;
            }
        };
        println!("[Worker {}] Processing {}...", self.id, task.task_id);

        // Stands in for work that keeps this task busy, such as a call to a slow service.
        // Even a zero sleep waits for the timer's next 1 ms tick, so none is taken then.
        if !self.processing_time.is_zero() {
            tokio::time::sleep(self.processing_time).await;
        }

        let elapsed = started.elapsed();
        let stats = &self.stats;
        stats.processed.set(stats.processed.get() + 1);
        stats.total_time.set(stats.total_time.get() + elapsed);
        println!(
            "[Worker {}] ✓ {} done in {:.2}s (avg: {:.2}s, total: {})",
            self.id,
            task.task_id,
            elapsed.as_secs_f64(),
            self.average().as_secs_f64(),
            stats.processed.get()
        );

        self.reporter
            .report(&Completion {
                task_id: task.task_id,
                worker: self.id.clone(),
                outcome: Outcome::Completed,
                attempts: 1,
                concurrency: u32::from(self.concurrency),
                started_at,
                finished_at: Utc::now(),
            })
            .await;
    }

    fn average(&self) -> Duration {
        let processed = self.stats.processed.get().max(1);
        self.stats.total_time.get() / u32::try_from(processed).unwrap_or(u32::MAX)
    }

    fn print_stats(&self, dropped: u64, capacity: usize) {
        println!("[Worker {}] Stats:", self.id);
        println!("  Processed: {}", self.stats.processed.get());
        println!("  Avg time: {:.2}s", self.average().as_secs_f64());
        if self.stats.rejected.get() > 0 {
            println!("  Rejected (not a task): {}", self.stats.rejected.get());
        }
        if dropped > 0 {
            println!(
                "  Dropped: {dropped} (slow consumer: the buffer of {capacity} messages was full; these tasks are lost)"
            );
        }
    }
}
