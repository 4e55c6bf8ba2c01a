//! Medians and spreads of repeated measurements, and the Markdown table they are printed in.

use std::fmt::Write as _;

/// The values of one measurement over several runs, sorted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    values: Vec<f64>,
}

impl Sample {
    /// Collects `values`; NaN values are dropped so that sorting is total.
    pub(crate) fn new(mut values: Vec<f64>) -> Self {
        values.retain(|value| !value.is_nan());
        values.sort_by(f64::total_cmp);
        Self { values }
    }

    /// Adds one run's value.
    pub(crate) fn push(&mut self, value: f64) {
        if !value.is_nan() {
            let at = self.values.partition_point(|existing| *existing < value);
            self.values.insert(at, value);
        }
    }

    /// Returns the middle value, or the mean of the two middle values for an even count.
    pub(crate) fn median(&self) -> f64 {
        let n = self.values.len();
        match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => self.values[n / 2],
            _ => (self.values[n / 2 - 1] + self.values[n / 2]) / 2.0,
        }
    }

    pub(crate) fn min(&self) -> f64 {
        self.values.first().copied().unwrap_or(f64::NAN)
    }

    pub(crate) fn max(&self) -> f64 {
        self.values.last().copied().unwrap_or(f64::NAN)
    }

    /// Returns the nearest-rank percentile `p` (0 to 100) of the values.
    pub(crate) fn percentile(&self, p: f64) -> f64 {
        if self.values.is_empty() {
            return f64::NAN;
        }
        let rank = (p / 100.0 * self.values.len() as f64).ceil() as usize;
        self.values[rank.clamp(1, self.values.len()) - 1]
    }
}

/// Unit and number format of a row's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    MessagesPerSecond,
    Microseconds,
    Milliseconds,
    Seconds,
    Mebibytes,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Self::MessagesPerSecond => "msg/s",
            Self::Microseconds => "µs",
            Self::Milliseconds => "ms",
            Self::Seconds => "s",
            Self::Mebibytes => "MiB",
        }
    }

    fn format(self, value: f64) -> String {
        if value.is_nan() {
            return "n/a".to_owned();
        }
        match self {
            Self::MessagesPerSecond => group_thousands(value.round() as u64),
            Self::Microseconds => format!("{value:.0}"),
            Self::Milliseconds => format!("{value:.1}"),
            Self::Seconds => format!("{value:.3}"),
            Self::Mebibytes => format!("{value:.1}"),
        }
    }
}

fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// One measured program or loop: its name and its values.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub(crate) label: String,
    pub(crate) sample: Sample,
}

impl Measured {
    pub(crate) fn new(label: impl Into<String>, sample: Sample) -> Self {
        Self {
            label: label.into(),
            sample,
        }
    }
}

/// One line of the results table: this workspace's figure against a reference.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) case: String,
    pub(crate) unit: Unit,
    pub(crate) ours: Measured,
    pub(crate) reference: Option<Measured>,
    pub(crate) note: String,
}

impl Row {
    /// Returns the median of ours divided by the median of the reference.
    pub(crate) fn ratio(&self) -> Option<f64> {
        let reference = self.reference.as_ref()?.sample.median();
        let ours = self.ours.sample.median();
        (reference > 0.0 && ours.is_finite()).then(|| ours / reference)
    }
}

/// Formats `median (min–max)`, or just the value when every run gave the same one.
fn spread(unit: Unit, sample: &Sample) -> String {
    let median = unit.format(sample.median());
    let (min, max) = (unit.format(sample.min()), unit.format(sample.max()));
    if min == max {
        median
    } else {
        format!("{median} ({min}–{max})")
    }
}

/// Formats a ratio with two decimals, or with two significant digits below 0.1, so that a
/// ratio such as 0.00095 does not print as 0.00.
fn format_ratio(ratio: f64) -> String {
    if ratio >= 0.1 || ratio <= 0.0 {
        return format!("{ratio:.2}");
    }
    let decimals = (-ratio.log10()).ceil() as usize + 1;
    format!("{ratio:.decimals$}")
}

/// Renders the rows as a Markdown table.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| case | unit | ours | median (min–max) | reference | median (min–max) | ours ÷ reference | notes |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for row in rows {
        let (reference_label, reference_value) = match &row.reference {
            Some(reference) => (reference.label.clone(), spread(row.unit, &reference.sample)),
            None => ("–".to_owned(), "–".to_owned()),
        };
        let ratio = row.ratio().map_or_else(|| "–".to_owned(), format_ratio);
        // `fmt::Write` for String never returns an error.
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.case,
            row.unit.label(),
            row.ours.label,
            spread(row.unit, &row.ours.sample),
            reference_label,
            reference_value,
            ratio,
            row.note
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Sample::new(vec![3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(Sample::new(vec![4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        assert!(Sample::default().median().is_nan());
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let sample = Sample::new((1..=100).map(f64::from).collect());
        assert_eq!(sample.percentile(50.0), 50.0);
        assert_eq!(sample.percentile(99.0), 99.0);
        assert_eq!(sample.percentile(100.0), 100.0);
        assert_eq!(sample.percentile(0.0), 1.0);
    }

    #[test]
    fn push_keeps_values_sorted() {
        let mut sample = Sample::default();
        for value in [5.0, 1.0, 3.0, f64::NAN] {
            sample.push(value);
        }
        assert_eq!(
            (sample.min(), sample.median(), sample.max()),
            (1.0, 3.0, 5.0)
        );
    }

    #[test]
    fn rates_group_thousands() {
        assert_eq!(Unit::MessagesPerSecond.format(1_234_567.4), "1,234,567");
        assert_eq!(Unit::MessagesPerSecond.format(999.0), "999");
    }

    #[test]
    fn small_ratios_keep_two_digits() {
        assert_eq!(format_ratio(0.9), "0.90");
        assert_eq!(format_ratio(2485.6), "2485.60");
        assert_eq!(format_ratio(0.024), "0.024");
        assert_eq!(format_ratio(0.00096), "0.00096");
    }

    #[test]
    fn table_shows_spread_and_ratio() {
        let row = Row {
            case: "publish".into(),
            unit: Unit::MessagesPerSecond,
            ours: Measured::new("ours", Sample::new(vec![90.0, 80.0, 100.0])),
            reference: Some(Measured::new("bare", Sample::new(vec![100.0]))),
            note: String::new(),
        };
        let text = table(&[row]);
        assert!(text.contains("| 90 (80–100) |"), "{text}");
        assert!(text.contains("| 0.90 |"), "{text}");
    }
}
