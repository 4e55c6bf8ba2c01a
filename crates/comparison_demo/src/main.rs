//! Step 2: three subscribers on one subject, either plain or in one queue group, to show
//! that a plain subscription gets every message and a queue group member only its share.
//!
//! Start the demo, answer the prompt, and publish ten messages from a second terminal:
//!
//! ```text
//! cargo run --bin comparison_demo
//! cargo run --bin publish -- demo.topic "Message {{Count}}" --count 10 --sleep 0.5
//! ```
//!
//! `nats pub` works as the publisher too. After answering `1` (regular), subscribers A, B
//! and C each print all ten messages (`[Regular Sub B] Message #7: Message 7`). After
//! answering `2` (queue), each message is printed once, by one of them. Ctrl-C drains the
//! three subscriptions and prints how many messages each subscriber received: 10, 10 and
//! 10, against a split such as 4, 3 and 3. `--mode regular` or `--mode queue` skips the
//! prompt.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use async_nats::{Client, Message, Subscriber};
use clap::{Parser, ValueEnum};
use common::connection::ClientSettings;
use common::consume::{Ending, MemberArgs, consume};
use common::task::preview;
use common::{ConnectArgs, Shutdown, names};
use futures::future::{join_all, try_join_all};

/// Subject the demo subscribes to; `publish` and `nats pub` are pointed at it.
const DEFAULT_SUBJECT: &str = "demo.topic";
/// Queue group the three subscribers join in queue mode.
const DEFAULT_QUEUE: &str = "workers";
/// The subscribers, each with its own connection, as if they were three programs.
const SUBSCRIBER_IDS: [&str; 3] = ["A", "B", "C"];
/// Prefix of the connection names when `--name` is not given: `comparison_demo-A`, ….
const DEFAULT_NAME_PREFIX: &str = "comparison_demo";

/// Question asked on stdout when `--mode` is not given.
const PROMPT: &str = "Choose mode (1=Regular, 2=Queue): ";
/// Bytes of the answer that are read; a longer line is invalid anyway.
const MAX_ANSWER_LEN: u64 = 1024;
/// Maximum payload size, in bytes, printed as is; longer payloads are cut and escaped by
/// `preview`.
const MAX_SHOWN_PAYLOAD: usize = 200;
/// Exit status for an invalid answer, the status clap uses for usage errors.
const USAGE_ERROR: u8 = 2;

/// Three subscribers on one subject, either as plain subscribers or as one queue group.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Subscription type of the three subscribers. Without it, the demo prompts for one on
    /// stdin; an answer other than 1, 2, regular or queue, or no answer before stdin ends,
    /// exits with status 2.
    #[arg(long, value_enum)]
    mode: Option<Mode>,

    /// Subject to subscribe to.
    #[arg(long, default_value = DEFAULT_SUBJECT, value_parser = names::subscribe_subject)]
    subject: String,

    /// Queue group the subscribers join in queue mode.
    #[arg(long, default_value = DEFAULT_QUEUE, value_parser = names::queue_group)]
    queue: String,

    #[command(flatten)]
    member: MemberArgs,

    #[command(flatten)]
    connect: ConnectArgs,
}

/// Subscription type of the three subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Plain subscriptions: every subscriber receives every message.
    Regular,
    /// One queue group: each message goes to one of the subscribers.
    Queue,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let secrets = args.connect.secrets();
    common::logging::init(env!("CARGO_CRATE_NAME"), secrets.clone());

    match run(args, Shutdown::from_signals()).await {
        Ok(code) => code,
        Err(error) => {
            let failure = common::logging::report_error(&error, &secrets);
            if error.is::<InvalidAnswer>() {
                ExitCode::from(USAGE_ERROR)
            } else {
                failure
            }
        }
    }
}

async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<ExitCode> {
    let mode = match args.mode {
        Some(mode) => mode,
        None => match ask_mode(&shutdown).await? {
            Some(mode) => {
                println!();
                mode
            }
            // Stopped at the prompt: nothing was started, so there is nothing to drain.
            None => return Ok(ExitCode::SUCCESS),
        },
    };
    let kind = match mode {
        Mode::Regular => "REGULAR",
        Mode::Queue => "QUEUE",
    };
    println!("Starting 3 {kind} subscribers...");
    println!();

    let joined = try_join_all(SUBSCRIBER_IDS.map(|id| join(&args, mode, id, &shutdown))).await?;
    let (members, subscribers): (Vec<Member>, Vec<Subscriber>) = joined.into_iter().unzip();
    // Printed only once all three subscriptions are confirmed, so a publisher started after
    // these lines reaches every subscriber.
    for member in &members {
        match mode {
            Mode::Regular => println!("[{}] Started (no queue group)", member.label),
            Mode::Queue => println!("[{}] Started (queue: {})", member.label, args.queue),
        }
    }
    println!();

    let drain_announced = Cell::new(false);
    let on_drain = || {
        if !drain_announced.replace(true) {
            println!();
            println!("Shutting down: draining the subscriptions...");
        }
    };
    // The three loops run concurrently in this task, and each drains its own subscription
    // on the first stop request.
    let loops = members.iter().zip(subscribers).map(|(member, subscriber)| {
        consume(
            subscriber,
            &shutdown,
            args.member.consume_options(1),
            &on_drain,
            async |message| member.show(&message),
        )
    });
    let endings = join_all(loops)
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<Ending>>>()?;

    print_summary(&members, mode);
    let mut abandoned_any = false;
    for (member, ending) in members.iter().zip(&endings) {
        if let Some(line) = ending.abandoned_message() {
            println!("[{}] {line}", member.label);
            abandoned_any = true;
        }
    }
    if abandoned_any {
        return Ok(ExitCode::FAILURE);
    }

    // Sends anything still buffered and closes each connection cleanly.
    try_join_all(members.iter().map(|member| member.client.drain()))
        .await
        .context("cannot close the connections")?;
    println!();
    println!("Shutdown complete");
    Ok(ExitCode::SUCCESS)
}

/// One of the three subscribers.
#[derive(Debug)]
struct Member {
    /// `Regular Sub A` or `Queue Sub A`, the prefix of every line about this subscriber.
    label: String,
    client: Client,
    /// Messages received so far.
    received: Cell<u64>,
}

impl Member {
    fn show(&self, message: &Message) {
        let number = self.received.get() + 1;
        self.received.set(number);
        println!(
            "[{}] Message #{number}: {}",
            self.label,
            payload_text(&message.payload)
        );
    }
}

/// Connects subscriber `id` and subscribes it, returning once the server has confirmed the
/// subscription.
async fn join(
    args: &Args,
    mode: Mode,
    id: &str,
    shutdown: &Shutdown,
) -> anyhow::Result<(Member, Subscriber)> {
    // Three connections need three names, so a `--name` becomes their common prefix.
    let mut connect = args.connect.clone();
    let name = format!("{}-{id}", connect.name_or(DEFAULT_NAME_PREFIX));
    connect.name = Some(name.clone());
    let settings = ClientSettings {
        default_name: name,
        subscription_capacity: Some(args.member.capacity),
    };
    let (client, _events) = connect.connect_or_stop(&settings, shutdown).await?;

    // The only difference between the modes is the queue group name. Subscribers that
    // give the same one share the messages; without one, each gets its own copy.
    let subscribed = match mode {
        Mode::Regular => client.subscribe(args.subject.clone()).await,
        Mode::Queue => {
            client
                .queue_subscribe(args.subject.clone(), args.queue.clone())
                .await
        }
    };
    let subscriber =
        subscribed.with_context(|| format!("cannot subscribe {id} to {}", args.subject))?;
    // The flush returns once the server has processed the SUB, so the subscription exists
    // before the demo prints that it has started.
    client
        .flush()
        .await
        .with_context(|| format!("the server did not confirm the subscription of {id}"))?;

    let kind = match mode {
        Mode::Regular => "Regular",
        Mode::Queue => "Queue",
    };
    let member = Member {
        label: format!("{kind} Sub {id}"),
        client,
        received: Cell::new(0),
    };
    Ok((member, subscriber))
}

fn print_summary(members: &[Member], mode: Mode) {
    for member in members {
        println!(
            "[{}] Received {} messages",
            member.label,
            member.received.get()
        );
    }
    let total: u64 = members.iter().map(|member| member.received.get()).sum();
    match mode {
        Mode::Regular => println!(
            "Total: {total} messages received (every subscriber gets its own copy of each message)"
        ),
        Mode::Queue => println!(
            "Total: {total} messages received (the queue group gives each message to one subscriber)"
        ),
    }
}

/// Formats a payload for printing: as text, as the tutorial does, unless that would garble
/// the terminal. A payload that is not UTF-8, contains control characters or is longer
/// than [`MAX_SHOWN_PAYLOAD`] bytes is escaped and cut by `preview` instead.
fn payload_text(payload: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(payload) {
        Ok(text) if payload.len() <= MAX_SHOWN_PAYLOAD && !text.contains(char::is_control) => {
            Cow::Borrowed(text)
        }
        _ => Cow::Owned(preview(payload)),
    }
}

/// Prompts for the mode on stdout and reads the reply from stdin.
///
/// Returns `None` when a stop signal comes before the answer.
async fn ask_mode(shutdown: &Shutdown) -> anyhow::Result<Option<Mode>> {
    print!("{PROMPT}");
    std::io::stdout()
        .flush()
        .context("cannot write the prompt")?;

    // A thread of its own rather than `tokio::io::stdin`: Tokio reads stdin on a blocking
    // thread that cannot be cancelled, so after a Ctrl-C at the prompt the runtime would
    // wait for Enter before it could shut down. This thread ends with the process.
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        // An error here means `ask_mode` has stopped waiting, so the answer is not needed.
        let _ = sender.send(read_answer());
    });

    tokio::select! {
        answer = receiver => {
            let answer = answer
                .context("the thread reading stdin stopped before it returned a line")?
                .context("cannot read the mode from stdin")?;
            if answer.is_none() {
                // Ends the prompt's line; an answer typed in a terminal would have done so.
                println!();
            }
            Ok(Some(parse_answer(answer.as_deref())?))
        }
        () = shutdown.drain_requested() => {
            println!();
            Ok(None)
        }
    }
}

/// Reads one line of stdin, or `None` when stdin has ended.
fn read_answer() -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_ANSWER_LEN)
        .read_until(b'\n', &mut line)?;
    Ok((read > 0).then_some(line))
}

/// Reads `1` or `regular`, `2` or `queue`, ignoring case and surrounding whitespace.
fn parse_answer(answer: Option<&[u8]>) -> Result<Mode, InvalidAnswer> {
    let Some(answer) = answer else {
        return Err(InvalidAnswer::Missing);
    };
    let text = String::from_utf8_lossy(answer);
    let text = text.trim();
    if text == "1" || text.eq_ignore_ascii_case("regular") {
        Ok(Mode::Regular)
    } else if text == "2" || text.eq_ignore_ascii_case("queue") {
        Ok(Mode::Queue)
    } else {
        Err(InvalidAnswer::Unknown {
            shown: preview(text.as_bytes()),
        })
    }
}

/// An answer to the prompt that names no mode: a usage error, reported with exit status 2.
#[derive(Debug)]
enum InvalidAnswer {
    /// Stdin ended before a line was read.
    Missing,
    /// The answer, quoted and escaped for printing.
    Unknown { shown: String },
}

impl fmt::Display for InvalidAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => write!(
                f,
                "no mode chosen: stdin ended before an answer; answer 1 or 2, or pass --mode regular or --mode queue"
            ),
            Self::Unknown { shown } => write!(
                f,
                "invalid mode {shown}: answer 1 (regular) or 2 (queue), or pass --mode regular or --mode queue"
            ),
        }
    }
}

impl std::error::Error for InvalidAnswer {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_a_mode() {
        let cases: [(&[u8], Mode); 6] = [
            (b"1\n", Mode::Regular),
            (b" regular \r\n", Mode::Regular),
            (b"Regular", Mode::Regular),
            (b"2\n", Mode::Queue),
            (b"QUEUE\n", Mode::Queue),
            (b"2", Mode::Queue),
        ];
        for (answer, mode) in cases {
            let parsed = parse_answer(Some(answer)).expect("valid answer");
            assert_eq!(parsed, mode, "{}", preview(answer));
        }
    }

    #[test]
    fn other_answers_are_invalid() {
        for answer in [&b"3\n"[..], b"\n", b"", b"12", b"\xff\n", b"queues"] {
            let error = parse_answer(Some(answer)).expect_err(&preview(answer));
            assert!(
                error.to_string().starts_with("invalid mode"),
                "{}: {error}",
                preview(answer)
            );
        }
        let three = parse_answer(Some(b"3\n")).expect_err("3 is no mode");
        assert!(three.to_string().contains(r#""3""#), "{three}");

        let missing = parse_answer(None).expect_err("no answer");
        assert!(missing.to_string().contains("stdin ended"), "{missing}");
    }

    #[test]
    fn payloads_are_shown_as_text_when_safe() {
        assert_eq!(payload_text(b"Message 1"), "Message 1");
        assert_eq!(payload_text("héllo".as_bytes()), "héllo");
        assert_eq!(payload_text(b""), "");

        assert_eq!(payload_text(b"\xff\xfe"), r#""\xff\xfe""#);
        assert_eq!(payload_text(b"two\nlines"), r#""two\nlines""#);
        assert_eq!(payload_text(b"\x1b[31mred"), r#""\x1b[31mred""#);

        let long = "a".repeat(MAX_SHOWN_PAYLOAD + 1);
        let shown = payload_text(long.as_bytes());
        assert!(shown.ends_with('…'), "{shown}");
        assert!(shown.len() < long.len(), "{shown}");
    }
}
