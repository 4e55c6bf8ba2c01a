//! Reading one server's `/connz` endpoint, and saying what went wrong when that fails.
//!
//! `/connz?subs=detail` lists every client connection with its name, its pending bytes and,
//! per subscription, the subject, the queue group (`qgroup`) and the number of messages the
//! server has delivered to it (`msgs`). That is everything a queue group report needs, so
//! this is the only endpoint the monitor reads. `/subsz?subs=1` lists the same
//! subscriptions but not the connections' names or pending bytes.
//!
//! Every field is `#[serde(default)]`: nats-server leaves out empty fields (`omitempty`),
//! and fields come and go between releases (2.9 has no `account` on a subscription, for
//! example), so a missing field is never an error.

use std::fmt;
use std::time::Duration;

use reqwest::{Client, Url};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Connections asked for per `/connz` request; also the server's default page size.
const CONNZ_PAGE_SIZE: usize = 1024;
/// Pages read per poll at most, so that a server whose `total` keeps growing cannot keep
/// one poll going forever. 100 pages are 102,400 connections.
const MAX_CONNZ_PAGES: usize = 100;
/// First bytes a NATS client port sends when a connection opens, before any request.
const CLIENT_PORT_GREETING: &[u8] = b"INFO ";
/// Hint in every "cannot reach" error: how to start a server with monitoring on.
pub(crate) const START_MONITORING_HINT: &str = "is HTTP monitoring on? Start the server with `nats-server -m 8222` \
     (or `docker compose up -d`, or `scripts/nats-server.sh`), and point --monitor-url at it";

/// One page of `/connz`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Connz {
    server_id: String,
    total: usize,
    connections: Vec<Connection>,
}

/// One client connection as `/connz` describes it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Connection {
    pub(crate) cid: u64,
    /// The name the client gave when connecting; the binaries here set it with `--name`.
    pub(crate) name: String,
    /// Account of the connection, included with `auth=true`. 2.9 leaves it out when no
    /// accounts are configured.
    pub(crate) account: String,
    /// Bytes the server has queued for this client but not yet written to its socket. A
    /// figure that stays high means the client reads more slowly than messages arrive.
    pub(crate) pending_bytes: u64,
    #[serde(rename = "subscriptions_list_detail")]
    pub(crate) subscriptions: Vec<Subscription>,
}

/// One subscription of a connection, from `subscriptions_list_detail`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Subscription {
    /// Sent by releases newer than 2.9 only.
    pub(crate) account: String,
    pub(crate) subject: String,
    /// Queue group; empty for a plain subscription.
    #[serde(rename = "qgroup")]
    pub(crate) queue: String,
    pub(crate) sid: String,
    /// Messages the server has delivered to this subscription since it was made.
    pub(crate) msgs: u64,
}

/// Every client connection of one server at one moment.
#[derive(Debug)]
pub(crate) struct ServerSnapshot {
    /// Random at each server start, so a changed id means the server restarted and its
    /// counters started again from zero.
    pub(crate) server_id: String,
    pub(crate) connections: Vec<Connection>,
}

/// Reason a server's monitoring could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PollError {
    /// Nothing accepted the connection, or the host name did not resolve.
    Unreachable { url: String, cause: String },
    /// A NATS client port responded instead of the HTTP monitoring port.
    ClientPort { url: String },
    /// The TLS handshake of an `https://` URL failed.
    Tls { url: String, cause: String },
    /// Connected, but no complete response came within `--timeout`.
    TimedOut { url: String, timeout: Duration },
    /// An HTTP server responded with an error status.
    Status { url: String, status: String },
    /// The response was not the JSON nats-server sends.
    NotMonitoring { url: String, cause: String },
    /// Any other failure of the request.
    Failed { url: String, cause: String },
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable { url, cause } => write!(
                f,
                "cannot reach NATS monitoring at {url}: {cause}; {START_MONITORING_HINT}"
            ),
            Self::ClientPort { url } => write!(
                f,
                "{url} is a NATS client port, not HTTP monitoring: it sent the NATS INFO line instead of an HTTP response. \
                 Monitoring has its own port, set with `nats-server -m 8222`; try --monitor-url http://localhost:8222"
            ),
            Self::Tls { url, cause } => write!(
                f,
                "TLS with {url} failed: {cause}; if the server serves monitoring over plain HTTP \
                 (`nats-server -m`, not `-ms`), use an http:// URL"
            ),
            Self::TimedOut { url, timeout } => write!(
                f,
                "timed out: no response from {url} within {:.1}s (--timeout); is this the monitoring port of a running nats-server?",
                timeout.as_secs_f64()
            ),
            Self::Status { url, status } => write!(
                f,
                "{url} returned HTTP {status}; is this a nats-server monitoring port? \
                 Give the base URL, such as http://localhost:8222"
            ),
            Self::NotMonitoring { url, cause } => write!(
                f,
                "{url} did not return nats-server monitoring JSON ({cause}); is this a nats-server monitoring port?"
            ),
            Self::Failed { url, cause } => write!(f, "cannot read {url}: {cause}"),
        }
    }
}

impl std::error::Error for PollError {}

/// The monitoring endpoint of one server, as given with `--monitor-url`.
#[derive(Debug, Clone)]
pub(crate) struct MonitorEndpoint {
    base: Url,
    /// The URL as it may be shown: credentials replaced by `***`.
    pub(crate) display: String,
}

impl MonitorEndpoint {
    pub(crate) fn new(base: Url) -> Self {
        let display = common::redact_url(base.as_str().trim_end_matches('/'));
        Self { base, display }
    }

    /// Builds the URL of `endpoint` (such as `connz`) under the base URL, which may carry
    /// the server's `http_base_path`.
    fn endpoint_url(&self, endpoint: &str, query: &str) -> Url {
        let mut url = self.base.clone();
        let path = format!("{}/{endpoint}", self.base.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(Some(query));
        url
    }

    /// Reads every page of `/connz` with subscription details.
    pub(crate) async fn poll(
        &self,
        http: &Client,
        timeout: Duration,
    ) -> Result<ServerSnapshot, PollError> {
        let mut snapshot = ServerSnapshot {
            server_id: String::new(),
            connections: Vec::new(),
        };
        for page in 0..MAX_CONNZ_PAGES {
            let offset = page * CONNZ_PAGE_SIZE;
            // `subs=detail` adds each subscription's queue group and message count;
            // `auth=true` adds the account, where the server has accounts.
            let query = format!("subs=detail&auth=true&offset={offset}&limit={CONNZ_PAGE_SIZE}");
            let connz: Connz = self.get_json(http, "connz", &query, timeout).await?;
            // Every field is optional to serde, but nats-server always sends its id; JSON
            // without one comes from some other HTTP service.
            if connz.server_id.is_empty() {
                return Err(PollError::NotMonitoring {
                    url: format!("{}/connz", self.display),
                    cause: "it has no server_id".to_owned(),
                });
            }

            let received = connz.connections.len();
            snapshot.server_id = connz.server_id;
            snapshot.connections.extend(connz.connections);
            if received == 0 || snapshot.connections.len() >= connz.total {
                break;
            }
        }
        Ok(snapshot)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        http: &Client,
        endpoint: &str,
        query: &str,
        timeout: Duration,
    ) -> Result<T, PollError> {
        let url = self.endpoint_url(endpoint, query);
        let endpoint_display = format!("{}/{endpoint}", self.display);

        let response = match http.get(url).send().await {
            Ok(response) => response,
            Err(error) => return Err(self.classify(&error, timeout).await),
        };
        let status = response.status();
        if !status.is_success() {
            return Err(PollError::Status {
                url: endpoint_display,
                status: status.to_string(),
            });
        }
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return Err(self.classify(&error, timeout).await),
        };
        serde_json::from_slice(&body).map_err(|error| PollError::NotMonitoring {
            url: endpoint_display,
            cause: error.to_string(),
        })
    }

    /// Turns a failed request into the error that names the likely cause and the fix.
    async fn classify(&self, error: &reqwest::Error, timeout: Duration) -> PollError {
        let url = self.display.clone();
        if error.is_timeout() {
            return PollError::TimedOut { url, timeout };
        }
        if error.is_connect() {
            let cause = innermost_cause(error);
            if self.base.scheme() == "https" && is_tls_failure(error) {
                return PollError::Tls { url, cause };
            }
            return PollError::Unreachable { url, cause };
        }
        // The connection opened but the response was not HTTP. A NATS client port writes its
        // INFO line first, so a fresh connection shows whether that is what responded.
        match self.greeting(timeout).await {
            Greeting::NatsInfo => PollError::ClientPort { url },
            Greeting::Refused(cause) => PollError::Unreachable { url, cause },
            Greeting::Other => PollError::Failed {
                url,
                cause: innermost_cause(error),
            },
        }
    }

    /// Opens a TCP connection to the endpoint's own host and port and reads what the other
    /// side sends first, without sending anything.
    async fn greeting(&self, timeout: Duration) -> Greeting {
        let (Some(host), Some(port)) = (self.base.host_str(), self.base.port_or_known_default())
        else {
            return Greeting::Other;
        };
        // IPv6 literals come bracketed from the URL; the socket address wants them bare.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let probe = async {
            let mut stream = match TcpStream::connect((host, port)).await {
                Ok(stream) => stream,
                Err(error) => return Greeting::Refused(error.to_string()),
            };
            let mut first = [0u8; CLIENT_PORT_GREETING.len()];
            match stream.read_exact(&mut first).await {
                Ok(_) if first == CLIENT_PORT_GREETING => Greeting::NatsInfo,
                _ => Greeting::Other,
            }
        };
        tokio::time::timeout(timeout, probe)
            .await
            .unwrap_or(Greeting::Other)
    }
}

/// Kind of first bytes a fresh TCP connection to the endpoint receives, before it sends
/// anything.
#[derive(Debug)]
enum Greeting {
    NatsInfo,
    Refused(String),
    Other,
}

/// Tells a failed TLS handshake from a refused or unresolved connection: rustls reports
/// its errors as I/O errors of kind `InvalidData`, and a refused or unresolved connection
/// gives other kinds.
///
/// The connector wraps that error in another I/O error, and an I/O error's `source()`
/// skips the error it wraps, so the wrapped ones are reached through `get_ref`.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let mut io_error = cause.downcast_ref::<std::io::Error>();
    while let Some(current) = io_error {
        if current.kind() == std::io::ErrorKind::InvalidData {
            return true;
        }
        io_error = current
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<std::io::Error>());
    }
    false
}

/// Returns the last error in the chain, such as `Connection refused (os error 111)`. That
/// is the part a user can act on, because reqwest's own layers only repeat the URL.
fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_base_path() {
        let plain = MonitorEndpoint::new(Url::parse("http://localhost:8222").unwrap());
        assert_eq!(
            plain.endpoint_url("connz", "subs=detail").as_str(),
            "http://localhost:8222/connz?subs=detail"
        );

        let nested = MonitorEndpoint::new(Url::parse("http://localhost:8222/nats/").unwrap());
        assert_eq!(
            nested.endpoint_url("connz", "subs=detail").as_str(),
            "http://localhost:8222/nats/connz?subs=detail"
        );
    }

    #[test]
    fn display_hides_password() {
        let endpoint = MonitorEndpoint::new(Url::parse("http://me:s3cret@host:8222/").unwrap());
        assert!(!endpoint.display.contains("s3cret"), "{}", endpoint.display);
    }

    /// A 2.9 server with monitoring on and one worker, trimmed to the fields read here.
    const CONNZ_2_9: &str = r#"{
        "server_id": "NC53", "now": "2026-12-04T20:18:54Z", "num_connections": 1,
        "total": 1, "offset": 0, "limit": 1024,
        "connections": [{
            "cid": 4, "kind": "Client", "pending_bytes": 12, "name": "worker-1",
            "subscriptions_list_detail": [
                {"subject": "tasks.process", "qgroup": "processors", "sid": "1", "msgs": 2, "cid": 4}
            ]
        }, {
            "cid": 5, "kind": "Client", "pending_bytes": 0
        }]
    }"#;

    #[test]
    fn connz_of_2_9_decodes() {
        let connz: Connz = serde_json::from_str(CONNZ_2_9).unwrap();
        assert_eq!(connz.server_id, "NC53");
        assert_eq!(connz.connections.len(), 2);

        let worker = &connz.connections[0];
        assert_eq!(worker.name, "worker-1");
        assert_eq!(worker.pending_bytes, 12);
        assert_eq!(worker.account, "");
        let subscription = &worker.subscriptions[0];
        assert_eq!(subscription.queue, "processors");
        assert_eq!(subscription.msgs, 2);

        // No name and no subscriptions: both fields are left out, not empty.
        let anonymous = &connz.connections[1];
        assert_eq!(anonymous.name, "");
        assert!(anonymous.subscriptions.is_empty());
    }

    #[test]
    fn empty_connz_decodes() {
        let connz: Connz =
            serde_json::from_str(r#"{"server_id": "X", "connections": []}"#).unwrap();
        assert!(connz.connections.is_empty());
        let bare: Connz = serde_json::from_str("{}").unwrap();
        assert!(bare.connections.is_empty());
    }
}
