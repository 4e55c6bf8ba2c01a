//! Step 6: watches queue groups through nats-server's HTTP monitoring, to see who is in
//! each group and how the messages are shared among them.
//!
//! Start a server with monitoring on (`docker compose up -d` or `scripts/nats-server.sh`
//! do; a bare `nats-server` needs `-m 8222`), then, each in its own terminal:
//!
//! ```text
//! cargo run --bin worker -- 1
//! cargo run --bin worker -- 2
//! cargo run --bin worker -- 3
//! cargo run --bin queue_monitor
//! cargo run --bin task_publisher
//! ```
//!
//! Every 5 seconds the monitor redraws one table per queue group, such as group
//! `processors` on `tasks.process` with members `worker-1` to `worker-3`. Each member's row
//! shows the messages the server has delivered to it, its share of the group's total as a
//! percentage and a bar, the bytes the server holds for it, and its delivery rate since the
//! previous report. Stop a worker and it leaves the table; publish again and only the
//! others' counts grow. `--once` prints one report and exits, and `--json` prints each
//! report as one JSON object.
//!
//! The figures come from `/connz?subs=detail`, which names each subscription's queue group
//! (`qgroup`) and counts what the server delivered to it (`msgs`). The counts are the
//! server's, so they include messages a member received but never processed, for example
//! because it dropped them as a slow consumer.

mod monitoring;
mod render;
mod report;

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Parser;
use common::{Shutdown, parse_duration, redact_url};
use futures::future::join_all;
use reqwest::Url;
use tokio::time::Instant;

use crate::monitoring::{MonitorEndpoint, PollError};
use crate::report::{Report, ServerOutcome, ServerSample};

/// Monitoring URL of `nats-server -m 8222`, `docker compose up -d` and
/// `scripts/nats-server.sh`.
const DEFAULT_MONITOR_URL: &str = "http://localhost:8222";
/// Time between two reports.
const DEFAULT_INTERVAL: &str = "5s";
/// Maximum wait for one server's response, so that a server that accepts connections but
/// never responds cannot freeze the monitor.
const DEFAULT_TIMEOUT: &str = "3s";
/// Maximum pause between two polls of a server that does not respond. The pause starts at
/// `--interval` and doubles after each failure up to this, or up to `--interval` if that is
/// longer.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);
/// Last path segments of monitoring endpoints, which do not belong in the base URL.
const ENDPOINT_NAMES: [&str; 10] = [
    "connz", "subsz", "varz", "routez", "gatewayz", "leafz", "accountz", "jsz", "healthz",
    "accstatz",
];

/// Shows each queue group's members and how the server shares messages among them.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// HTTP monitoring URL of a nats-server (the port of its `-m` flag), or a
    /// comma-separated list to report on every server of a cluster. Members connected to a
    /// server that is not listed are not shown.
    #[arg(
        long = "monitor-url",
        env = "NATS_MONITOR_URL",
        default_value = DEFAULT_MONITOR_URL,
        value_delimiter = ',',
        value_parser = parse_monitor_url,
        value_name = "URL",
        hide_env_values = true
    )]
    monitor_urls: Vec<Url>,

    /// Time between two reports (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = DEFAULT_INTERVAL, value_parser = positive_duration, value_name = "DURATION")]
    interval: Duration,

    /// Maximum wait for one server's response (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = DEFAULT_TIMEOUT, value_parser = positive_duration, value_name = "DURATION")]
    timeout: Duration,

    /// Print one report and exit: status 0 when every server responded, 1 otherwise.
    #[arg(long)]
    once: bool,

    /// Print each report as one JSON object on one line, instead of text.
    #[arg(long)]
    json: bool,
}

/// Parses one monitoring URL, rejecting the mistakes a learner is likely to make: a NATS
/// client URL, a missing `http://`, or an endpoint path copied from the browser.
fn parse_monitor_url(text: &str) -> Result<Url, String> {
    let trimmed = text.trim();
    let redacted = redact_url(trimmed);
    let example = "expected the base URL of HTTP monitoring, such as http://localhost:8222";
    if trimmed.is_empty() {
        return Err(format!(
            "invalid monitoring URL {redacted:?}: it is empty; {example}"
        ));
    }
    if !trimmed.contains("://") {
        return Err(format!(
            "invalid monitoring URL {redacted:?}: missing http://; {example}"
        ));
    }

    let url = Url::parse(trimmed)
        .map_err(|error| format!("invalid monitoring URL {redacted:?}: {error}; {example}"))?;
    match url.scheme() {
        "http" | "https" => {}
        "nats" | "tls" | "ws" | "wss" => {
            return Err(format!(
                "{redacted:?} is a NATS client URL, but monitoring is HTTP on its own port (set with `nats-server -m 8222`); {example}"
            ));
        }
        other => {
            return Err(format!(
                "invalid monitoring URL {redacted:?}: the scheme {other:?} is not http or https; {example}"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "invalid monitoring URL {redacted:?}: it has no host; {example}"
        ));
    }
    let last_segment = url.path().trim_end_matches('/').rsplit('/').next();
    if let Some(endpoint) = last_segment.filter(|segment| ENDPOINT_NAMES.contains(segment)) {
        return Err(format!(
            "invalid monitoring URL {redacted:?}: give the base URL without /{endpoint}; the monitor picks the endpoints"
        ));
    }
    Ok(url)
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("invalid duration {text:?}: must be more than 0")),
        duration => Ok(duration),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let secrets: Vec<String> = args
        .monitor_urls
        .iter()
        .filter_map(|url| url.password().map(str::to_owned))
        .collect();
    common::logging::init(env!("CARGO_CRATE_NAME"), secrets.clone());

    match run(args, Shutdown::from_signals()).await {
        Ok(code) => code,
        Err(error) => common::logging::report_error(&error, &secrets),
    }
}

async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::builder()
        .timeout(args.timeout)
        .connect_timeout(args.timeout)
        // Monitoring ports are on the local network. A proxy from the environment would turn
        // "connection refused" into a proxy error and hide the hint for it, so none is used.
        .no_proxy()
        .build()
        .context("cannot set up the HTTP client")?;

    let mut servers = monitored_servers(&args.monitor_urls);
    let output = Output {
        json: args.json,
        redraw: !args.json && !args.once && io::stdout().is_terminal(),
        show_rates: !args.once,
        interval: args.interval,
    };
    if !args.once {
        tracing::info!(
            servers = %servers.iter().map(|s| s.endpoint.display.as_str()).collect::<Vec<_>>().join(", "),
            interval = ?args.interval,
            "watching queue groups"
        );
    }

    loop {
        let round_started = Instant::now();
        tokio::select! {
            () = poll_due(&mut servers, &http, &args, round_started) => {}
            () = shutdown.drain_requested() => return Ok(output.stopped()),
        }

        let outcomes: Vec<(&str, ServerOutcome<'_>)> = servers
            .iter()
            .map(|server| (server.endpoint.display.as_str(), server.outcome()))
            .collect();
        let report = report::build(&outcomes);

        if args.once {
            return finish_once(&output, &report, &servers);
        }
        output.print(&report)?;

        let next_poll = servers
            .iter()
            .map(|server| server.next_poll)
            .min()
            .unwrap_or(round_started + args.interval);
        tokio::select! {
            () = tokio::time::sleep_until(next_poll) => {}
            () = shutdown.drain_requested() => return Ok(output.stopped()),
        }
    }
}

/// Creates one [`ServerState`] per URL, leaving out repeats of the same URL.
fn monitored_servers(urls: &[Url]) -> Vec<ServerState> {
    let mut servers: Vec<ServerState> = Vec::new();
    for url in urls {
        let endpoint = MonitorEndpoint::new(url.clone());
        if servers
            .iter()
            .all(|server| server.endpoint.display != endpoint.display)
        {
            servers.push(ServerState::new(endpoint));
        }
    }
    servers
}

/// Polls, all at once, every server whose next poll is due at `round_started`.
async fn poll_due(
    servers: &mut [ServerState],
    http: &reqwest::Client,
    args: &Args,
    round_started: Instant,
) {
    let polls = servers
        .iter_mut()
        .filter(|server| server.next_poll <= round_started)
        .map(|server| async move {
            let result = server.endpoint.poll(http, args.timeout).await;
            server.record(result, round_started, args.interval, !args.once);
        });
    join_all(polls).await;
}

/// Prints the single report of `--once` and chooses the exit status.
///
/// When no server responded, the text report would hold nothing but the errors, so only
/// the error is printed, on stderr. JSON is printed either way, so a script always gets an
/// object to read.
fn finish_once(
    output: &Output,
    report: &Report,
    servers: &[ServerState],
) -> anyhow::Result<ExitCode> {
    let errors: Vec<String> = servers
        .iter()
        .filter_map(|server| server.last_error.as_ref().map(ToString::to_string))
        .collect();
    let any_responded = errors.len() < servers.len();
    if output.json || any_responded {
        output.print(report)?;
    }
    if errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

/// One monitored server: its latest response or error, and when to poll it next.
#[derive(Debug)]
struct ServerState {
    endpoint: MonitorEndpoint,
    /// The latest successful poll, kept through failures as the baseline of the rates for
    /// when the server responds again.
    last_sample: Option<ServerSample>,
    /// Set while the server does not respond.
    last_error: Option<PollError>,
    /// Failed polls in a row.
    failures: u32,
    next_poll: Instant,
}

impl ServerState {
    fn new(endpoint: MonitorEndpoint) -> Self {
        Self {
            endpoint,
            last_sample: None,
            last_error: None,
            failures: 0,
            next_poll: Instant::now(),
        }
    }

    fn outcome(&self) -> ServerOutcome<'_> {
        match (&self.last_error, &self.last_sample) {
            (Some(error), _) => ServerOutcome::Failed(error),
            (None, Some(sample)) => ServerOutcome::Answered(sample),
            (None, None) => ServerOutcome::Pending,
        }
    }

    /// Stores the result of a poll that started at `started` and schedules the next one:
    /// after `interval`, or after a pause that doubles with each failure in a row.
    fn record(
        &mut self,
        result: Result<monitoring::ServerSnapshot, PollError>,
        started: Instant,
        interval: Duration,
        log: bool,
    ) {
        match result {
            Ok(snapshot) => {
                if self.failures > 0 && log {
                    tracing::info!(
                        url = %self.endpoint.display,
                        failed_polls = self.failures,
                        "monitoring responds again"
                    );
                }
                let sample =
                    ServerSample::new(snapshot, started.into_std(), self.last_sample.as_ref());
                self.last_sample = Some(sample);
                self.last_error = None;
                self.failures = 0;
                self.next_poll = started + interval;
            }
            Err(error) => {
                self.failures += 1;
                let delay = retry_delay(interval, self.failures);
                // Logged when it starts or changes, not at every retry.
                if log && self.last_error.as_ref() != Some(&error) {
                    tracing::warn!(
                        url = %self.endpoint.display,
                        retry_in = ?delay,
                        "{error}"
                    );
                } else if log {
                    tracing::debug!(url = %self.endpoint.display, failed_polls = self.failures, retry_in = ?delay, "still no response");
                }
                self.last_error = Some(error);
                self.next_poll = started + delay;
            }
        }
    }
}

/// Returns the pause before the next poll of a failing server: `interval` after the first
/// failure, doubling with each further one, up to [`MAX_RETRY_DELAY`] or `interval`,
/// whichever is longer.
fn retry_delay(interval: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let delay = interval.saturating_mul(1 << doublings);
    delay.min(MAX_RETRY_DELAY.max(interval))
}

/// Output settings: the format, and whether to redraw the screen.
#[derive(Debug)]
struct Output {
    json: bool,
    /// Redraws the screen in place, because stdout is a terminal.
    redraw: bool,
    show_rates: bool,
    interval: Duration,
}

impl Output {
    fn print(&self, report: &Report) -> anyhow::Result<()> {
        let mut stdout = io::stdout().lock();
        let written = if self.json {
            let line = serde_json::to_string(report).context("cannot encode the report")?;
            writeln!(stdout, "{line}")
        } else if self.redraw {
            // Cursor home and clear the screen, then the new report in place of the old.
            write!(stdout, "\x1b[H\x1b[2J")
                .and_then(|()| writeln!(stdout, "{}", render::render(report, self.show_rates)))
                .and_then(|()| {
                    writeln!(
                        stdout,
                        "Refreshing every {:.1}s; press Ctrl-C to stop.",
                        self.interval.as_secs_f64()
                    )
                })
        } else {
            writeln!(stdout, "{}", render::render(report, self.show_rates))
                .and_then(|()| writeln!(stdout))
        };
        written
            .and_then(|()| stdout.flush())
            .context("cannot write the report to stdout")
    }

    /// Prints `Monitor stopped` after Ctrl-C, unless the output is JSON, and returns the exit
    /// status.
    fn stopped(&self) -> ExitCode {
        if !self.json {
            println!();
            println!("Monitor stopped");
        }
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_urls_are_checked() {
        assert!(parse_monitor_url("http://localhost:8222").is_ok());
        assert!(parse_monitor_url(" https://nats.example:8222/base/ ").is_ok());

        for (bad, reason) in [
            ("", "empty"),
            ("localhost:8222", "missing http://"),
            ("nats://localhost:4222", "NATS client URL"),
            ("ftp://localhost:8222", "not http or https"),
            ("http://localhost:8222/connz", "without /connz"),
            ("http://localhost:8222/subsz/", "without /subsz"),
        ] {
            let error = parse_monitor_url(bad).expect_err(bad);
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn url_errors_hide_the_password() {
        let error = parse_monitor_url("nats://me:s3cret@localhost:4222").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn zero_durations_are_rejected() {
        assert_eq!(positive_duration("200ms"), Ok(Duration::from_millis(200)));
        assert!(positive_duration("0").is_err());
        assert!(positive_duration("0ms").is_err());
    }

    #[test]
    fn retries_back_off_up_to_the_maximum() {
        let interval = Duration::from_millis(200);
        assert_eq!(retry_delay(interval, 1), interval);
        assert_eq!(retry_delay(interval, 2), Duration::from_millis(400));
        assert_eq!(retry_delay(interval, 4), Duration::from_millis(1600));
        assert_eq!(retry_delay(interval, 30), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(interval, u32::MAX), MAX_RETRY_DELAY);

        let long = Duration::from_secs(60);
        assert_eq!(
            retry_delay(long, 5),
            long,
            "never shorter than the interval"
        );
    }
}
