//! Completion reports: how a publisher learns that its batch is done.
//!
//! Core NATS tells a publisher nothing about what happens to a message after the server has
//! it. So each worker publishes a small [`Completion`] per task to a results subject, by
//! default `<work subject>.done` (`tasks.heavy.done` for Step 3), and `load_generator
//! --wait` subscribes there to measure when the last task finished. A results subject is a
//! plain subject, not one the workers subscribe to, so the reports cannot loop back.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::names;

/// Suffix of the default results subject.
pub const RESULTS_SUFFIX: &str = ".done";

/// The outcome of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The work succeeded.
    Completed,
    /// The work failed for good and the task went to the dead-letter subject.
    DeadLettered,
}

/// One task's completion report, published as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub task_id: String,
    /// The worker's id, as given on its command line.
    pub worker: String,
    pub outcome: Outcome,
    /// Attempts made, 1 when the first one succeeded.
    pub attempts: u32,
    /// Tasks the worker works on at the same time, so that a publisher can work out the
    /// ideal makespan; reports without it count as 1.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// When the worker started on the task.
    #[serde(with = "rfc3339")]
    pub started_at: DateTime<Utc>,
    /// When the worker finished with it.
    #[serde(with = "rfc3339")]
    pub finished_at: DateTime<Utc>,
}

fn one() -> u32 {
    1
}

impl Completion {
    /// Encodes the report as JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, numbers and timestamps always serializes.
        serde_json::to_vec(self).expect("a Completion always serializes to JSON")
    }

    /// Decodes a report.
    pub fn from_bytes(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    use super::SecondsFormat;

    pub(super) fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Flags that choose where a worker publishes its completion reports.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Completion reports")]
pub struct ReportArgs {
    /// Subject for one completion report per task [default: the work subject followed by
    /// .done, such as tasks.heavy.done].
    #[arg(long, value_parser = names::publish_subject, value_name = "SUBJECT")]
    pub results_subject: Option<String>,

    /// Publish no completion reports.
    #[arg(long, conflicts_with = "results_subject")]
    pub no_results: bool,
}

impl ReportArgs {
    /// Returns the results subject for workers on `work_subject`, or `None` when reports are off.
    pub fn subject(&self, work_subject: &str) -> Option<String> {
        if self.no_results {
            return None;
        }
        Some(
            self.results_subject
                .clone()
                .unwrap_or_else(|| default_results_subject(work_subject)),
        )
    }
}

/// `tasks.heavy` gives `tasks.heavy.done`. A wildcard subscription such as `tasks.*` keeps
/// its wildcards and would not be a valid subject to publish on, so it gets `results.done`.
pub fn default_results_subject(work_subject: &str) -> String {
    let concrete = names::validate_subject(work_subject, names::SubjectUse::Publish).is_ok();
    if concrete {
        format!("{work_subject}{RESULTS_SUFFIX}")
    } else {
        format!("results{RESULTS_SUFFIX}")
    }
}

/// Publishes completion reports, or does nothing when they are off.
#[derive(Debug, Clone)]
pub struct Reporter {
    client: async_nats::Client,
    subject: Option<String>,
}

impl Reporter {
    /// Creates a reporter that publishes to `subject`, or a silent one for `None`.
    pub fn new(client: async_nats::Client, subject: Option<String>) -> Self {
        Self { client, subject }
    }

    /// Publishes one report. A failure is logged and not returned: the task itself is
    /// done, and losing its report must not stop the worker.
    pub async fn report(&self, completion: &Completion) {
        let Some(subject) = &self.subject else {
            return;
        };
        if let Err(error) = self
            .client
            .publish(subject.clone(), completion.to_bytes().into())
            .await
        {
            tracing::warn!(task_id = %completion.task_id, %subject, %error, "cannot publish the completion report");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_round_trips() {
        let completion = Completion {
            task_id: "HEAVY-001".into(),
            worker: "2".into(),
            outcome: Outcome::DeadLettered,
            attempts: 3,
            concurrency: 1,
            started_at: Utc::now(),
            finished_at: Utc::now(),
        };
        let json: serde_json::Value = serde_json::from_slice(&completion.to_bytes()).expect("JSON");
        assert_eq!(json["outcome"], "dead_lettered");
        let decoded = Completion::from_bytes(&completion.to_bytes()).expect("decodes");
        assert_eq!(decoded.task_id, "HEAVY-001");
        assert_eq!(decoded.attempts, 3);
    }

    #[test]
    fn default_subject_follows_the_work_subject() {
        assert_eq!(default_results_subject("tasks.heavy"), "tasks.heavy.done");
        assert_eq!(default_results_subject("tasks.*"), "results.done");
    }
}
