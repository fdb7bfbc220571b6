//! A private three-primary Redis Cluster, for the tests of the cluster
//! topology: its own `redis-server` processes and configuration directory,
//! torn down when dropped. The shared Redis is never a cluster member.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::poll::wait_for;
use crate::private_redis::{INSTALL_REDIS, START_LIMIT, ping};

/// Primaries in the cluster (no replicas).
const NODES: usize = 3;
/// How long the joined cluster has to report `cluster_state:ok`.
const JOIN_LIMIT: Duration = Duration::from_secs(20);

/// A three-primary Redis Cluster of the test's own.
///
/// Nodes listen on random ports in 20000..30000 so that each node's
/// cluster-bus port (`port + 10000`) is valid and free too.
#[derive(Debug)]
pub struct PrivateCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl PrivateCluster {
    /// Starts three nodes, joins them with `redis-cli --cluster create`, and
    /// waits until every node reports `cluster_state:ok`.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` cannot be run (it says how to
    /// install them), or the cluster does not form.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("testkit-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cluster directory {}: {e}", dir.display()));
        let ports: Vec<u16> = (0..NODES).map(|_| free_cluster_port()).collect();
        let mut cluster = Self {
            ports,
            children: Vec::new(),
            dir,
        };
        for &port in &cluster.ports {
            let config = cluster.dir.join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .arg("--cluster-config-file")
                .arg(&config)
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("could not run redis-server ({e}); {INSTALL_REDIS}"));
            cluster.children.push(child);
        }
        for &port in &cluster.ports {
            wait_for(START_LIMIT, "cluster node to answer", async || {
                ping(port).await.is_some()
            })
            .await;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("could not run redis-cli ({e}); {INSTALL_REDIS}"));
        assert!(created.success(), "redis-cli --cluster create failed");
        for url in cluster.urls() {
            wait_for(JOIN_LIMIT, "cluster_state:ok", async || {
                cluster_info(&url)
                    .await
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            })
            .await;
        }
        cluster
    }

    /// `redis://127.0.0.1:<port>` of each node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// A raw (non-cluster) connection to node `index`.
    ///
    /// # Panics
    /// When there is no such node or it refuses the connection.
    pub async fn node(&self, index: usize) -> MultiplexedConnection {
        redis::Client::open(self.urls()[index].as_str())
            .expect("a node URL parses")
            .get_multiplexed_async_connection()
            .await
            .expect("a cluster node accepts connections")
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `CLUSTER INFO` of the node at `url`, if it answers.
async fn cluster_info(url: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut conn)
        .await
        .ok()
}

/// A port in 20000..30000 that is free, and whose cluster-bus port is free.
fn free_cluster_port() -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    loop {
        let offset = uuid::Uuid::new_v4().as_u128() % 10_000;
        let port = 20_000 + u16::try_from(offset).expect("an offset below 10,000 fits a u16");
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}
