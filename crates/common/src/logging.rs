//! Diagnostics on stderr through `tracing`, kept apart from the lesson's lines on stdout.
//!
//! `RUST_LOG` sets the filter as usual. When it is unset, this workspace's crates log at
//! `info` and everything else, async-nats included, at `warn`, except async-nats's
//! connection attempts. Their failures reach the program as the error that `connect`
//! returns, or as client events that [`crate::connection`] logs, so at the default level
//! a rejected connection is one line rather than two.
//!
//! Every line passes through a filter that replaces the password, token and any other
//! secret it was given with `***`, whatever the level and whichever crate wrote it, so
//! `RUST_LOG=trace` cannot leak them either.

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber for the binary `crate_name`.
///
/// `secrets` are the values to hide from every line; empty strings are ignored.
pub fn init(crate_name: &str, secrets: Vec<String>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,async_nats::connector=off,common=info,{crate_name}=info"
        ))
    });

    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(ScrubbingStderr::new(secrets))
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_target(false)
        .init();
}

/// Prints `error: ` and the whole error chain on one line of stderr, secrets scrubbed, and
/// returns the exit status for a runtime failure.
pub fn report_error(error: &anyhow::Error, secrets: &[String]) -> ExitCode {
    let line = scrub(&format!("error: {error:#}"), secrets);
    let _ = writeln!(io::stderr().lock(), "{line}");
    ExitCode::FAILURE
}

/// Replaces each secret in `text` with `***`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut clean = text.to_owned();
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        clean = clean.replace(secret.as_str(), "***");
    }
    clean
}

/// Makes writers to stderr that scrub secrets from what they write.
#[derive(Debug, Clone)]
struct ScrubbingStderr {
    secrets: Arc<Vec<String>>,
}

impl ScrubbingStderr {
    fn new(secrets: Vec<String>) -> Self {
        let secrets = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            secrets: Arc::new(secrets),
        }
    }
}

impl<'a> MakeWriter<'a> for ScrubbingStderr {
    type Writer = ScrubbingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter {
            secrets: Arc::clone(&self.secrets),
            buffer: Vec::new(),
        }
    }
}

/// Collects one formatted event and writes it, scrubbed, to stderr when dropped.
///
/// The fmt layer makes one writer per event, so buffering the whole event means a secret
/// is never split across two `write` calls and missed.
#[derive(Debug)]
struct ScrubbingWriter {
    secrets: Arc<Vec<String>>,
    buffer: Vec<u8>,
}

impl Write for ScrubbingWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ScrubbingWriter {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let clean = scrub(&text, &self.secrets);
        // Nothing sensible can be done when stderr itself fails, so the error is dropped.
        let _ = io::stderr().lock().write_all(clean.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_every_secret() {
        let secrets = vec!["s3cret".to_owned(), String::new(), "tok".to_owned()];
        assert_eq!(
            scrub("user:s3cret@host tok tok", &secrets),
            "user:***@host *** ***"
        );
        assert_eq!(scrub("nothing here", &secrets), "nothing here");
    }
}
