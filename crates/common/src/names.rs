//! Checks of subjects and queue group names, run before connecting.
//!
//! The server rejects a malformed subject only after the client has connected, and a queue
//! group name with a space in it silently splits what was meant to be one group. Checking
//! on the command line turns both into a usage error that names what is wrong.
//!
//! The rules are those of the NATS protocol: a subject is one or more tokens separated by
//! `.`, no token is empty, and nothing contains whitespace. `*` as a whole token matches
//! one token and `>` as the last token matches the rest; both are for subscribing only.

use std::fmt;

/// The use of a subject, needed because wildcards are valid only when subscribing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectUse {
    Publish,
    Subscribe,
}

/// The reason a subject or queue group name is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    reason: String,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for InvalidName {}

fn invalid(reason: impl Into<String>) -> InvalidName {
    InvalidName {
        reason: reason.into(),
    }
}

fn check_whitespace(kind: &str, name: &str) -> Result<(), InvalidName> {
    match name.char_indices().find(|(_, c)| c.is_whitespace()) {
        Some((at, c)) => Err(invalid(format!(
            "{kind} {name:?} contains whitespace ({c:?} at byte {at}); NATS does not allow it"
        ))),
        None => Ok(()),
    }
}

/// Checks a subject for the given use.
pub fn validate_subject(subject: &str, usage: SubjectUse) -> Result<(), InvalidName> {
    if subject.is_empty() {
        return Err(invalid("subject is empty"));
    }
    check_whitespace("subject", subject)?;

    let tokens: Vec<&str> = subject.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            let place = if index == 0 {
                "starts with '.'"
            } else if index == tokens.len() - 1 {
                "ends with '.'"
            } else {
                "contains '..'"
            };
            return Err(invalid(format!(
                "subject {subject:?} {place}; every token between dots must be non-empty"
            )));
        }

        let is_wildcard = *token == "*" || *token == ">";
        if is_wildcard && usage == SubjectUse::Publish {
            return Err(invalid(format!(
                "subject {subject:?} contains the wildcard {token:?}; a message is published to one concrete subject"
            )));
        }
        if *token == ">" && index != tokens.len() - 1 {
            return Err(invalid(format!(
                "subject {subject:?} has '>' before its last token; '>' matches the rest of a subject, so it must come last"
            )));
        }
    }
    Ok(())
}

/// Checks a queue group name: non-empty and without whitespace.
pub fn validate_queue_group(name: &str) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(invalid(
            "queue group name is empty; every member of a group subscribes with the same non-empty name",
        ));
    }
    check_whitespace("queue group name", name)
}

/// clap value parser for a subject that is published to.
pub fn publish_subject(text: &str) -> Result<String, InvalidName> {
    validate_subject(text, SubjectUse::Publish).map(|()| text.to_owned())
}

/// clap value parser for a subject that is subscribed to.
pub fn subscribe_subject(text: &str) -> Result<String, InvalidName> {
    validate_subject(text, SubjectUse::Subscribe).map(|()| text.to_owned())
}

/// clap value parser for a queue group name.
pub fn queue_group(text: &str) -> Result<String, InvalidName> {
    validate_queue_group(text).map(|()| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_subjects_pass() {
        for subject in [
            "tasks.process",
            "demo.topic",
            "a",
            "events.order.v2",
            "a-b_c.d",
        ] {
            assert_eq!(validate_subject(subject, SubjectUse::Publish), Ok(()));
            assert_eq!(validate_subject(subject, SubjectUse::Subscribe), Ok(()));
        }
        for subject in ["tasks.*", "tasks.>", "*.process", ">"] {
            assert_eq!(validate_subject(subject, SubjectUse::Subscribe), Ok(()));
        }
    }

    #[test]
    fn invalid_subjects_give_the_reason() {
        let cases = [
            ("", SubjectUse::Subscribe, "empty"),
            ("tasks process", SubjectUse::Subscribe, "whitespace"),
            ("tasks.process\n", SubjectUse::Publish, "whitespace"),
            ("tasks..process", SubjectUse::Subscribe, "'..'"),
            ("tasks.", SubjectUse::Subscribe, "ends with '.'"),
            (".tasks", SubjectUse::Subscribe, "starts with '.'"),
            ("tasks.*", SubjectUse::Publish, "wildcard"),
            ("tasks.>", SubjectUse::Publish, "wildcard"),
            ("tasks.>.x", SubjectUse::Subscribe, "last token"),
        ];
        for (subject, usage, expected) in cases {
            let error = validate_subject(subject, usage).expect_err(subject);
            assert!(error.to_string().contains(expected), "{subject:?}: {error}");
        }
    }

    #[test]
    fn queue_group_names() {
        assert_eq!(validate_queue_group("processors"), Ok(()));
        assert_eq!(validate_queue_group("heavy-workers"), Ok(()));

        let spaced = validate_queue_group("job worker").expect_err("space");
        assert!(spaced.to_string().contains("whitespace"), "{spaced}");
        assert!(spaced.to_string().contains("\"job worker\""), "{spaced}");

        let empty = validate_queue_group("").expect_err("empty");
        assert!(empty.to_string().contains("empty"), "{empty}");
    }
}
