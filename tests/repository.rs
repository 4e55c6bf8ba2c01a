//! Checks of the repository's own files: the compose file and the scripts.

use std::path::PathBuf;
use std::process::Command;

use harness::{NatsServer, unused_port};

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Every port the compose file publishes is bound to 127.0.0.1, so the unauthenticated
/// server is not reachable from other machines.
#[test]
fn compose_ports_are_loopback_only() {
    let text = std::fs::read_to_string(repository_root().join("docker-compose.yml"))
        .expect("docker-compose.yml is readable");

    let mut in_ports = false;
    let mut mappings = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if trimmed == "ports:" {
            in_ports = true;
            continue;
        }
        if in_ports {
            match trimmed.strip_prefix("- ") {
                Some(mapping) => mappings.push(mapping.trim_matches('"').to_owned()),
                None => in_ports = false,
            }
        }
    }

    assert!(!mappings.is_empty(), "the compose file publishes ports");
    for mapping in &mappings {
        assert!(
            mapping.starts_with("127.0.0.1:"),
            "{mapping} is not loopback only"
        );
    }
}

/// `scripts/nats-server.sh status` shows a URL's password as `***`, whether or not a
/// server answers there.
#[test]
fn server_script_masks_credentials() {
    let server = NatsServer::start();
    let secret = "s3cret-in-url";
    let answering = format!("nats://alice:{secret}@127.0.0.1:{}", server.client_port());
    let silent = format!("nats://alice:{secret}@127.0.0.1:{}", unused_port());

    for url in [answering, silent] {
        let output = Command::new("bash")
            .arg(repository_root().join("scripts/nats-server.sh"))
            .arg("status")
            .env("NATS_URL", &url)
            .output()
            .expect("bash runs the script");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);

        assert!(!stdout.contains(secret), "{stdout}");
        assert!(!stderr.contains(secret), "{stderr}");
        assert!(
            stdout.contains("alice:***@") || stderr.contains("alice:***@"),
            "the URL is shown, masked:\n{stdout}\n{stderr}"
        );
    }
}
