//! Authentication, TLS and secret hygiene end to end: the real binaries against servers
//! that require a user and password, a token, an NKey, a JWT from a `.creds` file, or a
//! client certificate.
//!
//! Each test makes its own keys and certificates in a temporary folder: NKeys and JWTs with
//! the `nkeys` crate, certificates with `rcgen`. For every mode, the right credentials let a
//! worker complete a task published with the same credentials, and wrong ones end the
//! worker with exit status 1 and one stderr line that names the URL and what to check.
//!
//! The leak tests run every binary that connects with each secret passed by flag, by
//! environment variable and inside the URL, both right and wrong. They run at
//! `RUST_LOG=trace` and at the default level, and look for the secret in every line the
//! binaries print.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use harness::{NatsServer, Process, WAIT};
use nkeys::KeyPair;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use tempfile::TempDir;

const USER: &str = "alice";

/// `USER`'s password. The quote and the backslash make its `{:?}` and JSON forms differ
/// from the text itself, so the tests also catch a secret that is printed escaped.
const PASSWORD: &str = r#"Pw"7x\Qm4-alice"#;
const WRONG_PASSWORD: &str = r#"Wr"0ng\Pw-alice"#;

const TOKEN: &str = r#"Tk"9f\2Zq-token"#;
const WRONG_TOKEN: &str = r#"Wr"0ng\Tk-token"#;

/// Time each client gets to connect in a test where the server rejects it.
const CONNECT_TIMEOUT: &str = "2s";

/// Maximum time a rejected client may take to exit: a rejection is final, so it must not
/// wait for the connect timeout or retry.
const REJECTION_DEADLINE: Duration = Duration::from_secs(5);

/// A temporary folder for keys, certificates, seeds and creds files, removed on drop.
struct Fixtures {
    dir: TempDir,
}

impl Fixtures {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory can be created"),
        }
    }

    /// Writes `contents` to the file `name` and returns its path as a string, ready to be
    /// passed as an argument or put in a server config.
    fn write(&self, name: &str, contents: &str) -> String {
        let path: PathBuf = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("a fixture file can be written");
        path.to_str().expect("temporary paths are UTF-8").to_owned()
    }
}

/// Quotes `text` as a string of a nats-server config file.
fn config_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Percent-encodes every byte outside the URL's unreserved characters, as a password in a
/// URL's userinfo must be.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            write!(encoded, "%{byte:02X}").expect("writing to a String cannot fail");
        }
    }
    encoded
}

/// `server`'s client URL with `userinfo` (`user:password` or a token) in it.
fn url_with_userinfo(server: &NatsServer, userinfo: &str) -> String {
    format!("nats://{userinfo}@127.0.0.1:{}", server.client_port())
}

fn password_server() -> NatsServer {
    NatsServer::builder()
        .config(format!(
            "authorization {{\n  user: {USER}\n  password: {}\n}}\n",
            config_string(PASSWORD)
        ))
        .start()
}

fn token_server() -> NatsServer {
    NatsServer::builder()
        .config(format!(
            "authorization {{\n  token: {}\n}}\n",
            config_string(TOKEN)
        ))
        .start()
}

/// Starts a server that admits one NKey user: the holder of the seed behind `public_key`.
fn nkey_server(public_key: &str) -> NatsServer {
    NatsServer::builder()
        .config(format!(
            "authorization {{\n  users: [\n    {{ nkey: {public_key} }}\n  ]\n}}\n"
        ))
        .start()
}

/// An operator and one account it signed, as a nats-server in operator mode trusts them.
struct Operator {
    jwt: String,
    account: KeyPair,
    account_jwt: String,
}

impl Operator {
    fn new() -> Self {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let jwt = issue_jwt(
            &operator,
            &operator.public_key(),
            "tutorial-operator",
            json!({ "type": "operator", "version": 2 }),
        );
        let account_jwt = issue_jwt(
            &operator,
            &account.public_key(),
            "tutorial-account",
            json!({
                // -1 is "no limit"; a limit left out of the JWT would be 0.
                "limits": {
                    "subs": -1, "conn": -1, "leaf": -1, "imports": -1, "exports": -1,
                    "data": -1, "payload": -1, "wildcards": true
                },
                "default_permissions": { "pub": {}, "sub": {} },
                "type": "account",
                "version": 2
            }),
        );
        Self {
            jwt,
            account,
            account_jwt,
        }
    }

    /// Server config that trusts this operator and knows its account from the config
    /// alone, with no account server (`resolver: MEMORY`).
    fn server_config(&self) -> String {
        format!(
            "operator: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n}}\n",
            config_string(&self.jwt),
            self.account.public_key(),
            config_string(&self.account_jwt)
        )
    }

    /// Makes a new user of this operator's account and returns the user's `.creds` text
    /// and NKey seed.
    fn new_user_creds(&self) -> (String, String) {
        let user = KeyPair::new_user();
        let jwt = issue_jwt(
            &self.account,
            &user.public_key(),
            "tutorial-user",
            json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2
            }),
        );
        let seed = user.seed().expect("a generated key pair has a seed");
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             The seed below signs in as this user: keep it secret.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        );
        (creds, seed)
    }
}

/// Signs a NATS JWT (v2) with `issuer` about `subject`; `nats` is the type-specific part.
fn issue_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let issued_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    let claims = json!({
        // The JWT id only has to be unique for these tests.
        "jti": format!("{subject}-{}", issued_at.as_nanos()),
        "iat": issued_at.as_secs(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed_part = format!("{header}.{payload}");
    let signature = issuer
        .sign(signed_part.as_bytes())
        .expect("a key pair with a seed can sign");
    format!("{signed_part}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Paths of a CA certificate and of a server and a client certificate it signed, with
/// their keys, all PEM.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    /// Makes a new CA named `name` and its certificates, written to `fixtures` with `name`
    /// as their prefix.
    fn new(fixtures: &Fixtures, name: &str) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_key = rcgen::KeyPair::generate().expect("a key can be generated");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("the CA can be signed");

        let (server_cert, server_key) = issue_certificate(
            &ca,
            "nats-server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            issue_certificate(&ca, "worker", &[], ExtendedKeyUsagePurpose::ClientAuth);

        Self {
            ca: fixtures.write(&format!("{name}-ca.pem"), &ca.pem()),
            server_cert: fixtures.write(&format!("{name}-server.pem"), &server_cert),
            server_key: fixtures.write(&format!("{name}-server-key.pem"), &server_key),
            client_cert: fixtures.write(&format!("{name}-client.pem"), &client_cert),
            client_key: fixtures.write(&format!("{name}-client-key.pem"), &client_key),
        }
    }

    /// Returns the server config for TLS that also requires a client certificate signed by
    /// this CA.
    ///
    /// The TLS handshake timeout is set to 2 seconds because the nats-server docs give a
    /// default of half a second for some versions, which is short for tests that share two
    /// cores with the compiler and with each other.
    fn server_config(&self) -> String {
        let cert = config_string(&self.server_cert);
        let key = config_string(&self.server_key);
        let ca = config_string(&self.ca);
        format!(
            "tls {{\n  cert_file: {cert}\n  key_file: {key}\n  ca_file: {ca}\n  \
             verify: true\n  timeout: 2\n}}\n"
        )
    }
}

/// Returns a certificate signed by `ca` and its private key, both PEM.
fn issue_certificate(
    ca: &CertifiedIssuer<'_, rcgen::KeyPair>,
    common_name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("valid subject alternative names");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().expect("a key can be generated");
    let certificate = params
        .signed_by(&key, ca)
        .expect("the CA can sign the certificate");
    (certificate.pem(), key.serialize_pem())
}

/// Arguments as owned strings, so tests can mix constants and built paths.
fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// Runs a worker and a one-task `task_publisher` with the same `auth` options and `env`,
/// checks that the worker completes the task and exits 0 after SIGINT, and returns both
/// processes for further checks.
fn assert_task_completes(url: &str, auth: &[String], env: &[(&str, &str)]) -> [Process; 2] {
    let mut worker_args = strings(&["1", "--work-time", "10ms", "-s", url]);
    worker_args.extend_from_slice(auth);
    let mut worker = Process::start_with_env("worker", &worker_args, env);
    worker.wait_for_stdout("Waiting for tasks", WAIT);

    let mut publisher_args = strings(&["--count", "1", "--interval", "0", "-s", url]);
    publisher_args.extend_from_slice(auth);
    let mut publisher = Process::start_with_env("task_publisher", &publisher_args, env);
    let status = publisher.wait_exit(WAIT);
    assert!(status.success(), "{}", publisher.transcript());
    assert!(
        publisher
            .stdout()
            .iter()
            .any(|l| l == "Published: TASK-001"),
        "{}",
        publisher.transcript()
    );

    worker.wait_for_stdout("Completed task TASK-001", WAIT);
    worker.interrupt();
    let status = worker.wait_exit(WAIT);
    assert!(status.success(), "{}", worker.transcript());
    [worker, publisher]
}

/// Starts a worker with `auth`, which the server is expected to reject, checks that it
/// exits 1 within [`REJECTION_DEADLINE`] with exactly one stderr line that names `url`
/// (credentials masked) and contains `hint`, and returns that line.
fn rejection_line(url: &str, auth: &[String], hint: &str) -> String {
    let mut args = strings(&["1", "-s", url, "--connect-timeout", CONNECT_TIMEOUT]);
    args.extend_from_slice(auth);
    let started = Instant::now();
    let mut worker = Process::start("worker", &args);
    let status = worker.wait_exit(WAIT);
    let elapsed = started.elapsed();

    assert_eq!(status.code(), Some(1), "{}", worker.transcript());
    assert!(
        elapsed < REJECTION_DEADLINE,
        "took {elapsed:?}, so it waited or retried\n{}",
        worker.transcript()
    );
    let stderr = worker.stderr();
    assert_eq!(stderr.len(), 1, "one line:\n{}", worker.transcript());
    let line = stderr[0].clone();
    assert!(line.starts_with("error: cannot connect to "), "{line}");
    let shown_url = common::redact_url(url);
    assert!(line.contains(&shown_url), "names {shown_url}: {line}");
    assert!(line.contains(hint), "contains {hint:?}: {line}");
    assert!(!line.contains("panicked"), "{line}");
    assert!(
        worker.stdout().is_empty(),
        "printed nothing on stdout\n{}",
        worker.transcript()
    );
    // Shown with `--nocapture`, so the wording can be reviewed.
    println!("{line}");
    line
}

/// With user and password, as flags or in the URL, a worker and a publisher complete a
/// task. A wrong password or none at all is one error line that points at the credentials,
/// also with `--wait-for-server`.
#[test]
fn user_and_password() {
    let server = password_server();
    let url = server.client_url();
    assert_task_completes(
        &url,
        &strings(&["--user", USER, "--password", PASSWORD]),
        &[],
    );
    let userinfo = format!("{USER}:{}", percent_encode(PASSWORD));
    assert_task_completes(&url_with_userinfo(&server, &userinfo), &[], &[]);

    let line = rejection_line(
        &url,
        &strings(&["--user", USER, "--password", WRONG_PASSWORD]),
        "check --user and --password",
    );
    assert!(line.contains("authorization violation"), "{line}");
    rejection_line(
        &url,
        &strings(&[
            "--user",
            USER,
            "--password",
            WRONG_PASSWORD,
            "--wait-for-server",
        ]),
        "check --user and --password",
    );
    rejection_line(&url, &[], "check --user and --password");

    let wrong_userinfo = format!("{USER}:{}", percent_encode(WRONG_PASSWORD));
    let wrong_url = url_with_userinfo(&server, &wrong_userinfo);
    let line = rejection_line(&wrong_url, &[], "credentials in the server URL");
    let masked_url = format!("nats://{USER}:***@127.0.0.1:{}", server.client_port());
    assert!(line.contains(&masked_url), "{line}");
}

/// A token, as a flag or in the URL, authenticates a worker and a publisher, and a wrong
/// token is one error line.
#[test]
fn token() {
    let server = token_server();
    let url = server.client_url();
    assert_task_completes(&url, &strings(&["--token", TOKEN]), &[]);
    let token_url = url_with_userinfo(&server, &percent_encode(TOKEN));
    assert_task_completes(&token_url, &[], &[]);

    let line = rejection_line(&url, &strings(&["--token", WRONG_TOKEN]), "--token");
    assert!(line.contains("authorization violation"), "{line}");
}

/// An NKey seed file authenticates. The seed of a key the server does not know is one
/// error line, and so is a file that contains no valid seed.
#[test]
fn nkey() {
    let fixtures = Fixtures::new();
    let user = KeyPair::new_user();
    let seed = user.seed().expect("a generated key pair has a seed");
    let seed_file = fixtures.write("user.nk", &format!("{seed}\n"));
    let server = nkey_server(&user.public_key());
    let url = server.client_url();
    assert_task_completes(&url, &strings(&["--nkey", &seed_file]), &[]);

    let stranger = KeyPair::new_user();
    let stranger_seed = stranger.seed().expect("a generated key pair has a seed");
    let stranger_file = fixtures.write("stranger.nk", &stranger_seed);
    let line = rejection_line(&url, &strings(&["--nkey", &stranger_file]), "--nkey");
    assert!(line.contains("authorization violation"), "{line}");

    let garbage_file = fixtures.write("garbage.nk", "SUNOTASEED\n");
    let line = rejection_line(&url, &strings(&["--nkey", &garbage_file]), "--nkey");
    assert!(!line.contains("SUNOTASEED"), "{line}");
}

/// A `.creds` file of a user signed by the trusted operator's account authenticates, and
/// its seed does not show at trace level. A `.creds` file from another operator is one
/// error line.
#[test]
fn creds_file() {
    let fixtures = Fixtures::new();
    let operator = Operator::new();
    let server = NatsServer::builder()
        .config(operator.server_config())
        .start();
    let url = server.client_url();

    let (creds, seed) = operator.new_user_creds();
    let creds_file = fixtures.write("user.creds", &creds);
    let processes = assert_task_completes(
        &url,
        &strings(&["--creds", &creds_file]),
        &[("RUST_LOG", "trace")],
    );
    for process in &processes {
        assert_absent(process, &[&seed], "creds file at trace level");
    }

    let (foreign_creds, _) = Operator::new().new_user_creds();
    let foreign_file = fixtures.write("foreign.creds", &foreign_creds);
    let line = rejection_line(&url, &strings(&["--creds", &foreign_file]), "--creds");
    assert!(line.contains("authorization violation"), "{line}");
}

/// With `verify: true`, a client certificate signed by the server's CA authenticates.
/// Trusting another CA, sending no client certificate, or one from another CA is each one
/// error line about TLS.
#[test]
fn tls_client_certificate() {
    let fixtures = Fixtures::new();
    let pki = Pki::new(&fixtures, "trusted");
    let other = Pki::new(&fixtures, "other");
    let server = NatsServer::builder().config(pki.server_config()).start();
    let url = server.client_url();

    let tls_args = |ca: &str, client: Option<&Pki>| {
        let mut args = strings(&["--tlsca", ca]);
        if let Some(client) = client {
            args.extend(strings(&[
                "--tlscert",
                &client.client_cert,
                "--tlskey",
                &client.client_key,
            ]));
        }
        args
    };
    assert_task_completes(&url, &tls_args(&pki.ca, Some(&pki)), &[]);

    // The server's certificate is signed by a CA the client does not trust. Waiting for
    // the server cannot fix that, so `--wait-for-server` fails at once too.
    let line = rejection_line(&url, &tls_args(&other.ca, Some(&pki)), "--tlsca");
    assert!(line.contains("certificate"), "{line}");
    let mut waiting = tls_args(&other.ca, Some(&pki));
    waiting.push("--wait-for-server".to_owned());
    rejection_line(&url, &waiting, "--tlsca");

    // The server requires a client certificate and gets none.
    let line = rejection_line(&url, &tls_args(&pki.ca, None), "--tlscert");
    assert!(line.contains("certificate"), "{line}");

    // The client certificate is signed by a CA the server does not trust.
    let line = rejection_line(&url, &tls_args(&pki.ca, Some(&other)), "--tlscert");
    assert!(line.contains("certificate"), "{line}");
}

/// A binary that connects, with arguments that keep its run short.
struct Connecting {
    name: &'static str,
    args: &'static [&'static str],
    /// The stdout line that a binary which runs until it is stopped prints once it is
    /// connected and subscribed, or `None` for a binary that exits by itself.
    ready: Option<&'static str>,
}

const CONNECTING: &[Connecting] = &[
    Connecting {
        name: "worker",
        args: &["1", "--work-time", "10ms"],
        ready: Some("Waiting for tasks"),
    },
    Connecting {
        name: "task_publisher",
        args: &["--count", "1", "--interval", "0"],
        ready: None,
    },
    Connecting {
        name: "publish",
        args: &["security.check", "hello"],
        ready: None,
    },
    Connecting {
        name: "comparison_demo",
        args: &["--mode", "queue"],
        ready: Some("Started (queue"),
    },
    Connecting {
        name: "scalable_processor",
        args: &["1", "10ms"],
        ready: Some("Ready for tasks"),
    },
    Connecting {
        name: "load_generator",
        args: &["--count", "1"],
        ready: None,
    },
    Connecting {
        name: "mixed_subscriptions",
        args: &[],
        ready: Some("Waiting for messages"),
    },
    Connecting {
        name: "resilient_worker",
        args: &["1", "--work-time", "10ms"],
        ready: Some("Waiting for tasks"),
    },
    Connecting {
        name: "replay_dead_letters",
        args: &[],
        ready: Some("Waiting for dead letters"),
    },
];

/// One way of passing a secret to every binary in [`CONNECTING`].
struct LeakCase {
    label: String,
    /// Connection arguments, `--server` included.
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// Whether the server accepts these credentials.
    accepted: bool,
    /// `RUST_LOG=trace` rather than the default filter.
    trace: bool,
}

/// Returns the forms in which `secret` could show up in output: as given, with quotes and
/// backslashes escaped as `{:?}` and JSON print them, and percent-encoded as in a URL.
fn printed_forms(secret: &str) -> Vec<String> {
    let mut forms = vec![
        secret.to_owned(),
        secret.escape_debug().to_string(),
        percent_encode(secret),
    ];
    forms.dedup();
    forms
}

/// Checks that no stdout or stderr line of `process` contains any form of `secrets`.
fn assert_absent(process: &Process, secrets: &[&str], case: &str) {
    let lines = process.stdout().into_iter().chain(process.stderr());
    for line in lines {
        for secret in secrets {
            for form in printed_forms(secret) {
                assert!(
                    !line.contains(&form),
                    "{case}: a line shows the secret as {form:?}:\n{line}\n{}",
                    process.transcript()
                );
            }
        }
    }
}

/// Runs every binary in [`CONNECTING`] as `case` describes, checks that each one connects or
/// fails as expected, and that none prints any form of `secrets`.
fn assert_no_leak(case: &LeakCase, secrets: &[&str]) {
    let mut env: Vec<(&str, &str)> = case
        .env
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    if case.trace {
        env.push(("RUST_LOG", "trace"));
    }

    // All binaries run at once, which keeps the many cases within a few seconds each.
    let mut running: Vec<(&Connecting, Process)> = CONNECTING
        .iter()
        .map(|binary| {
            let mut args = strings(binary.args);
            args.extend(strings(&["--connect-timeout", CONNECT_TIMEOUT]));
            args.extend_from_slice(&case.args);
            (binary, Process::start_with_env(binary.name, &args, &env))
        })
        .collect();

    for (binary, process) in &mut running {
        let label = format!("{} with {}", binary.name, case.label);
        if case.accepted {
            if let Some(ready) = binary.ready {
                process.wait_for_stdout(ready, WAIT);
                process.interrupt();
            }
            let status = process.wait_exit(WAIT);
            assert!(status.success(), "{label}\n{}", process.transcript());
        } else {
            let status = process.wait_exit(WAIT);
            assert_eq!(status.code(), Some(1), "{label}\n{}", process.transcript());
            if !case.trace {
                let stderr = process.stderr();
                assert_eq!(
                    stderr.len(),
                    1,
                    "{label}: one line\n{}",
                    process.transcript()
                );
                assert!(
                    stderr[0].starts_with("error: cannot connect to "),
                    "{label}: {}",
                    stderr[0]
                );
            }
        }
        assert_absent(process, secrets, &label);
    }
}

/// Returns the cases that pass one secret by flag, by environment variable and inside the
/// URL at trace level, plus by flag at the default level.
fn leak_cases(
    url: &str,
    flag_args: Vec<String>,
    env: Vec<(&'static str, String)>,
    url_with_secret: String,
    accepted: bool,
) -> Vec<LeakCase> {
    let outcome = if accepted { "right" } else { "wrong" };
    let server_args = strings(&["-s", url]);
    let with_server = |extra: &[String]| {
        let mut args = server_args.clone();
        args.extend_from_slice(extra);
        args
    };
    vec![
        LeakCase {
            label: format!("the {outcome} secret as a flag, at trace level"),
            args: with_server(&flag_args),
            env: Vec::new(),
            accepted,
            trace: true,
        },
        LeakCase {
            label: format!("the {outcome} secret as a flag, at the default level"),
            args: with_server(&flag_args),
            env: Vec::new(),
            accepted,
            trace: false,
        },
        LeakCase {
            label: format!("the {outcome} secret in the environment, at trace level"),
            args: server_args.clone(),
            env,
            accepted,
            trace: true,
        },
        LeakCase {
            label: format!("the {outcome} secret in the URL, at trace level"),
            args: strings(&["-s", &url_with_secret]),
            env: Vec::new(),
            accepted,
            trace: true,
        },
    ]
}

/// No binary prints the password, right or wrong, however it was passed.
#[test]
fn password_never_printed() {
    let server = password_server();
    let url = server.client_url();
    for (password, accepted) in [(PASSWORD, true), (WRONG_PASSWORD, false)] {
        let cases = leak_cases(
            &url,
            strings(&["--user", USER, "--password", password]),
            vec![
                ("NATS_USER", USER.to_owned()),
                ("NATS_PASSWORD", password.to_owned()),
            ],
            url_with_userinfo(&server, &format!("{USER}:{}", percent_encode(password))),
            accepted,
        );
        for case in &cases {
            assert_no_leak(case, &[PASSWORD, WRONG_PASSWORD]);
        }
    }
}

/// No binary prints the token, right or wrong, however it was passed.
#[test]
fn token_never_printed() {
    let server = token_server();
    let url = server.client_url();
    for (token, accepted) in [(TOKEN, true), (WRONG_TOKEN, false)] {
        let cases = leak_cases(
            &url,
            strings(&["--token", token]),
            vec![("NATS_TOKEN", token.to_owned())],
            url_with_userinfo(&server, &percent_encode(token)),
            accepted,
        );
        for case in &cases {
            assert_no_leak(case, &[TOKEN, WRONG_TOKEN]);
        }
    }
}

/// No binary prints the NKey seed from its file, whether or not the server accepts the
/// key, with the file named by flag or by environment variable.
#[test]
fn nkey_seed_never_printed() {
    let fixtures = Fixtures::new();
    let user = KeyPair::new_user();
    let seed = user.seed().expect("a generated key pair has a seed");
    let stranger = KeyPair::new_user();
    let stranger_seed = stranger.seed().expect("a generated key pair has a seed");
    let server = nkey_server(&user.public_key());
    let url = server.client_url();
    let server_args = strings(&["-s", &url]);

    let secrets = [seed.as_str(), stranger_seed.as_str()];

    for (file_seed, accepted) in [(&seed, true), (&stranger_seed, false)] {
        let file = fixtures.write(&format!("{accepted}.nk"), file_seed);
        let mut flag_args = server_args.clone();
        flag_args.extend(strings(&["--nkey", &file]));
        for trace in [true, false] {
            let case = LeakCase {
                label: format!("the seed file as a flag (accepted: {accepted}, trace: {trace})"),
                args: flag_args.clone(),
                env: Vec::new(),
                accepted,
                trace,
            };
            assert_no_leak(&case, &secrets);
        }
        let case = LeakCase {
            label: format!("the seed file in NATS_NKEY (accepted: {accepted}, trace: true)"),
            args: server_args.clone(),
            env: vec![("NATS_NKEY", file)],
            accepted,
            trace: true,
        };
        assert_no_leak(&case, &secrets);
    }
}

/// `--help` shows no secret from `NATS_URL`, `NATS_PASSWORD` or `NATS_TOKEN`, and a usage
/// error does not echo a password given on the command line.
#[test]
fn help_and_usage_errors_hide_secrets() {
    let url = format!("nats://{USER}:{}@127.0.0.1:4222", percent_encode(PASSWORD));
    let env = [
        ("NATS_URL", url.as_str()),
        ("NATS_USER", USER),
        ("NATS_PASSWORD", PASSWORD),
        ("NATS_TOKEN", TOKEN),
    ];
    for binary in CONNECTING {
        let mut help = Process::start_with_env(binary.name, ["--help"], &env);
        let status = help.wait_exit(WAIT);
        assert!(status.success(), "{}", help.transcript());
        assert!(
            help.stdout().iter().any(|l| l.contains("NATS_PASSWORD")),
            "{} --help names the variable\n{}",
            binary.name,
            help.transcript()
        );
        assert_absent(
            &help,
            &[PASSWORD, TOKEN],
            &format!("{} --help", binary.name),
        );
    }

    // `--password` without `--user` is a usage error that clap reports before connecting.
    let mut usage = Process::start("worker", ["--password", PASSWORD]);
    let status = usage.wait_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{}", usage.transcript());
    assert_absent(&usage, &[PASSWORD], "worker with --password alone");
}
