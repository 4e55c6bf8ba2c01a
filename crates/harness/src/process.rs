//! Running this workspace's binaries and reading what they print.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Returns the path of one of the workspace's binaries, building it first once per test
/// process.
///
/// Cargo builds a package's own binaries before its tests, but not those of other packages,
/// and an end-to-end test needs several (a worker and a publisher). Building here also means
/// a test never runs a binary older than its source. Each binary is built on its own, so a
/// crate that does not compile fails only the tests that use it.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let result = built
        .entry(name.to_owned())
        .or_insert_with(|| build_binary(name));
    let path = result.clone().unwrap_or_else(|error| panic!("{error}"));
    assert!(path.is_file(), "no binary {}", path.display());
    path
}

fn build_binary(name: &str) -> Result<PathBuf, String> {
    // A test binary lives in `target/<profile>/deps/`; the binaries are in `target/<profile>/`.
    let test_exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the target folder from the test binary's path")?
        .to_path_buf();
    let release = profile_dir.file_name() == Some(OsStr::new("release"));

    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args(["build", "--quiet", "--bin", name]);
    // Cargo sets these for the running test. Passed on, they would differ from an ordinary
    // build's environment, and build scripts that watch them (ring's does) would rerun,
    // rebuilding half the dependency tree on every test run.
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        let set_for_the_test = key_text.starts_with("CARGO_PKG_")
            || matches!(
                key_text.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            );
        if set_for_the_test {
            command.env_remove(&key);
        }
    }
    if release {
        command.arg("--release");
    }
    let output = command
        .output()
        .map_err(|error| format!("cannot run cargo build: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build --bin {name} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// Lines a stream has printed so far, and a signal for each new one.
#[derive(Debug, Default)]
struct Lines {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    fn collect(self: Arc<Self>, stream: impl Read + Send + 'static) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                match reader.read_until(b'\n', &mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buffer)
                            .trim_end_matches(['\n', '\r'])
                            .to_owned();
                        self.lock().0.push(line);
                        self.changed.notify_all();
                    }
                }
            }
            self.lock().1 = true;
            self.changed.notify_all();
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<String>, bool)> {
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn snapshot(&self) -> Vec<String> {
        self.lock().0.clone()
    }

    /// Waits until `count` lines match, returning them, or `None` at the timeout or when the
    /// stream ends first.
    fn wait_for(
        &self,
        count: usize,
        matches: &dyn Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock();
        loop {
            let found: Vec<String> = guard.0.iter().filter(|l| matches(l)).cloned().collect();
            if found.len() >= count {
                return Some(found);
            }
            let now = Instant::now();
            if guard.1 || now >= deadline {
                return None;
            }
            guard = self
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

/// One running binary with its output collected; killed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    readers: Vec<thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts the workspace binary `name` with `args`.
    ///
    /// The `NATS_*` variables of the test's own environment are removed, so that a learner's
    /// settings cannot point a test at another server; tests pass `--server` explicitly.
    pub fn start<I, S>(name: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start_with_env(name, args, &[])
    }

    /// Starts the workspace binary `name` with `args` and extra environment variables.
    pub fn start_with_env<I, S>(name: &str, args: I, env: &[(&str, &str)]) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(binary(name));
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("NATS_") {
                command.env_remove(key);
            }
        }
        command.env_remove("RUST_LOG");
        for (key, value) in env {
            command.env(key, value);
        }

        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        let readers = vec![
            Arc::clone(&stdout).collect(child.stdout.take().expect("stdout is piped")),
            Arc::clone(&stderr).collect(child.stderr.take().expect("stderr is piped")),
        ];
        Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    /// Returns the process id, for sending signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns every stdout line so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    /// Returns every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// Waits until a stdout line contains `text` and returns that line.
    ///
    /// # Panics
    ///
    /// When no such line comes within `timeout`, with everything the process printed.
    pub fn wait_for_stdout(&self, text: &str, timeout: Duration) -> String {
        self.wait_for_stdout_count(text, 1, timeout).remove(0)
    }

    /// Waits until `count` stdout lines contain `text` and returns all that do.
    pub fn wait_for_stdout_count(
        &self,
        text: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<String> {
        self.stdout
            .wait_for(count, &|line| line.contains(text), timeout)
            .unwrap_or_else(|| {
                panic!(
                    "{} did not print {count} stdout line(s) containing {text:?} within {timeout:?}\n{}",
                    self.name,
                    self.transcript()
                )
            })
    }

    /// Waits until a stderr line contains `text` and returns that line.
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) -> String {
        self.stderr
            .wait_for(1, &|line| line.contains(text), timeout)
            .map(|mut lines| lines.remove(0))
            .unwrap_or_else(|| {
                panic!(
                    "{} did not print a stderr line containing {text:?} within {timeout:?}\n{}",
                    self.name,
                    self.transcript()
                )
            })
    }

    /// Writes `text` to the process's standard input.
    pub fn write_stdin(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is still open");
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|error| panic!("cannot write to {}: {error}", self.name));
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    pub fn interrupt(&self) {
        self.send_signal("INT");
    }

    /// Sends SIGTERM, as `kill` and container runtimes do.
    pub fn terminate(&self) {
        self.send_signal("TERM");
    }

    /// Sends SIGKILL: the process cannot react, as in a crash or an OOM kill.
    pub fn kill(&self) {
        self.send_signal("KILL");
    }

    fn send_signal(&self, signal: &str) {
        // The `kill` command keeps this crate free of `unsafe` calls into libc.
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("the kill command runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit and for its output to be read to the end.
    ///
    /// # Panics
    ///
    /// When it is still running after `timeout`, with everything it printed.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait works") {
                break status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.transcript()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.status = Some(status);
        status
    }

    /// Everything the process printed, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout().join("\n"),
            self.name,
            self.stderr().join("\n")
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
