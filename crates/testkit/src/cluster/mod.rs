//! A private Redis Cluster for the tests of the cluster topology and of its
//! failures: six `redis-server` processes of the test's own (three
//! primaries, each with one replica), each with its own directory, all torn
//! down when dropped. The shared Redis is never a cluster member.
//!
//! Nodes can be killed (SIGKILL), hung (SIGSTOP) and restarted on the same
//! port with the same `nodes.conf`, so that a test can make a primary fail
//! and watch its replica take over ([`PrivateCluster::wait_failed_over`]).
//! The node timeout is 1 s, so a failover takes two to three seconds
//! rather than Redis's default fifteen and more.
//!
//! Which node is a primary is decided by `redis-cli --cluster create` and
//! changes with every failover: tests ask ([`PrivateCluster::primaries`],
//! [`PrivateCluster::primary_for_key`]), never assume. The answers come
//! from the nodes that run (not killed, not paused), each asked for its own
//! view; a node that is down is never asked, so a question never hangs.

mod view;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::poll::{eventually, poll_until};
use crate::private_redis::{INSTALL_REDIS, START_LIMIT, ping};

/// Nodes in the cluster: three primaries and a replica of each.
const NODES: usize = 6;
/// `--cluster-node-timeout` in ms: how long a primary may be unreachable
/// before its replica takes over. Redis's default, 15 s, would make every
/// failover test wait that long.
const NODE_TIMEOUT_MS: &str = "1000";
/// How long a new or restarted cluster has to become whole.
const JOIN_LIMIT: Duration = Duration::from_secs(30);
/// Sets of ports tried when a node finds its port taken by another process.
const START_ATTEMPTS: usize = 3;
/// Lines of a node's log quoted when it failed.
const LOG_LINES: usize = 15;

/// A six-node Redis Cluster of the test's own (see the module doc).
///
/// Nodes are numbered 0..6 in the order of [`urls`](Self::urls) and
/// [`seeds`](Self::seeds); their roles are whatever the nodes say. Nodes
/// listen on random ports in 20000..30000 so that each node's cluster-bus
/// port (`port + 10000`) is valid and free too.
#[derive(Debug)]
pub struct PrivateCluster {
    ports: Vec<u16>,
    /// Each node's process; `None` once killed.
    children: Vec<Option<Child>>,
    /// Set while a node is stopped (SIGSTOP): it is not asked anything,
    /// and is let go on before it is killed.
    paused: Vec<AtomicBool>,
    /// Holds one directory per node (its `nodes.conf`, log and RDB file).
    dir: PathBuf,
}

impl PrivateCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create
    /// --cluster-replicas 1`, and waits until every node reports
    /// `cluster_state:ok`, every slot is served by a primary all nodes
    /// agree on, and every replica reports `master_link_status:up` (so a
    /// failover test can rely on the replicas holding what was written).
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` cannot be run (it says how to
    /// install them), a node does not start, or the cluster does not form
    /// within 30 s.
    pub async fn start() -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::spawn_nodes().await {
                Ok(cluster) => {
                    cluster.create();
                    cluster
                        .wait_whole(JOIN_LIMIT, true, "the new cluster to be whole")
                        .await;
                    return cluster;
                }
                Err(failure) => failures.push(failure),
            }
        }
        panic!("no private cluster started in {START_ATTEMPTS} attempts: {failures:#?}");
    }

    /// Six cluster-enabled nodes on fresh ports, each answering `PING`;
    /// `Err` says which did not (its port may have been taken meanwhile).
    async fn spawn_nodes() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("testkit-cluster-{}", uuid::Uuid::new_v4()));
        let mut ports: Vec<u16> = Vec::with_capacity(NODES);
        while ports.len() < NODES {
            let port = free_cluster_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut cluster = Self {
            ports,
            children: (0..NODES).map(|_| None).collect(),
            paused: (0..NODES).map(|_| AtomicBool::new(false)).collect(),
            dir,
        };
        for index in 0..NODES {
            cluster.children[index] = Some(cluster.spawn_node(index));
        }
        for index in 0..NODES {
            cluster.answering(index).await?;
        }
        Ok(cluster)
    }

    /// Joins the running nodes into a cluster, one replica per primary.
    fn create(&self) {
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(self.seeds())
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("could not run redis-cli ({e}); {INSTALL_REDIS}"));
        assert!(
            created.status.success(),
            "`redis-cli --cluster create {}` failed ({}): {}{}",
            self.seeds().join(" "),
            created.status,
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr),
        );
    }

    /// `127.0.0.1:<port>` of each node, in node order.
    pub fn seeds(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// `redis+cluster://127.0.0.1:<port>,…` with every node, node 0 first:
    /// the `REDIS_URL` of a service on this cluster.
    pub fn cluster_url(&self) -> String {
        self.cluster_url_from(0)
    }

    /// [`cluster_url`](Self::cluster_url) with node `first` as the first
    /// seed, then the others in order. The first seed matters: tiercache
    /// subscribes its bus there (its docs, "Not yet"), so a failover test
    /// chooses whether the node it kills is that one.
    ///
    /// # Panics
    /// When there is no node `first`.
    pub fn cluster_url_from(&self, first: usize) -> String {
        let seeds = self.seeds();
        assert!(first < seeds.len(), "no cluster node {first}");
        let ordered: Vec<&str> = seeds[first..]
            .iter()
            .chain(&seeds[..first])
            .map(String::as_str)
            .collect();
        format!("redis+cluster://{}", ordered.join(","))
    }

    /// `redis://127.0.0.1:<port>` of each node, in node order.
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
        self.connect(index).await.unwrap_or_else(|e| {
            panic!(
                "cluster node {index} (port {}) refused a connection: {e}",
                self.ports[index]
            )
        })
    }

    /// Kills node `index` (SIGKILL, also when paused) and waits for it: its
    /// connections are reset at once, as when a machine dies, and its data
    /// is gone. Nothing if it is not running.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused[index].store(false, Ordering::SeqCst);
    }

    /// Stops node `index` (SIGSTOP): its connections stay open but nothing
    /// is answered, as a hung or partitioned server; past the node timeout
    /// (1 s) its replica takes over.
    ///
    /// # Panics
    /// When the node is not running or the signal fails.
    pub fn pause(&self, index: usize) {
        assert!(
            self.signal(index, "-STOP"),
            "cluster node {index} (port {}) was not stopped: it is not running, or `kill -STOP` failed",
            self.ports[index]
        );
        self.paused[index].store(true, Ordering::SeqCst);
    }

    /// Lets a paused node go on (SIGCONT); nothing if it is not paused. A
    /// primary that was failed over meanwhile turns into a replica.
    ///
    /// # Panics
    /// When the signal fails.
    pub fn resume(&self, index: usize) {
        if self.paused[index].load(Ordering::SeqCst) {
            assert!(
                self.signal(index, "-CONT"),
                "cluster node {index} (port {}) was not resumed: `kill -CONT` failed",
                self.ports[index]
            );
            self.paused[index].store(false, Ordering::SeqCst);
        }
    }

    /// Kills node `index` if it runs, starts it again on the same port with
    /// the same `nodes.conf`, and waits until the cluster is whole with it
    /// (as [`start`](Self::start) does). A primary that was failed over
    /// meanwhile rejoins as a replica of the node that replaced it.
    ///
    /// # Panics
    /// When the node does not answer on its port within 10 s, or the
    /// cluster is not whole within 30 s.
    pub async fn restart(&mut self, index: usize) {
        self.kill(index);
        self.children[index] = Some(self.spawn_node(index));
        if let Err(failure) = self.answering(index).await {
            panic!("restarting: {failure}");
        }
        self.wait_whole(
            JOIN_LIMIT,
            true,
            &format!("the cluster to be whole with node {index} back"),
        )
        .await;
    }

    /// Waits until the running nodes (not killed, not paused) make a whole
    /// cluster again: each reports `cluster_state:ok`, and in every one's
    /// view every slot is served by the same running primary. After a
    /// primary was killed or paused this is when its replica has taken
    /// over and every node knows it; a test measures what follows from
    /// here. Replicas may still be syncing.
    ///
    /// # Panics
    /// When `limit` passes first; the message says what was still wrong.
    pub async fn wait_failed_over(&self, limit: Duration) {
        self.wait_whole(limit, false, "the cluster to fail over")
            .await;
    }

    /// Waits until the cluster is whole (see
    /// [`wait_failed_over`](Self::wait_failed_over)), and with
    /// `replicas_in_sync` every running replica's link to its primary up.
    async fn wait_whole(&self, limit: Duration, replicas_in_sync: bool, what: &str) {
        let outcome = poll_until(
            limit,
            async || self.problems(replicas_in_sync).await,
            Vec::is_empty,
        )
        .await;
        if let Err(problems) = outcome {
            panic!("gave up after {limit:?} waiting for {what}; still: {problems:#?}");
        }
    }

    /// The nodes that are neither killed nor paused.
    fn running(&self) -> Vec<usize> {
        (0..NODES)
            .filter(|&i| self.children[i].is_some() && !self.paused[i].load(Ordering::SeqCst))
            .collect()
    }

    async fn connect(&self, index: usize) -> redis::RedisResult<MultiplexedConnection> {
        redis::Client::open(self.urls()[index].as_str())?
            .get_multiplexed_async_connection()
            .await
    }

    /// Node `index`'s directory: its `nodes.conf`, log and RDB file. One
    /// each, because replicas write the RDB file they sync from under a
    /// fixed name.
    fn node_dir(&self, index: usize) -> PathBuf {
        self.dir.join(format!("node-{}", self.ports[index]))
    }

    /// Starts node `index`'s `redis-server`, without persistence.
    fn spawn_node(&self, index: usize) -> Child {
        let dir = self.node_dir(index);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cluster node directory {}: {e}", dir.display()));
        Command::new("redis-server")
            .args([
                "--port",
                &self.ports[index].to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
            // A primary waits 5 s by default before a full sync, for more
            // replicas to share it: every start and restart would too.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--cluster-config-file")
            .arg(dir.join("nodes.conf"))
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not run redis-server ({e}); {INSTALL_REDIS}"))
    }

    /// Waits until node `index` answers `PING`; `Err` says why it did not
    /// within [`START_LIMIT`] (it exited, e.g. its port was taken), with
    /// the end of its log.
    async fn answering(&mut self, index: usize) -> Result<(), String> {
        let port = self.ports[index];
        let mut exited = None;
        let answered = eventually(START_LIMIT, async || {
            exited = self.children[index]
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            exited.is_some() || ping(port).await.is_some()
        })
        .await;
        match (answered, exited) {
            (true, None) => Ok(()),
            (_, Some(status)) => Err(format!(
                "redis-server of cluster node {index} (port {port}) exited ({status}); {}",
                self.log_tail(index)
            )),
            (false, None) => Err(format!(
                "redis-server of cluster node {index} (port {port}) did not answer PING within \
                 {START_LIMIT:?}; {}",
                self.log_tail(index)
            )),
        }
    }

    /// The last lines of node `index`'s log, for a failure message.
    fn log_tail(&self, index: usize) -> String {
        let path = self.node_dir(index).join("redis.log");
        match std::fs::read_to_string(&path) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_LINES)..].join("\n");
                format!("end of {}:\n{tail}", path.display())
            }
            Err(e) => format!("no log at {} ({e})", path.display()),
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to node `index`; whether it was sent.
    fn signal(&self, index: usize, signal: &str) -> bool {
        self.children[index].as_ref().is_some_and(|child| {
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .is_ok_and(|status| status.success())
        })
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for index in 0..NODES {
            // Not `resume`, which panics when the signal fails.
            if self.paused[index].load(Ordering::SeqCst) {
                self.signal(index, "-CONT");
            }
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

#[cfg(test)]
mod tests {
    use redis::AsyncCommands;

    use super::*;

    /// The failover a fault test relies on: the primary of a key killed,
    /// its replica serves the key (with what was written before) within
    /// a few seconds, and the old primary restarted comes back as a replica.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_primary_is_replaced_by_its_replica_and_rejoins_as_one() {
        let mut cluster = PrivateCluster::start().await;
        let primaries = cluster.primaries().await;
        let replicas = cluster.replicas().await;
        let key = format!("testkit:{}:failover", uuid::Uuid::new_v4().simple());
        let old = cluster.primary_for_key(&key).await;
        let mut conn = cluster.node(old).await;
        let () = conn.set(&key, "before").await.unwrap();
        // The value is on the replica before its primary dies.
        let synced: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(1_000)
            .query_async(&mut conn)
            .await
            .unwrap();

        cluster.kill(old);
        cluster.wait_failed_over(Duration::from_secs(10)).await;
        let new = cluster.primary_for_key(&key).await;
        let kept: Option<String> = cluster.node(new).await.get(&key).await.unwrap();
        let primaries_after_failover = cluster.primaries().await;
        cluster.restart(old).await;

        assert_eq!((primaries.len(), replicas.len()), (3, 3));
        assert_eq!(synced, 1);
        assert_ne!(new, old);
        assert!(replicas.contains(&new), "{new} was not a replica");
        assert_eq!(kept.as_deref(), Some("before"));
        assert_eq!(primaries_after_failover.len(), 3);
        assert!(cluster.replicas().await.contains(&old));
        assert_eq!(cluster.primaries().await, primaries_after_failover);
        assert_eq!(cluster.primary_for_key(&key).await, new);
    }
}
