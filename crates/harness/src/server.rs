//! Starting and stopping real `nats-server` processes.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::WAIT;

/// The command that installs `nats-server` on Debian and Ubuntu, named when none is found.
const INSTALL_HINT: &str = "install it with `sudo apt-get update && sudo apt-get install -y nats-server` \
     (Debian, Ubuntu) or `brew install nats-server` (macOS), or set NATS_SERVER_BIN to its path";

/// Finds the `nats-server` binary: `NATS_SERVER_BIN`, then `PATH`, then `/usr/sbin`, where
/// Debian's package installs it and where a non-root user's `PATH` often does not look.
pub fn nats_server_bin() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "NATS_SERVER_BIN is {}, which is not a file; {INSTALL_HINT}",
                path.display()
            ))
        };
    }

    let path_dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| format!("nats-server not found in PATH or /usr/sbin; {INSTALL_HINT}"))
}

/// Options for a server started by [`ServerBuilder::start`].
#[derive(Debug, Default, Clone)]
pub struct ServerBuilder {
    config: Option<String>,
    extra_args: Vec<String>,
    client_port: Option<u16>,
}

impl ServerBuilder {
    /// Starts the server with this configuration file text (auth, TLS, limits, ...).
    /// Ports given on the command line take precedence over the file's.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// Listens for clients on this port instead of a random one, for a test that starts
    /// a client before its server.
    pub fn client_port(mut self, port: u16) -> Self {
        self.client_port = Some(port);
        self
    }

    /// Adds a command-line argument for `nats-server`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Starts the server on random loopback ports and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// When `nats-server` is missing or does not come up within [`WAIT`]; the message names
    /// the install command or includes the server's log.
    pub fn start(self) -> NatsServer {
        let bin = nats_server_bin().unwrap_or_else(|error| panic!("{error}"));
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        let config_path = self.config.as_ref().map(|text| {
            let path = dir.path().join("server.conf");
            fs::write(&path, text).expect("the config file can be written");
            path
        });

        let mut server = NatsServer {
            bin,
            dir,
            config_path,
            extra_args: self.extra_args,
            child: None,
            client_port: 0,
            monitor_port: 0,
        };
        server.spawn(self.client_port.map(|port| (Some(port), None)));
        server
    }
}

/// A running `nats-server` on loopback, killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    dir: TempDir,
    config_path: Option<PathBuf>,
    extra_args: Vec<String>,
    child: Option<Child>,
    client_port: u16,
    monitor_port: u16,
}

impl NatsServer {
    /// Starts a server with default settings; see [`ServerBuilder::start`].
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// Options for a server with a config file or extra arguments.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Returns the URL clients connect to, such as `nats://127.0.0.1:40123`.
    pub fn client_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// Returns the client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Returns the HTTP monitoring URL, such as `http://127.0.0.1:40124`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// Fetches a monitoring endpoint such as `/connz?subs=1` and parses its JSON.
    ///
    /// A plain HTTP/1.0 request over a loopback socket is enough for the server's monitor
    /// and keeps an HTTP client out of the harness.
    ///
    /// # Panics
    ///
    /// When the request fails or the response is not JSON.
    pub fn monitor_json(&self, path: &str) -> serde_json::Value {
        let address = SocketAddr::from(([127, 0, 0, 1], self.monitor_port));
        let mut stream = TcpStream::connect_timeout(&address, WAIT)
            .unwrap_or_else(|error| panic!("cannot reach the monitor at {address}: {error}"));
        stream
            .set_read_timeout(Some(WAIT))
            .expect("a read timeout can be set");
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .expect("the request can be sent");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("the response can be read");
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        serde_json::from_str(body)
            .unwrap_or_else(|error| panic!("{path} did not return JSON ({error}):\n{response}"))
    }

    /// Returns the folder of this server's files (config, log, ports file); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Returns the server's log so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server at once, as a crash would, and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same client and monitoring ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart needs a stopped server");
        self.spawn(Some((Some(self.client_port), Some(self.monitor_port))));
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn ports_dir(&self) -> PathBuf {
        self.dir.path().join("ports")
    }

    /// Starts the process; a port of `None` lets the server pick a free one.
    fn spawn(&mut self, ports: Option<(Option<u16>, Option<u16>)>) {
        let ports_dir = self.ports_dir();
        let _ = fs::remove_dir_all(&ports_dir);
        fs::create_dir_all(&ports_dir).expect("the ports folder can be created");

        // `-1` makes the server pick a free port; it writes the ports it took to a file in
        // `--ports_file_dir`, which is how this harness learns them without a race.
        let (client, monitor) = ports.unwrap_or_default();
        let as_arg = |port: Option<u16>| port.map_or("-1".to_owned(), |p| p.to_string());
        let (client, monitor) = (as_arg(client), as_arg(monitor));
        let mut command = Command::new(&self.bin);
        if let Some(config) = &self.config_path {
            command.arg("-c").arg(config);
        }
        command
            .args(["-a", "127.0.0.1", "-p", &client, "-m", &monitor])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(self.log_path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());

        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.bin.display()));
        let pid = child.id();
        self.child = Some(child);

        let ports_file = ports_dir.join(format!("nats-server_{pid}.ports"));
        let deadline = Instant::now() + WAIT;
        let (client_port, monitor_port) = loop {
            if let Some(ports) = read_ports(&ports_file) {
                break ports;
            }
            self.assert_alive(deadline, "write its ports file");
            thread::sleep(Duration::from_millis(20));
        };
        self.client_port = client_port;
        self.monitor_port = monitor_port;

        let address = SocketAddr::from(([127, 0, 0, 1], client_port));
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            self.assert_alive(deadline, "accept connections");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_alive(&mut self, deadline: Instant, waiting_for: &str) {
        let exited = self
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten());
        if let Some(status) = exited {
            panic!(
                "nats-server exited ({status}) before it could {waiting_for}; its log:\n{}",
                self.log()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "nats-server did not {waiting_for} within {WAIT:?}; its log:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // A failing test drops its server while it unwinds; the end of the server's log
        // (slow consumers, closed connections) is often what explains the failure.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(SERVER_LOG_LINES_ON_FAILURE)..];
            eprintln!(
                "--- last {} lines of the nats-server log ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
        self.stop();
    }
}

/// Lines of the server's log printed when a test fails.
const SERVER_LOG_LINES_ON_FAILURE: usize = 40;

/// Reads `{"nats": ["nats://127.0.0.1:P"], "monitoring": ["http://127.0.0.1:M"]}`.
fn read_ports(path: &Path) -> Option<(u16, u16)> {
    let text = fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let port_of = |key: &str| -> Option<u16> {
        let url = json[key].as_array()?.first()?.as_str()?;
        url.rsplit(':').next()?.parse().ok()
    };
    Some((port_of("nats")?, port_of("monitoring")?))
}
