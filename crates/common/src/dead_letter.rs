//! Dead letters: messages a worker gave up on, parked on a subject of their own.
//!
//! Core NATS does not redeliver. Once the server has handed a task to a queue group member
//! it has forgotten the task. So a member whose processing fails must retry by itself, and
//! when it gives up it must put the message where a person or a tool can find it. Step 4's
//! `resilient_worker` publishes the original payload unchanged to a dead-letter subject
//! (`tasks.risky.dead` by default) and describes the failure in headers:
//!
//! | header | value |
//! | --- | --- |
//! | `Dead-Letter-Reason` | the last error, such as `simulated failure` |
//! | `Dead-Letter-Attempts` | attempts made: `3` after three failures, `1` for a payload that is not a task |
//! | `Dead-Letter-Worker` | id of the worker that gave up |
//! | `Dead-Letter-Subject` | subject the message was published on, where `replay_dead_letters` sends it back |
//!
//! Headers the original message carried are kept next to these. A dead-letter subject is an
//! ordinary core NATS subject, so the server stores nothing on it: a dead letter published
//! while nothing subscribes to that subject is dropped.

use std::fmt;

use async_nats::HeaderMap;

use crate::names;

/// Header with the error that made the worker give up.
pub const REASON_HEADER: &str = "Dead-Letter-Reason";
/// Header with the number of attempts made, in decimal.
pub const ATTEMPTS_HEADER: &str = "Dead-Letter-Attempts";
/// Header with the id of the worker that gave up.
pub const WORKER_HEADER: &str = "Dead-Letter-Worker";
/// Header with the subject the message was originally published on.
pub const SUBJECT_HEADER: &str = "Dead-Letter-Subject";

/// Header with the number of times a replay tool has sent the message back, in decimal.
/// It stays on the message through later failures, unlike the four above, so that a task
/// that always fails is not replayed forever.
pub const REPLAYS_HEADER: &str = "Dead-Letter-Replays";

/// Returns how many times a message has been replayed: its [`REPLAYS_HEADER`], or 0.
pub fn replays(headers: Option<&HeaderMap>) -> u32 {
    headers
        .and_then(|headers| headers.get(REPLAYS_HEADER))
        .and_then(|value| value.as_str().trim().parse().ok())
        .unwrap_or(0)
}

/// Every header this module adds, for stripping them again before a replay.
const HEADERS: [&str; 4] = [
    REASON_HEADER,
    ATTEMPTS_HEADER,
    WORKER_HEADER,
    SUBJECT_HEADER,
];

/// Suffix of the default dead-letter subject: `tasks.risky` gives `tasks.risky.dead`.
pub const SUFFIX: &str = ".dead";

/// Dead-letter subject used for a wildcard work subject, which cannot take the suffix.
pub const FALLBACK_SUBJECT: &str = "dead.letters";

/// The account of a message a worker gave up on, as carried in the dead letter's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Subject the message was published on before it failed.
    pub subject: String,
    /// The last error, on one line.
    pub reason: String,
    /// Attempts made before giving up.
    pub attempts: u32,
    /// Id of the worker that gave up.
    pub worker: String,
}

/// The reason a message is not a dead letter that can be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDeadLetter {
    reason: String,
}

impl fmt::Display for InvalidDeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for InvalidDeadLetter {}

impl DeadLetter {
    /// Builds the headers of the dead letter: those of the original message, if any, plus
    /// the four `Dead-Letter-*` headers, which replace any of the same name.
    ///
    /// A header value cannot hold a line break, so async-nats turns each `\r` or `\n` in the
    /// reason or the worker id into a space.
    pub fn headers(&self, original: Option<&HeaderMap>) -> HeaderMap {
        let mut headers = original
            .map(without_dead_letter_headers)
            .unwrap_or_default();
        headers.insert(REASON_HEADER, self.reason.as_str());
        headers.insert(ATTEMPTS_HEADER, self.attempts.to_string());
        headers.insert(WORKER_HEADER, self.worker.as_str());
        headers.insert(SUBJECT_HEADER, self.subject.as_str());
        headers
    }

    /// Reads a dead letter's headers, checking that the original subject can be published
    /// to and that the attempt count is a number.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Self, InvalidDeadLetter> {
        let Some(headers) = headers else {
            return Err(InvalidDeadLetter {
                reason: format!("the message has no headers, so no {SUBJECT_HEADER} header"),
            });
        };
        let header = |name: &str| {
            headers
                .get(name)
                .map(|value| value.as_str().to_owned())
                .ok_or_else(|| InvalidDeadLetter {
                    reason: format!("missing header {name}"),
                })
        };

        let subject = header(SUBJECT_HEADER)?;
        names::validate_subject(&subject, names::SubjectUse::Publish).map_err(|error| {
            InvalidDeadLetter {
                reason: format!("invalid {SUBJECT_HEADER} header: {error}"),
            }
        })?;
        let attempts_text = header(ATTEMPTS_HEADER)?;
        let attempts = attempts_text
            .trim()
            .parse()
            .map_err(|_| InvalidDeadLetter {
                reason: format!(
                    "invalid {ATTEMPTS_HEADER} header {attempts_text:?}: expected a whole number"
                ),
            })?;

        Ok(Self {
            subject,
            reason: header(REASON_HEADER)?,
            attempts,
            worker: header(WORKER_HEADER)?,
        })
    }
}

/// Returns a copy of `headers` without the `Dead-Letter-*` headers, so that a replayed
/// message carries what the original publisher sent and nothing more.
pub fn without_dead_letter_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, values) in headers.iter() {
        let name_text: &str = name.as_ref();
        if HEADERS
            .iter()
            .any(|ours| ours.eq_ignore_ascii_case(name_text))
        {
            continue;
        }
        for value in values {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// Derives the dead-letter subject for workers on `work_subject`: `tasks.risky` gives
/// `tasks.risky.dead`, and a wildcard subscription such as `tasks.*` gets
/// [`FALLBACK_SUBJECT`], since a subject with a wildcard cannot be published to.
pub fn default_subject(work_subject: &str) -> String {
    let concrete = names::validate_subject(work_subject, names::SubjectUse::Publish).is_ok();
    if concrete {
        format!("{work_subject}{SUFFIX}")
    } else {
        FALLBACK_SUBJECT.to_owned()
    }
}

/// Reports whether a subscription on `pattern` receives messages published to `subject`.
///
/// `*` matches exactly one token and a final `>` matches one or more. Workers and the
/// replay tool use this to reject a setup in which what they publish comes straight back
/// to their own subscription, which would go round forever.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for pattern_token in pattern.split('.') {
        match (pattern_token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (literal, Some(token)) if literal == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeadLetter {
        DeadLetter {
            subject: "tasks.risky".into(),
            reason: "simulated failure".into(),
            attempts: 3,
            worker: "2".into(),
        }
    }

    #[test]
    fn headers_round_trip() {
        let headers = sample().headers(None);
        assert_eq!(headers.get(ATTEMPTS_HEADER).map(|v| v.as_str()), Some("3"));
        assert_eq!(DeadLetter::from_headers(Some(&headers)), Ok(sample()));
    }

    #[test]
    fn original_headers_are_kept_and_can_be_stripped() {
        let mut original = HeaderMap::new();
        original.insert("Trace-Id", "abc");
        original.insert(REASON_HEADER, "an older failure");

        let headers = sample().headers(Some(&original));
        assert_eq!(headers.get("Trace-Id").map(|v| v.as_str()), Some("abc"));
        assert_eq!(
            headers.get(REASON_HEADER).map(|v| v.as_str()),
            Some("simulated failure")
        );

        let stripped = without_dead_letter_headers(&headers);
        assert_eq!(stripped.get("Trace-Id").map(|v| v.as_str()), Some("abc"));
        for name in HEADERS {
            assert!(stripped.get(name).is_none(), "{name} was stripped");
        }
    }

    #[test]
    fn line_breaks_in_values_become_spaces() {
        let mut dead_letter = sample();
        dead_letter.reason = "first\nsecond".into();
        let headers = dead_letter.headers(None);
        assert_eq!(
            headers.get(REASON_HEADER).map(|v| v.as_str()),
            Some("first second")
        );
    }

    #[test]
    fn invalid_headers_give_the_reason() {
        let missing = DeadLetter::from_headers(None).expect_err("no headers");
        assert!(missing.to_string().contains(SUBJECT_HEADER), "{missing}");

        let mut no_attempts = sample().headers(None);
        no_attempts.insert(ATTEMPTS_HEADER, "three");
        let error = DeadLetter::from_headers(Some(&no_attempts)).expect_err("not a number");
        assert!(error.to_string().contains("\"three\""), "{error}");

        let mut wildcard = sample().headers(None);
        wildcard.insert(SUBJECT_HEADER, "tasks.*");
        let error = DeadLetter::from_headers(Some(&wildcard)).expect_err("wildcard");
        assert!(error.to_string().contains("wildcard"), "{error}");
    }

    #[test]
    fn default_subject_follows_the_work_subject() {
        assert_eq!(default_subject("tasks.risky"), "tasks.risky.dead");
        assert_eq!(default_subject("tasks.*"), FALLBACK_SUBJECT);
        assert_eq!(default_subject("tasks.>"), FALLBACK_SUBJECT);
    }

    #[test]
    fn subject_matching_follows_nats_wildcards() {
        let cases = [
            ("tasks.risky", "tasks.risky", true),
            ("tasks.risky", "tasks.risky.dead", false),
            ("tasks.*", "tasks.risky", true),
            ("tasks.*", "tasks.risky.dead", false),
            ("tasks.>", "tasks.risky.dead", true),
            ("tasks.>", "tasks", false),
            (">", "dead.letters", true),
            ("*.risky.dead", "tasks.risky.dead", true),
            ("tasks.risky.dead", "tasks.risky", false),
        ];
        for (pattern, subject, expected) in cases {
            assert_eq!(
                subject_matches(pattern, subject),
                expected,
                "{pattern} against {subject}"
            );
        }
    }
}
