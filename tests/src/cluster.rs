//! A NATS cluster with JetStream on loopback ports: `n` nats-server processes, each with its
//! own store directory, routed to each other. Nodes can be killed (SIGKILL) and restarted on
//! the same ports and directories, as an operator's machine failing and coming back would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nats::{free_port, jetstream_binary, PortReservation};

/// A running cluster; every node is killed on drop. Nodes do not advertise each other to
/// clients, so a client knows only the nodes it was given: one given a single node is cut off
/// while that node is down (tests use this to cut a daemon off NATS).
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    conf: PathBuf,
    child: Option<Child>,
    /// The node's ports, held while it is not running (and until it is ready).
    reserved: Vec<PortReservation>,
}

/// A free port, held (where that works) until the node that uses it is ready: ports chosen
/// and then let go could go to a parallel test's server, or twice to this cluster.
fn pick_port() -> anyhow::Result<(u16, Option<PortReservation>)> {
    match PortReservation::hold(0) {
        Some(held) => Ok((held.port, Some(held))),
        None => Ok((free_port()?, None)),
    }
}

impl NatsCluster {
    /// Starts `size` routed nodes and waits until JetStream has a meta leader.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut ports = Vec::new();
        for _ in 0..size {
            let (client, held_client) = pick_port()?;
            let (cluster, held_cluster) = pick_port()?;
            let held: Vec<PortReservation> = held_client.into_iter().chain(held_cluster).collect();
            ports.push((client, cluster, held));
        }
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("nats-route://127.0.0.1:{cluster}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client_port, cluster_port, reserved)) in ports.into_iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client_port}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{\n  name: lanyard\n  listen: 127.0.0.1:{cluster_port}\n  \
                     no_advertise: true\n  routes: [{}]\n}}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )?;
            nodes.push(Node {
                name,
                client_port,
                cluster_port,
                conf,
                child: None,
                reserved,
            });
        }
        let mut cluster = Self { nodes, _dir: dir };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_for_jetstream().await?;
        for node in &mut cluster.nodes {
            node.reserved.clear();
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let child = Command::new(jetstream_binary())
            .arg("-c")
            .arg(&node.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start nats-server {}: {e}", node.name))?;
        node.child = Some(child);
        Ok(())
    }

    /// Every node's client URL, comma-separated (the form `[nats] url` takes).
    pub fn url(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's client URL (what a test client connects with).
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.node_url(i)).collect()
    }

    /// Node `i`'s client URL.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Kills node `i` with SIGKILL. Its ports stay its own until it restarts.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if node.reserved.is_empty() {
            node.reserved = [node.client_port, node.cluster_port]
                .into_iter()
                .filter_map(PortReservation::hold)
                .collect();
        }
    }

    /// Starts node `i` again, on its ports and store directory.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_for_jetstream().await?;
        self.nodes[i].reserved.clear();
        Ok(())
    }

    /// Waits until each of `streams` has a leader that answers (after a node died with
    /// some of them, their replicas elect new ones: seconds, more on a loaded machine).
    pub async fn wait_for_stream_leaders(&self, streams: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + crate::PATIENCE;
        let live: Vec<String> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .map(|i| self.node_url(i))
            .collect();
        let client = async_nats::connect(live).await?;
        for stream in streams {
            loop {
                let info = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.request(format!("$JS.API.STREAM.INFO.{stream}"), "".into()),
                )
                .await;
                let led = matches!(&info, Ok(Ok(reply)) if serde_json::from_slice::<serde_json::Value>(&reply.payload)
                    .is_ok_and(|info| info["cluster"]["leader"].is_string()));
                if led {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "{stream} has no leader");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Waits until every running node answers JetStream's account info (a meta leader is
    /// elected and the node has caught up).
    async fn wait_for_jetstream(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + crate::PATIENCE;
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            loop {
                let ready = async {
                    let client = async_nats::connect(self.node_url(i)).await.ok()?;
                    let reply = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.request("$JS.API.INFO", "".into()),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
                    info.get("error").is_none().then_some(())
                };
                if ready.await.is_some() {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "JetStream on {} did not become ready",
                    node.name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
