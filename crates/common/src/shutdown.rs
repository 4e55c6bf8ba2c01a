//! Stopping in two stages: the first signal drains, a second one stops at once.
//!
//! Dropping a subscriber loses every message the client has already received for it,
//! because core NATS delivers at most once and the server will not send them again. So the
//! first Ctrl-C or SIGTERM only asks the program to drain: stop taking new messages and
//! finish the ones it holds. A learner who does not want to wait presses Ctrl-C again.
//!
//! Programs take a [`Shutdown`] as an argument rather than listening for signals
//! themselves, so a test can drive one with [`Shutdown::manual`] as `main` does with
//! [`Shutdown::from_signals`].

use tokio::sync::watch;

/// Counts stop requests: the first asks for a drain, the second for an immediate stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    requests: watch::Receiver<u32>,
}

/// Sends stop requests to a [`Shutdown`] made by [`Shutdown::manual`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    requests: watch::Sender<u32>,
}

impl ShutdownTrigger {
    /// Sends one stop request, as one Ctrl-C would.
    pub fn request(&self) {
        self.requests.send_modify(|count| *count += 1);
    }
}

impl Shutdown {
    /// Listens for Ctrl-C (SIGINT) and, on Unix, SIGTERM, counting each one.
    ///
    /// Must be called inside a Tokio runtime. From then on the signals no longer end the
    /// process by themselves: the program decides what each request means.
    pub fn from_signals() -> Self {
        let (trigger, shutdown) = Self::manual();
        tokio::spawn(async move {
            let mut signals = match Signals::new() {
                Ok(signals) => signals,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for stop signals");
                    return;
                }
            };
            loop {
                signals.next().await;
                trigger.request();
            }
        });
        shutdown
    }

    /// Creates a shutdown that only the returned trigger fires, for tests and embedding.
    pub fn manual() -> (ShutdownTrigger, Self) {
        let (sender, receiver) = watch::channel(0);
        (
            ShutdownTrigger { requests: sender },
            Self { requests: receiver },
        )
    }

    /// Waits for the first request: the program should drain.
    pub async fn drain_requested(&self) {
        self.wait_for(1).await;
    }

    /// Waits for the second request: the program should stop at once.
    pub async fn stop_requested(&self) {
        self.wait_for(2).await;
    }

    /// Reports whether a drain has been requested, without waiting.
    pub fn is_draining(&self) -> bool {
        *self.requests.borrow() >= 1
    }

    async fn wait_for(&self, count: u32) {
        // A clone, so that several waits can be pending at once in one `select!`.
        let mut requests = self.requests.clone();
        // The sender lives as long as the signal task or the trigger. When it is gone no
        // request can come any more, so this waits forever rather than pretending one came.
        if requests.wait_for(|seen| *seen >= count).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The stop signals of the platform, registered once so that none is missed between two.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn first_request_drains_second_stops() {
        let (trigger, shutdown) = Shutdown::manual();
        assert!(!shutdown.is_draining());

        trigger.request();
        tokio::time::timeout(Duration::from_secs(1), shutdown.drain_requested())
            .await
            .expect("drain is requested after one request");
        assert!(shutdown.is_draining());

        let early = tokio::time::timeout(Duration::from_millis(50), shutdown.stop_requested());
        assert!(early.await.is_err(), "one request must not stop at once");

        trigger.request();
        tokio::time::timeout(Duration::from_secs(1), shutdown.stop_requested())
            .await
            .expect("stop is requested after two requests");
    }
}
