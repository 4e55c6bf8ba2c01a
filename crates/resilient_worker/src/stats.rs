//! The outcomes of the messages one worker handled, printed when it stops.

use serde::Serialize;

/// Counts per outcome. Each message handled lands in exactly one of `succeeded`,
/// `dead_lettered`, `rejected` and `lost`; `retried` is the part of `succeeded` that needed
/// more than one attempt.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Stats {
    /// Tasks completed.
    pub(crate) succeeded: u64,
    /// Tasks completed after at least one failed attempt.
    pub(crate) retried: u64,
    /// Tasks that failed every attempt and whose dead letter the server confirmed.
    pub(crate) dead_lettered: u64,
    /// Payloads that were not tasks and whose dead letter the server confirmed.
    pub(crate) rejected: u64,
    /// Messages whose dead letter the server did not confirm.
    pub(crate) lost: u64,
}

impl Stats {
    /// Messages handled to the end, whatever their outcome.
    pub(crate) fn handled(&self) -> u64 {
        self.succeeded + self.dead_lettered + self.rejected + self.lost
    }

    /// Share of the handled messages that succeeded, from 0.0 to 1.0, or `None` before the
    /// first one.
    pub(crate) fn success_rate(&self) -> Option<f64> {
        let handled = self.handled();
        (handled > 0).then(|| self.succeeded as f64 / handled as f64)
    }
}

/// The figures of a worker's summary, for the prose and the JSON form alike.
#[derive(Debug)]
pub(crate) struct Summary<'a> {
    pub(crate) worker: &'a str,
    pub(crate) seed: u64,
    pub(crate) max_attempts: u32,
    pub(crate) dead_letter_subject: &'a str,
    pub(crate) stats: Stats,
    /// Delivered messages given up on a second stop request, 0 after a full drain.
    pub(crate) abandoned: u64,
    /// Messages the client dropped as a slow consumer; they never reached the worker.
    pub(crate) dropped: u64,
    /// The subscription's buffer, in messages, named when messages were dropped.
    pub(crate) capacity: usize,
}

impl Summary<'_> {
    /// Prints the tutorial's `Final Stats` block, one count per line.
    pub(crate) fn print_prose(&self) {
        let Self { worker, stats, .. } = self;
        println!();
        println!("[Worker {worker}] Final Stats:");
        println!("  Succeeded: {}", stats.succeeded);
        println!(
            "  Retried: {} (succeeded after more than one attempt)",
            stats.retried
        );
        println!(
            "  Dead-lettered: {} (sent to {} after {})",
            stats.dead_lettered,
            self.dead_letter_subject,
            attempts_text(self.max_attempts)
        );
        println!(
            "  Rejected payloads: {} (not tasks, sent to {} at once)",
            stats.rejected, self.dead_letter_subject
        );
        println!(
            "  Lost: {} (the server did not confirm their dead letters)",
            stats.lost
        );
        if self.dropped > 0 {
            println!(
                "  Dropped: {} (slow consumer: the buffer of {} messages was full; these tasks are lost)",
                self.dropped, self.capacity
            );
        }
        if let Some(rate) = stats.success_rate() {
            println!(
                "  Success rate: {:.1}% ({} of {} messages)",
                rate * 100.0,
                stats.succeeded,
                stats.handled()
            );
        }
    }

    /// Prints the summary as one JSON object on one line.
    pub(crate) fn print_json(&self) {
        let json = serde_json::json!({
            "worker": self.worker,
            "seed": self.seed,
            "succeeded": self.stats.succeeded,
            "retried": self.stats.retried,
            "dead_lettered": self.stats.dead_lettered,
            "rejected": self.stats.rejected,
            "lost": self.stats.lost,
            "abandoned": self.abandoned,
            "dropped": self.dropped,
            "success_rate": self.stats.success_rate(),
        });
        println!("{json}");
    }
}

/// Formats a count of attempts: `1 attempt`, `3 attempts`.
pub(crate) fn attempts_text(count: u32) -> String {
    if count == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{count} attempts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_rate_counts_every_outcome() {
        let stats = Stats {
            succeeded: 6,
            retried: 2,
            dead_lettered: 1,
            rejected: 1,
            lost: 0,
        };
        assert_eq!(stats.handled(), 8);
        assert_eq!(stats.success_rate(), Some(0.75));
        assert_eq!(Stats::default().success_rate(), None);
    }
}
