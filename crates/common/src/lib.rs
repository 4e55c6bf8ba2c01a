//! What every step of the queue-groups tutorial shares.
//!
//! Each binary in this workspace is one step of the tutorial, and they all connect, decode
//! tasks, log and stop in the same way, so that a learner who has read one `main.rs` can
//! read them all. This crate holds those shared pieces:
//!
//! - [`connection`]: the `--server`, auth and TLS flags every binary flattens, and
//!   [`connection::ConnectArgs::connect`], which turns a failure into one line that names
//!   the URL (credentials masked), the cause and the fix.
//! - [`consume`]: the message loop of every worker, with a drain on the first stop request
//!   and an immediate stop, which counts what it abandons, on the second.
//! - [`task`]: the JSON task message and decoding that says what is wrong with a payload.
//! - [`names`]: checks of subjects and queue group names, run by clap before connecting.
//! - [`report`]: the completion report a worker publishes per task, so that a publisher
//!   can tell when its batch is done.
//! - [`dead_letter`]: the headers a worker puts on a message it gave up on, and the
//!   subject it sends it to.
//! - [`duration`]: `2.0`, `500ms`, `2s` and `1m` on the command line.
//! - [`limits`]: the server's `max_payload`, checked before publishing.
//! - [`shutdown`]: the first Ctrl-C or SIGTERM asks for a drain, a second one for an
//!   immediate stop.
//! - [`logging`]: `tracing` on stderr, with secrets scrubbed from every line.

pub mod connection;
pub mod consume;
pub mod dead_letter;
pub mod duration;
pub mod limits;
pub mod logging;
pub mod names;
pub mod report;
pub mod shutdown;
pub mod task;

pub use connection::{ClientSettings, ConnectArgs, Events, Secret, redact_url};
pub use duration::parse_duration;
pub use shutdown::Shutdown;
pub use task::{DecodeError, Task};
