//! Step 1: a worker that joins a queue group, so each task goes to one worker only.
//!
//! Run three workers and a publisher, each in its own terminal:
//!
//! ```text
//! cargo run --bin worker -- 1
//! cargo run --bin worker -- 2
//! cargo run --bin worker -- 3
//! cargo run --bin task_publisher
//! ```
//!
//! Each of the 20 tasks is printed by exactly one worker (`[Worker 2] Completed task
//! TASK-007`), and together the workers complete all of them. Press Ctrl-C in a worker's
//! terminal: it finishes the tasks already delivered to it, then prints how many it
//! processed. A second Ctrl-C stops it at once.

use std::cell::Cell;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use async_nats::Message;
use chrono::Utc;
use clap::Parser;
use common::connection::ClientSettings;
use common::consume::{MemberArgs, consume, dropped_messages};
use common::report::{Completion, Outcome, ReportArgs, Reporter};
use common::task::preview;
use common::{ConnectArgs, Shutdown, Task, names, parse_duration};

/// Subject the tasks are published on, shared with `task_publisher`.
const DEFAULT_SUBJECT: &str = "tasks.process";
/// Queue group every worker joins; the server gives each task to one member.
const DEFAULT_QUEUE: &str = "processors";

/// A member of a NATS queue group that processes one task at a time.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Worker id, shown in every line and in the default connection name `worker-<ID>`.
    #[arg(default_value = "1")]
    id: String,

    /// Subject to receive tasks on.
    #[arg(long, default_value = DEFAULT_SUBJECT, value_parser = names::subscribe_subject)]
    subject: String,

    /// Queue group to join; workers with the same group share the tasks.
    #[arg(long, default_value = DEFAULT_QUEUE, value_parser = names::queue_group)]
    queue: String,

    /// Simulated work per task (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    work_time: Duration,

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
        default_name: format!("worker-{}", args.id),
        subscription_capacity: Some(args.member.capacity),
    };
    let (client, _events) = args.connect.connect_or_stop(&settings, &shutdown).await?;

    // Members of a queue group subscribe with the same subject and the same group name;
    // the server then delivers each message to one of them, chosen at random.
    let subscriber = client
        .queue_subscribe(args.subject.clone(), args.queue.clone())
        .await
        .context("cannot subscribe")?;
    // The flush returns once the server has the subscription, so a publisher started after
    // the "Waiting" line below cannot publish before this worker is a member.
    client
        .flush()
        .await
        .context("the server did not confirm the subscription")?;

    let reporter = Reporter::new(client.clone(), args.reports.subject(&args.subject));
    let worker = Worker {
        reporter,
        id: args.id,
        work_time: args.work_time,
        subject: args.subject,
        processed: Cell::new(0),
        rejected: Cell::new(0),
    };
    println!("[Worker {}] Started", worker.id);
    println!(
        "[Worker {}] Joined queue group: '{}'",
        worker.id, args.queue
    );
    println!("[Worker {}] Waiting for tasks...", worker.id);
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
        args.member.consume_options(1),
        on_drain,
        async |message| worker.handle(&message).await,
    )
    .await?;

    let abandoned = ending.abandoned();
    let handed_out = worker.processed.get() + worker.rejected.get() + abandoned;
    worker.print_summary(dropped_messages(&client, handed_out), args.member.capacity);
    if let Some(line) = ending.abandoned_message() {
        println!("[Worker {}] {line}", worker.id);
        return Ok(ExitCode::FAILURE);
    }
    // Sends anything still buffered and closes the connection cleanly.
    client
        .drain()
        .await
        .context("cannot close the connection")?;
    Ok(ExitCode::SUCCESS)
}

/// One worker's identity and counts.
#[derive(Debug)]
struct Worker {
    reporter: Reporter,
    id: String,
    work_time: Duration,
    subject: String,
    /// Tasks completed.
    processed: Cell<u64>,
    /// Messages that were not tasks.
    rejected: Cell<u64>,
}

impl Worker {
    async fn handle(&self, message: &Message) {
        let task = match Task::from_bytes(&message.payload) {
            Ok(task) => task,
            Err(error) => {
                self.rejected.set(self.rejected.get() + 1);
                tracing::warn!(
                    subject = %message.subject,
                    size = message.payload.len(),
                    payload = %preview(&message.payload),
                    "skipped a message that is not a task: {error}"
                );
                return;
            }
        };

        println!(
            "[Worker {}] Processing message #{}",
            self.id,
            self.processed.get() + 1
        );
        println!("  Task ID: {}", task.task_id);
        println!("  Timestamp: {}", task.timestamp_text());

        // Stands in for real work, such as resizing an image or sending an email.
        let started_at = Utc::now();
        // Even a zero sleep waits for the timer's next 1 ms tick, so none is taken then.
        if !self.work_time.is_zero() {
            tokio::time::sleep(self.work_time).await;
        }

        self.processed.set(self.processed.get() + 1);
        println!("[Worker {}] Completed task {}", self.id, task.task_id);
        self.reporter
            .report(&Completion {
                task_id: task.task_id,
                worker: self.id.clone(),
                outcome: Outcome::Completed,
                attempts: 1,
                concurrency: 1,
                started_at,
                finished_at: Utc::now(),
            })
            .await;
    }

    fn print_summary(&self, dropped: u64, capacity: usize) {
        println!(
            "[Worker {}] Processed {} messages",
            self.id,
            self.processed.get()
        );
        if self.rejected.get() > 0 {
            println!(
                "[Worker {}] Rejected {} message(s) on {} that were not tasks",
                self.id,
                self.rejected.get(),
                self.subject
            );
        }
        if dropped > 0 {
            println!(
                "[Worker {}] Dropped {dropped} message(s) as a slow consumer (buffer of {capacity}); they are lost",
                self.id
            );
        }
    }
}
