//! Shared test scaffolding: Redis access, private Redis servers, isolation.
//!
//! Every test gets its own key prefix (`test:<uuid>:`) on the shared Redis,
//! or its own `redis-server` process on a free port when it needs to kill
//! Redis or read server-wide statistics. Nothing here flushes a database.

use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tiercache::{TieredCache, TieredCacheBuilder};

const START_REDIS: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
     --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("tiercache=debug")
            .with_test_writer()
            .init();
    }
});

/// The shared Redis used by tests: `REDIS_URL`, else the local default.
pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A raw connection to the shared Redis, for arranging and asserting.
///
/// Panics, naming Redis and how to start it, when it is unreachable.
pub(crate) async fn raw_redis() -> MultiplexedConnection {
    LazyLock::force(&TRACING);
    let url = redis_url();
    let connect = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => panic!(
            "Redis is not reachable at {url} ({error}). These tests need a real Redis; \
             start one with: {START_REDIS}  (or point REDIS_URL at one)"
        ),
        Err(_) => panic!(
            "Redis at {url} did not answer within 5 s. These tests need a real Redis; \
             start one with: {START_REDIS}  (or point REDIS_URL at one)"
        ),
    }
}

/// A key prefix no other test (or run) uses.
pub(crate) fn unique_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4())
}

/// A builder for a cache on the shared Redis under `prefix`, with
/// deterministic TTLs (no jitter).
pub(crate) fn builder<V>(prefix: &str) -> TieredCacheBuilder<i64, V>
where
    V: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    LazyLock::force(&TRACING);
    TieredCache::builder()
        .key_prefix(prefix)
        .namespace("item")
        .redis_url(redis_url())
        .ttl_jitter(0.0)
}

/// Checks Redis, then builds a cache under a fresh prefix; returns both.
pub(crate) async fn cache<V>() -> (TieredCache<i64, V>, String)
where
    V: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    raw_redis().await;
    let prefix = unique_prefix();
    let cache = builder(&prefix).build().await.unwrap();
    assert_eq!(cache.l2_state(), tiercache::L2State::Up);
    (cache, prefix)
}

/// Every key matching `pattern`, found with SCAN (never KEYS), except the
/// bus change logs (`…:bus:log`), which every cache with a bus has.
pub(crate) async fn scan_keys(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let is_change_log = |key: &String| key.ends_with(":bus:log");
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        keys.extend(batch.into_iter().filter(|key| !is_change_log(key)));
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    keys
}

/// Polls `check` every 20 ms until it returns true or `limit` passes.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The error our test loaders fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the test store is down")]
pub(crate) struct StoreDown;

/// A value shaped like a catalog product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Item {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) price: f64,
    pub(crate) tags: Vec<String>,
}

impl Item {
    pub(crate) fn new(id: i64) -> Self {
        Self::with_name(id, format!("item {id}"))
    }

    pub(crate) fn with_name(id: i64, name: String) -> Self {
        Self {
            id,
            name,
            price: 9.99,
            tags: vec!["test".to_owned()],
        }
    }
}

/// A value of a versioned cache, like a catalog product reduced to its
/// version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Doc {
    pub(crate) id: i64,
    pub(crate) version: u64,
}

/// A source of truth for [`Doc`]s: the current version of every id (1
/// until bumped).
#[derive(Debug, Clone, Default)]
pub(crate) struct VersionStore(Arc<Mutex<HashMap<i64, u64>>>);

impl VersionStore {
    pub(crate) fn version(&self, id: i64) -> u64 {
        self.0.lock().unwrap().get(&id).copied().unwrap_or(1)
    }

    /// Makes a new version of `id` current and returns it.
    pub(crate) fn bump(&self, id: i64) -> u64 {
        let mut versions = self.0.lock().unwrap();
        let version = versions.entry(id).or_insert(1);
        *version += 1;
        *version
    }
}

/// The version `cache` answers for `id`, loading from `store` on a miss.
pub(crate) async fn read_version(
    cache: &TieredCache<i64, Doc>,
    store: &VersionStore,
    id: i64,
) -> u64 {
    let store = store.clone();
    let lookup = cache
        .get_or_load(&id, move || async move {
            Ok::<_, StoreDown>(Some(Doc {
                id,
                version: store.version(id),
            }))
        })
        .await
        .unwrap();
    lookup.value.unwrap().version
}

/// A loader result for `get_or_load`.
pub(crate) fn found(id: i64) -> Result<Option<Item>, StoreDown> {
    Ok(Some(Item::new(id)))
}

/// A loader result for the batch methods: every key found except those in `absent`.
pub(crate) fn found_all(keys: &[i64], absent: &[i64]) -> Result<HashMap<i64, Item>, StoreDown> {
    Ok(keys
        .iter()
        .filter(|k| !absent.contains(k))
        .map(|&k| (k, Item::new(k)))
        .collect())
}

/// A `redis-server` of our own on a free port, killed when dropped.
///
/// For tests that kill Redis or read server-wide counters.
pub(crate) struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a server and waits until it answers.
    pub(crate) async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts a server on `port` and waits until it answers.
    pub(crate) async fn start_on(port: u16) -> Self {
        let mut server = Self { port, child: None };
        server.spawn().await;
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run redis-server ({e}); install Redis (apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let url = self.url();
        eventually(
            Duration::from_secs(10),
            "private redis-server to answer",
            || {
                let url = url.clone();
                async move { ping(&url).await }
            },
        )
        .await;
    }

    /// Kills the server (SIGKILL) and waits for the process to be gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (SIGSTOP): it keeps its connections but answers
    /// nothing, like a hung Redis, until [`resume`](Self::resume).
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Starts the server again on the same port.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A raw connection to this server.
    pub(crate) async fn raw(&self) -> MultiplexedConnection {
        redis::Client::open(self.url().as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
    }
}

/// A TCP port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A three-primary Redis Cluster of our own, torn down when dropped.
///
/// Nodes listen on random ports in 20000..30000 so that each node's
/// cluster-bus port (`port + 10000`) is valid and free too.
pub(crate) struct PrivateCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl PrivateCluster {
    /// Starts three nodes, joins them with `redis-cli --cluster create`, and
    /// waits until the cluster reports `cluster_state:ok` on every node.
    pub(crate) async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("tiercache-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_cluster_port()).collect();
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
                .unwrap_or_else(|e| panic!("could not run redis-server ({e}); install Redis"));
            cluster.children.push(child);
        }
        for url in cluster.urls() {
            eventually(Duration::from_secs(10), "cluster node to answer", || {
                let url = url.clone();
                async move { ping(&url).await }
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
            .unwrap_or_else(|e| panic!("could not run redis-cli ({e}); install Redis"));
        assert!(created.success(), "redis-cli --cluster create failed");
        for url in cluster.urls() {
            eventually(Duration::from_secs(20), "cluster_state:ok", || {
                let url = url.clone();
                async move {
                    let Ok(client) = redis::Client::open(url.as_str()) else {
                        return false;
                    };
                    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                        return false;
                    };
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    info.contains("cluster_state:ok")
                }
            })
            .await;
        }
        cluster
    }

    /// `redis://127.0.0.1:<port>` of each node.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// A raw connection to one node.
    pub(crate) async fn node(&self, index: usize) -> MultiplexedConnection {
        redis::Client::open(self.urls()[index].as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
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

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    match client.get_multiplexed_async_connection().await {
        Ok(mut conn) => redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

fn free_cluster_port() -> u16 {
    loop {
        let port = 20_000 + u16::try_from(uuid::Uuid::new_v4().as_u128() % 10_000).unwrap();
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}
