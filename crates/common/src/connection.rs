//! Connecting to NATS the same way in every binary.
//!
//! [`ConnectArgs`] contains the flags of the `nats` CLI that every step accepts (`--server`,
//! `--user`, `--token`, `--creds`, TLS files, ...) and each binary flattens it into its own
//! clap struct. [`ConnectArgs::connect`] fails with one line that names the server (with
//! any credentials masked), the cause, and what to do about it. Once connected, the client
//! reconnects by itself, and the events it reports are logged here.

use std::convert::Infallible;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, ServerAddr, rustls};

use crate::Shutdown;
use crate::duration::parse_duration;
use crate::logging::scrub;

/// Server used when neither `--server` nor `NATS_URL` is given.
pub const DEFAULT_SERVER: &str = "nats://localhost:4222";

/// Advice for when no server is listening, part of the connection error.
const START_SERVER_HINT: &str = "start one with `scripts/nats-server.sh` or `docker compose up -d`, or point --server / NATS_URL at a running server";

/// Advice when a connection opened but no NATS server replied in time: often a port of
/// another kind, such as HTTP monitoring, given as the client port.
const TIMED_OUT_HINT: &str = "if something listens on that port, it is not a NATS client port (clients use 4222 by default; 8222 is HTTP monitoring); otherwise start a server with `scripts/nats-server.sh` or `docker compose up -d`";

/// Advice for a failed TLS handshake, part of the connection error.
const TLS_HINT: &str = "check --tlsca (the CA that signed the server's certificate), --tlscert and --tlskey, and that the server has TLS on";

/// First pause between two connection attempts with `--wait-for-server`; it doubles up to
/// [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Shortest gap between two slow-consumer warnings; the ones in between are only counted.
const SLOW_CONSUMER_WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// Maximum wait, after a reconnect, for the client to store the new server's INFO before
/// the `reconnected` line names the server.
const RECONNECT_INFO_WAIT: Duration = Duration::from_millis(250);

/// A password or token: never shown by `Debug`, `Display` or `--help`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Returns the value itself, for handing to the NATS client and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How to reach and authenticate with the NATS server; the same flags in every binary.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// NATS server URL, or a comma-separated list of a cluster's seed servers.
    /// Credentials in a URL (nats://user:password@host:port, or nats://token@host:port for
    /// a token) are used in place of --user, --password and --token.
    #[arg(
        short = 's',
        long = "server",
        env = "NATS_URL",
        default_value = DEFAULT_SERVER,
        value_delimiter = ',',
        value_name = "URL",
        hide_env_values = true
    )]
    pub servers: Vec<String>,

    /// Connection name, shown by the server's monitoring and by `queue_monitor`
    /// [default: the program's name and id, such as worker-2].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// User name for user and password authentication.
    #[arg(
        long,
        env = "NATS_USER",
        requires = "password",
        hide_env_values = true,
        value_name = "USER"
    )]
    pub user: Option<String>,

    /// Password for user and password authentication.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        requires = "user",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<Secret>,

    /// Token for token authentication.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<Secret>,

    /// Credentials file (a JWT and an NKey seed), as made by `nsc`.
    #[arg(long, env = "NATS_CREDS", hide_env_values = true, value_name = "FILE")]
    pub creds: Option<PathBuf>,

    /// File that contains an NKey seed for NKey authentication.
    #[arg(long, env = "NATS_NKEY", hide_env_values = true, value_name = "FILE")]
    pub nkey: Option<PathBuf>,

    /// Client certificate (PEM) for TLS client authentication.
    #[arg(long, requires = "tlskey", value_name = "FILE")]
    pub tlscert: Option<PathBuf>,

    /// Private key (PEM) of the client certificate.
    #[arg(long, requires = "tlscert", value_name = "FILE")]
    pub tlskey: Option<PathBuf>,

    /// CA certificate (PEM) that signed the server's certificate; turns TLS on.
    #[arg(long, value_name = "FILE")]
    pub tlsca: Option<PathBuf>,

    /// Keep retrying, with backoff, while no server responds at start instead of failing.
    #[arg(long)]
    pub wait_for_server: bool,

    /// How long to wait for each server when connecting (seconds, or 500ms, 2s, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
}

/// Options of one connection that differ between binaries.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Connection name used when `--name` is not given, such as `worker-1`.
    pub default_name: String,

    /// Messages buffered per subscription before the client drops them as a slow consumer.
    /// `None` keeps the async-nats default.
    pub subscription_capacity: Option<usize>,
}

impl ClientSettings {
    /// Settings with the given default connection name and nothing else changed.
    pub fn named(default_name: impl Into<String>) -> Self {
        Self {
            default_name: default_name.into(),
            subscription_capacity: None,
        }
    }
}

impl ConnectArgs {
    /// Returns the connection name: `--name`, or else `default_name`.
    pub fn name_or(&self, default_name: &str) -> String {
        self.name.clone().unwrap_or_else(|| default_name.to_owned())
    }

    /// Returns the servers as they may be shown: credentials in URLs replaced by `***`.
    pub fn servers_display(&self) -> String {
        self.servers
            .iter()
            .map(|url| redact_url(url.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Returns every secret these options carry, for the logging filter to hide.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        for url in &self.servers {
            secrets.extend(url_secret(url));
            let Ok(addr) = ServerAddr::from_str(url.trim()) else {
                continue;
            };
            // async-nats logs the parsed URL, which percent-encodes characters that the
            // text may have plain, and the server receives the decoded value.
            secrets.extend(addr.password().or(addr.username()).map(str::to_owned));
            secrets.extend(url_auth(&addr).map(|auth| match auth {
                UrlAuth::UserPassword { password, .. } => password.0,
                UrlAuth::Token(token) => token.0,
            }));
        }
        secrets.extend(self.password.iter().map(|s| s.expose().to_owned()));
        secrets.extend(self.token.iter().map(|s| s.expose().to_owned()));
        secrets.sort();
        secrets.dedup();
        secrets
    }

    /// Returns the credentials in the first server URL that has any.
    ///
    /// async-nats 0.52 does not send a URL's credentials by itself, so
    /// [`ConnectArgs::connect`] passes these on.
    fn url_auth(&self) -> Option<UrlAuth> {
        self.servers
            .iter()
            .filter_map(|url| ServerAddr::from_str(url.trim()).ok())
            .find_map(|addr| url_auth(&addr))
    }

    /// Connects, or fails with one line that names the server, the cause and the fix.
    ///
    /// Each server gets `--connect-timeout`. Without `--wait-for-server` a failure here is
    /// final, because a learner is better served by an error than by a program that waits
    /// in silence; with it, an absent server is retried with backoff until it appears.
    /// Once connected the client reconnects by itself and keeps its subscriptions.
    ///
    /// Use [`ConnectArgs::connect_or_stop`] in a program that has taken over Ctrl-C.
    pub async fn connect(&self, settings: &ClientSettings) -> anyhow::Result<(Client, Events)> {
        self.connect_inner(settings, None).await
    }

    /// Like [`ConnectArgs::connect`], but gives up when `shutdown` receives a stop request,
    /// so that Ctrl-C still ends a program that is waiting for its server.
    pub async fn connect_or_stop(
        &self,
        settings: &ClientSettings,
        shutdown: &Shutdown,
    ) -> anyhow::Result<(Client, Events)> {
        self.connect_inner(settings, Some(shutdown)).await
    }

    async fn connect_inner(
        &self,
        settings: &ClientSettings,
        shutdown: Option<&Shutdown>,
    ) -> anyhow::Result<(Client, Events)> {
        let servers = self.server_addrs()?;
        let events = Events::default();
        let mut retry_delay = FIRST_RETRY_DELAY;
        let mut attempt = 1u32;

        let client = loop {
            let options = self.options(settings, &events).await?;
            let outcome = async {
                match shutdown {
                    Some(shutdown) => tokio::select! {
                        outcome = self.try_connect(options, &servers) => outcome,
                        () = shutdown.drain_requested() => Err(ConnectFailure {
                            message: format!("stopped while connecting to {}", self.servers_display()),
                            server_absent: false,
                        }),
                    },
                    None => self.try_connect(options, &servers).await,
                }
            };
            match outcome.await {
                Ok(client) => break client,
                Err(failure) if self.wait_for_server && failure.server_absent => {
                    // The whole error, with its advice, once; later attempts only count.
                    if attempt == 1 {
                        tracing::warn!(
                            attempt,
                            retry_in = ?retry_delay,
                            "waiting for the server: {}",
                            failure.message
                        );
                    } else {
                        tracing::warn!(
                            attempt,
                            retry_in = ?retry_delay,
                            "still waiting for the server at {}",
                            self.servers_display()
                        );
                    }
                    let pause = tokio::time::sleep(retry_delay);
                    match shutdown {
                        Some(shutdown) => tokio::select! {
                            () = pause => {}
                            () = shutdown.drain_requested() => anyhow::bail!(
                                "stopped while waiting for the server at {}",
                                self.servers_display()
                            ),
                        },
                        None => pause.await,
                    }
                    retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                    attempt += 1;
                }
                Err(failure) => return Err(anyhow!(failure.message)),
            }
        };

        // Only now can the event handler name the server after a reconnect.
        let _ = events.inner.client.set(client.clone());
        tracing::info!(
            server = %connected_server(&client),
            name = %self.name_or(&settings.default_name),
            "connected"
        );
        Ok((client, events))
    }

    /// Makes one connection attempt over the whole server list, bounded in time.
    async fn try_connect(
        &self,
        options: ConnectOptions,
        servers: &[ServerAddr],
    ) -> Result<Client, ConnectFailure> {
        // async-nats bounds each server's attempt; this bounds the whole list as well.
        let whole_list = self.connect_timeout * u32::try_from(servers.len()).unwrap_or(u32::MAX)
            + Duration::from_secs(1);
        match tokio::time::timeout(whole_list, options.connect(servers.to_vec())).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(error)) => Err(ConnectFailure {
                message: self.describe_failure(&error),
                server_absent: matches!(
                    error.kind(),
                    ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns
                ) && !is_tls_failure(&error),
            }),
            Err(_) => Err(ConnectFailure {
                message: format!(
                    "cannot connect to {}: timed out after {:.1}s; {TIMED_OUT_HINT}",
                    self.servers_display(),
                    whole_list.as_secs_f64()
                ),
                server_absent: true,
            }),
        }
    }

    fn server_addrs(&self) -> anyhow::Result<Vec<ServerAddr>> {
        let mut addrs = Vec::with_capacity(self.servers.len());
        for url in &self.servers {
            let url = url.trim();
            if url.is_empty() {
                anyhow::bail!(
                    "invalid --server list {:?}: it has an empty entry; separate URLs with single commas",
                    self.servers_display()
                );
            }
            let addr = ServerAddr::from_str(url).map_err(|error| {
                anyhow!(
                    "invalid server URL {:?}: {}; expected nats://host:port",
                    redact_url(url),
                    scrub(&error.to_string(), &self.secrets())
                )
            })?;
            addrs.push(addr);
        }
        Ok(addrs)
    }

    async fn options(
        &self,
        settings: &ClientSettings,
        events: &Events,
    ) -> anyhow::Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .name(self.name_or(&settings.default_name))
            .connection_timeout(self.connect_timeout);

        if let Some(capacity) = settings.subscription_capacity {
            options = options.subscription_capacity(capacity);
        }
        // Credentials in the URL take precedence over the flags, as in the Go client that
        // the `nats` CLI is built on.
        // NOTE: async-nats keeps one set of credentials for the whole server list, so with
        // several URLs those of the first URL that has any are sent to every server.
        match self.url_auth() {
            Some(UrlAuth::UserPassword { user, password }) => {
                options = options.user_and_password(user, password.0);
            }
            Some(UrlAuth::Token(token)) => options = options.token(token.0),
            None => {
                if let (Some(user), Some(password)) = (&self.user, &self.password) {
                    options = options.user_and_password(user.clone(), password.expose().to_owned());
                }
                if let Some(token) = &self.token {
                    options = options.token(token.expose().to_owned());
                }
            }
        }
        if let Some(path) = &self.creds {
            options = options.credentials_file(path).await.with_context(|| {
                format!(
                    "cannot read credentials file {}; check the --creds path",
                    path.display()
                )
            })?;
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read NKey seed file {}; check the --nkey path",
                    path.display()
                )
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(ca) = &self.tlsca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tlscert, &self.tlskey) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }

        let handler = events.clone();
        Ok(options.event_callback(move |event| {
            let handler = handler.clone();
            async move { handler.record(event).await }
        }))
    }

    fn describe_failure(&self, error: &async_nats::ConnectError) -> String {
        let servers = self.servers_display();
        let cause = scrub(&error_chain(error), &self.secrets());
        let hint = match error.kind() {
            ConnectErrorKind::AuthorizationViolation if self.url_auth().is_some() => {
                "the server rejected the credentials in the server URL; check the user and password, or the token, in it".to_owned()
            }
            ConnectErrorKind::AuthorizationViolation => {
                "the server rejected the credentials; check --user and --password, --token, --creds or --nkey".to_owned()
            }
            ConnectErrorKind::Authentication => {
                "signing the server's challenge failed; check that --creds or --nkey names a valid file".to_owned()
            }
            ConnectErrorKind::Tls => TLS_HINT.to_owned(),
            // A certificate rejected during the handshake, or the server's TLS alert about
            // the client's certificate, arrives from async-nats as an I/O error.
            ConnectErrorKind::Io if is_tls_failure(error) => TLS_HINT.to_owned(),
            ConnectErrorKind::ServerParse => "expected nats://host:port".to_owned(),
            ConnectErrorKind::Dns => "check the host name in --server".to_owned(),
            ConnectErrorKind::TimedOut => TIMED_OUT_HINT.to_owned(),
            ConnectErrorKind::Io | ConnectErrorKind::MaxReconnects => START_SERVER_HINT.to_owned(),
        };
        format!("cannot connect to {servers}: {cause}; {hint}")
    }
}

/// The reason one connection attempt failed.
#[derive(Debug)]
struct ConnectFailure {
    /// The one-line error for the user.
    message: String,
    /// True when nothing responded, so that waiting for the server can help; false for
    /// rejected credentials, TLS trouble and other errors that retrying cannot fix.
    server_absent: bool,
}

/// Formats the error and each of its sources on one line, without repeats.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Reports whether `error` comes from the TLS layer: a certificate that either side
/// rejected, or a TLS alert from the server.
fn is_tls_failure(error: &async_nats::ConnectError) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps, so that one is checked here.
        let wrapped = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if wrapped.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Returns the server a client is connected to, as `host:port` and its name when it has
/// one.
pub fn connected_server(client: &Client) -> String {
    let info = client.server_info();
    // An unnamed server reports its id as its name; that long key adds nothing here.
    if info.server_name.is_empty() || info.server_name == info.server_id {
        format!("{}:{}", info.host, info.port)
    } else {
        format!("{}:{} ({})", info.host, info.port, info.server_name)
    }
}

/// Shows a server URL with its credentials replaced by `***`.
///
/// `nats://alice:pw@host:4222` becomes `nats://alice:***@host:4222`, and a token URL
/// `nats://tok@host:4222` becomes `nats://***@host:4222`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_len].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let masked = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}{masked}{}", &rest[at..])
}

/// User and password, or a token, from a server URL, percent-decoded as the server expects
/// them.
#[derive(Debug, PartialEq, Eq)]
enum UrlAuth {
    UserPassword { user: String, password: Secret },
    Token(Secret),
}

/// Returns the credentials in `addr`: `nats://user:password@host` or `nats://token@host`.
fn url_auth(addr: &ServerAddr) -> Option<UrlAuth> {
    let user = percent_decode(addr.username()?);
    Some(match addr.password() {
        Some(password) => UrlAuth::UserPassword {
            user,
            password: Secret(percent_decode(password)),
        },
        None => UrlAuth::Token(Secret(user)),
    })
}

/// Decodes the `%XX` escapes of a URL component; a `%` without two hex digits stays as it
/// is.
fn percent_decode(text: &str) -> String {
    let mut decoded = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        let escaped = match tail {
            [high, low, ..]
                if byte == b'%' && high.is_ascii_hexdigit() && low.is_ascii_hexdigit() =>
            {
                std::str::from_utf8(&tail[..2])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            }
            _ => None,
        };
        match escaped {
            Some(value) => {
                decoded.push(value);
                rest = &tail[2..];
            }
            None => {
                decoded.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Returns the password or token inside a server URL, if it has one.
fn url_secret(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _host) = authority.rsplit_once('@')?;
    let secret = userinfo.split_once(':').map_or(userinfo, |(_, pw)| pw);
    (!secret.is_empty()).then(|| secret.to_owned())
}

/// What the client reported after connecting: reconnects and slow-consumer drops.
///
/// Each event is logged; slow-consumer events, which come once per dropped message, are
/// counted and logged at most once per interval, so a flood cannot flood the log.
#[derive(Debug, Clone, Default)]
pub struct Events {
    inner: Arc<EventsInner>,
}

#[derive(Debug, Default)]
struct EventsInner {
    client: OnceLock<Client>,
    connects: AtomicU64,
    slow_consumer_events: AtomicU64,
    last_slow_consumer_warning: Mutex<Option<Instant>>,
    /// Server id of the server the client lost at the latest disconnect.
    lost_server_id: Mutex<Option<String>>,
}

impl Events {
    /// Slow-consumer events seen so far: each is one message that the client dropped.
    ///
    /// async-nats sends events through a bounded queue and skips them when it is full,
    /// so under a long flood this can be lower than the real number of drops.
    pub fn slow_consumer_events(&self) -> u64 {
        self.inner.slow_consumer_events.load(Ordering::Relaxed)
    }

    async fn record(&self, event: Event) {
        match event {
            Event::Connected => self.record_connected().await,
            Event::Disconnected => {
                if let Some(client) = self.inner.client.get() {
                    *lock(&self.inner.lost_server_id) = Some(client.server_info().server_id);
                }
                tracing::warn!(
                    "disconnected from the server; reconnecting. Subscriptions are restored once connected; messages the server handles meanwhile are not delivered to this client"
                );
            }
            Event::LameDuckMode => tracing::warn!(
                "the server entered lame duck mode and will shut down soon; the client will reconnect to another server"
            ),
            Event::SlowConsumer(sid) => self.record_slow_consumer(sid),
            Event::ServerError(error) => tracing::warn!(%error, "the server reported an error"),
            Event::ClientError(error) => tracing::warn!(%error, "client error"),
            Event::Draining | Event::Closed => tracing::debug!(%event, "connection event"),
        }
    }

    /// Logs a reconnect and the server the client is connected to now.
    ///
    /// async-nats 0.52 sends `Connected` just before it stores the new server's INFO, so
    /// `server_info()` can still describe the lost server at this point. This waits until
    /// the server id differs from the lost one, for at most [`RECONNECT_INFO_WAIT`]; a
    /// reconnect to the same, still running server keeps its id and is logged after that
    /// wait. A restarted nats-server has a new id unless its configuration fixes one.
    async fn record_connected(&self) {
        // The first `Connected` is the initial connect, which `connect` logs itself.
        let earlier = self.inner.connects.fetch_add(1, Ordering::Relaxed);
        let Some(client) = self.inner.client.get() else {
            return;
        };
        if earlier == 0 {
            return;
        }

        let lost_server_id = lock(&self.inner.lost_server_id).take();
        if let Some(lost_server_id) = lost_server_id {
            let deadline = Instant::now() + RECONNECT_INFO_WAIT;
            while client.server_info().server_id == lost_server_id && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tracing::info!(server = %connected_server(client), "reconnected");
    }

    fn record_slow_consumer(&self, sid: u64) {
        let total = self
            .inner
            .slow_consumer_events
            .fetch_add(1, Ordering::Relaxed)
            + 1;

        let mut last = self
            .inner
            .last_slow_consumer_warning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= SLOW_CONSUMER_WARNING_INTERVAL);
        if due {
            *last = Some(Instant::now());
            tracing::warn!(
                subscription = sid,
                dropped_so_far = total,
                "slow consumer: the subscription's buffer is full and the client dropped messages; core NATS will not send them again"
            );
        }
    }
}

/// Locks `mutex`, also after a panic elsewhere: the values behind these locks stay valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        connect: ConnectArgs,
    }

    #[test]
    fn redact_url_masks_credentials() {
        assert_eq!(
            redact_url("nats://alice:s3cret@localhost:4222"),
            "nats://alice:***@localhost:4222"
        );
        assert_eq!(redact_url("nats://tok@host:4222"), "nats://***@host:4222");
        assert_eq!(redact_url("tls://u:p@h:1/path@x"), "tls://u:***@h:1/path@x");
        assert_eq!(redact_url("u:p@h:4222"), "u:***@h:4222");
        assert_eq!(redact_url("nats://localhost:4222"), "nats://localhost:4222");
    }

    #[test]
    fn url_secrets_are_found() {
        assert_eq!(
            url_secret("nats://alice:s3cret@h:1").as_deref(),
            Some("s3cret")
        );
        assert_eq!(url_secret("nats://tok@h:1").as_deref(), Some("tok"));
        assert_eq!(url_secret("nats://h:1"), None);
    }

    #[test]
    fn secret_is_hidden_in_debug_output() {
        let cli = Cli::parse_from([
            "x",
            "--user",
            "alice",
            "--password",
            "s3cret",
            "--token",
            "t0k",
        ]);
        let debug = format!("{cli:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(!debug.contains("t0k"), "{debug}");
        assert_eq!(
            cli.connect.secrets(),
            vec!["s3cret".to_owned(), "t0k".to_owned()]
        );
    }

    #[test]
    fn url_credentials_are_percent_decoded() {
        let addr = |url: &str| ServerAddr::from_str(url).expect("valid URL");
        assert_eq!(
            url_auth(&addr("nats://alice:p%40ss%22w@h:1")),
            Some(UrlAuth::UserPassword {
                user: "alice".to_owned(),
                password: Secret("p@ss\"w".to_owned()),
            })
        );
        assert_eq!(
            url_auth(&addr("nats://t%2Fk@h:1")),
            Some(UrlAuth::Token(Secret("t/k".to_owned())))
        );
        assert_eq!(url_auth(&addr("nats://h:1")), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%+1"), "%+1");
    }

    #[test]
    fn url_credentials_take_precedence_and_are_secret() {
        let cli = Cli::parse_from([
            "x",
            "-s",
            "nats://bob:p%40ss@h:1",
            "--user",
            "alice",
            "--password",
            "flag-pw",
        ]);
        assert_eq!(
            cli.connect.url_auth(),
            Some(UrlAuth::UserPassword {
                user: "bob".to_owned(),
                password: Secret("p@ss".to_owned()),
            })
        );
        assert_eq!(
            cli.connect.secrets(),
            ["flag-pw", "p%40ss", "p@ss"].map(str::to_owned)
        );
    }

    #[test]
    fn server_list_is_split_on_commas() {
        let cli = Cli::parse_from(["x", "-s", "nats://a:1,nats://b:2"]);
        assert_eq!(cli.connect.servers, vec!["nats://a:1", "nats://b:2"]);
        assert_eq!(cli.connect.server_addrs().expect("valid").len(), 2);
    }

    #[test]
    fn empty_server_entry_is_rejected() {
        let cli = Cli::parse_from(["x", "-s", "nats://a:1,,nats://b:2"]);
        let error = cli.connect.server_addrs().expect_err("empty entry");
        assert!(error.to_string().contains("empty entry"), "{error}");
    }

    #[test]
    fn password_requires_user() {
        let error = Cli::try_parse_from(["x", "--password", "pw"]).expect_err("no user");
        assert!(error.to_string().contains("--user"), "{error}");
    }
}
