//! Queue groups across a three-node cluster: members on different servers share one
//! group, `queue_monitor` adds up the servers' counts, and members of a stopped server
//! move to the others.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::{CLUSTER_SIZE, NatsCluster, Process, WAIT, node_name, wait_until};
use serde_json::Value;

const SUBJECT: &str = "tasks.process";
const QUEUE: &str = "processors";
const WORKERS_PER_NODE: usize = 2;

/// Starts a Step 1 worker named `name` with `servers` as `-s`, and waits until it has
/// joined the group.
fn start_worker(id: &str, name: &str, servers: &str) -> Process {
    let worker = Process::start(
        "worker",
        [id, "--name", name, "--work-time", "10ms", "-s", servers],
    );
    worker.wait_for_stdout("Waiting for tasks", WAIT);
    worker
}

/// Returns the connection name of worker `index` of [`start_workers`]: `worker-a1`, `worker-a2`,
/// `worker-b1`, … for the node it was meant for.
fn worker_name(index: usize) -> String {
    let letter = node_name(index / WORKERS_PER_NODE).replace("node-", "");
    format!("worker-{letter}{}", index % WORKERS_PER_NODE + 1)
}

/// Starts two workers per node, named by [`worker_name`], each with `servers_for(node)`
/// as its server list.
fn start_workers(servers_for: impl Fn(usize) -> String) -> Vec<Process> {
    (0..CLUSTER_SIZE * WORKERS_PER_NODE)
        .map(|index| {
            let node = index / WORKERS_PER_NODE;
            start_worker(
                &(index + 1).to_string(),
                &worker_name(index),
                &servers_for(node),
            )
        })
        .collect()
}

/// Publishes `count` tasks named `PREFIX-001`… through node `node` and waits until the
/// generator has flushed them and exited.
fn publish(cluster: &NatsCluster, node: usize, prefix: &str, count: usize) {
    let count = count.to_string();
    let mut generator = Process::start(
        "load_generator",
        [
            "--count",
            &count,
            "--subject",
            SUBJECT,
            "--prefix",
            prefix,
            "-s",
            &cluster.client_url(node),
        ],
    );
    assert!(
        generator.wait_exit(WAIT).success(),
        "{}",
        generator.transcript()
    );
}

/// Returns the task ids a worker has completed, in order.
fn completed(worker: &Process) -> Vec<String> {
    worker
        .stdout()
        .iter()
        .filter_map(|line| {
            line.split_once("Completed task ")
                .map(|(_, id)| id.to_owned())
        })
        .collect()
}

/// Counts how often each task starting with `prefix` was completed, across all workers.
fn completions(workers: &[Process], prefix: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for worker in workers {
        for id in completed(worker) {
            if id.starts_with(prefix) {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Waits until the workers have completed `count` tasks starting with `prefix`, then a
/// little longer, so that a task completed twice would show.
fn wait_for_completions(workers: &[Process], prefix: &str, count: usize) {
    wait_until(
        WAIT,
        || completions(workers, prefix).values().sum::<usize>() >= count,
        || {
            let transcripts: Vec<String> = workers.iter().map(Process::transcript).collect();
            format!(
                "{count} {prefix} tasks were not all completed\n{}",
                transcripts.join("\n")
            )
        },
    );
    std::thread::sleep(Duration::from_millis(200));
}

/// Checks that every task `PREFIX-001` to `PREFIX-<count>` was completed exactly once.
fn assert_each_completed_once(workers: &[Process], prefix: &str, count: usize) {
    let counts = completions(workers, prefix);
    let expected: Vec<String> = (1..=count).map(|n| format!("{prefix}-{n:03}")).collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let repeated: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();

    assert!(missing.is_empty(), "never completed: {missing:?}");
    assert!(
        repeated.is_empty(),
        "completed more than once: {repeated:?}"
    );
    assert_eq!(counts.len(), count, "unexpected task ids: {counts:?}");
}

/// Waits until node `node` has a route carrying the group's subscription from each of
/// `peers` other nodes: until then it would not forward tasks to members there.
fn wait_for_route_interest(cluster: &NatsCluster, node: usize, peers: usize) {
    wait_until(
        WAIT,
        || cluster.routes_with_queue_interest(node, SUBJECT, QUEUE) == peers,
        || {
            format!(
                "{} did not learn of the members on {peers} other node(s): {:#}",
                node_name(node),
                cluster.node(node).monitor_json("/routez?subs=detail")
            )
        },
    );
}

/// Returns the connection names of the group's members connected to node `node`.
fn local_members(cluster: &NatsCluster, node: usize) -> Vec<String> {
    let connz = cluster.node(node).monitor_json("/connz?subs=detail");
    let connections = connz["connections"].as_array().cloned().unwrap_or_default();
    connections
        .iter()
        .filter(|connection| {
            connection["subscriptions_list_detail"]
                .as_array()
                .is_some_and(|subs| {
                    subs.iter()
                        .any(|sub| sub["subject"] == SUBJECT && sub["qgroup"] == QUEUE)
                })
        })
        .map(|connection| connection["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Returns the client port in a worker's `connected server=127.0.0.1:PORT ...` or `reconnected
/// server=...` log line.
fn server_port(line: &str) -> u16 {
    line.split_once("server=")
        .and_then(|(_, rest)| rest.split_once(':'))
        .map(|(_, rest)| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no server port in {line:?}"))
}

/// Returns the node whose client port is `port`.
fn node_with_port(cluster: &NatsCluster, port: u16) -> usize {
    (0..CLUSTER_SIZE)
        .find(|node| cluster.node(*node).client_port() == port)
        .unwrap_or_else(|| panic!("no node listens for clients on port {port}"))
}

/// Runs `queue_monitor --once --json` on every node's monitoring URL.
fn monitor_report(cluster: &NatsCluster) -> Value {
    let mut monitor = Process::start(
        "queue_monitor",
        ["--once", "--json", "--monitor-url", &cluster.monitor_urls()],
    );
    assert!(
        monitor.wait_exit(WAIT).success(),
        "{}",
        monitor.transcript()
    );
    let stdout = monitor.stdout();
    assert_eq!(stdout.len(), 1, "one JSON object\n{}", monitor.transcript());
    serde_json::from_str(&stdout[0])
        .unwrap_or_else(|error| panic!("--json output: {error}\n{}", monitor.transcript()))
}

fn processors_group(report: &Value) -> Option<&Value> {
    report["queue_groups"]
        .as_array()?
        .iter()
        .find(|group| group["subject"] == SUBJECT && group["queue"] == QUEUE)
}

fn stop_all(workers: &mut [Process]) {
    for worker in workers.iter() {
        worker.interrupt();
    }
    for worker in workers.iter_mut() {
        let status = worker.wait_exit(WAIT);
        assert!(status.success(), "{}", worker.transcript());
    }
}

/// Six members on three servers share one group: 300 tasks published on one server are
/// each completed exactly once, and every member gets some.
#[test]
fn group_spans_three_servers() {
    let cluster = NatsCluster::start();
    let mut workers = start_workers(|node| cluster.client_url(node));
    wait_for_route_interest(&cluster, 0, CLUSTER_SIZE - 1);

    publish(&cluster, 0, "TASK", 300);
    wait_for_completions(&workers, "TASK", 300);
    stop_all(&mut workers);

    assert_each_completed_once(&workers, "TASK", 300);
    for worker in &workers {
        assert!(
            !completed(worker).is_empty(),
            "every member, local or remote to the publisher, gets tasks\n{}",
            worker.transcript()
        );
    }
}

/// `queue_monitor` given all three monitoring URLs lists the six members, each under its
/// own server, and the servers' delivered counts add up to the tasks published.
#[test]
fn monitor_adds_up_servers() {
    let cluster = NatsCluster::start();
    let mut workers = start_workers(|node| cluster.client_url(node));
    wait_for_route_interest(&cluster, 1, CLUSTER_SIZE - 1);

    publish(&cluster, 1, "TASK", 90);
    // Each server counts only what it wrote to its own members' connections, and those
    // counts settle a moment after the publisher's flush.
    let deadline = Instant::now() + WAIT;
    let report = loop {
        let report = monitor_report(&cluster);
        if processors_group(&report).is_some_and(|group| group["delivered"] == 90) {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "the delivered counts did not add up to 90 within {WAIT:?}: {report:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let servers = report["servers"].as_array().expect("servers is an array");
    assert_eq!(servers.len(), CLUSTER_SIZE, "{report:#}");
    for server in servers {
        assert!(server["error"].is_null(), "{report:#}");
    }

    let group = processors_group(&report).expect("the processors group is listed");
    assert_eq!(group["member_count"], 6, "{report:#}");
    let members = group["members"].as_array().expect("members is an array");
    let delivered: u64 = members
        .iter()
        .map(|member| member["delivered"].as_u64().expect("delivered is a count"))
        .sum();
    assert_eq!(delivered, 90, "{report:#}");
    for node in 0..CLUSTER_SIZE {
        let on_node: Vec<&str> = members
            .iter()
            .filter(|member| member["server"] == cluster.monitor_url(node).as_str())
            .map(|member| member["name"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            on_node,
            [worker_name(2 * node), worker_name(2 * node + 1)],
            "members listed under {}: {report:#}",
            node_name(node)
        );
    }
    let shares = group["servers"].as_array().expect("servers is an array");
    assert_eq!(shares.len(), CLUSTER_SIZE, "{report:#}");
    let per_server: u64 = shares
        .iter()
        .map(|share| share["delivered"].as_u64().expect("delivered is a count"))
        .sum();
    assert_eq!(per_server, 90, "{report:#}");

    stop_all(&mut workers);
}

/// Members of a stopped server reconnect to the others, name the server they moved to,
/// and a batch published after the move is completed exactly once; the restarted server
/// rejoins and forwards tasks to the members that moved away.
#[test]
fn stopped_server_members_move() {
    let mut cluster = NatsCluster::start();
    let mut workers = start_workers(|node| cluster.client_urls_from(node));

    // async-nats shuffles the server list, so a worker may have connected to any node:
    // each worker's `connected` line says which.
    let connected_to: Vec<usize> = workers
        .iter()
        .map(|worker| {
            node_with_port(
                &cluster,
                server_port(&worker.wait_for_stderr("connected server=", WAIT)),
            )
        })
        .collect();
    let victim = (0..CLUSTER_SIZE)
        .max_by_key(|node| connected_to.iter().filter(|n| *n == node).count())
        .expect("the cluster has nodes");
    let publisher = (victim + 1) % CLUSTER_SIZE;
    let moving: Vec<usize> = (0..workers.len())
        .filter(|worker| connected_to[*worker] == victim)
        .collect();
    assert!(
        moving.len() >= 2,
        "six workers on three nodes put two on one"
    );

    // A first batch while all three nodes run; the workers are idle again afterwards.
    wait_until(
        WAIT,
        || {
            (0..CLUSTER_SIZE)
                .map(|node| local_members(&cluster, node).len())
                .sum::<usize>()
                == 6
        },
        || "the six workers did not all subscribe".to_owned(),
    );
    let peers_with_members = (0..CLUSTER_SIZE)
        .filter(|node| *node != publisher && connected_to.contains(node))
        .count();
    wait_for_route_interest(&cluster, publisher, peers_with_members);
    publish(&cluster, publisher, "BEFORE", 60);
    wait_for_completions(&workers, "BEFORE", 60);

    cluster.stop(victim);
    for &index in &moving {
        let line = workers[index].wait_for_stderr("reconnected server=", WAIT);
        let node = node_with_port(&cluster, server_port(&line));
        assert_ne!(node, victim, "{line}");
        // The server named in the log line is the one that has the worker's connection.
        let name = worker_name(index);
        wait_until(
            WAIT,
            || local_members(&cluster, node).contains(&name),
            || {
                format!(
                    "{} does not list {name}, which logged {line:?}",
                    node_name(node)
                )
            },
        );
    }

    for (index, worker) in workers.iter().enumerate() {
        if !moving.contains(&index) {
            assert!(
                !worker
                    .stderr()
                    .iter()
                    .any(|line| line.contains("disconnected")),
                "a worker on a running server keeps its connection\n{}",
                worker.transcript()
            );
        }
    }

    let survivors: Vec<usize> = (0..CLUSTER_SIZE).filter(|node| *node != victim).collect();
    wait_until(
        WAIT,
        || {
            survivors
                .iter()
                .map(|node| local_members(&cluster, *node).len())
                .sum::<usize>()
                == 6
        },
        || "the moved workers did not subscribe again on the other servers".to_owned(),
    );
    let other = survivors
        .iter()
        .copied()
        .find(|node| *node != publisher)
        .expect("two nodes survive");
    if !local_members(&cluster, other).is_empty() {
        wait_for_route_interest(&cluster, publisher, 1);
    }
    publish(&cluster, publisher, "AFTER", 120);
    wait_for_completions(&workers, "AFTER", 120);

    // Restarted, the node has a route to both others again and, with no members of its
    // own, forwards everything it is given to them.
    cluster.restart(victim);
    let nodes_with_members = survivors
        .iter()
        .filter(|node| !local_members(&cluster, **node).is_empty())
        .count();
    wait_for_route_interest(&cluster, victim, nodes_with_members);
    publish(&cluster, victim, "RESTARTED", 60);
    wait_for_completions(&workers, "RESTARTED", 60);
    stop_all(&mut workers);

    assert_each_completed_once(&workers, "BEFORE", 60);
    assert_each_completed_once(&workers, "AFTER", 120);
    assert_each_completed_once(&workers, "RESTARTED", 60);
    for &index in &moving {
        let after_move = completed(&workers[index])
            .iter()
            .filter(|id| id.starts_with("AFTER"))
            .count();
        assert!(
            after_move > 0,
            "a moved worker takes part again\n{}",
            workers[index].transcript()
        );
    }
}
