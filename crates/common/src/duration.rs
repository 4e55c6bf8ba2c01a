//! Durations on the command line.
//!
//! The tutorial takes plain seconds (`scalable_processor 1 2.0`), and Rust CLIs usually take
//! a number with a unit. Every duration flag and argument accepts both.

use std::time::Duration;

/// Parses `2`, `0.2` (seconds) or a number with one of the units `ms`, `s`, `m`, `h`.
///
/// Returns an error text that names the value and the accepted forms, for clap to print.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split_at = trimmed
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split_at);

    let invalid = |reason: &str| {
        format!(
            "invalid duration {text:?}: {reason}; use seconds (2.0) or a number with a unit (500ms, 2s, 1m)"
        )
    };

    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| invalid("expected a number"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(invalid("must be zero or more"));
    }

    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(invalid(&format!("unknown unit {other:?}"))),
    };

    Duration::try_from_secs_f64(seconds).map_err(|_| invalid("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_seconds() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("2.0"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn units_are_accepted() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_values_name_the_input() {
        for bad in ["", "abc", "-1", "2 weeks", "1d", "NaN", "inf", "1e400"] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}
