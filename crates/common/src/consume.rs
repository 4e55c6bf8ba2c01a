//! The message loop every worker-type binary runs, with the drain that ends it.
//!
//! A queue group member must not lose what the server already gave it: core NATS delivers
//! each message at most once, so a message the client has received but not handled is gone
//! for good when the process exits. [`consume`] therefore stops in two stages:
//!
//! 1. The first stop request drains the subscription. The client tells the server to stop
//!    sending (an UNSUB followed by a PING), every message that arrives before the PONG is
//!    still handed out, and then the subscription ends. The loop finishes all of them.
//! 2. A second request, or a drain that outlasts its timeout, stops at once and reports how
//!    many delivered messages were abandoned.

use std::time::Duration;

use anyhow::Context;
use async_nats::{Message, Subscriber};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use crate::{Shutdown, parse_duration};

/// Messages the client buffers per subscription by default, as async-nats does.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Flags shared by every binary that is a member of a queue group.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Queue group member")]
pub struct MemberArgs {
    /// Messages buffered per subscription. When the buffer is full the client drops new
    /// messages (a slow consumer), and core NATS does not send them again.
    #[arg(long, default_value_t = DEFAULT_CAPACITY, value_parser = parse_capacity, value_name = "MESSAGES")]
    pub capacity: usize,

    /// Maximum time the drain after the first Ctrl-C may take before the member stops
    /// anyway, counting what it abandons (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,
}

fn parse_capacity(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(capacity) if capacity > 0 => Ok(capacity),
        _ => Err(format!(
            "invalid capacity {text:?}: expected a whole number of messages, at least 1"
        )),
    }
}

impl MemberArgs {
    /// Loop options for this member handling `concurrency` messages at once.
    pub fn consume_options(&self, concurrency: usize) -> ConsumeOptions {
        ConsumeOptions {
            concurrency,
            drain_timeout: Some(self.drain_timeout),
        }
    }
}

/// The way [`consume`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The subscription was drained and every delivered message was handled.
    Drained,
    /// Stopped before the drain finished; `abandoned` delivered messages were not handled.
    Stopped {
        abandoned: usize,
        reason: StopReason,
    },
}

/// The reason [`consume`] stopped without finishing its drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A second stop request came.
    SecondRequest,
    /// The drain took longer than the allowed time.
    DrainTimeout,
}

impl Ending {
    /// Delivered messages given up: 0 after a full drain.
    pub fn abandoned(&self) -> u64 {
        match self {
            Ending::Drained => 0,
            Ending::Stopped { abandoned, .. } => *abandoned as u64,
        }
    }

    /// Returns one line for the learner about messages given up, or `None` after a full drain.
    pub fn abandoned_message(&self) -> Option<String> {
        match self {
            Ending::Drained => None,
            Ending::Stopped { abandoned, reason } => {
                let why = match reason {
                    StopReason::SecondRequest => "stopped at once on a second signal",
                    StopReason::DrainTimeout => "stopped because the drain timed out",
                };
                Some(format!(
                    "{why}: abandoned {abandoned} delivered message(s); core NATS will not deliver them again"
                ))
            }
        }
    }
}

/// How many messages [`consume`] handles at once, and how long a drain may take.
#[derive(Debug, Clone, Copy)]
pub struct ConsumeOptions {
    /// Messages handled at the same time; 1 handles them one after another.
    pub concurrency: usize,
    /// Maximum time from the first stop request to the end of the drain.
    pub drain_timeout: Option<Duration>,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            drain_timeout: None,
        }
    }
}

/// Messages the client received for its subscriptions but dropped as a slow consumer.
///
/// `handed_out` is every message the subscriber yielded: handled, rejected or abandoned.
/// The client counts each message it reads from the server, and what it read but never
/// handed out was dropped because the subscription's buffer was full. The figure is exact
/// for a connection whose only subscription is the one counted.
pub fn dropped_messages(client: &async_nats::Client, handed_out: u64) -> u64 {
    client
        .statistics()
        .in_messages
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(handed_out)
}

/// Hands each message of `subscriber` to `handle` until the subscription ends.
///
/// `on_drain` runs once, when the first stop request has started the drain, so that the
/// program can say so. Returns how the loop ended; errors only when the drain request
/// cannot be sent, which means the client is already closed.
pub async fn consume<H>(
    mut subscriber: Subscriber,
    shutdown: &Shutdown,
    options: ConsumeOptions,
    on_drain: impl FnOnce(),
    handle: H,
) -> anyhow::Result<Ending>
where
    H: AsyncFn(Message),
{
    let concurrency = options.concurrency.max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut on_drain = Some(on_drain);
    let mut subscription_ended = false;

    let drain_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain_deadline);
    let mut draining = false;

    loop {
        if subscription_ended && in_flight.is_empty() {
            return Ok(Ending::Drained);
        }

        tokio::select! {
            // Stop requests are checked first, so a member under constant load still stops.
            biased;

            () = shutdown.stop_requested() => {
                return Ok(stopped(&mut subscriber, in_flight.len(), StopReason::SecondRequest));
            }
            () = &mut drain_deadline, if draining => {
                return Ok(stopped(&mut subscriber, in_flight.len(), StopReason::DrainTimeout));
            }
            () = shutdown.drain_requested(), if !draining => {
                draining = true;
                // Drain, not drop: dropping the subscriber would discard every message the
                // client holds for it, and the server would not send them again.
                subscriber.drain().await.context("cannot drain the subscription")?;
                if let Some(timeout) = options.drain_timeout {
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
                if let Some(on_drain) = on_drain.take() {
                    on_drain();
                }
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = subscriber.next(), if !subscription_ended && in_flight.len() < concurrency => {
                match next {
                    Some(message) => in_flight.push(handle(message)),
                    None => subscription_ended = true,
                }
            }
        }
    }
}

fn stopped(subscriber: &mut Subscriber, in_progress: usize, reason: StopReason) -> Ending {
    Ending::Stopped {
        abandoned: in_progress + count_buffered(subscriber),
        reason,
    }
}

/// Counts and discards the messages the client has buffered for a subscription but not
/// yet handed out.
fn count_buffered(subscriber: &mut Subscriber) -> usize {
    let mut count = 0;
    while let Some(Some(_)) = subscriber.next().now_or_never() {
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use harness::NatsServer;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(20);

    async fn subscribed(server: &NatsServer) -> (async_nats::Client, Subscriber) {
        let client = async_nats::connect(server.client_url()).await.unwrap();
        let subscriber = client.subscribe("work").await.unwrap();
        client.flush().await.unwrap();
        (client, subscriber)
    }

    async fn publish(client: &async_nats::Client, count: usize) {
        for n in 0..count {
            client.publish("work", n.to_string().into()).await.unwrap();
        }
        client.flush().await.unwrap();
    }

    #[tokio::test]
    async fn drain_handles_every_delivered_message() {
        let server = NatsServer::start();
        let (client, subscriber) = subscribed(&server).await;
        let (trigger, shutdown) = Shutdown::manual();
        publish(&client, 10).await;

        let handled = Cell::new(0);
        let drained = Cell::new(false);
        let ending = tokio::time::timeout(
            TIMEOUT,
            consume(
                subscriber,
                &shutdown,
                ConsumeOptions::default(),
                || drained.set(true),
                async |_message| {
                    // The first message asks for the drain; the other nine are buffered.
                    if handled.get() == 0 {
                        trigger.request();
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    handled.set(handled.get() + 1);
                },
            ),
        )
        .await
        .unwrap()
        .unwrap();

        assert_eq!(ending, Ending::Drained);
        assert!(drained.get());
        assert_eq!(handled.get(), 10);
    }

    #[tokio::test]
    async fn second_request_counts_abandoned_messages() {
        let server = NatsServer::start();
        let (client, subscriber) = subscribed(&server).await;
        let (trigger, shutdown) = Shutdown::manual();
        publish(&client, 10).await;

        let handled = Cell::new(0);
        let ending = tokio::time::timeout(
            TIMEOUT,
            consume(
                subscriber,
                &shutdown,
                ConsumeOptions::default(),
                || {},
                async |_message| {
                    // Two requests during the third message: it and the seven behind it are
                    // abandoned, whatever this handler does next.
                    if handled.get() == 2 {
                        trigger.request();
                        trigger.request();
                        std::future::pending::<()>().await;
                    }
                    handled.set(handled.get() + 1);
                },
            ),
        )
        .await
        .unwrap()
        .unwrap();

        assert_eq!(
            ending,
            Ending::Stopped {
                abandoned: 8,
                reason: StopReason::SecondRequest
            }
        );
        assert_eq!(handled.get(), 2);
    }

    #[tokio::test]
    async fn drain_timeout_stops_a_stuck_handler() {
        let server = NatsServer::start();
        let (client, subscriber) = subscribed(&server).await;
        let (trigger, shutdown) = Shutdown::manual();
        publish(&client, 3).await;

        let options = ConsumeOptions {
            concurrency: 1,
            drain_timeout: Some(Duration::from_millis(200)),
        };
        let ending = tokio::time::timeout(
            TIMEOUT,
            consume(
                subscriber,
                &shutdown,
                options,
                || {},
                async |_message| {
                    trigger.request();
                    std::future::pending::<()>().await;
                },
            ),
        )
        .await
        .unwrap()
        .unwrap();

        assert_eq!(
            ending,
            Ending::Stopped {
                abandoned: 3,
                reason: StopReason::DrainTimeout
            }
        );
    }

    #[tokio::test]
    async fn concurrency_bounds_messages_in_flight() {
        let server = NatsServer::start();
        let (client, subscriber) = subscribed(&server).await;
        let (trigger, shutdown) = Shutdown::manual();
        publish(&client, 12).await;

        let in_flight = Cell::new(0);
        let max_in_flight = Cell::new(0);
        let handled = Cell::new(0);
        let options = ConsumeOptions {
            concurrency: 4,
            drain_timeout: None,
        };
        let ending = tokio::time::timeout(
            TIMEOUT,
            consume(
                subscriber,
                &shutdown,
                options,
                || {},
                async |_message| {
                    in_flight.set(in_flight.get() + 1);
                    max_in_flight.set(max_in_flight.get().max(in_flight.get()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    in_flight.set(in_flight.get() - 1);
                    handled.set(handled.get() + 1);
                    if handled.get() == 12 {
                        trigger.request();
                    }
                },
            ),
        )
        .await
        .unwrap()
        .unwrap();

        assert_eq!(ending, Ending::Drained);
        assert_eq!(handled.get(), 12);
        assert_eq!(max_in_flight.get(), 4);
    }
}
