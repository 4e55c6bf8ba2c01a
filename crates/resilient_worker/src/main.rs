//! Step 4: a worker that retries a failing task, then parks it on a dead-letter subject.
//!
//! Core NATS delivers each message at most once. When a worker fails a task, the server
//! does not send it again, to this worker or to any other member of the queue group. So
//! this worker retries the task itself, pausing between attempts for a backoff that doubles
//! each time, and after the last failed attempt publishes the original payload unchanged
//! to a dead-letter subject, with headers that say why (see `common::dead_letter`). A
//! payload that is not a task goes there at once, because retrying cannot fix it. The
//! companion binary `replay_dead_letters` sends dead letters back to the work subject.
//!
//! Run two workers that fail half of their attempts, the replay tool and a publisher, each
//! in its own terminal:
//!
//! ```text
//! cargo run --bin resilient_worker -- 1 --failure-rate 0.5
//! cargo run --bin resilient_worker -- 2 --failure-rate 0.5
//! cargo run --bin replay_dead_letters
//! cargo run --bin task_publisher -- --subject tasks.risky
//! ```
//!
//! Each delivery of a task ends in exactly one worker's terminal: as `[Worker 1] ✓
//! Completed TASK-007 (success: 5)`, possibly after one or two lines such as `[Worker 1] ✗
//! Failed processing TASK-007 (attempt 1/3): simulated failure; retrying in 100ms`, or as
//! `[Worker 1] ☠ TASK-007 sent to tasks.risky.dead after 3 attempts`. The replay tool then
//! prints `Replayed TASK-007 to tasks.risky …`, and the task is delivered again for three
//! new attempts. Press Ctrl-C in a worker's terminal: it finishes the tasks already
//! delivered to it, retries included, and prints its `Final Stats`. A second Ctrl-C stops
//! it at once.
//!
//! The failures are random. Each worker prints the seed it drew, and `--seed` with that
//! number fails the same attempts again, as long as the worker receives the same tasks in
//! the same order. Dead letters are ordinary core NATS messages: one published while
//! nothing subscribes to the dead-letter subject is dropped.

mod stats;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use async_nats::{Client, Message};
use chrono::{DateTime, Utc};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use common::connection::ClientSettings;
use common::consume::{MemberArgs, consume, dropped_messages};
use common::dead_letter::{self, DeadLetter};
use common::report::{Completion, Outcome, ReportArgs, Reporter};
use common::task::preview;
use common::{ConnectArgs, DecodeError, Shutdown, Task, names, parse_duration};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::stats::{Stats, Summary, attempts_text};

/// Subject the risky tasks are published on.
const DEFAULT_SUBJECT: &str = "tasks.risky";
/// Queue group every resilient worker joins; the server gives each task to one member.
const DEFAULT_QUEUE: &str = "risky-workers";
/// Chance that one attempt fails, as in the tutorial.
const DEFAULT_FAILURE_RATE: f64 = 0.2;
/// Simulated work of a successful attempt, in seconds, as in the tutorial.
const DEFAULT_WORK_TIME: &str = "0.5";
/// Attempts per task, the first one included.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Pause before the second attempt; it doubles before each later one.
const DEFAULT_BACKOFF: &str = "100ms";
/// Maximum pause between two attempts, however many attempts are allowed.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the server has to confirm a dead letter.
const DEFAULT_FLUSH_TIMEOUT: &str = "5s";

/// A member of a NATS queue group whose tasks fail at random: it retries each failed task
/// and sends the ones it gives up on to a dead-letter subject.
///
/// The companion binary `replay_dead_letters` sends dead letters back to the subject they
/// came from. Core NATS stores nothing, so start it, or another subscriber to the
/// dead-letter subject, before the tasks fail.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Worker id, shown in every line, in the `Dead-Letter-Worker` header and in the
    /// default connection name `resilient_worker-<ID>`.
    #[arg(default_value = "1")]
    id: String,

    /// Subject to receive tasks on.
    #[arg(long, default_value = DEFAULT_SUBJECT, value_parser = names::subscribe_subject)]
    subject: String,

    /// Queue group to join; workers with the same group share the tasks.
    #[arg(long, default_value = DEFAULT_QUEUE, value_parser = names::queue_group)]
    queue: String,

    /// Chance that one attempt fails, from 0.0 (never) to 1.0 (always).
    #[arg(long, default_value_t = DEFAULT_FAILURE_RATE, value_parser = parse_failure_rate, allow_negative_numbers = true, value_name = "RATE")]
    failure_rate: f64,

    /// Seed for the random failures. The same seed fails the same attempts again when the
    /// worker receives the same tasks in the same order, with the same build
    /// [default: a random seed, printed at start].
    #[arg(long, value_name = "NUMBER")]
    seed: Option<u64>,

    /// Simulated work of a successful attempt (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = DEFAULT_WORK_TIME, value_parser = parse_duration, value_name = "DURATION")]
    work_time: Duration,

    /// Attempts per task, the first one included, before it goes to the dead-letter subject.
    #[arg(long, default_value_t = DEFAULT_MAX_ATTEMPTS, value_parser = parse_max_attempts, allow_negative_numbers = true, value_name = "N")]
    max_attempts: u32,

    /// Pause before the second attempt, doubled before each later one, at most 30s
    /// (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = DEFAULT_BACKOFF, value_parser = parse_duration, value_name = "DURATION")]
    backoff: Duration,

    /// Subject for the tasks this worker gives up on and the payloads that are not tasks.
    /// Defaults to the work subject followed by `.dead`, such as `tasks.risky.dead`.
    #[arg(long, value_parser = names::publish_subject, value_name = "SUBJECT")]
    dead_letter_subject: Option<String>,

    /// How long the server has to confirm a dead letter before the message counts as lost
    /// (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = DEFAULT_FLUSH_TIMEOUT, value_parser = parse_duration, value_name = "DURATION")]
    flush_timeout: Duration,

    /// Print the final stats as one JSON object instead of the prose summary.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    member: MemberArgs,

    #[command(flatten)]
    reports: ReportArgs,

    #[command(flatten)]
    connect: ConnectArgs,
}

fn parse_failure_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "invalid failure rate {text:?}: expected a number from 0.0 (never fail) to 1.0 (always fail)"
        )),
    }
}

fn parse_max_attempts(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(attempts) if attempts >= 1 => Ok(attempts),
        _ => Err(format!(
            "invalid attempt count {text:?}: expected a whole number, at least 1"
        )),
    }
}

impl Args {
    /// Returns the dead-letter subject: `--dead-letter-subject`, or else one derived from
    /// `--subject`.
    fn dead_letter_subject(&self) -> String {
        self.dead_letter_subject
            .clone()
            .unwrap_or_else(|| dead_letter::default_subject(&self.subject))
    }

    /// Rejects subjects this worker would publish to and also receive from, because each
    /// dead letter or report would come back to the queue group as a new message.
    fn check_subjects(&self) -> Result<(), clap::Error> {
        let published = [
            ("dead-letter subject", Some(self.dead_letter_subject())),
            ("results subject", self.reports.subject(&self.subject)),
        ];
        for (what, subject) in published {
            let Some(subject) = subject else { continue };
            if dead_letter::subject_matches(&self.subject, &subject) {
                return Err(Self::command().error(
                    ErrorKind::ArgumentConflict,
                    format!(
                        "the {what} {subject:?} is matched by --subject {:?}, so the workers would receive what they publish there; choose a subject outside it",
                        self.subject
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = args.check_subjects() {
        error.exit();
    }
    let secrets = args.connect.secrets();
    common::logging::init(env!("CARGO_CRATE_NAME"), secrets.clone());

    match run(args, Shutdown::from_signals()).await {
        Ok(code) => code,
        Err(error) => common::logging::report_error(&error, &secrets),
    }
}

async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<ExitCode> {
    let settings = ClientSettings {
        default_name: format!("resilient_worker-{}", args.id),
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

    let seed = args.seed.unwrap_or_else(rand::random);
    let worker = Worker {
        reporter: Reporter::new(client.clone(), args.reports.subject(&args.subject)),
        dead_letter_subject: args.dead_letter_subject(),
        client: client.clone(),
        id: args.id,
        failure_rate: args.failure_rate,
        random: RefCell::new(StdRng::seed_from_u64(seed)),
        work_time: args.work_time,
        retry: RetryPolicy {
            max_attempts: args.max_attempts,
            backoff: args.backoff,
        },
        flush_timeout: args.flush_timeout,
        stats: Cell::new(Stats::default()),
    };
    println!(
        "[Worker {}] Started (failure rate: {:.1}%)",
        worker.id,
        worker.failure_rate * 100.0
    );
    println!(
        "[Worker {}] Joined queue group: '{}'",
        worker.id, args.queue
    );
    println!(
        "[Worker {}] Random seed: {seed} (repeat this run with --seed {seed})",
        worker.id
    );
    println!(
        "[Worker {}] Tasks that fail {} go to {}",
        worker.id,
        attempts_text(worker.retry.max_attempts),
        worker.dead_letter_subject
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
    let summary = Summary {
        worker: &worker.id,
        seed,
        max_attempts: worker.retry.max_attempts,
        dead_letter_subject: &worker.dead_letter_subject,
        stats: worker.stats.get(),
        abandoned,
        dropped: dropped_messages(&client, worker.stats.get().handled() + abandoned),
        capacity: args.member.capacity,
    };
    if args.json {
        summary.print_json();
    } else {
        summary.print_prose();
    }
    if let Some(line) = ending.abandoned_message() {
        // With --json, stdout holds only the JSON object, which has an `abandoned` field.
        if args.json {
            tracing::warn!(worker = %worker.id, "{line}");
        } else {
            println!("[Worker {}] {line}", worker.id);
        }
        return Ok(ExitCode::FAILURE);
    }
    // Sends anything still buffered, such as the last completion reports, and closes the
    // connection cleanly.
    client
        .drain()
        .await
        .context("cannot close the connection")?;
    Ok(ExitCode::SUCCESS)
}

/// How many times a task is tried, and how long to pause between two attempts.
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    max_attempts: u32,
    /// Pause after the first failure; each later one is twice the one before.
    backoff: Duration,
}

impl RetryPolicy {
    /// Computes the pause after failed attempt number `attempt` (1-based): `backoff`, then
    /// twice that, and so on, capped at [`MAX_BACKOFF`].
    fn pause_after(&self, attempt: u32) -> Duration {
        let factor = 1_u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

/// The error of an attempt that the random draw made fail.
#[derive(Debug)]
struct SimulatedFailure;

impl fmt::Display for SimulatedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("simulated failure")
    }
}

/// One worker's settings, random source and counts.
#[derive(Debug)]
struct Worker {
    /// Publishes dead letters and waits for the server to confirm them.
    client: Client,
    reporter: Reporter,
    id: String,
    failure_rate: f64,
    /// Decides which attempts fail. Seeded, so that a run can be repeated.
    random: RefCell<StdRng>,
    work_time: Duration,
    retry: RetryPolicy,
    dead_letter_subject: String,
    flush_timeout: Duration,
    stats: Cell<Stats>,
}

impl Worker {
    async fn handle(&self, message: &Message) {
        let task = match Task::from_bytes(&message.payload) {
            Ok(task) => task,
            Err(error) => return self.reject(message, &error).await,
        };
        let started_at = Utc::now();
        let max_attempts = self.retry.max_attempts;

        // The retries happen here, inside the worker, because core NATS will not deliver
        // the task again. Meanwhile the tasks the server sends this member wait in its
        // buffer, and the other members of the group keep taking theirs.
        let mut attempt = 1;
        let result = loop {
            match self.attempt().await {
                Ok(()) => break Ok(()),
                Err(failure) if attempt < max_attempts => {
                    let pause = self.retry.pause_after(attempt);
                    println!(
                        "[Worker {}] ✗ Failed processing {} (attempt {attempt}/{max_attempts}): {failure}; retrying in {pause:?}",
                        self.id, task.task_id
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(failure) => {
                    println!(
                        "[Worker {}] ✗ Failed processing {} (attempt {attempt}/{max_attempts}): {failure}",
                        self.id, task.task_id
                    );
                    break Err(failure);
                }
            }
        };

        match result {
            Ok(()) => self.complete(task, attempt, started_at).await,
            Err(failure) => {
                self.give_up(message, task, attempt, &failure, started_at)
                    .await;
            }
        }
    }

    /// Runs one attempt at the simulated work. As in the tutorial, a failing attempt fails
    /// at once and a successful one takes the work time.
    async fn attempt(&self) -> Result<(), SimulatedFailure> {
        // rand 0.10 draws an f64 from [0, 1), so a rate of 0.0 never fails and 1.0 always
        // does.
        let roll: f64 = self.random.borrow_mut().random();
        if roll < self.failure_rate {
            return Err(SimulatedFailure);
        }
        // Stands in for real work, such as charging a card through a flaky payment API.
        // Even a zero sleep waits for the timer's next 1 ms tick, so none is taken then.
        if !self.work_time.is_zero() {
            tokio::time::sleep(self.work_time).await;
        }
        Ok(())
    }

    async fn complete(&self, task: Task, attempts: u32, started_at: DateTime<Utc>) {
        let mut stats = self.stats.get();
        stats.succeeded += 1;
        if attempts > 1 {
            stats.retried += 1;
        }
        self.stats.set(stats);

        if attempts == 1 {
            println!(
                "[Worker {}] ✓ Completed {} (success: {})",
                self.id, task.task_id, stats.succeeded
            );
        } else {
            println!(
                "[Worker {}] ✓ Completed {} on attempt {attempts}/{} (success: {})",
                self.id, task.task_id, self.retry.max_attempts, stats.succeeded
            );
        }
        self.report(task.task_id, Outcome::Completed, attempts, started_at)
            .await;
    }

    /// Sends a task that failed every attempt to the dead-letter subject.
    async fn give_up(
        &self,
        message: &Message,
        task: Task,
        attempts: u32,
        failure: &SimulatedFailure,
        started_at: DateTime<Utc>,
    ) {
        let dead_letter = DeadLetter {
            subject: message.subject.to_string(),
            reason: failure.to_string(),
            attempts,
            worker: self.id.clone(),
        };
        if let Err(error) = self.publish_dead_letter(message, &dead_letter).await {
            self.lose(&task.task_id, &error);
            return;
        }

        let mut stats = self.stats.get();
        stats.dead_lettered += 1;
        self.stats.set(stats);
        println!(
            "[Worker {}] ☠ {} sent to {} after {}",
            self.id,
            task.task_id,
            self.dead_letter_subject,
            attempts_text(attempts)
        );
        self.report(task.task_id, Outcome::DeadLettered, attempts, started_at)
            .await;
    }

    /// Sends a payload that is not a task to the dead-letter subject at once: no retry can
    /// turn it into one.
    async fn reject(&self, message: &Message, error: &DecodeError) {
        let payload = preview(&message.payload);
        tracing::warn!(
            subject = %message.subject,
            size = message.payload.len(),
            %payload,
            "a message is not a task: {error}; sending it to the dead-letter subject"
        );

        let dead_letter = DeadLetter {
            subject: message.subject.to_string(),
            reason: error.to_string(),
            attempts: 1,
            worker: self.id.clone(),
        };
        if let Err(error) = self.publish_dead_letter(message, &dead_letter).await {
            self.lose(&format!("payload {payload}"), &error);
            return;
        }

        let mut stats = self.stats.get();
        stats.rejected += 1;
        self.stats.set(stats);
        println!(
            "[Worker {}] ☠ Payload {payload} is not a task; sent to {} after 1 attempt",
            self.id, self.dead_letter_subject
        );
        // No completion report: a report names a task, and this payload has no task id.
    }

    /// Publishes the original payload, unchanged, with the dead-letter headers, and waits
    /// until the server has it.
    async fn publish_dead_letter(
        &self,
        message: &Message,
        dead_letter: &DeadLetter,
    ) -> anyhow::Result<()> {
        let headers = dead_letter.headers(message.headers.as_ref());
        self.client
            .publish_with_headers(
                self.dead_letter_subject.clone(),
                headers,
                message.payload.clone(),
            )
            .await
            .context("publish failed")?;

        // `publish` only queues the message in the client. The flush returns once the
        // server has replied with a PONG to a PING sent after it, so the server has the dead
        // letter. It does not mean that anything is subscribed to the dead-letter subject.
        // NOTE: the client keeps the dead letter queued, so if it reconnects later it
        // may still send it, and a message counted as lost can appear there after all.
        common::limits::flush_within(&self.client, self.flush_timeout).await
    }

    /// Counts a message whose dead letter the server did not confirm.
    fn lose(&self, label: &str, error: &anyhow::Error) {
        let mut stats = self.stats.get();
        stats.lost += 1;
        self.stats.set(stats);
        tracing::error!(
            dead_letter_subject = %self.dead_letter_subject,
            "cannot publish the dead letter of {label}, so it is lost: {error:#}"
        );
        println!(
            "[Worker {}] ✗ {label} lost: it could not be sent to {}",
            self.id, self.dead_letter_subject
        );
        // NOTE: a lost task gets no completion report, so a publisher that waits for one
        // report per task waits for this one until its own timeout.
    }

    async fn report(
        &self,
        task_id: String,
        outcome: Outcome,
        attempts: u32,
        started_at: DateTime<Utc>,
    ) {
        self.reporter
            .report(&Completion {
                task_id,
                worker: self.id.clone(),
                outcome,
                attempts,
                concurrency: 1,
                started_at,
                finished_at: Utc::now(),
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = RetryPolicy {
            max_attempts: 40,
            backoff: Duration::from_millis(100),
        };
        assert_eq!(retry.pause_after(1), Duration::from_millis(100));
        assert_eq!(retry.pause_after(2), Duration::from_millis(200));
        assert_eq!(retry.pause_after(3), Duration::from_millis(400));
        assert_eq!(retry.pause_after(20), MAX_BACKOFF);
        assert_eq!(retry.pause_after(39), MAX_BACKOFF);
    }

    #[test]
    fn failure_rate_must_be_a_probability() {
        assert_eq!(parse_failure_rate("0"), Ok(0.0));
        assert_eq!(parse_failure_rate("0.3"), Ok(0.3));
        assert_eq!(parse_failure_rate("1.0"), Ok(1.0));
        for bad in ["1.5", "-0.1", "NaN", "20%", ""] {
            let error = parse_failure_rate(bad).expect_err(bad);
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn max_attempts_must_be_at_least_one() {
        assert_eq!(parse_max_attempts("1"), Ok(1));
        for bad in ["0", "-1", "three"] {
            assert!(parse_max_attempts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dead_letters_must_not_loop_back() {
        let looping = Args::try_parse_from([
            "resilient_worker",
            "--subject",
            "tasks.>",
            "--dead-letter-subject",
            "tasks.risky.dead",
        ])
        .expect("each value is valid on its own");
        let error = looping.check_subjects().expect_err("loops");
        assert!(error.to_string().contains("tasks.risky.dead"), "{error}");

        let default = Args::try_parse_from(["resilient_worker"]).expect("defaults are valid");
        assert_eq!(default.dead_letter_subject(), "tasks.risky.dead");
        assert!(default.check_subjects().is_ok());
    }
}
