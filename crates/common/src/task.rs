//! The task message that publishers send and workers decode.
//!
//! On the wire a task is JSON: `{"task_id": "TASK-001", "timestamp": "<RFC 3339, UTC>",
//! "data": "…"}`. Unknown fields are ignored, so a newer publisher can add some. Decoding
//! returns a [`DecodeError`] that names what is wrong, because a worker reports a bad
//! payload and keeps running rather than stopping on it.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest `task_id` a worker accepts, in bytes. Every output line names the task, so an
/// id of megabytes would flood the terminal; real ids are short.
pub const MAX_TASK_ID_LEN: usize = 128;

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Identifier printed in every line about this task, such as `TASK-007`.
    pub task_id: String,

    /// When the publisher created the task, in UTC.
    #[serde(
        serialize_with = "serialize_timestamp",
        deserialize_with = "deserialize_timestamp"
    )]
    pub timestamp: DateTime<Utc>,

    /// Free-form content; the tutorial's tasks carry a short text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Task {
    /// Creates a task stamped with the current time.
    pub fn new(task_id: impl Into<String>, data: Option<String>) -> Self {
        Self {
            task_id: task_id.into(),
            timestamp: Utc::now(),
            data,
        }
    }

    /// Encodes the task as JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a struct of strings and a timestamp into memory cannot fail.
        serde_json::to_vec(self).expect("a Task always serializes to JSON")
    }

    /// Decodes a payload, checking what serde cannot: a non-empty, bounded `task_id`.
    pub fn from_bytes(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.is_empty() {
            return Err(DecodeError::Empty);
        }
        if let Err(error) = std::str::from_utf8(payload) {
            return Err(DecodeError::NotUtf8 {
                valid_up_to: error.valid_up_to(),
            });
        }

        let task: Task = serde_json::from_slice(payload).map_err(DecodeError::Json)?;
        if task.task_id.is_empty() {
            return Err(DecodeError::EmptyTaskId);
        }
        if task.task_id.len() > MAX_TASK_ID_LEN {
            return Err(DecodeError::TaskIdTooLong {
                len: task.task_id.len(),
            });
        }
        Ok(task)
    }

    /// Formats the timestamp as printed in the lesson's lines: RFC 3339, UTC, microseconds.
    pub fn timestamp_text(&self) -> String {
        self.timestamp.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

fn serialize_timestamp<S: Serializer>(
    timestamp: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&timestamp.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// Accepts RFC 3339 with any offset, and also an ISO 8601 time without an offset, read as
/// UTC: Python's `datetime.utcnow().isoformat()`, which the Python version of this
/// tutorial publishes, has none.
fn deserialize_timestamp<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if let Ok(timestamp) = DateTime::parse_from_rfc3339(&text) {
        return Ok(timestamp.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|naive| naive.and_utc())
        .map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid timestamp {text:?}, expected RFC 3339 such as \"2026-01-31T12:00:00Z\""
            ))
        })
}

/// The reason a payload is not a task.
#[derive(Debug)]
pub enum DecodeError {
    Empty,
    NotUtf8 { valid_up_to: usize },
    Json(serde_json::Error),
    EmptyTaskId,
    TaskIdTooLong { len: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty payload"),
            Self::NotUtf8 { valid_up_to } => {
                write!(f, "not UTF-8 (invalid byte at offset {valid_up_to})")
            }
            Self::Json(error) => write!(f, "not a task: {error}"),
            Self::EmptyTaskId => write!(f, "task_id is empty"),
            Self::TaskIdTooLong { len } => write!(
                f,
                "task_id is {len} bytes long, more than the limit of {MAX_TASK_ID_LEN}"
            ),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Json(error) => Some(error),
            _ => None,
        }
    }
}

/// Number of payload bytes that [`preview`] shows.
pub const PREVIEW_LEN: usize = 40;

/// Shows the start of a payload on one line: printable ASCII as is, everything else
/// escaped, and `…` when it was cut.
pub fn preview(payload: &[u8]) -> String {
    let shown = &payload[..payload.len().min(PREVIEW_LEN)];
    let mut text = String::from("\"");
    text.push_str(&shown.escape_ascii().to_string());
    text.push('"');
    if payload.len() > PREVIEW_LEN {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_round_trips() {
        let task = Task::new("TASK-001", Some("Process this task".into()));
        let decoded = Task::from_bytes(&task.to_bytes()).expect("own encoding decodes");
        assert_eq!(decoded.task_id, "TASK-001");
        assert_eq!(decoded.data.as_deref(), Some("Process this task"));
        // The wire format keeps microseconds, so compare at that precision.
        assert_eq!(decoded.timestamp_text(), task.timestamp_text());
    }

    #[test]
    fn encoding_uses_rfc3339_utc() {
        let mut task = Task::new("TASK-002", None);
        task.timestamp = DateTime::parse_from_rfc3339("2026-01-31T12:00:00.5+02:00")
            .expect("valid RFC 3339")
            .with_timezone(&Utc);
        let json: serde_json::Value = serde_json::from_slice(&task.to_bytes()).expect("JSON");
        assert_eq!(json["timestamp"], "2026-01-31T10:00:00.500000Z");
        assert_eq!(json["task_id"], "TASK-002");
        assert!(json.get("data").is_none(), "absent data is omitted: {json}");
    }

    #[test]
    fn python_timestamps_decode_as_utc() {
        let payload =
            br#"{"task_id": "TASK-003", "timestamp": "2026-01-31T12:00:00.123456", "data": "x"}"#;
        let task = Task::from_bytes(payload).expect("naive ISO timestamp is accepted");
        assert_eq!(task.timestamp_text(), "2026-01-31T12:00:00.123456Z");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let payload = br#"{"task_id": "T", "timestamp": "2026-01-31T12:00:00Z", "priority": 3}"#;
        assert_eq!(Task::from_bytes(payload).expect("decodes").task_id, "T");
    }

    #[test]
    fn bad_payloads_say_what_is_wrong() {
        let long_id = format!(
            r#"{{"task_id": "{}", "timestamp": "2026-01-31T12:00:00Z"}}"#,
            "x".repeat(MAX_TASK_ID_LEN + 1)
        );
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty payload"),
            (b"not json", "not a task"),
            (b"hello world", "expected value"),
            (b"\xff\xfe{}", "not UTF-8"),
            (
                br#"{"timestamp": "2026-01-31T12:00:00Z"}"#,
                "missing field `task_id`",
            ),
            (
                br#"{"task_id": 7, "timestamp": "2026-01-31T12:00:00Z"}"#,
                "invalid type",
            ),
            (
                br#"{"task_id": "T", "timestamp": "yesterday"}"#,
                "invalid timestamp",
            ),
            (
                br#"{"task_id": "", "timestamp": "2026-01-31T12:00:00Z"}"#,
                "task_id is empty",
            ),
            (br#"[1, 2, 3]"#, "invalid type"),
            (long_id.as_bytes(), "more than the limit"),
        ];
        for (payload, expected) in cases {
            let error = Task::from_bytes(payload).expect_err(&preview(payload));
            assert!(
                error.to_string().contains(expected),
                "{}: {error}",
                preview(payload)
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let depth = 10_000;
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let as_task_id = format!(r#"{{"task_id": {nested}, "timestamp": "2026-01-31T12:00:00Z"}}"#);
        for payload in [nested.clone(), as_task_id] {
            let error = Task::from_bytes(payload.as_bytes()).expect_err("too deep");
            assert!(error.to_string().contains("not a task"), "{error}");
        }
    }

    #[test]
    fn deep_nesting_in_an_unknown_field_is_skipped() {
        let depth = 10_000;
        let payload = format!(
            r#"{{"task_id": "T", "timestamp": "2026-01-31T12:00:00Z", "extra": {}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(
            Task::from_bytes(payload.as_bytes())
                .expect("decodes")
                .task_id,
            "T"
        );
    }

    #[test]
    fn preview_escapes_and_cuts() {
        assert_eq!(preview(b"abc"), r#""abc""#);
        assert_eq!(preview(b"\xff\n"), r#""\xff\n""#);
        let long = vec![b'a'; PREVIEW_LEN + 5];
        assert_eq!(preview(&long), format!("\"{}\"…", "a".repeat(PREVIEW_LEN)));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever arrives on the subject, decoding returns a result and never panics.
            #[test]
            fn any_bytes_decode_without_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = Task::from_bytes(&payload);
            }

            /// JSON-looking input, which reaches deeper into the decoder than random bytes.
            #[test]
            fn json_like_text_decodes_without_panic(text in r#"[{}\[\]",:0-9a-z_ ]{0,200}"#) {
                let _ = Task::from_bytes(text.as_bytes());
            }

            /// A task with any valid id and data decodes to itself.
            #[test]
            fn valid_tasks_round_trip(
                task_id in "[^\u{0}]{1,40}".prop_filter("within the id limit", |id| id.len() <= MAX_TASK_ID_LEN),
                data in proptest::option::of(".{0,100}"),
            ) {
                let task = Task::new(task_id.clone(), data.clone());
                let decoded = Task::from_bytes(&task.to_bytes()).expect("own encoding decodes");
                prop_assert_eq!(decoded.timestamp_text(), task.timestamp_text());
                prop_assert_eq!(decoded.task_id, task_id);
                prop_assert_eq!(decoded.data, data);
            }

            /// An id longer than the limit is always rejected, whatever it contains.
            #[test]
            fn long_ids_are_rejected(task_id in "[a-zA-Z0-9-]{129,300}") {
                let task = Task::new(task_id, None);
                let rejected = matches!(
                    Task::from_bytes(&task.to_bytes()),
                    Err(DecodeError::TaskIdTooLong { .. })
                );
                prop_assert!(rejected);
            }
        }
    }
}
