//! The nats-py side: an interpreter with nats-py installed and the scripts in `python/`.

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::child::Child;

/// Folder of `publisher.py` and `subscriber.py`.
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");

/// A Python interpreter that imports nats-py.
#[derive(Debug, Clone)]
pub(crate) struct Python {
    interpreter: PathBuf,
    /// nats-py's version, for the report.
    pub(crate) version: String,
}

impl Python {
    /// Checks that `interpreter` runs and imports nats-py, returning why not otherwise.
    pub(crate) async fn find(interpreter: PathBuf) -> anyhow::Result<Self> {
        let output = tokio::process::Command::new(&interpreter)
            .args([
                "-c",
                "import importlib.metadata as m, nats; print(m.version('nats-py'))",
            ])
            .output()
            .await
            .with_context(|| format!("cannot run {}", interpreter.display()))?;
        if !output.status.success() {
            bail!(
                "{} cannot import nats-py: {}",
                interpreter.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Ok(Self {
            interpreter,
            version,
        })
    }

    /// Starts `subscriber.py` as queue group member `id`; it counts `Completed task` lines.
    pub(crate) fn subscriber(
        &self,
        url: &str,
        subject: &str,
        queue: &str,
        id: usize,
    ) -> anyhow::Result<Child> {
        let args = [
            script("subscriber.py"),
            url.to_owned(),
            subject.to_owned(),
            queue.to_owned(),
            id.to_string(),
        ];
        Child::spawn(
            format!("nats-py subscriber {id}"),
            &self.interpreter,
            &args,
            Some("Completed task"),
        )
    }

    /// Runs `publisher.py` and returns the messages per second it reports.
    pub(crate) async fn publish(
        &self,
        url: &str,
        subject: &str,
        count: u32,
        data_size: usize,
    ) -> anyhow::Result<f64> {
        let args = [
            script("publisher.py"),
            url.to_owned(),
            subject.to_owned(),
            count.to_string(),
            data_size.to_string(),
        ];
        let mut child = Child::spawn("nats-py publisher", &self.interpreter, &args, None)?;
        let status = child.wait(std::time::Duration::from_secs(600)).await?;
        if !status.success() {
            bail!("publisher.py exited with {status}\n{}", child.transcript());
        }
        let json: serde_json::Value = serde_json::from_str(&child.stdout().join("\n"))
            .with_context(|| format!("publisher.py did not print JSON\n{}", child.transcript()))?;
        json["rate_per_second"]
            .as_f64()
            .context("publisher.py's JSON has no rate_per_second")
    }
}

fn script(name: &str) -> String {
    format!("{SCRIPTS}/{name}")
}
