//! Test harness: real `nats-server` processes and this workspace's real binaries.
//!
//! Tests never mock NATS. [`NatsServer`] starts the `nats-server` binary on random loopback
//! ports, waits until it accepts connections and kills it when dropped. [`Process`] runs one
//! of the workspace's binaries, collects its stdout and stderr line by line, and lets a
//! test wait, with a timeout, for the line it expects.
//!
//! Every wait here is bounded, and a failure panics with what the process printed, because
//! these functions are only called from tests.

mod cluster;
mod process;
mod server;

pub use cluster::{CLUSTER_SIZE, NatsCluster, node_name};
pub use process::{Process, binary};
pub use server::{NatsServer, ServerBuilder, nats_server_bin};

use std::time::Duration;

/// Upper bound for waits that should finish in well under a second on an idle machine;
/// generous because tests share two cores with the compiler and each other.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds.
///
/// # Panics
///
/// When it still does not hold after `timeout`; `describe` supplies the failure message.
pub fn wait_until(
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
    describe: impl FnOnce() -> String,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        if std::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?}: {}", describe());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns a loopback port that nothing listens on, for tests of a missing server.
///
/// The port was free a moment ago; another process could take it in between, which is
/// unlikely enough on a test machine.
pub fn unused_port() -> u16 {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).expect("a loopback port can be bound");
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}
