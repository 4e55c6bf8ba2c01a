//! Step 3: publishes a batch of heavy tasks and measures how long the queue group takes.
//!
//! With workers running (`cargo run --bin scalable_processor -- 1 2.0`, and more):
//!
//! ```text
//! cargo run --bin load_generator              # publish 50 tasks, report the publish rate
//! cargo run --bin load_generator -- --wait    # and wait until the workers have done them
//! ```
//!
//! It prints `All tasks published in 0.01s` and `Rate: … tasks/sec`. With `--wait` it then
//! collects the workers' completion reports and prints the makespan (first publish to last
//! completion), how many tasks each worker did, and the ideal makespan for that many
//! workers, so a claim such as "five workers are five times faster" becomes a measured
//! ratio. `--json` prints every figure as one JSON object instead.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::{Client, Subscriber};
use clap::Parser;
use common::connection::ClientSettings;
use common::report::{Completion, Outcome, default_results_subject};
use common::{ConnectArgs, Task, names, parse_duration};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Subject the Step 3 workers subscribe to.
const DEFAULT_SUBJECT: &str = "tasks.heavy";
/// Prefix of the task ids: `HEAVY-001`, `HEAVY-002`, …
const DEFAULT_PREFIX: &str = "HEAVY";
/// Number of progress lines printed for a batch, whatever its size.
const PROGRESS_LINES: u32 = 5;

/// Publishes a batch of tasks and, with `--wait`, measures how long the workers take.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of tasks to publish.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,

    /// Bytes of filler in each task's `data` field, to publish larger messages.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    payload_size: usize,

    /// Messages per second; without it, as fast as the connection takes them.
    #[arg(long, value_parser = parse_rate, value_name = "PER_SECOND")]
    rate: Option<f64>,

    /// Subject to publish the tasks on.
    #[arg(long, default_value = DEFAULT_SUBJECT, value_parser = names::publish_subject)]
    subject: String,

    /// Prefix of the task ids.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    prefix: String,

    /// Wait for a completion report for every task, then print the makespan.
    #[arg(long)]
    wait: bool,

    /// Subject the workers publish completion reports on [default: the --subject value
    /// followed by .done].
    #[arg(long, value_parser = names::subscribe_subject, value_name = "SUBJECT")]
    results_subject: Option<String>,

    /// Maximum time `--wait` waits for the reports (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    wait_timeout: Duration,

    /// How long the server may take to confirm the batch before it counts as lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    flush_timeout: Duration,

    /// Print the figures as one JSON object instead of text.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    connect: ConnectArgs,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "invalid rate {text:?}: expected messages per second, a number above 0"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let secrets = args.connect.secrets();
    common::logging::init(env!("CARGO_CRATE_NAME"), secrets.clone());

    match run(args).await {
        Ok(code) => code,
        Err(error) => common::logging::report_error(&error, &secrets),
    }
}

/// Every figure of one run, printed by `--json`.
#[derive(Debug, Serialize)]
struct Figures {
    count: u32,
    payload_size: usize,
    subject: String,
    publish_seconds: f64,
    rate_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion: Option<CompletionFigures>,
}

/// Figures measured by `--wait`.
#[derive(Debug, Serialize)]
struct CompletionFigures {
    results_subject: String,
    completed: u64,
    dead_lettered: u64,
    missing: u64,
    duplicates: u64,
    /// From the first publish to the last completion report.
    makespan_seconds: f64,
    /// Mean of each task's own processing time, as its worker reported it.
    mean_task_seconds: f64,
    /// Sum of all tasks' processing times: the makespan of one worker doing one at a time.
    sequential_seconds: f64,
    /// Workers that reported at least one task.
    workers: usize,
    /// Tasks those workers can work on at once, summed over the workers.
    slots: u64,
    /// The makespan if every slot got an equal share: ceil(count / slots) tasks each.
    ideal_makespan_seconds: f64,
    /// sequential / makespan: how many tasks were in progress on average.
    speedup: f64,
    tasks_per_worker: BTreeMap<String, u64>,
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (client, _events) = args
        .connect
        .connect(&ClientSettings::named("load_generator"))
        .await?;

    let results_subject = args
        .results_subject
        .clone()
        .unwrap_or_else(|| default_results_subject(&args.subject));
    // Subscribed before the first publish, so that no report can come before anyone listens.
    let reports = if args.wait {
        let subscriber = client
            .subscribe(results_subject.clone())
            .await
            .context("cannot subscribe to the completion reports")?;
        client
            .flush()
            .await
            .context("the server did not confirm the subscription")?;
        Some(subscriber)
    } else {
        None
    };

    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    say(format!("Generating {} heavy tasks...", args.count));

    let started = Instant::now();
    publish_batch(&client, &args, &say).await?;
    let publish_time = started.elapsed();
    let rate = f64::from(args.count) / publish_time.as_secs_f64().max(f64::EPSILON);
    say(String::new());
    say(format!(
        "All tasks published in {:.2}s",
        publish_time.as_secs_f64()
    ));
    say(format!("Rate: {rate:.1} tasks/sec"));

    let mut figures = Figures {
        count: args.count,
        payload_size: args.payload_size,
        subject: args.subject.clone(),
        publish_seconds: publish_time.as_secs_f64(),
        rate_per_second: rate,
        completion: None,
    };

    let mut code = ExitCode::SUCCESS;
    if let Some(reports) = reports {
        say(String::new());
        say(format!(
            "Waiting for {} completion reports on {results_subject}...",
            args.count
        ));
        let tally = collect_reports(reports, &args, started, &say).await;
        let completion = tally.figures(results_subject, args.count);
        if completion.missing > 0 {
            code = ExitCode::FAILURE;
        }
        if !args.json {
            print_completion(&completion, &tally, args.wait_timeout);
        }
        figures.completion = Some(completion);
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    }
    client
        .drain()
        .await
        .context("cannot close the connection")?;
    Ok(code)
}

/// Publishes the tasks, paced by `--rate`, and waits for the server to confirm them.
async fn publish_batch(client: &Client, args: &Args, say: &dyn Fn(String)) -> anyhow::Result<()> {
    let width = args.count.to_string().len().max(3);
    let filler = (args.payload_size > 0).then(|| "x".repeat(args.payload_size));
    let progress_every = args.count.div_ceil(PROGRESS_LINES).max(10);
    let bar = progress_bar(u64::from(args.count), args.json);
    // A `Subject` clones by reference count, where a `String` would be copied per message.
    let subject = async_nats::Subject::from(args.subject.as_str());
    let started = tokio::time::Instant::now();

    for number in 1..=args.count {
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64(f64::from(number - 1) / rate);
            tokio::time::sleep_until(due).await;
        }
        let task = Task::new(format!("{}-{number:0width$}", args.prefix), filler.clone());
        let payload = task.to_bytes();
        common::limits::ensure_fits(client, &args.subject, payload.len())
            .with_context(|| format!("cannot publish {}", task.task_id))?;
        // While the client reconnects its outgoing queue fills up and `publish` waits for
        // room, so the wait is bounded like the flush below.
        let publish = client.publish(subject.clone(), payload.into());
        match tokio::time::timeout(args.flush_timeout, publish).await {
            Ok(result) => result.with_context(|| format!("cannot publish {}", task.task_id))?,
            Err(_) => anyhow::bail!(
                "cannot publish {}: the client's queue stayed full for {:.1}s, so the server is unreachable; {} of {} tasks were not sent",
                task.task_id,
                args.flush_timeout.as_secs_f64(),
                args.count - number + 1,
                args.count
            ),
        }
        bar.inc(1);
        if number % progress_every == 0 || number == args.count {
            bar.suspend(|| say(format!("Published {number}/{} tasks...", args.count)));
        }
    }
    bar.finish_and_clear();

    common::limits::flush_within(client, args.flush_timeout)
        .await
        .with_context(|| {
            format!(
                "the batch is unconfirmed, so up to {} tasks may not have reached the server",
                args.count
            )
        })
}

/// Creates a progress bar on stderr, drawn only when stderr is a terminal and the batch is
/// long.
fn progress_bar(length: u64, json: bool) -> ProgressBar {
    const SHOWN_FROM: u64 = 10_000;
    if json || length < SHOWN_FROM {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} tasks ({per_sec})") {
        bar.set_style(style);
    }
    bar
}

/// Counts taken from the completion reports received so far.
#[derive(Debug, Default)]
struct Tally {
    seen: HashSet<String>,
    completed: u64,
    dead_lettered: u64,
    duplicates: u64,
    tasks_per_worker: BTreeMap<String, u64>,
    /// Each worker's concurrency, from its reports.
    slots_per_worker: BTreeMap<String, u64>,
    busy_time: Duration,
    makespan: Duration,
    missing_ids: Vec<String>,
}

impl Tally {
    fn figures(&self, results_subject: String, count: u32) -> CompletionFigures {
        let finished = self.completed + self.dead_lettered;
        let workers = self.tasks_per_worker.len();
        let mean = if finished == 0 {
            0.0
        } else {
            self.busy_time.as_secs_f64() / finished as f64
        };
        let slots: u64 = self.slots_per_worker.values().sum();
        let share = u64::from(count).div_ceil(slots.max(1));
        let makespan = self.makespan.as_secs_f64();
        CompletionFigures {
            results_subject,
            completed: self.completed,
            dead_lettered: self.dead_lettered,
            missing: u64::from(count).saturating_sub(finished),
            duplicates: self.duplicates,
            makespan_seconds: makespan,
            mean_task_seconds: mean,
            sequential_seconds: self.busy_time.as_secs_f64(),
            workers,
            slots,
            ideal_makespan_seconds: share as f64 * mean,
            speedup: if makespan > 0.0 {
                self.busy_time.as_secs_f64() / makespan
            } else {
                0.0
            },
            tasks_per_worker: self.tasks_per_worker.clone(),
        }
    }
}

/// Reads completion reports until every task of the batch has one or the wait times out.
async fn collect_reports(
    mut reports: Subscriber,
    args: &Args,
    started: Instant,
    say: &dyn Fn(String),
) -> Tally {
    let width = args.count.to_string().len().max(3);
    let mut expected: HashSet<String> = (1..=args.count)
        .map(|number| format!("{}-{number:0width$}", args.prefix))
        .collect();
    let progress_every = u64::from(args.count.div_ceil(PROGRESS_LINES).max(10));
    let deadline = tokio::time::Instant::now() + args.wait_timeout;
    let mut tally = Tally::default();

    while !expected.is_empty() {
        let message = match tokio::time::timeout_at(deadline, reports.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(_) => break,
        };
        let report = match Completion::from_bytes(&message.payload) {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(subject = %message.subject, %error, "skipped a message that is not a completion report");
                continue;
            }
        };
        if !expected.remove(&report.task_id) {
            // A task of this batch reported twice, or one from another batch.
            if tally.seen.contains(&report.task_id) {
                tally.duplicates += 1;
                tracing::warn!(task_id = %report.task_id, worker = %report.worker, "a task was reported twice");
            }
            continue;
        }

        tally.makespan = started.elapsed();
        tally.busy_time += (report.finished_at - report.started_at)
            .to_std()
            .unwrap_or_default();
        match report.outcome {
            Outcome::Completed => tally.completed += 1,
            Outcome::DeadLettered => tally.dead_lettered += 1,
        }
        tally
            .slots_per_worker
            .insert(report.worker.clone(), u64::from(report.concurrency.max(1)));
        *tally.tasks_per_worker.entry(report.worker).or_default() += 1;
        tally.seen.insert(report.task_id);

        let finished = tally.completed + tally.dead_lettered;
        if finished % progress_every == 0 && !expected.is_empty() {
            say(format!("Completed {finished}/{} tasks...", args.count));
        }
    }

    let mut missing: Vec<String> = expected.into_iter().collect();
    missing.sort();
    tally.missing_ids = missing;
    tally
}

fn print_completion(figures: &CompletionFigures, tally: &Tally, wait_timeout: Duration) {
    let finished = figures.completed + figures.dead_lettered;
    if figures.missing > 0 {
        let shown: Vec<&str> = tally
            .missing_ids
            .iter()
            .take(10)
            .map(String::as_str)
            .collect();
        println!(
            "Timed out after {:.0}s: {finished} of {} tasks reported, {} missing ({}{})",
            wait_timeout.as_secs_f64(),
            finished + figures.missing,
            figures.missing,
            shown.join(", "),
            if tally.missing_ids.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        );
        println!(
            "Is a worker running, with completion reports on {}? Tasks published while no member was subscribed are gone.",
            figures.results_subject
        );
    } else {
        println!(
            "All {finished} tasks completed in {:.2}s (first publish to last completion)",
            figures.makespan_seconds
        );
    }
    if figures.dead_lettered > 0 {
        println!("  of which dead-lettered: {}", figures.dead_lettered);
    }
    if figures.workers == 0 {
        return;
    }

    println!("Tasks per worker:");
    for (worker, tasks) in &figures.tasks_per_worker {
        println!("  worker {worker}: {tasks}");
    }
    println!("Mean time per task: {:.2}s", figures.mean_task_seconds);
    println!(
        "One worker, one task at a time, would take: {:.2}s",
        figures.sequential_seconds
    );
    println!(
        "Ideal with equal shares over {} worker(s), {} task(s) at a time in all: {:.2}s",
        figures.workers, figures.slots, figures.ideal_makespan_seconds
    );
    println!(
        "Speed-up over one task at a time: {:.2}x (ideal {:.2}x)",
        figures.speedup, figures.slots as f64
    );
}
