//! Shared test scaffolding: Redis access, isolation, test values.
//!
//! Every test gets its own key prefix (`test:<uuid>:`) on the shared Redis,
//! or its own `redis-server` process on a free port (`testkit::PrivateRedis`)
//! when it needs to kill Redis or read server-wide statistics. Nothing here
//! flushes a database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tiercache::{TieredCache, TieredCacheBuilder};

pub(crate) use testkit::{redis_url, unique_prefix};

/// What `TEST_LOG=1` shows.
const LOG_FILTER: &str = "tiercache=debug";

/// A raw connection to the shared Redis, for arranging and asserting.
///
/// Panics, naming Redis and how to start it, when it is unreachable.
pub(crate) async fn raw_redis() -> MultiplexedConnection {
    testkit::init_test_log(LOG_FILTER);
    testkit::shared_redis().await
}

/// A builder for a cache on the shared Redis under `prefix`, with
/// deterministic TTLs (no jitter).
pub(crate) fn builder<V>(prefix: &str) -> TieredCacheBuilder<i64, V>
where
    V: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    testkit::init_test_log(LOG_FILTER);
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
/// Where a scenario runs: the shared single server, or a private cluster.
pub(crate) enum Redis {
    Single(String),
    /// The `redis+cluster://` URL and each node's `redis://` URL.
    Cluster {
        url: String,
        nodes: Vec<String>,
    },
}

/// Queue partitions of a write-behind cache on a cluster
/// (tiercache's `write_behind::partition::CLUSTER_PARTITIONS`).
const CLUSTER_PARTITIONS: usize = 8;

impl Redis {
    /// The shared server (checked to be up).
    pub(crate) async fn single() -> Self {
        raw_redis().await;
        Self::Single(redis_url())
    }

    pub(crate) fn cluster(cluster: &testkit::PrivateCluster) -> Self {
        testkit::init_test_log(LOG_FILTER);
        Self::Cluster {
            url: cluster.cluster_url(),
            nodes: cluster.urls(),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// What to give `redis_url`.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Single(url) | Self::Cluster { url, .. } => url.clone(),
        }
    }

    /// Runs `cmd` as a client that is not the cache (routed by key on a
    /// cluster).
    pub(crate) async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match self {
            Self::Single(_) => cmd.query_async(&mut raw_redis().await).await.unwrap(),
            Self::Cluster { nodes, .. } => {
                let client = redis::cluster::ClusterClient::new(nodes.clone()).unwrap();
                let mut conn = client.get_async_connection().await.unwrap();
                cmd.query_async(&mut conn).await.unwrap()
            }
        }
    }

    /// The dead letters of the write-behind queue of the cache whose keys
    /// start with `base` (key prefix and namespace), from every partition.
    pub(crate) async fn dead_letters(&self, base: &str) -> Vec<redis::Value> {
        let streams = match self {
            Self::Single(_) => vec![format!("{base}#wb:dead")],
            Self::Cluster { .. } => (0..CLUSTER_PARTITIONS)
                .map(|n| format!("{{{base}#wb.{n}}}:dead"))
                .collect(),
        };
        let mut dead = Vec::new();
        for stream in streams {
            let entries: Vec<redis::Value> = self
                .run(redis::cmd("XRANGE").arg(stream).arg("-").arg("+"))
                .await;
            dead.extend(entries);
        }
        dead
    }
}

pub(crate) async fn scan_keys(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let is_change_log = |key: &String| key.ends_with(":bus:log");
    let mut keys = testkit::scan_keys(conn, pattern).await;
    keys.retain(|key| !is_change_log(key));
    keys
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
