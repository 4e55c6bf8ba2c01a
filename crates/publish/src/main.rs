//! Publishes a text message to a subject, standing in for `nats pub` where the NATS CLI is
//! not installed.
//!
//! Step 2 of the tutorial publishes ten numbered messages to the comparison demo. Start
//! `cargo run --bin comparison_demo`, then in a second terminal:
//!
//! ```text
//! cargo run --bin publish -- demo.topic "Message {{Count}}" --count 10 --sleep 0.5
//! ```
//!
//! It prints `Published 9 bytes to "demo.topic"` once per message, as `nats pub` does, and
//! the demo prints `Message 1` … `Message 10` as they arrive. `{{Count}}` is the number of
//! the message, starting at 1, in the body and in `--header` values.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use clap::Parser;
use common::connection::ClientSettings;
use common::{ConnectArgs, names, parse_duration};

/// Placeholder name replaced by the message number, as in the `nats` CLI's body templates.
const COUNT_PLACEHOLDER: &str = "Count";

/// Publishes one or more messages to a subject, like `nats pub SUBJECT BODY`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Subject to publish to; wildcards are not allowed.
    #[arg(value_parser = names::publish_subject)]
    subject: String,

    /// Message body. `{{Count}}` (also `{{ Count }}` or `{{.Count}}`) is replaced by the
    /// message number, starting at 1; any other `{{…}}` text is sent unchanged.
    body: String,

    /// Number of messages to publish.
    #[arg(long, default_value_t = 1, value_parser = parse_count, value_name = "N")]
    count: u64,

    /// Pause between two messages (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = "0", value_parser = parse_duration, value_name = "DURATION")]
    sleep: Duration,

    /// Header to add to every message, as KEY:VALUE; repeat for more. `{{Count}}` in the
    /// value is replaced as in the body.
    #[arg(short = 'H', long = "header", value_parser = parse_header, value_name = "KEY:VALUE")]
    headers: Vec<Header>,

    /// How long to wait for the server to confirm each message before giving up.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    flush_timeout: Duration,

    #[command(flatten)]
    connect: ConnectArgs,
}

/// One `--header` option: a checked name and a value that may contain `{{Count}}`.
#[derive(Debug, Clone)]
struct Header {
    name: HeaderName,
    value_template: String,
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
        .connect(&ClientSettings::named("publish"))
        .await?;

    for number in 1..=args.count {
        let body = fill_count(&args.body, number);
        let size = body.len();
        common::limits::ensure_fits(&client, &args.subject, size)
            .with_context(|| format!("cannot publish message {number}"))?;
        if args.headers.is_empty() {
            client
                .publish(args.subject.clone(), body.into())
                .await
                .with_context(|| format!("cannot publish message {number}"))?;
        } else {
            client
                .publish_with_headers(
                    args.subject.clone(),
                    header_map(&args.headers, number),
                    body.into(),
                )
                .await
                .with_context(|| format!("cannot publish message {number}"))?;
        }

        // `publish` only queues the message in the client. The flush returns once the
        // server has replied to a PING sent after it, so the server has the message by the
        // time the line below is printed.
        common::limits::flush_within(&client, args.flush_timeout)
            .await
            .with_context(|| {
                let unconfirmed = args.count - number + 1;
                format!(
                    "message {number} was not confirmed by the server; {unconfirmed} of {} messages are unconfirmed",
                    args.count
                )
            })?;
        println!("Published {size} bytes to {:?}", args.subject);

        if number < args.count {
            tokio::time::sleep(args.sleep).await;
        }
    }

    client
        .drain()
        .await
        .context("cannot close the connection")?;
    Ok(())
}

/// Builds the headers of message `number`.
fn header_map(headers: &[Header], number: u64) -> HeaderMap {
    let mut map = HeaderMap::new();
    for header in headers {
        // `append`, not `insert`, so that a repeated key keeps every value, as NATS allows.
        map.append(
            header.name.clone(),
            fill_count(&header.value_template, number),
        );
    }
    map
}

/// Replaces every `{{Count}}` in `template` with `number`.
///
/// The `nats` CLI's spellings `{{ Count }}` and `{{.Count}}` are accepted too. Any other
/// `{{…}}`, and a `{{` without a closing `}}`, is kept as it is.
fn fill_count(template: &str, number: u64) -> String {
    let mut filled = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let inside_and_after = &rest[open + 2..];
        let Some(close) = inside_and_after.find("}}") else {
            break;
        };
        let inside = inside_and_after[..close].trim();
        let name = inside.strip_prefix('.').unwrap_or(inside);

        filled.push_str(&rest[..open]);
        if name == COUNT_PLACEHOLDER {
            filled.push_str(&number.to_string());
        } else {
            filled.push_str(&rest[open..open + 2 + close + 2]);
        }
        rest = &inside_and_after[close + 2..];
    }
    filled.push_str(rest);
    filled
}

fn parse_count(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(format!(
            "invalid count {text:?}: expected a whole number of messages, at least 1"
        )),
    }
}

/// Parses `KEY:VALUE`, trimming spaces around both, as the `nats` CLI does.
fn parse_header(text: &str) -> Result<Header, String> {
    let Some((key, value)) = text.split_once(':') else {
        return Err(format!(
            "invalid header {text:?}: expected KEY:VALUE, such as Trace-Id:42"
        ));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("invalid header {text:?}: the key is empty"));
    }
    let name = HeaderName::from_str(key).map_err(|_| {
        format!(
            "invalid header key {key:?}: use printable ASCII characters other than ':', without spaces"
        )
    })?;
    let value = value.trim();
    // The value of message N is this text with digits in place of `{{Count}}`, so checking
    // the text here also checks every value that will be sent.
    HeaderValue::from_str(value).map_err(|_| {
        format!("invalid header value {value:?}: a value cannot contain a line break")
    })?;
    Ok(Header {
        name,
        value_template: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_placeholder_is_replaced() {
        assert_eq!(fill_count("Message {{Count}}", 1), "Message 1");
        assert_eq!(fill_count("Message {{ Count }}", 12), "Message 12");
        assert_eq!(fill_count("Message {{.Count}}", 3), "Message 3");
        assert_eq!(fill_count("{{Count}}/{{Count}}", 7), "7/7");
        assert_eq!(fill_count("{{Count}}", u64::MAX), u64::MAX.to_string());
    }

    #[test]
    fn other_text_is_kept() {
        let cases = [
            "plain",
            "",
            "{{Time}} and {{ ID }}",
            "{{count}}",
            "unclosed {{Count",
            "}} {{",
            "{{}}",
            "héllo {{Unknown}} wörld",
        ];
        for template in cases {
            assert_eq!(fill_count(template, 5), template, "{template:?}");
        }
        assert_eq!(fill_count("{{Time}} {{Count}}", 2), "{{Time}} 2");
        assert_eq!(fill_count("é{{Count}}é", 4), "é4é");
    }

    #[test]
    fn count_must_be_positive() {
        assert_eq!(parse_count("10"), Ok(10));
        for bad in ["0", "-1", "ten", "", "1.5"] {
            let error = parse_count(bad).expect_err(bad);
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn headers_are_parsed_and_checked() {
        let header = parse_header(" Trace-Id : n-{{Count}} ").expect("valid header");
        assert_eq!(header.name.to_string(), "Trace-Id");
        assert_eq!(header.value_template, "n-{{Count}}");

        let empty_value = parse_header("Key:").expect("an empty value is allowed");
        assert_eq!(empty_value.value_template, "");

        let cases = [
            ("no-colon", "expected KEY:VALUE"),
            (":value", "the key is empty"),
            ("bad key:value", "invalid header key"),
            ("Key:line\nbreak", "line break"),
        ];
        for (text, expected) in cases {
            let error = parse_header(text).expect_err(text);
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn header_values_are_filled_per_message() {
        let headers = [
            parse_header("Seq:{{Count}}").expect("valid"),
            parse_header("Seq:again").expect("valid"),
        ];
        let map = header_map(&headers, 3);
        let values: Vec<String> = map
            .get_all("Seq")
            .map(|value| value.as_str().to_owned())
            .collect();
        assert_eq!(values, ["3", "again"]);
    }
}
