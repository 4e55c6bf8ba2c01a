//! The report as text: one block per poll, a table of members per queue group.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::report::{QueueGroup, Report};

/// Width of the `=` rules around the title.
const RULE_WIDTH: usize = 60;
/// Cells of the share bar; each is 5% of the group's deliveries.
const BAR_CELLS: usize = 20;
/// Line printed when the servers that responded have no queue group.
pub(crate) const NO_QUEUE_GROUPS: &str =
    "No queue groups: start a worker, e.g. `cargo run --bin worker`";

/// Formats the report as lines of text, without a trailing newline.
///
/// `show_rates` adds the delivery rates, which exist from the second poll on.
pub(crate) fn render(report: &Report, show_rates: bool) -> String {
    // Writing to a String cannot fail, so the `fmt::Result`s below are ignored.
    let mut out = String::new();
    let rule = "=".repeat(RULE_WIDTH);
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(
        out,
        "NATS Queue Groups Status ({})",
        report.time.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let _ = writeln!(out, "{rule}");

    for server in &report.servers {
        let _ = match (&server.error, &server.same_server_as, server.connections) {
            // Every error names the server's URL already.
            (Some(error), _, _) => writeln!(out, "{error}"),
            (None, Some(first), _) => writeln!(
                out,
                "Server {}: the same server as {first}, counted once",
                server.url
            ),
            (None, None, connections) => writeln!(
                out,
                "Server {}: {} client connection(s)",
                server.url,
                connections.unwrap_or(0)
            ),
        };
    }

    let responded = report
        .servers
        .iter()
        .filter(|server| server.error.is_none())
        .count();
    if responded > 0 && report.queue_groups.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "{NO_QUEUE_GROUPS}");
    }

    let cluster = report
        .servers
        .iter()
        .filter(|server| server.error.is_none() && server.same_server_as.is_none())
        .count()
        > 1;
    for group in &report.queue_groups {
        let _ = writeln!(out);
        write_group(&mut out, group, show_rates, cluster);
    }
    write_shared_subjects(&mut out, &report.queue_groups);

    let _ = write!(out, "{rule}");
    out
}

fn write_group(out: &mut String, group: &QueueGroup, show_rates: bool, cluster: bool) {
    let account = match group.account.as_deref() {
        Some(account) if account != "$G" => format!(" (account {account})"),
        _ => String::new(),
    };
    let rate = match (show_rates, group.rate_per_second) {
        (true, Some(rate)) => format!(", {rate:.1} msg/s"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "Queue group '{}' on {}{account}: {} member(s), {} delivered{rate}",
        group.queue, group.subject, group.member_count, group.delivered
    );
    if cluster {
        for share in &group.servers {
            let _ = writeln!(
                out,
                "  on {}: {} member(s), {} delivered",
                share.server, share.member_count, share.delivered
            );
        }
    }

    let names: Vec<String> = group
        .members
        .iter()
        .map(|member| {
            member
                .name
                .clone()
                .unwrap_or_else(|| "(no name)".to_owned())
        })
        .collect();
    let name_width = names
        .iter()
        .map(|name| name.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let server_width = group
        .members
        .iter()
        .map(|member| member.server.len())
        .max()
        .unwrap_or(0)
        .max(6);

    let mut header = String::from("  ");
    if cluster {
        let _ = write!(header, "{:<server_width$}  ", "SERVER");
    }
    let _ = write!(
        header,
        "{:<name_width$}  {:>5}  {:>9}  {:<width$}  {:>10}",
        "MEMBER",
        "CID",
        "DELIVERED",
        "SHARE",
        "PENDING",
        width = BAR_CELLS + 7
    );
    if show_rates {
        let _ = write!(header, "  {:>9}", "RATE");
    }
    let _ = writeln!(out, "{}", header.trim_end());

    for (member, name) in group.members.iter().zip(&names) {
        let mut line = String::from("  ");
        if cluster {
            let _ = write!(line, "{:<server_width$}  ", member.server);
        }
        let _ = write!(
            line,
            "{name:<name_width$}  {:>5}  {:>9}  {:>5.1}% {}  {:>10}",
            member.cid,
            member.delivered,
            member.share_percent,
            share_bar(member.share_percent),
            format_bytes(member.pending_bytes)
        );
        if show_rates {
            let rate = member
                .rate_per_second
                .map_or_else(|| "-".to_owned(), |rate| format!("{rate:.1}/s"));
            let _ = write!(line, "  {rate:>9}");
        }
        let _ = writeln!(out, "{line}");
    }
}

/// Points out subjects with more than one queue group: each group gets its own copy of
/// every message, which is what a mistyped group name in one worker looks like.
fn write_shared_subjects(out: &mut String, groups: &[QueueGroup]) {
    let mut queues_by_subject: BTreeMap<(&str, Option<&str>), Vec<&str>> = BTreeMap::new();
    for group in groups {
        queues_by_subject
            .entry((group.subject.as_str(), group.account.as_deref()))
            .or_default()
            .push(group.queue.as_str());
    }
    for ((subject, _), queues) in queues_by_subject {
        if queues.len() > 1 {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "Note: {subject} has {} queue groups ({}); each message goes to one member of every group. \
                 Check the group names if the members were meant to share the work.",
                queues.len(),
                queues.join(", ")
            );
        }
    }
}

/// Draws a bar of [`BAR_CELLS`] cells, filled in proportion to `percent`.
fn share_bar(percent: f64) -> String {
    let filled = ((percent / 100.0) * BAR_CELLS as f64).round() as usize;
    let filled = filled.min(BAR_CELLS);
    format!("{}{}", "█".repeat(filled), "░".repeat(BAR_CELLS - filled))
}

/// Formats a byte count as `512 B`, `1.5 KiB` or `2.0 MiB`.
fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_is_proportional() {
        assert_eq!(share_bar(0.0), "░".repeat(20));
        assert_eq!(share_bar(100.0), "█".repeat(20));
        assert_eq!(
            share_bar(50.0),
            format!("{}{}", "█".repeat(10), "░".repeat(10))
        );
        assert_eq!(share_bar(33.3).chars().filter(|c| *c == '█').count(), 7);
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
