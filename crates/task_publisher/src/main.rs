//! Step 1: publishes numbered tasks for the workers of a queue group to share.
//!
//! Start the workers first (`cargo run --bin worker -- 1`, `-- 2`, `-- 3`), then:
//!
//! ```text
//! cargo run --bin task_publisher
//! ```
//!
//! It prints `Published: TASK-001` … `Published: TASK-020`, 0.2 s apart, then `All tasks
//! published!`; meanwhile each task shows up in exactly one worker's terminal. Core NATS
//! keeps nothing for later: a task published while no worker is subscribed is gone.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_nats::Client;
use clap::Parser;
use common::connection::ClientSettings;
use common::{ConnectArgs, Task, names, parse_duration};

/// Subject the workers of Step 1 subscribe to.
const DEFAULT_SUBJECT: &str = "tasks.process";

/// Publishes tasks `TASK-001`, `TASK-002`, … to a subject served by a queue group.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of tasks to publish.
    #[arg(long, default_value_t = 20)]
    count: u32,

    /// Pause between two tasks (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = "0.2", value_parser = parse_duration, value_name = "DURATION")]
    interval: Duration,

    /// Subject to publish the tasks on.
    #[arg(long, default_value = DEFAULT_SUBJECT, value_parser = names::publish_subject)]
    subject: String,

    /// Text carried in each task's `data` field.
    #[arg(long, default_value = "Process this task")]
    data: String,

    /// How long to wait for the server to confirm each task before giving up.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    flush_timeout: Duration,

    #[command(flatten)]
    connect: ConnectArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let secrets = args.connect.secrets();
    common::logging::init(env!("CARGO_CRATE_NAME"), secrets.clone());

    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => common::logging::report_error(&error, &secrets),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (client, _events) = args
        .connect
        .connect(&ClientSettings::named("task_publisher"))
        .await?;

    println!("Publishing {} tasks to queue group...", args.count);
    for number in 1..=args.count {
        let task = Task::new(format!("TASK-{number:03}"), Some(args.data.clone()));
        // `publish` only queues the message in the client. The flush waits for the server
        // to answer a PING sent after it, so the line below is printed once the server has
        // the task, not merely once this process has buffered it. Both are bounded: while
        // the client is reconnecting, its queue fills and neither would return.
        let payload = task.to_bytes();
        common::limits::ensure_fits(&client, &args.subject, payload.len())
            .with_context(|| format!("cannot publish {}", task.task_id))?;
        confirm(&client, &args.subject, payload, args.flush_timeout)
            .await
            .with_context(|| {
                let unconfirmed = args.count - number + 1;
                format!(
                    "{} was not confirmed by the server; {unconfirmed} of {} tasks are unconfirmed",
                    task.task_id, args.count
                )
            })?;
        println!("Published: {}", task.task_id);

        if number < args.count {
            tokio::time::sleep(args.interval).await;
        }
    }

    client
        .drain()
        .await
        .context("cannot close the connection")?;
    println!();
    println!("All tasks published!");
    Ok(())
}

/// Publishes and flushes, giving up after `timeout` so that a lost server cannot hang the
/// publisher.
async fn confirm(
    client: &Client,
    subject: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let publish_and_flush = async {
        client
            .publish(subject.to_owned(), payload.into())
            .await
            .context("publish failed")?;
        client.flush().await.context("flush failed")
    };
    match tokio::time::timeout(timeout, publish_and_flush).await {
        Ok(result) => result,
        Err(_) => Err(anyhow!("no response within {:.1}s", timeout.as_secs_f64())),
    }
}
