//! A real three-node nats-server cluster with JetStream on loopback, for tests of what Quiver
//! keeps when one node dies (`nats.replicas`): each node its own process, store directory,
//! client, monitoring and route ports; killed (SIGKILL) on drop.
//!
//! Client and monitoring ports are chosen by nats-server (`-1`) and read from its ports file,
//! as in [`crate::nats`]. Route ports cannot be: a JetStream cluster will not start without
//! routes configured, and each node must know the others' before any is up. They are found
//! free here and released just before the nodes start; a node that then finds its port taken
//! exits at start, and the whole cluster is started again on new ports.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::WAIT;

/// Nodes in the cluster.
pub const NODES: usize = 3;

pub struct NatsNode {
    child: Option<Child>,
    /// Its `server_name`, as JetStream names a stream's leader and peers.
    pub name: String,
    pub port: u16,
    pub monitor_port: u16,
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, as a crashed machine would leave it: no goodbye to its routes or clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn monitoring(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/{path}", self.monitor_port);
        Ok(reqwest::get(url).await?.json().await?)
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Three nodes, routed to each other, with JetStream; returns once every node sees a
    /// JetStream meta leader and both its peers current.
    pub async fn start() -> Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    async fn try_start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let routes = free_ports(NODES)?;
        let route_list = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (i, route_port) in routes.iter().enumerate() {
            let name = format!("n{i}");
            let home = dir.path().join(&name);
            let ports_dir = home.join("ports");
            std::fs::create_dir_all(&ports_dir)?;
            let conf = home.join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\n\
                     listen: \"127.0.0.1:-1\"\n\
                     http: \"127.0.0.1:-1\"\n\
                     ports_file_dir: {ports:?}\n\
                     jetstream {{ store_dir: {store:?} }}\n\
                     cluster {{\n  name: quiver_test\n  listen: \"127.0.0.1:{route_port}\"\n  \
                     routes: [{route_list}]\n}}\n",
                    ports = ports_dir.display().to_string(),
                    store = home.join("js").display().to_string(),
                ),
            )?;
            nodes.push(spawn(&name, &conf, &ports_dir).await?);
        }
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_formed().await?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated: what `nats.url` takes.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node called `name` (a `server_name`, as a stream's leader is reported).
    pub fn node_mut(&mut self, name: &str) -> Result<&mut NatsNode> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .with_context(|| format!("no node called {name}"))
    }

    /// Every node knows a meta leader of a three-node cluster, and that leader sees both its
    /// followers current (a follower does not track the others: only the leader's view says).
    async fn wait_formed(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut views = Vec::new();
            for node in &self.nodes {
                views.push((node, node.monitoring("jsz").await.ok()));
            }
            let leaders: Vec<&str> = views
                .iter()
                .filter_map(|(_, jsz)| {
                    let meta = &jsz.as_ref()?["meta_cluster"];
                    (meta["cluster_size"].as_u64() == Some(NODES as u64))
                        .then(|| meta["leader"].as_str())
                        .flatten()
                })
                .collect();
            let agreed = leaders.len() == NODES && leaders.iter().all(|l| *l == leaders[0]);
            let current = agreed
                && views.iter().any(|(node, jsz)| {
                    node.name == leaders[0]
                        && jsz.as_ref().is_some_and(|jsz| {
                            jsz["meta_cluster"]["replicas"]
                                .as_array()
                                .map_or(0, |peers| {
                                    peers
                                        .iter()
                                        .filter(|p| p["current"].as_bool() == Some(true))
                                        .count()
                                })
                                == NODES - 1
                        })
                });
            if current {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("nats cluster not formed within {WAIT:?}: meta leaders seen {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `count` distinct ports free on 127.0.0.1 now (all held until every one is found).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let held = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

async fn spawn(name: &str, conf: &Path, ports_dir: &Path) -> Result<NatsNode> {
    let mut child = Command::new(crate::nats::binary()?)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server")?;
    let pid = child.id();
    let deadline = tokio::time::Instant::now() + WAIT;
    let (port, monitor_port) = loop {
        if let Some(ports) = crate::nats::read_ports_file(ports_dir, pid)? {
            break ports;
        }
        if let Some(status) = child.try_wait()? {
            bail!("nats-server {name} exited at start ({status})");
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("nats-server {name} ({pid}) wrote no ports file within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(NatsNode {
        child: Some(child),
        name: name.to_owned(),
        port,
        monitor_port,
    })
}
