//! Step 4, second binary: sends dead letters back to the subject they came from.
//!
//! `resilient_worker` publishes a task it gave up on to its dead-letter subject, with the
//! subject the task was first published on in the `Dead-Letter-Subject` header. This tool
//! subscribes to the dead-letter subject and republishes each payload unchanged to that
//! original subject. The replayed message carries the headers of the original one, without
//! the `Dead-Letter-*` ones, and the queue group takes the task up again for a fresh round
//! of attempts. Core NATS stores nothing, so only dead letters published while this tool is
//! subscribed are replayed.
//!
//! Start a worker that fails half of its attempts, then this tool, then the publisher, each
//! in its own terminal:
//!
//! ```text
//! cargo run --bin resilient_worker -- 1 --failure-rate 0.5
//! cargo run --bin replay_dead_letters -- --count 5
//! cargo run --bin task_publisher -- --subject tasks.risky
//! ```
//!
//! Each dead letter gives one line, such as `Replayed TASK-007 to tasks.risky (worker 1
//! gave up after 3 attempts: simulated failure)`, and the task shows up again in a worker's
//! terminal. The tool stops after `--count` messages, or drains on Ctrl-C, and prints how
//! many it replayed. Without `--count`, a task that fails on every attempt goes round for
//! as long as the tool runs.

use std::cell::Cell;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use async_nats::{Client, Message};
use clap::Parser;
use common::connection::ClientSettings;
use common::consume::{MemberArgs, consume};
use common::dead_letter::{self, DeadLetter};
use common::task::preview;
use common::{ConnectArgs, Shutdown, Task, names, parse_duration};

/// Dead-letter subject that `resilient_worker` publishes to by default.
const DEFAULT_SUBJECT: &str = "tasks.risky.dead";
/// Queue group of the replay tools, so that each dead letter is replayed once even when
/// several tools run.
const DEFAULT_QUEUE: &str = "dead-letter-replayers";
/// Replays of one message before the tool gives up on it.
const DEFAULT_MAX_REPLAYS: u32 = 3;
/// How long the server has to confirm a replayed message.
const DEFAULT_FLUSH_TIMEOUT: &str = "5s";

/// Republishes each dead letter to the subject named in its `Dead-Letter-Subject` header.
///
/// The payload goes back unchanged, with the original message's headers but without the
/// `Dead-Letter-*` ones, so a `resilient_worker` in the queue group tries the task again.
/// Only dead letters published while this tool is subscribed are replayed, because core
/// NATS stores nothing.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Dead-letter subject to receive dead letters on.
    #[arg(long, default_value = DEFAULT_SUBJECT, value_parser = names::subscribe_subject)]
    subject: String,

    /// Queue group to join; replay tools in the same group share the dead letters, so
    /// each one is replayed once.
    #[arg(long, default_value = DEFAULT_QUEUE, value_parser = names::queue_group)]
    queue: String,

    /// Stop after this many messages, replayed or skipped [default: run until Ctrl-C].
    #[arg(long, value_parser = parse_count, allow_negative_numbers = true, value_name = "N")]
    count: Option<u64>,

    /// Times one message may be replayed. A task that still fails after that is skipped,
    /// so that one that always fails does not go round forever; fix the cause first.
    #[arg(long, default_value_t = DEFAULT_MAX_REPLAYS, value_name = "N")]
    max_replays: u32,

    /// How long the server has to confirm each replayed message (seconds, or 500ms, 2s,
    /// 1m).
    #[arg(long, default_value = DEFAULT_FLUSH_TIMEOUT, value_parser = parse_duration, value_name = "DURATION")]
    flush_timeout: Duration,

    #[command(flatten)]
    member: MemberArgs,

    #[command(flatten)]
    connect: ConnectArgs,
}

fn parse_count(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(count) if count >= 1 => Ok(count),
        _ => Err(format!(
            "invalid count {text:?}: expected a whole number of messages, at least 1"
        )),
    }
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
        default_name: "replay_dead_letters".to_owned(),
        subscription_capacity: Some(args.member.capacity),
    };
    let (client, _events) = args.connect.connect_or_stop(&settings, &shutdown).await?;

    let mut subscriber = client
        .queue_subscribe(args.subject.clone(), args.queue.clone())
        .await
        .context("cannot subscribe")?;
    if let Some(count) = args.count {
        // The server stops sending after `count` messages and the client then ends the
        // subscription, so the loop below ends as it does after a drain.
        subscriber
            .unsubscribe_after(count)
            .await
            .context("cannot limit the subscription to --count messages")?;
    }
    // The flush returns once the server has the subscription, so no dead letter published
    // after the "Waiting" line below can be missed.
    client
        .flush()
        .await
        .context("the server did not confirm the subscription")?;

    let replayer = Replayer {
        client: client.clone(),
        subject: args.subject,
        flush_timeout: args.flush_timeout,
        max_replays: args.max_replays,
        replayed: Cell::new(0),
        skipped: Cell::new(0),
        lost: Cell::new(0),
    };
    println!(
        "Replaying dead letters from {} (queue group: '{}')",
        replayer.subject, args.queue
    );
    match args.count {
        Some(count) => println!("Waiting for dead letters (stopping after {count})..."),
        None => println!("Waiting for dead letters..."),
    }
    println!();

    let on_drain = || {
        println!();
        println!("Shutting down: finishing the dead letters already delivered...");
    };
    let ending = consume(
        subscriber,
        &shutdown,
        args.member.consume_options(1),
        on_drain,
        async |message| replayer.handle(&message).await,
    )
    .await?;

    replayer.print_summary();
    if let Some(line) = ending.abandoned_message() {
        println!("{line}");
        return Ok(ExitCode::FAILURE);
    }
    client
        .drain()
        .await
        .context("cannot close the connection")?;
    Ok(ExitCode::SUCCESS)
}

/// The replay tool's settings and counts.
#[derive(Debug)]
struct Replayer {
    client: Client,
    /// Subject (or wildcard) this tool receives dead letters on.
    subject: String,
    flush_timeout: Duration,
    max_replays: u32,
    replayed: Cell<u64>,
    /// Messages without valid dead-letter headers, whose replay would loop, or that were
    /// replayed `max_replays` times already.
    skipped: Cell<u64>,
    /// Dead letters whose replay the server did not confirm.
    lost: Cell<u64>,
}

impl Replayer {
    async fn handle(&self, message: &Message) {
        // A task is named by its id; anything else by the start of its payload.
        let label = Task::from_bytes(&message.payload)
            .map_or_else(|_| preview(&message.payload), |task| task.task_id);

        let dead_letter = match DeadLetter::from_headers(message.headers.as_ref()) {
            Ok(dead_letter) => dead_letter,
            Err(error) => {
                self.skip(message, &label, &error.to_string());
                return;
            }
        };
        if dead_letter::subject_matches(&self.subject, &dead_letter.subject) {
            let reason = format!(
                "its original subject {} is one this tool receives on, so replaying it would loop",
                dead_letter.subject
            );
            self.skip(message, &label, &reason);
            return;
        }

        let replays = dead_letter::replays(message.headers.as_ref());
        if replays >= self.max_replays {
            let reason = format!(
                "it was already replayed {replays} time(s) and failed again (--max-replays {}); core NATS does not keep it, so fix the cause and publish it again",
                self.max_replays
            );
            self.skip(message, &label, &reason);
            return;
        }

        if let Err(error) = self.republish(message, &dead_letter, replays + 1).await {
            self.lost.set(self.lost.get() + 1);
            tracing::error!(
                subject = %dead_letter.subject,
                "cannot replay {label}, so it is lost: {error:#}"
            );
            println!(
                "Failed to replay {label} to {}: {error:#}",
                dead_letter.subject
            );
            return;
        }

        self.replayed.set(self.replayed.get() + 1);
        let attempts = match dead_letter.attempts {
            1 => "1 attempt".to_owned(),
            count => format!("{count} attempts"),
        };
        println!(
            "Replayed {label} to {} (worker {} gave up after {attempts}: {})",
            dead_letter.subject, dead_letter.worker, dead_letter.reason
        );
    }

    /// Publishes the payload unchanged to the original subject and waits until the server
    /// has it.
    async fn republish(
        &self,
        message: &Message,
        dead_letter: &DeadLetter,
        replays: u32,
    ) -> anyhow::Result<()> {
        let mut headers = message
            .headers
            .as_ref()
            .map(dead_letter::without_dead_letter_headers)
            .unwrap_or_default();
        headers.insert(dead_letter::REPLAYS_HEADER, replays.to_string());
        let subject = dead_letter.subject.clone();
        let payload = message.payload.clone();
        let published = if headers.is_empty() {
            self.client.publish(subject, payload).await
        } else {
            self.client
                .publish_with_headers(subject, headers, payload)
                .await
        };
        published.context("publish failed")?;

        // `publish` only queues the message in the client. The flush returns once the
        // server has replied with a PONG to a PING sent after it, so the server has it.
        common::limits::flush_within(&self.client, self.flush_timeout).await
    }

    fn skip(&self, message: &Message, label: &str, reason: &str) {
        self.skipped.set(self.skipped.get() + 1);
        tracing::warn!(
            subject = %message.subject,
            size = message.payload.len(),
            payload = %preview(&message.payload),
            "skipped a message that cannot be replayed: {reason}"
        );
        println!("Skipped {label}: {reason}");
    }

    fn print_summary(&self) {
        println!();
        println!("Replayed {} dead letter(s)", self.replayed.get());
        if self.skipped.get() > 0 {
            println!(
                "Skipped {} message(s) that could not be replayed",
                self.skipped.get()
            );
        }
        if self.lost.get() > 0 {
            println!(
                "Lost {} dead letter(s): the server did not confirm their replay",
                self.lost.get()
            );
        }
    }
}
