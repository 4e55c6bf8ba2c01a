//! Turning the servers' connection lists into one report per poll: queue groups, their
//! members, and how the delivered messages are shared among them.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::monitoring::{PollError, ServerSnapshot};

/// Everything one poll found, printed as text or, with `--json`, as one JSON object.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) time: DateTime<Utc>,
    pub(crate) servers: Vec<ServerStatus>,
    /// Sorted by subject, then queue group name.
    pub(crate) queue_groups: Vec<QueueGroup>,
}

/// Outcome of the latest poll of one monitored server.
#[derive(Debug, Serialize)]
pub(crate) struct ServerStatus {
    pub(crate) url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_id: Option<String>,
    /// Client connections, whether or not they are in a queue group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) connections: Option<usize>,
    /// Reason the server could not be read. Its groups are then missing from the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// Set when this URL reaches a server already listed under another URL, whose figures
    /// are then counted once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) same_server_as: Option<String>,
}

/// The members of one queue group on one subject, across every monitored server.
#[derive(Debug, Serialize)]
pub(crate) struct QueueGroup {
    /// Account of the group, because queue groups are separate per account. `None` when
    /// the server leaves it out, as servers without accounts configured do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) account: Option<String>,
    pub(crate) subject: String,
    pub(crate) queue: String,
    pub(crate) member_count: usize,
    /// Messages delivered to the current members since each of them subscribed.
    pub(crate) delivered: u64,
    /// Messages per second delivered to the current members since the previous poll;
    /// `None` on the first poll of a server and after it restarted.
    pub(crate) rate_per_second: Option<f64>,
    /// Members and deliveries per server, for a cluster.
    pub(crate) servers: Vec<ServerShare>,
    /// Sorted by server, then connection name, then client id.
    pub(crate) members: Vec<Member>,
}

/// A queue group's members on one server.
#[derive(Debug, Serialize)]
pub(crate) struct ServerShare {
    pub(crate) server: String,
    pub(crate) member_count: usize,
    pub(crate) delivered: u64,
}

/// One subscription in a queue group.
#[derive(Debug, Serialize)]
pub(crate) struct Member {
    /// The monitoring URL of the server the member is connected to.
    pub(crate) server: String,
    /// Connection name; `None` when the client gave none.
    pub(crate) name: Option<String>,
    /// Client id, unique on its server until the server restarts.
    pub(crate) cid: u64,
    /// Subscription id, unique within the connection.
    pub(crate) sid: String,
    pub(crate) delivered: u64,
    /// This member's part of the group's `delivered`, from 0 to 100.
    pub(crate) share_percent: f64,
    /// Bytes the server holds for the member's connection, not yet written to it.
    pub(crate) pending_bytes: u64,
    pub(crate) rate_per_second: Option<f64>,
}

/// One queue subscription as read at one poll, with its rate against the poll before.
#[derive(Debug, Clone)]
pub(crate) struct MemberSample {
    account: Option<String>,
    subject: String,
    queue: String,
    name: Option<String>,
    cid: u64,
    sid: String,
    delivered: u64,
    pending_bytes: u64,
    rate_per_second: Option<f64>,
}

/// Queue subscriptions of one server at its latest successful poll.
#[derive(Debug)]
pub(crate) struct ServerSample {
    pub(crate) server_id: String,
    pub(crate) connections: usize,
    pub(crate) taken_at: Instant,
    members: Vec<MemberSample>,
}

impl ServerSample {
    /// Keeps the queue subscriptions of `snapshot` and computes each one's delivery rate
    /// against `previous`, the sample of the poll before.
    ///
    /// A member absent from `previous` joined since then, so all of its deliveries are
    /// new. A different server id means the server restarted and every counter started
    /// again, so no rate can be given.
    pub(crate) fn new(
        snapshot: ServerSnapshot,
        taken_at: Instant,
        previous: Option<&ServerSample>,
    ) -> Self {
        let baseline = previous.filter(|previous| previous.server_id == snapshot.server_id);
        let previous_counts: HashMap<(u64, &str), u64> = baseline
            .map(|previous| {
                previous
                    .members
                    .iter()
                    .map(|member| ((member.cid, member.sid.as_str()), member.delivered))
                    .collect()
            })
            .unwrap_or_default();
        let elapsed = baseline.map(|previous| (taken_at - previous.taken_at).as_secs_f64());

        let connections = snapshot.connections.len();
        let mut members = Vec::new();
        for connection in snapshot.connections {
            for subscription in connection.subscriptions {
                if subscription.queue.is_empty() || is_internal(&subscription.subject) {
                    continue;
                }
                let before = previous_counts
                    .get(&(connection.cid, subscription.sid.as_str()))
                    .copied()
                    .unwrap_or(0);
                let rate = match elapsed {
                    Some(seconds) if seconds > 0.0 && subscription.msgs >= before => {
                        Some((subscription.msgs - before) as f64 / seconds)
                    }
                    _ => None,
                };
                let account = [&subscription.account, &connection.account]
                    .into_iter()
                    .find(|account| !account.is_empty())
                    .cloned();
                members.push(MemberSample {
                    account,
                    subject: subscription.subject,
                    queue: subscription.queue,
                    name: (!connection.name.is_empty()).then(|| connection.name.clone()),
                    cid: connection.cid,
                    sid: subscription.sid,
                    delivered: subscription.msgs,
                    pending_bytes: connection.pending_bytes,
                    rate_per_second: rate,
                });
            }
        }

        Self {
            server_id: snapshot.server_id,
            connections,
            taken_at,
            members,
        }
    }
}

/// Subjects the server and client libraries use for their own traffic: `$SYS` (system
/// events), `$JS` and other `$` subjects, and `_INBOX.` reply subjects.
fn is_internal(subject: &str) -> bool {
    subject.starts_with('$') || subject == "_INBOX" || subject.starts_with("_INBOX.")
}

/// The latest outcome of polling one server.
#[derive(Debug)]
pub(crate) enum ServerOutcome<'a> {
    Answered(&'a ServerSample),
    Failed(&'a PollError),
    /// Not polled yet; only possible before the first poll finished.
    Pending,
}

/// Builds the report from each server's latest outcome, given as (display URL, outcome).
pub(crate) fn build(servers: &[(&str, ServerOutcome<'_>)]) -> Report {
    let mut statuses = Vec::with_capacity(servers.len());
    // Which URL each server id was first seen under, so that a server reached through two
    // URLs (localhost and 127.0.0.1) is counted once.
    let mut first_url_of: HashMap<&str, &str> = HashMap::new();
    let mut counted: Vec<(&str, &ServerSample)> = Vec::new();

    for (url, outcome) in servers {
        let mut status = ServerStatus {
            url: (*url).to_owned(),
            server_id: None,
            connections: None,
            error: None,
            same_server_as: None,
        };
        match outcome {
            ServerOutcome::Answered(sample) => {
                status.server_id = Some(sample.server_id.clone());
                status.connections = Some(sample.connections);
                match first_url_of.get(sample.server_id.as_str()) {
                    Some(first) => status.same_server_as = Some((*first).to_owned()),
                    None => {
                        first_url_of.insert(&sample.server_id, url);
                        counted.push((url, sample));
                    }
                }
            }
            ServerOutcome::Failed(error) => status.error = Some(error.to_string()),
            ServerOutcome::Pending => status.error = Some("not polled yet".to_owned()),
        }
        statuses.push(status);
    }

    Report {
        time: Utc::now(),
        servers: statuses,
        queue_groups: group_members(&counted),
    }
}

/// Identifies a queue group, in report order. The server gives each message to one of all
/// the subscriptions with the same account, subject and queue group name.
type GroupKey = (String, String, Option<String>);

fn group_members(servers: &[(&str, &ServerSample)]) -> Vec<QueueGroup> {
    let mut groups: BTreeMap<GroupKey, Vec<Member>> = BTreeMap::new();
    for (url, sample) in servers {
        for member in &sample.members {
            let key = (
                member.subject.clone(),
                member.queue.clone(),
                member.account.clone(),
            );
            groups.entry(key).or_default().push(Member {
                server: (*url).to_owned(),
                name: member.name.clone(),
                cid: member.cid,
                sid: member.sid.clone(),
                delivered: member.delivered,
                share_percent: 0.0,
                pending_bytes: member.pending_bytes,
                rate_per_second: member.rate_per_second,
            });
        }
    }

    groups
        .into_iter()
        .map(|((subject, queue, account), mut members)| {
            let delivered: u64 = members.iter().map(|member| member.delivered).sum();
            for member in &mut members {
                member.share_percent = percent(member.delivered, delivered);
            }
            members.sort_by(|a, b| {
                (&a.server, &a.name, a.cid, &a.sid).cmp(&(&b.server, &b.name, b.cid, &b.sid))
            });

            // A sum over only some members would understate the group's rate, so the rate
            // is given only when every member has one.
            let rate_per_second = members
                .iter()
                .map(|member| member.rate_per_second)
                .sum::<Option<f64>>();

            QueueGroup {
                account,
                subject,
                queue,
                member_count: members.len(),
                delivered,
                rate_per_second,
                servers: server_shares(&members),
                members,
            }
        })
        .collect()
}

fn server_shares(members: &[Member]) -> Vec<ServerShare> {
    let mut shares: Vec<ServerShare> = Vec::new();
    for member in members {
        // Members are sorted by server, so one server's members are next to each other.
        match shares.last_mut() {
            Some(share) if share.server == member.server => {
                share.member_count += 1;
                share.delivered += member.delivered;
            }
            _ => shares.push(ServerShare {
                server: member.server.clone(),
                member_count: 1,
                delivered: member.delivered,
            }),
        }
    }
    shares
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::monitoring::{Connection, Subscription};

    fn connection(cid: u64, name: &str, subscriptions: &[(&str, &str, u64)]) -> Connection {
        Connection {
            cid,
            name: name.to_owned(),
            account: String::new(),
            pending_bytes: cid * 10,
            subscriptions: subscriptions
                .iter()
                .enumerate()
                .map(|(index, (subject, queue, msgs))| Subscription {
                    account: String::new(),
                    subject: (*subject).to_owned(),
                    queue: (*queue).to_owned(),
                    sid: (index + 1).to_string(),
                    msgs: *msgs,
                })
                .collect(),
        }
    }

    fn snapshot(server_id: &str, connections: Vec<Connection>) -> ServerSnapshot {
        ServerSnapshot {
            server_id: server_id.to_owned(),
            connections,
        }
    }

    #[test]
    fn groups_skip_plain_and_internal_subscriptions() {
        let sample = ServerSample::new(
            snapshot(
                "A",
                vec![
                    connection(1, "worker-1", &[("tasks.process", "processors", 6)]),
                    connection(2, "worker-2", &[("tasks.process", "processors", 2)]),
                    connection(3, "logger", &[("tasks.process", "", 8)]),
                    connection(4, "", &[("$SYS.REQ.SERVER.PING", "sys", 0)]),
                    connection(5, "", &[("_INBOX.abc.*", "replies", 0)]),
                ],
            ),
            Instant::now(),
            None,
        );
        let report = build(&[("http://a:8222", ServerOutcome::Answered(&sample))]);

        assert_eq!(report.servers[0].connections, Some(5));
        assert_eq!(report.queue_groups.len(), 1, "{report:?}");
        let group = &report.queue_groups[0];
        assert_eq!(group.queue, "processors");
        assert_eq!(group.member_count, 2);
        assert_eq!(group.delivered, 8);
        assert_eq!(group.rate_per_second, None, "no rate on the first poll");
        assert_eq!(group.members[0].name.as_deref(), Some("worker-1"));
        assert_eq!(group.members[0].share_percent, 75.0);
        assert_eq!(group.members[0].pending_bytes, 10);
        assert_eq!(group.members[1].share_percent, 25.0);
    }

    #[test]
    fn rates_come_from_the_previous_poll() {
        let start = Instant::now();
        let first = ServerSample::new(
            snapshot("A", vec![connection(1, "worker-1", &[("t", "q", 10)])]),
            start,
            None,
        );
        let second = ServerSample::new(
            snapshot(
                "A",
                vec![
                    connection(1, "worker-1", &[("t", "q", 30)]),
                    connection(2, "worker-2", &[("t", "q", 4)]),
                ],
            ),
            start + Duration::from_secs(2),
            Some(&first),
        );
        let report = build(&[("http://a:8222", ServerOutcome::Answered(&second))]);
        let group = &report.queue_groups[0];

        assert_eq!(group.members[0].rate_per_second, Some(10.0));
        // Joined between the two polls: every delivery it has is new.
        assert_eq!(group.members[1].rate_per_second, Some(2.0));
        assert_eq!(group.rate_per_second, Some(12.0));
    }

    #[test]
    fn restarted_server_has_no_rate() {
        let start = Instant::now();
        let before = ServerSample::new(
            snapshot("A", vec![connection(1, "worker-1", &[("t", "q", 10)])]),
            start,
            None,
        );
        let after = ServerSample::new(
            snapshot("B", vec![connection(1, "worker-1", &[("t", "q", 1)])]),
            start + Duration::from_secs(1),
            Some(&before),
        );
        let report = build(&[("http://a:8222", ServerOutcome::Answered(&after))]);
        assert_eq!(report.queue_groups[0].rate_per_second, None);
    }

    #[test]
    fn cluster_totals_and_same_server_counted_once() {
        let now = Instant::now();
        let a = ServerSample::new(
            snapshot("A", vec![connection(1, "worker-1", &[("t", "q", 3)])]),
            now,
            None,
        );
        let b = ServerSample::new(
            snapshot("B", vec![connection(7, "worker-2", &[("t", "q", 5)])]),
            now,
            None,
        );
        let error = PollError::TimedOut {
            url: "http://c:8222".to_owned(),
            timeout: Duration::from_secs(3),
        };
        let report = build(&[
            ("http://a:8222", ServerOutcome::Answered(&a)),
            ("http://b:8222", ServerOutcome::Answered(&b)),
            ("http://127.0.0.1:8222", ServerOutcome::Answered(&a)),
            ("http://c:8222", ServerOutcome::Failed(&error)),
        ]);

        let group = &report.queue_groups[0];
        assert_eq!(group.member_count, 2);
        assert_eq!(group.delivered, 8);
        assert_eq!(group.servers.len(), 2);
        assert_eq!(group.servers[0].server, "http://a:8222");
        assert_eq!(group.servers[0].delivered, 3);
        assert_eq!(group.servers[1].delivered, 5);
        assert_eq!(
            report.servers[2].same_server_as.as_deref(),
            Some("http://a:8222")
        );
        assert!(report.servers[3].error.is_some());
    }

    #[test]
    fn empty_group_has_zero_shares() {
        let sample = ServerSample::new(
            snapshot("A", vec![connection(1, "worker-1", &[("t", "q", 0)])]),
            Instant::now(),
            None,
        );
        let report = build(&[("http://a:8222", ServerOutcome::Answered(&sample))]);
        assert_eq!(report.queue_groups[0].members[0].share_percent, 0.0);
    }
}
