//! Benchmarks this workspace's binaries against bare async-nats and, optionally, nats-py.
//!
//! Run it through the script, which builds the release binaries and the Python venv:
//!
//! ```text
//! scripts/bench.sh            # the full run, a few minutes
//! scripts/bench.sh --quick    # a tiny configuration that only proves the command works
//! ```
//!
//! Each case starts its own `nats-server` on random loopback ports and runs several times,
//! alternating the kinds of publisher or member. The Markdown table on stdout shows each
//! median with the min–max spread over the runs, and the ratio of ours to the reference. Progress goes to stderr. Absolute figures drift with whatever else the
//! machine runs, so compare the ratios, which come from one invocation.
//!
//! The cases: publish rate ([`publish`]), queue group delivery ([`delivery`]), latency
//! ([`latency`]), scaling of the Step 3 batch ([`scaling`]), and memory and start-up
//! ([`footprint`]). With `--python`, the nats-py rows are added to the first, second and
//! last.

mod child;
mod delivery;
mod footprint;
mod latency;
mod publish;
mod python;
mod scaling;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use common::Task;

use crate::child::Child;
use crate::delivery::Kind;
use crate::python::Python;

/// Runs per case in a full run.
const DEFAULT_RUNS: u32 = 5;
/// Tasks per publish-rate run.
const DEFAULT_PUBLISH_COUNT: u32 = 200_000;
/// Tasks per queue group delivery run. `worker --work-time 0` still waits for one tick of
/// Tokio's millisecond timer per task, so one member handles about 1,000 tasks a second
/// and a larger count makes the run last minutes.
const DEFAULT_DELIVERY_COUNT: u32 = 10_000;
/// Tasks a member processes before its peak RSS is read; kept small for the same reason.
const DEFAULT_MEMORY_COUNT: u32 = 20_000;

/// Measures publish rate, queue group delivery, latency, scaling, memory and start-up of
/// this workspace's binaries, each against a bare async-nats or nats-py reference, on a
/// nats-server it starts itself on loopback.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run a tiny configuration (2 runs, a few thousand messages) that finishes in
    /// seconds. It shows that every case still works, not how fast it is.
    #[arg(long)]
    quick: bool,

    /// Runs per case [default: 5, or 2 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    runs: Option<u32>,

    /// Tasks per publish-rate run [default: 200000, or 2000 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "TASKS")]
    publish_count: Option<u32>,

    /// Tasks per queue group delivery run [default: 10000, or 1000 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "TASKS")]
    delivery_count: Option<u32>,

    /// Tasks a member processes before its peak RSS is read [default: 20000, or 1000
    /// with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "TASKS")]
    memory_count: Option<u32>,

    /// Python interpreter with nats-py installed; without it the nats-py rows are left out.
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,

    /// Folder with the workspace's binaries (worker, load_generator, scalable_processor)
    /// [default: the folder of this binary].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// The sizes and counts of every case.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) runs: u32,
    /// Bytes of `data` per task in the publish-rate case, one row each.
    pub(crate) payload_sizes: Vec<usize>,
    pub(crate) publish_count: u32,
    pub(crate) delivery_count: u32,
    /// Members per queue group in the delivery case, one row each.
    pub(crate) group_sizes: Vec<usize>,
    pub(crate) latency_count: u32,
    /// Messages per second in the latency case.
    pub(crate) latency_rate: u32,
    pub(crate) scaling_tasks: u32,
    pub(crate) scaling_task_time: Duration,
    pub(crate) memory_count: u32,
    /// Maximum wait for a child process to start, print a line or exit.
    pub(crate) child_timeout: Duration,
}

impl Config {
    fn from_args(args: &Args) -> Self {
        let base = if args.quick {
            Self {
                runs: 2,
                payload_sizes: vec![64, 1024],
                publish_count: 2_000,
                delivery_count: 1_000,
                group_sizes: vec![1, 3, 5],
                latency_count: 200,
                latency_rate: 1_000,
                scaling_tasks: 10,
                scaling_task_time: Duration::from_millis(20),
                memory_count: 1_000,
                child_timeout: Duration::from_secs(60),
            }
        } else {
            Self {
                runs: DEFAULT_RUNS,
                payload_sizes: vec![64, 1024],
                publish_count: DEFAULT_PUBLISH_COUNT,
                delivery_count: DEFAULT_DELIVERY_COUNT,
                group_sizes: vec![1, 3, 5],
                latency_count: 2_000,
                latency_rate: 1_000,
                scaling_tasks: 100,
                scaling_task_time: Duration::from_millis(50),
                memory_count: DEFAULT_MEMORY_COUNT,
                child_timeout: Duration::from_secs(60),
            }
        };
        Self {
            runs: args.runs.unwrap_or(base.runs),
            publish_count: args.publish_count.unwrap_or(base.publish_count),
            delivery_count: args.delivery_count.unwrap_or(base.delivery_count),
            memory_count: args.memory_count.unwrap_or(base.memory_count),
            ..base
        }
    }
}

/// Shared state of every case: the configuration, the binaries and, optionally, Python.
#[derive(Debug)]
pub(crate) struct Bench {
    pub(crate) config: Config,
    bin_dir: PathBuf,
    pub(crate) python: Option<Python>,
}

impl Bench {
    /// Returns the path of one of the workspace's binaries.
    pub(crate) fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir
            .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    }

    /// Starts a `worker` that does no work. With `reports` it publishes a completion
    /// report per task on `<subject>.done`.
    pub(crate) fn worker(
        &self,
        url: &str,
        subject: &str,
        queue: &str,
        id: usize,
        capacity: usize,
        reports: bool,
    ) -> anyhow::Result<Child> {
        let mut args = vec![
            id.to_string(),
            "--server".to_owned(),
            url.to_owned(),
            "--subject".to_owned(),
            subject.to_owned(),
            "--queue".to_owned(),
            queue.to_owned(),
            "--work-time".to_owned(),
            "0".to_owned(),
            "--capacity".to_owned(),
            capacity.to_string(),
        ];
        if !reports {
            args.push("--no-results".to_owned());
        }
        Child::spawn(
            format!("worker {id}"),
            &self.binary("worker"),
            &args,
            Some("Completed task"),
        )
    }

    /// Starts a queue group member of `kind` without completion reports.
    pub(crate) fn member(
        &self,
        kind: Kind,
        url: &str,
        subject: &str,
        queue: &str,
        id: usize,
        capacity: usize,
    ) -> anyhow::Result<Child> {
        match kind {
            Kind::Worker => self.worker(url, subject, queue, id, capacity, false),
            Kind::Python => self
                .python
                .as_ref()
                .context("a nats-py member needs --python")?
                .subscriber(url, subject, queue, id),
        }
    }
}

/// Starts a `nats-server` on random loopback ports; it stops when the value is dropped.
///
/// The harness panics with the server's log when the server cannot start. That ends the
/// benchmark with the reason, which is all a benchmark can do then.
pub(crate) fn start_server() -> harness::NatsServer {
    harness::NatsServer::start()
}

/// Connects a plain async-nats client, with room for `capacity` messages per subscription.
pub(crate) async fn connect(
    url: &str,
    capacity: Option<usize>,
) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new().name("bench");
    if let Some(capacity) = capacity {
        options = options.subscription_capacity(capacity);
    }
    options
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Encodes one task with `data_size` bytes of filler, as `load_generator` builds them.
pub(crate) fn task_payload(task_id: &str, data_size: usize) -> Bytes {
    Task::new(task_id, Some("x".repeat(data_size)))
        .to_bytes()
        .into()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    common::logging::init(env!("CARGO_CRATE_NAME"), Vec::new());

    match run(args).await {
        Ok(code) => code,
        Err(error) => common::logging::report_error(&error, &[]),
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::from_args(&args);
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("cannot find this binary's path")?
            .parent()
            .map(Path::to_path_buf)
            .context("this binary's path has no folder")?,
    };
    for name in ["worker", "load_generator", "scalable_processor"] {
        let path = bin_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if !path.is_file() {
            anyhow::bail!(
                "{} not found; build the workspace's binaries first (`cargo build --release --workspace --bins`) or pass --bin-dir",
                path.display()
            );
        }
    }
    harness::nats_server_bin().map_err(anyhow::Error::msg)?;

    let python = match args.python {
        Some(interpreter) => match Python::find(interpreter).await {
            Ok(python) => Some(python),
            Err(error) => {
                tracing::warn!("leaving out the nats-py rows: {error:#}");
                None
            }
        },
        None => None,
    };
    let bench = Bench {
        config,
        bin_dir,
        python,
    };

    let mut rows = Vec::new();
    rows.extend(publish::run(&bench).await?);
    rows.extend(delivery::run(&bench).await?);
    rows.extend(latency::run(&bench).await?);
    rows.extend(scaling::run(&bench).await?);
    rows.extend(footprint::run(&bench).await?);

    let config = &bench.config;
    println!(
        "Runs per case: {}{}. nats-py: {}.",
        config.runs,
        if args.quick { " (--quick)" } else { "" },
        bench
            .python
            .as_ref()
            .map_or("not used", |python| python.version.as_str())
    );
    println!();
    print!("{}", stats::table(&rows));
    Ok(ExitCode::SUCCESS)
}
