//! Step 5: a plain subscription and a queue group on the same subject, in one process.
//!
//! The two kinds of subscription are independent. For each message on a subject, the
//! server sends one copy to every plain subscription and one copy to one member of each
//! queue group. Here a logger subscribes to `events.order` without a queue group, so it
//! receives every order, and two workers join the queue group `processors`, so each order goes
//! to one of them. Adding the logger takes no work away from the workers, and adding a
//! worker hides no order from the logger.
//!
//! Run it, then publish ten orders from a second terminal:
//!
//! ```text
//! cargo run --bin mixed_subscriptions
//! cargo run --bin publish -- events.order "Order-{{Count}}" --count 10 --sleep 0.5
//! ```
//!
//! The logger prints all ten orders (`[LOGGER] Logged: Order-1`), and each order also
//! appears in exactly one worker's line (`[WORKER-2] Processing: Order-3`). Press Ctrl-C:
//! the three subscriptions drain, and the program prints each one's count and `Workers
//! together: 10 of the 10 messages the logger saw`. A second Ctrl-C stops at once.

use std::cell::Cell;
use std::process::ExitCode;

use anyhow::Context;
use async_nats::Message;
use clap::Parser;
use common::connection::ClientSettings;
use common::consume::{Ending, MemberArgs, consume};
use common::task::preview;
use common::{ConnectArgs, Shutdown, names};

/// Subject the orders are published on.
const DEFAULT_SUBJECT: &str = "events.order";
/// Queue group the two workers join. The logger subscribes without one.
const DEFAULT_QUEUE: &str = "processors";
/// Connection name when `--name` is not given, shared by all three subscriptions.
const DEFAULT_NAME: &str = "mixed_subscriptions";
/// Characters of a text payload printed before it is cut with `…`, enough for a Step 1 task
/// message (about 90 characters of JSON).
const MAX_PAYLOAD_CHARS: usize = 120;

/// A logger and two members of a queue group, all subscribed to one subject.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Subject all three subscriptions receive messages on.
    #[arg(long, default_value = DEFAULT_SUBJECT, value_parser = names::subscribe_subject)]
    subject: String,

    /// Queue group the two workers join. The logger subscribes without one.
    #[arg(long, default_value = DEFAULT_QUEUE, value_parser = names::queue_group)]
    queue: String,

    #[command(flatten)]
    member: MemberArgs,

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
        default_name: DEFAULT_NAME.to_owned(),
        subscription_capacity: Some(args.member.capacity),
    };
    let (client, events) = args.connect.connect_or_stop(&settings, &shutdown).await?;

    // Without a queue group, the server sends this subscription a copy of every message on
    // the subject, whatever queue groups also listen there.
    let logger_subscriber = client
        .subscribe(args.subject.clone())
        .await
        .context("cannot subscribe the logger")?;
    // Same subject and same group name, so the server counts these two as members of one
    // group and sends each message to one of them. Sharing a connection changes nothing.
    let worker_1_subscriber = client
        .queue_subscribe(args.subject.clone(), args.queue.clone())
        .await
        .context("cannot subscribe worker 1")?;
    let worker_2_subscriber = client
        .queue_subscribe(args.subject.clone(), args.queue.clone())
        .await
        .context("cannot subscribe worker 2")?;
    // The flush returns once the server has all three subscriptions, so a message published
    // after the "Waiting" line below reaches the logger and one of the workers.
    client
        .flush()
        .await
        .context("the server did not confirm the subscriptions")?;

    println!("Setup:");
    println!("  1 Logger (regular) - receives ALL messages");
    println!(
        "  2 Workers (queue '{}') - each receives SOME messages",
        args.queue
    );
    println!();
    println!("Waiting for messages...");
    println!();

    let logger = Role::logger();
    let worker_1 = Role::worker(1);
    let worker_2 = Role::worker(2);

    // All three loops start draining on the same signal, and only the first prints the line.
    let drain_announced = Cell::new(false);
    let announce_drain = || {
        if !drain_announced.replace(true) {
            println!();
            println!("Shutting down: finishing the messages already delivered...");
        }
    };

    // One task polls the three loops, so a slow handler would hold up the other two, and
    // these handlers only print. Each loop drains its own subscription, one after another,
    // so a message published during those few moments can reach the logger but no worker,
    // or the reverse.
    let options = args.member.consume_options(1);
    let (logger_ending, worker_1_ending, worker_2_ending) = tokio::join!(
        consume(
            logger_subscriber,
            &shutdown,
            options,
            &announce_drain,
            async |message| logger.receive(&message),
        ),
        consume(
            worker_1_subscriber,
            &shutdown,
            options,
            &announce_drain,
            async |message| worker_1.receive(&message),
        ),
        consume(
            worker_2_subscriber,
            &shutdown,
            options,
            &announce_drain,
            async |message| worker_2.receive(&message),
        ),
    );
    let ending = combine_endings(&[logger_ending?, worker_1_ending?, worker_2_ending?]);

    logger.print_summary();
    worker_1.print_summary();
    worker_2.print_summary();
    print_lesson_check(
        logger.received.get(),
        [&worker_1, &worker_2],
        &ending,
        events.slow_consumer_events(),
    );

    if let Some(line) = ending.abandoned_message() {
        println!("{line}");
        return Ok(ExitCode::FAILURE);
    }
    // Sends anything still buffered and closes the connection cleanly.
    client
        .drain()
        .await
        .context("cannot close the connection")?;
    Ok(ExitCode::SUCCESS)
}

/// One of the three subscriptions: how its lines read and how many messages it received.
#[derive(Debug)]
struct Role {
    /// Start of each of its lines, such as `[WORKER-1]`.
    tag: String,
    /// Verb of the line printed for each message.
    message_verb: &'static str,
    /// Verb of the summary line.
    summary_verb: &'static str,
    received: Cell<u64>,
}

impl Role {
    fn logger() -> Self {
        Self {
            tag: "[LOGGER]".to_owned(),
            message_verb: "Logged",
            summary_verb: "Logged",
            received: Cell::new(0),
        }
    }

    fn worker(id: u32) -> Self {
        Self {
            tag: format!("[WORKER-{id}]"),
            message_verb: "Processing",
            summary_verb: "Processed",
            received: Cell::new(0),
        }
    }

    fn receive(&self, message: &Message) {
        self.received.set(self.received.get() + 1);
        println!(
            "{} {}: {}",
            self.tag,
            self.message_verb,
            format_payload(&message.payload)
        );
    }

    fn print_summary(&self) {
        println!(
            "{} {} {} messages",
            self.tag,
            self.summary_verb,
            self.received.get()
        );
    }
}

/// Prints whether the workers together received what the logger received, as the lesson
/// predicts, and if not, the likely reason.
fn print_lesson_check(logged: u64, workers: [&Role; 2], ending: &Ending, slow_consumer_drops: u64) {
    let processed: u64 = workers.iter().map(|worker| worker.received.get()).sum();
    println!("Workers together: {processed} of the {logged} messages the logger saw");
    if processed == logged {
        return;
    }

    let reason = if matches!(ending, Ending::Stopped { .. }) {
        "the program stopped before each subscription had handled every message sent to it"
            .to_owned()
    } else if slow_consumer_drops > 0 {
        format!(
            "the client dropped {slow_consumer_drops} or more message(s) as a slow consumer; raise --capacity to buffer more"
        )
    } else {
        "messages arrived while some subscriptions were not in place, as during the drain, which ends them one after another".to_owned()
    };
    println!("  The counts differ because {reason}.");
}

/// Merges the endings of the three loops: stopped if any loop stopped, counting the
/// messages every loop abandoned.
fn combine_endings(endings: &[Ending]) -> Ending {
    let mut abandoned_total = 0;
    let mut first_reason = None;
    for ending in endings {
        if let Ending::Stopped { abandoned, reason } = ending {
            abandoned_total += abandoned;
            first_reason.get_or_insert(*reason);
        }
    }
    match first_reason {
        Some(reason) => Ending::Stopped {
            abandoned: abandoned_total,
            reason,
        },
        None => Ending::Drained,
    }
}

/// Formats a payload for one line of output.
///
/// UTF-8 text is shown as it is, with control characters escaped so that a payload cannot
/// move the cursor or recolor the terminal, and cut with `…` after [`MAX_PAYLOAD_CHARS`]
/// characters. A payload that is not UTF-8 goes to [`preview`], which quotes, escapes and
/// cuts it shorter.
fn format_payload(payload: &[u8]) -> String {
    let Ok(text) = std::str::from_utf8(payload) else {
        return preview(payload);
    };
    let mut formatted = String::new();
    for (index, character) in text.chars().enumerate() {
        if index == MAX_PAYLOAD_CHARS {
            formatted.push('…');
            break;
        }
        if character.is_control() {
            formatted.extend(character.escape_default());
        } else {
            formatted.push(character);
        }
    }
    formatted
}

#[cfg(test)]
mod tests {
    use common::consume::StopReason;

    use super::*;

    #[test]
    fn text_payload_is_shown_as_is() {
        assert_eq!(format_payload(b"Order-1"), "Order-1");
        assert_eq!(
            format_payload("Bestellung-\u{e9}".as_bytes()),
            "Bestellung-é"
        );
        assert_eq!(format_payload(br#"{"id": 1}"#), r#"{"id": 1}"#);
        assert_eq!(format_payload(b""), "");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(format_payload(b"\x1b[31mred\n"), "\\u{1b}[31mred\\n");
    }

    #[test]
    fn long_text_is_cut() {
        let long = "é".repeat(MAX_PAYLOAD_CHARS + 1);
        let formatted = format_payload(long.as_bytes());
        assert_eq!(formatted.chars().count(), MAX_PAYLOAD_CHARS + 1);
        assert!(formatted.ends_with("é…"), "{formatted}");

        let exact = "x".repeat(MAX_PAYLOAD_CHARS);
        assert_eq!(format_payload(exact.as_bytes()), exact);
    }

    #[test]
    fn binary_payload_is_escaped() {
        assert_eq!(format_payload(b"\xff\xfeOrder"), r#""\xff\xfeOrder""#);
    }

    #[test]
    fn endings_combine_abandoned_counts() {
        assert_eq!(
            combine_endings(&[Ending::Drained, Ending::Drained, Ending::Drained]),
            Ending::Drained
        );
        let stopped = |abandoned| Ending::Stopped {
            abandoned,
            reason: StopReason::SecondRequest,
        };
        assert_eq!(
            combine_endings(&[stopped(3), Ending::Drained, stopped(4)]),
            stopped(7)
        );
    }
}
