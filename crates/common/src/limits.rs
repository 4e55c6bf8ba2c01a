//! The limits a publisher works within: the server's size limit on one message, checked
//! before publishing, and a bound on how long a flush may wait for the server.
//!
//! Every server announces its `max_payload` (1 MiB by default) when a client connects. A
//! larger message would make the server close the connection, so async-nats refuses it
//! with a terse error; checking here first gives an error that names both sizes and what
//! to change, while the connection stays up for the messages that do fit.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_nats::Client;

/// A message too large for the connected server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadTooLarge {
    pub subject: String,
    pub size: usize,
    pub max_payload: usize,
}

impl fmt::Display for PayloadTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a message of {} bytes for {} exceeds the server's max_payload of {} bytes; send less, or raise max_payload in the server's config",
            self.size, self.subject, self.max_payload
        )
    }
}

impl std::error::Error for PayloadTooLarge {}

/// Checks that `size` payload bytes fit the connected server's `max_payload`.
pub fn ensure_fits(client: &Client, subject: &str, size: usize) -> Result<(), PayloadTooLarge> {
    // An atomic read, unlike `server_info()`, which clones the whole INFO: this runs once
    // per published message.
    let max_payload = client.max_payload();
    // A server that announced no limit reports 0; async-nats then checks nothing either.
    if max_payload > 0 && size > max_payload {
        return Err(PayloadTooLarge {
            subject: subject.to_owned(),
            size,
            max_payload,
        });
    }
    Ok(())
}

/// Flushes, giving up after `timeout`.
///
/// `publish` only queues a message in the client. The flush returns once the server has
/// replied to a PING sent after it, so the server has every message published before. It
/// does not mean that anything subscribes to them. While the client is reconnecting the
/// flush would wait indefinitely, so a publisher bounds it.
pub async fn flush_within(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    match tokio::time::timeout(timeout, client.flush()).await {
        Ok(result) => result.context("flush failed"),
        Err(_) => Err(anyhow!(
            "the server did not confirm within {:.1}s",
            timeout.as_secs_f64()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use harness::NatsServer;

    use super::*;

    #[tokio::test]
    async fn oversized_message_is_rejected_and_connection_stays_up() {
        let server = NatsServer::builder().config("max_payload: 1024\n").start();
        let client = async_nats::connect(server.client_url()).await.unwrap();
        let mut subscriber = client.subscribe("limits.test").await.unwrap();
        client.flush().await.unwrap();

        let error = ensure_fits(&client, "limits.test", 2000).expect_err("too large");
        assert_eq!(error.size, 2000);
        assert_eq!(error.max_payload, 1024);
        let text = error.to_string();
        assert!(
            text.contains("2000 bytes") && text.contains("1024 bytes"),
            "{text}"
        );

        assert_eq!(ensure_fits(&client, "limits.test", 1024), Ok(()));
        client
            .publish("limits.test", vec![b'x'; 1024].into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let message = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.payload.len(), 1024);
    }
}
