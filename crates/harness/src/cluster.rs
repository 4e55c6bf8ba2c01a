//! A three-node `nats-server` cluster on loopback, for tests of queue groups that span
//! servers.
//!
//! Each node is a [`NatsServer`] with random client and monitoring ports. The cluster ports,
//! on which the nodes open routes to each other, are chosen before the first node starts,
//! because every node is given the other two as `--routes` and keeps them across a restart.
//! A node asked for cluster port `-1` would take a free one, but the others would not know
//! it in advance, and a restarted node would come back on another port.

use std::collections::BTreeSet;
use std::net::TcpListener;

use crate::{NatsServer, WAIT, wait_until};

/// Number of nodes: the smallest cluster in which a stopped node leaves two that still
/// route to each other.
pub const CLUSTER_SIZE: usize = 3;

/// Three `nats-server` processes joined by routes into one cluster; all killed when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    /// Whether each node runs, so that route checks skip a stopped one.
    running: Vec<bool>,
}

impl NatsCluster {
    /// Starts the three nodes and waits until each has a route to both others.
    ///
    /// The nodes are named `node-a`, `node-b` and `node-c` (`--server_name`), which clients
    /// see in the server's INFO and the binaries show in their `connected` log line.
    ///
    /// # Panics
    ///
    /// When a node does not start, or the routes are not all up within [`WAIT`].
    pub fn start() -> Self {
        let cluster_ports = free_ports(CLUSTER_SIZE);
        // A name of its own per cluster, so that a node of another test's cluster that
        // happens to reach one of these ports is rejected instead of joining.
        let cluster_name = format!("queue-groups-test-{}", cluster_ports[0]);
        let route_url = |port: u16| format!("nats://127.0.0.1:{port}");

        let nodes = (0..CLUSTER_SIZE)
            .map(|index| {
                let peers: Vec<String> = cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|(peer, _)| *peer != index)
                    .map(|(_, port)| route_url(*port))
                    .collect();
                NatsServer::builder()
                    .arg("--server_name")
                    .arg(node_name(index))
                    .arg("--cluster_name")
                    .arg(&cluster_name)
                    .arg("--cluster")
                    .arg(route_url(cluster_ports[index]))
                    .arg("--routes")
                    .arg(peers.join(","))
                    .start()
            })
            .collect();

        let cluster = Self {
            nodes,
            running: vec![true; CLUSTER_SIZE],
        };
        cluster.wait_for_routes();
        cluster
    }

    /// Node `index` (0, 1 or 2), for its URLs, its monitoring endpoints and its log.
    pub fn node(&self, index: usize) -> &NatsServer {
        &self.nodes[index]
    }

    /// Returns the client URL of node `index`, such as `nats://127.0.0.1:40123`.
    pub fn client_url(&self, index: usize) -> String {
        self.nodes[index].client_url()
    }

    /// Returns the HTTP monitoring URL of node `index`.
    pub fn monitor_url(&self, index: usize) -> String {
        self.nodes[index].monitor_url()
    }

    /// Returns every node's client URL, joined with commas as `--server` takes them, starting with
    /// node `first`.
    ///
    /// async-nats shuffles the list before it connects, so a client given this list may
    /// connect to any of the nodes, not necessarily `first`.
    pub fn client_urls_from(&self, first: usize) -> String {
        (0..CLUSTER_SIZE)
            .map(|offset| self.client_url((first + offset) % CLUSTER_SIZE))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Returns every node's monitoring URL, joined with commas as `queue_monitor --monitor-url`
    /// takes them.
    pub fn monitor_urls(&self) -> String {
        (0..CLUSTER_SIZE)
            .map(|index| self.monitor_url(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `index` at once, as a crash would. The other two keep their route to
    /// each other and keep trying the stopped node's cluster port.
    pub fn stop(&mut self, index: usize) {
        self.nodes[index].stop();
        self.running[index] = false;
    }

    /// Starts the stopped node `index` again on the same client, monitoring and cluster
    /// ports, and waits until the routes between all running nodes are back.
    pub fn restart(&mut self, index: usize) {
        self.nodes[index].restart();
        self.running[index] = true;
        self.wait_for_routes();
    }

    /// Waits until every running node has a route to every other running node.
    ///
    /// Two nodes that dial each other at the same moment briefly hold two routes, so the
    /// check compares the server ids at the far end of the routes, not their number.
    ///
    /// # Panics
    ///
    /// When that does not happen within [`WAIT`], with each node's `/routez` and log.
    pub fn wait_for_routes(&self) {
        let running: Vec<usize> = (0..CLUSTER_SIZE).filter(|i| self.running[*i]).collect();
        // A restarted node has a new server id, so the ids are read each time.
        let ids: Vec<(usize, String)> = running
            .iter()
            .map(|&index| (index, self.server_id(index)))
            .collect();

        wait_until(
            WAIT,
            || {
                ids.iter().all(|(index, id)| {
                    let expected: BTreeSet<&str> = ids
                        .iter()
                        .filter(|(_, other)| other != id)
                        .map(|(_, other)| other.as_str())
                        .collect();
                    let routed = self.route_peer_ids(*index);
                    expected
                        .iter()
                        .all(|peer| routed.iter().any(|routed_id| routed_id == peer))
                })
            },
            || self.describe_routes(&running),
        );
    }

    /// Counts how many of node `index`'s routes carry a subscription to `subject` in queue group
    /// `queue`, which means a member of the group is connected to the node at the other end.
    ///
    /// A node learns of a remote member only through its route, a moment after the member
    /// subscribed. Until then it does not forward messages to that member's node. A test
    /// that publishes on one node and expects members on the others to get a share waits
    /// for this first.
    pub fn routes_with_queue_interest(&self, index: usize, subject: &str, queue: &str) -> usize {
        let routez = self.nodes[index].monitor_json("/routez?subs=detail");
        routez["routes"]
            .as_array()
            .map(|routes| {
                routes
                    .iter()
                    .filter(|route| {
                        route["subscriptions_list_detail"]
                            .as_array()
                            .is_some_and(|subs| {
                                subs.iter()
                                    .any(|sub| sub["subject"] == subject && sub["qgroup"] == queue)
                            })
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    fn server_id(&self, index: usize) -> String {
        let varz = self.nodes[index].monitor_json("/varz");
        varz["server_id"]
            .as_str()
            .unwrap_or_else(|| panic!("/varz of {} has no server_id: {varz:#}", node_name(index)))
            .to_owned()
    }

    /// Returns the server ids at the far end of node `index`'s routes.
    fn route_peer_ids(&self, index: usize) -> Vec<String> {
        let routez = self.nodes[index].monitor_json("/routez");
        routez["routes"]
            .as_array()
            .map(|routes| {
                routes
                    .iter()
                    .filter_map(|route| route["remote_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn describe_routes(&self, running: &[usize]) -> String {
        let mut text = String::from("the cluster's routes did not all come up\n");
        for &index in running {
            let routez = self.nodes[index].monitor_json("/routez");
            text.push_str(&format!(
                "--- {} /routez ---\n{routez:#}\n--- {} log ---\n{}\n",
                node_name(index),
                node_name(index),
                self.nodes[index].log()
            ));
        }
        text
    }
}

/// Returns the `--server_name` of node `index`: `node-a`, `node-b`, `node-c`.
pub fn node_name(index: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(index).expect("a node index is small"));
    format!("node-{letter}")
}

/// Returns `count` different loopback ports that nothing listened on a moment ago.
///
/// All listeners are held until the last port is chosen, so that the kernel cannot hand
/// out the same port twice. Another process could still take one before the node that
/// needs it starts, which is unlikely enough on a test machine.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)).expect("a loopback port can be bound"))
        .collect();
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
                .port()
        })
        .collect()
}
