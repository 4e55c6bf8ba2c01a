//! Child processes under measurement: the workspace's binaries and the nats-py scripts.
//!
//! A child's stdout is read line by line. Lines that contain the marker given at spawn
//! (`Completed task`, `done in`) are only counted, because a member prints several lines
//! per task and a run has tens of thousands of tasks. The first and last lines of the
//! rest are kept, which covers the `Waiting for tasks` line and the summary printed at
//! exit. Waits poll every millisecond, which bounds how late a wait notices a count.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

/// Interval of every polling wait in this crate.
pub(crate) const POLL: Duration = Duration::from_millis(1);
/// Lines kept from the start and, separately, from the end of each stream.
const KEPT_LINES: usize = 40;

/// Lines of one stream that were not counted: the first few and the latest few.
#[derive(Debug, Default)]
struct KeptLines {
    first: Vec<String>,
    last: VecDeque<String>,
}

impl KeptLines {
    fn push(&mut self, line: String) {
        if self.first.len() < KEPT_LINES {
            self.first.push(line);
            return;
        }
        if self.last.len() == KEPT_LINES {
            self.last.pop_front();
        }
        self.last.push_back(line);
    }

    fn all(&self) -> Vec<String> {
        self.first.iter().chain(&self.last).cloned().collect()
    }
}

/// A running child process, killed when dropped.
#[derive(Debug)]
pub(crate) struct Child {
    name: String,
    process: tokio::process::Child,
    pid: u32,
    counted: Arc<AtomicU64>,
    stdout: Arc<Mutex<KeptLines>>,
    stderr: Arc<Mutex<KeptLines>>,
}

impl Child {
    /// Starts `program` with `args`, counting the stdout lines that contain `marker`, if
    /// one is given.
    ///
    /// `NATS_*` variables are removed so that a user's settings cannot point a measured
    /// program at another server, and `RUST_LOG` is set to `warn` so that logging costs the
    /// same in every run.
    pub(crate) fn spawn(
        name: impl Into<String>,
        program: &Path,
        args: &[String],
        marker: Option<&'static str>,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("NATS_") {
                command.env_remove(key);
            }
        }
        let mut process = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let pid = process
            .id()
            .context("a child that was just started has a process id")?;

        let counted = Arc::new(AtomicU64::new(0));
        let stdout = Arc::new(Mutex::new(KeptLines::default()));
        let stderr = Arc::new(Mutex::new(KeptLines::default()));
        if let Some(stream) = process.stdout.take() {
            let counter = marker.map(|marker| (marker, Arc::clone(&counted)));
            read_lines(stream, counter, Arc::clone(&stdout));
        }
        if let Some(stream) = process.stderr.take() {
            read_lines(stream, None, Arc::clone(&stderr));
        }
        Ok(Self {
            name,
            process,
            pid,
            counted,
            stdout,
            stderr,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Lines that contained the marker so far.
    pub(crate) fn counted(&self) -> u64 {
        self.counted.load(Ordering::Relaxed)
    }

    /// Returns the stdout lines that were not counted, as far as they were kept.
    pub(crate) fn stdout(&self) -> Vec<String> {
        lock(&self.stdout).all()
    }

    /// Waits until a stdout line contains `text`.
    pub(crate) async fn wait_for_line(
        &mut self,
        text: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if lock(&self.stdout)
                .all()
                .iter()
                .any(|line| line.contains(text))
            {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {text:?} within {timeout:?}\n{}",
                    self.name,
                    self.transcript()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Peak resident set size so far (`VmHWM` in `/proc/PID/status`), in bytes.
    pub(crate) fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .with_context(|| format!("no VmHWM line in {path}"))?;
        Ok(kib * 1024)
    }

    /// Sends SIGINT, which makes every measured member drain and print its summary.
    pub(crate) fn interrupt(&self) -> anyhow::Result<()> {
        // The `kill` command keeps this crate free of `unsafe` calls into libc.
        let status = std::process::Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -INT {} ({}) failed: {status}", self.pid, self.name);
        }
        Ok(())
    }

    /// Interrupts the child, waits for it to exit with status 0, and returns its stdout
    /// lines that were kept.
    pub(crate) async fn stop(mut self, timeout: Duration) -> anyhow::Result<Vec<String>> {
        self.interrupt()?;
        let status = self.wait(timeout).await?;
        if !status.success() {
            bail!("{} exited with {status}\n{}", self.name, self.transcript());
        }
        Ok(lock(&self.stdout).all())
    }

    /// Waits for the child to exit, and for its output to be read, within `timeout`.
    pub(crate) async fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let status = match tokio::time::timeout(timeout, self.process.wait()).await {
            Ok(status) => status.with_context(|| format!("cannot wait for {}", self.name))?,
            Err(_) => bail!(
                "{} did not exit within {timeout:?}\n{}",
                self.name,
                self.transcript()
            ),
        };
        // The readers see end-of-file once the process is gone; give them a moment to
        // take the last lines.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(status)
    }

    /// Fails when the child has already exited, with what it printed.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.process.try_wait() {
            bail!(
                "{} exited early with {status}\n{}",
                self.name,
                self.transcript()
            );
        }
        Ok(())
    }

    /// Returns the kept stdout and stderr lines, for error messages.
    pub(crate) fn transcript(&self) -> String {
        format!(
            "--- {} stdout (counted lines left out) ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            lock(&self.stdout).all().join("\n"),
            self.name,
            lock(&self.stderr).all().join("\n")
        )
    }
}

fn lock(lines: &Mutex<KeptLines>) -> MutexGuard<'_, KeptLines> {
    lines
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads `stream` to its end in a task: counts the lines with the marker, keeps the rest.
fn read_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    counter: Option<(&'static str, Arc<AtomicU64>)>,
    kept: Arc<Mutex<KeptLines>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match &counter {
                Some((marker, count)) if line.contains(marker) => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                _ => lock(&kept).push(line),
            }
        }
    });
}

/// Waits until the counts of `children` add up to at least `target`, and returns when that
/// was first seen.
pub(crate) async fn wait_for_total(
    children: &mut [Child],
    target: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let total: u64 = children.iter().map(Child::counted).sum();
        if total >= target {
            return Ok(Instant::now());
        }
        for child in children.iter_mut() {
            child.check_running()?;
        }
        if Instant::now() >= deadline {
            bail!(
                "only {total} of {target} messages arrived within {timeout:?}; a member may have dropped some as a slow consumer"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Finds `Processed N messages` in a member's summary.
pub(crate) fn processed_from_summary(lines: &[String]) -> Option<u64> {
    lines.iter().rev().find_map(|line| {
        let rest = line.split("Processed ").nth(1)?;
        rest.strip_suffix(" messages")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_count_is_found() {
        let lines = vec![
            "[Worker 1] Waiting for tasks...".to_owned(),
            "[Worker 1] Processed 1200 messages".to_owned(),
        ];
        assert_eq!(processed_from_summary(&lines), Some(1200));
        assert_eq!(processed_from_summary(&lines[..1]), None);
    }

    #[test]
    fn kept_lines_keep_first_and_last() {
        let mut kept = KeptLines::default();
        for number in 0..1000 {
            kept.push(number.to_string());
        }
        let all = kept.all();
        assert_eq!(all.len(), 2 * KEPT_LINES);
        assert_eq!(all.first().map(String::as_str), Some("0"));
        assert_eq!(all.last().map(String::as_str), Some("999"));
    }
}
