//! [`TieredCacheBuilder`]: every knob of a [`TieredCache`](crate::TieredCache), with its default.
//!
//! The builder only collects settings (this file, with each knob's
//! documentation; the Redis level's knobs in `redis.rs`); `build` validates them and wires the levels together
//! (`build.rs`); every default is one constant in `defaults.rs`. It never reads the environment: services map their own
//! configuration (e.g. `L1_MAX_ENTRIES`) onto these methods.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, JsonCodec};
use crate::manager::CacheKey;
#[cfg(feature = "redis")]
use crate::remote::topology::{RedisTopology, redact};
#[cfg(feature = "redis")]
use crate::write_behind::Flush;

mod build;
#[cfg(feature = "redis")]
mod connect;
pub mod defaults;
#[cfg(feature = "redis")]
mod redis;

/// Where the builder's Redis setting came from; URLs are parsed in `build`.
#[cfg(feature = "redis")]
#[derive(Clone)]
enum RedisSetting {
    None,
    Url(String),
    Topology(RedisTopology),
}

#[cfg(feature = "redis")]
impl fmt::Debug for RedisSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Url(url) => f.debug_tuple("Url").field(&redact(url)).finish(),
            Self::Topology(topology) => f.debug_tuple("Topology").field(topology).finish(),
        }
    }
}

/// Configures and builds a [`TieredCache`](crate::TieredCache); obtained from [`TieredCache::builder`](crate::TieredCache::builder).
///
/// Every setting has a default (see each method), so
/// `TieredCache::builder().build().await` gives an L1-only cache.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use tiercache::{PostcardCodec, TieredCache};
///
/// # async fn example() -> Result<(), tiercache::Error> {
/// let cache: TieredCache<i64, String> = TieredCache::builder()
///     .namespace("product")
///     .key_prefix("cache:")
///     .redis_url("redis://127.0.0.1:6379")
///     .l1_max_entries(50_000)
///     .l1_ttl(Duration::from_secs(60))
///     .codec(PostcardCodec)
///     .compression_threshold(Some(4 * 1024))
///     .build()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `build` is awaited"]
// Without Redis, its settings are kept (and validated) but unused.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub struct TieredCacheBuilder<K, V> {
    namespace: String,
    key_prefix: String,
    l1_max_entries: u64,
    l1_max_bytes: u64,
    l1_ttl: Duration,
    l2_ttl: Duration,
    negative_ttl: Option<Duration>,
    ttl_jitter: f64,
    codec: Arc<dyn Codec<V>>,
    compression_threshold: Option<usize>,
    #[cfg(feature = "redis")]
    redis: RedisSetting,
    l2_timeout: Duration,
    l2_connect_timeout: Duration,
    breaker_failure_threshold: u32,
    breaker_cooldown: Duration,
    bus: bool,
    heartbeat_interval: Duration,
    change_log_len: usize,
    client_tracking: bool,
    versioning: Option<Versioning<V>>,
    tombstone_ttl: Duration,
    fail_safe_window: Option<Duration>,
    fail_safe_throttle: Duration,
    soft_timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    eager_refresh: Option<f64>,
    #[cfg(feature = "redis")]
    write_behind: Option<(Arc<dyn Flush<K, V>>, Duration)>,
    /// `None`: the default for the topology.
    #[cfg(feature = "redis")]
    replica_wait: Option<Option<Duration>>,
    stampede_lease: Option<Duration>,
    #[cfg(feature = "metrics")]
    metrics_target: crate::telemetry::Target,
    #[cfg(feature = "metrics")]
    metrics_labels: Vec<(String, String)>,
    _key: PhantomData<fn() -> K>,
}

/// How a versioned cache reads versions: from a value in Rust, and from its
/// stored JSON (the field) in the Redis guard script.
pub(crate) struct Versioning<V> {
    pub(crate) field: String,
    pub(crate) version_of: Arc<dyn Fn(&V) -> u64 + Send + Sync>,
}

impl<V> Clone for Versioning<V> {
    fn clone(&self) -> Self {
        Self {
            field: self.field.clone(),
            version_of: Arc::clone(&self.version_of),
        }
    }
}

impl<K, V> fmt::Debug for TieredCacheBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("TieredCacheBuilder");
        debug
            .field("namespace", &self.namespace)
            .field("key_prefix", &self.key_prefix)
            .field("l1_max_entries", &self.l1_max_entries)
            .field("l1_max_bytes", &self.l1_max_bytes)
            .field("l1_ttl", &self.l1_ttl)
            .field("l2_ttl", &self.l2_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("ttl_jitter", &self.ttl_jitter)
            .field("codec", &self.codec)
            .field("compression_threshold", &self.compression_threshold)
            .field("l2_timeout", &self.l2_timeout)
            .field("l2_connect_timeout", &self.l2_connect_timeout)
            .field("breaker_failure_threshold", &self.breaker_failure_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("bus", &self.bus)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("change_log_len", &self.change_log_len)
            .field("client_tracking", &self.client_tracking)
            .field(
                "versioned_field",
                &self.versioning.as_ref().map(|v| v.field.as_str()),
            )
            .field("tombstone_ttl", &self.tombstone_ttl)
            .field("fail_safe_window", &self.fail_safe_window)
            .field("fail_safe_throttle", &self.fail_safe_throttle)
            .field("soft_timeout", &self.soft_timeout)
            .field("hard_timeout", &self.hard_timeout)
            .field("eager_refresh", &self.eager_refresh);
        #[cfg(feature = "redis")]
        debug.field("redis", &self.redis).field(
            "write_behind_interval",
            &self.write_behind.as_ref().map(|(_, interval)| interval),
        );
        debug.finish()
    }
}

impl<K, V> TieredCacheBuilder<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) fn new() -> Self {
        Self {
            namespace: defaults::NAMESPACE.to_owned(),
            key_prefix: defaults::KEY_PREFIX.to_owned(),
            l1_max_entries: defaults::L1_MAX_ENTRIES,
            l1_max_bytes: defaults::L1_MAX_BYTES,
            l1_ttl: defaults::L1_TTL,
            l2_ttl: defaults::L2_TTL,
            negative_ttl: Some(defaults::NEGATIVE_TTL),
            ttl_jitter: defaults::TTL_JITTER,
            codec: Arc::new(JsonCodec),
            compression_threshold: None,
            #[cfg(feature = "redis")]
            redis: RedisSetting::None,
            l2_timeout: defaults::L2_TIMEOUT,
            l2_connect_timeout: defaults::L2_CONNECT_TIMEOUT,
            breaker_failure_threshold: defaults::BREAKER_FAILURE_THRESHOLD,
            breaker_cooldown: defaults::BREAKER_COOLDOWN,
            bus: true,
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            change_log_len: defaults::CHANGE_LOG_LEN,
            client_tracking: true,
            versioning: None,
            tombstone_ttl: defaults::TOMBSTONE_TTL,
            fail_safe_window: None,
            fail_safe_throttle: defaults::FAIL_SAFE_THROTTLE,
            soft_timeout: None,
            hard_timeout: None,
            eager_refresh: None,
            #[cfg(feature = "redis")]
            write_behind: None,
            #[cfg(feature = "redis")]
            replica_wait: None,
            stampede_lease: None,
            #[cfg(feature = "metrics")]
            metrics_target: crate::telemetry::Target::default(),
            #[cfg(feature = "metrics")]
            metrics_labels: Vec::new(),
            _key: PhantomData,
        }
    }

    /// Names this cache's keyspace; Redis keys are
    /// `{key_prefix}{namespace}:{key}`. Default [`defaults::NAMESPACE`].
    ///
    /// Caches of different value types sharing one Redis must use different
    /// namespaces. Must be non-empty and must not contain `:`, so that
    /// [`clear`](crate::TieredCache::clear) of one namespace cannot match another's
    /// keys.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Prefix of every Redis key, shared by all caches of a service.
    /// Default [`defaults::KEY_PREFIX`] (`cache:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Most entries L1 holds, negative entries included.
    /// Default [`defaults::L1_MAX_ENTRIES`] (10,000).
    pub fn l1_max_entries(mut self, max: u64) -> Self {
        self.l1_max_entries = max;
        self
    }

    /// Most bytes L1 holds. An entry weighs what its codec's
    /// [`Codec::weigh`] says its value takes (by default its encoded size)
    /// plus L1's own cost per entry (84 bytes, measured); L1 also keeps the
    /// keys of recent evictions (for its admission policy) in at most 3 % of
    /// this. A codec that weighs values by their real size makes this a
    /// bound on memory. Default [`defaults::L1_MAX_BYTES`] (64 MiB).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// let cache: tiercache::TieredCache<u64, String> = tiercache::TieredCache::builder()
    ///     .l1_max_entries(100_000)
    ///     .l1_max_bytes(256 * 1024 * 1024) // whichever binds first
    ///     .build()
    ///     .await?;
    /// assert_eq!(cache.stats().l1.entries, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn l1_max_bytes(mut self, max: u64) -> Self {
        self.l1_max_bytes = max;
        self
    }

    /// How long a value stays in L1. Default [`defaults::L1_TTL`] (300 s).
    ///
    /// This bounds how long an instance can serve a value that was changed
    /// elsewhere without an invalidation reaching it.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl;
        self
    }

    /// How long "not found" is remembered, in both levels; `None` turns
    /// negative caching off. Default [`defaults::NEGATIVE_TTL`] (30 s).
    pub fn negative_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Fraction by which each stored TTL is randomly shortened, so entries
    /// filled together do not expire together. `0.1` stores a 300 s TTL as
    /// 270–300 s. Must be in `[0, 1)`. Default [`defaults::TTL_JITTER`] (0.1).
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.ttl_jitter = fraction;
        self
    }

    /// How values are encoded in Redis. Default [`JsonCodec`].
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// let cache: tiercache::TieredCache<u64, String> = tiercache::TieredCache::builder()
    ///     .codec(tiercache::JsonCodec) // the default; `PostcardCodec` with the `postcard` feature
    ///     .build()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn codec(mut self, codec: impl Codec<V>) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// Makes the cache *versioned*: every value has a version (from
    /// `version_of`, increasing with every change of the underlying data),
    /// and Redis never replaces a stored version with an older one. Values
    /// stored by the JSON codec must carry the same number as the top-level
    /// JSON field `field` (the guard script reads it there; other codecs
    /// get a small version header instead).
    ///
    /// This closes the classic cache-aside race (a slow reader putting an
    /// old value back after a writer's invalidation) together with
    /// [`TieredCache::invalidate_version`](crate::TieredCache::invalidate_version), which leaves a short-lived
    /// tombstone (see [`tombstone_ttl`](Self::tombstone_ttl)) instead of
    /// deleting. Off by default: sets are plain `SET`s.
    ///
    /// # Example
    ///
    /// ```
    /// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Doc { id: u64, version: u64 }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// let cache: tiercache::TieredCache<u64, Doc> = tiercache::TieredCache::builder()
    ///     // Redis refuses a write older than what it holds, read from `version`.
    ///     .versioned("version", |doc: &Doc| doc.version)
    ///     .build()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn versioned(
        mut self,
        field: impl Into<String>,
        version_of: impl Fn(&V) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.versioning = Some(Versioning {
            field: field.into(),
            version_of: Arc::new(version_of),
        });
        self
    }

    /// Fail-safe: an L1 entry past its TTL is kept `window` longer as a
    /// fallback, answered (as [`Source::Stale`](crate::Source::Stale)) when
    /// the loader fails or times out. Redis copies are not kept longer:
    /// they are served until their own TTL. `None` (the default) turns it
    /// off.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// use std::time::Duration;
    /// let cache: tiercache::TieredCache<u64, String> = tiercache::TieredCache::builder()
    ///     .l1_ttl(Duration::from_secs(30))
    ///     // Keep expired values for an hour, answered when the store fails…
    ///     .fail_safe_window(Some(Duration::from_secs(3_600)))
    ///     // …or takes longer than 100 ms (the load then finishes in the background)…
    ///     .soft_timeout(Some(Duration::from_millis(100)))
    ///     // …and give up on a load after 2 s.
    ///     .hard_timeout(Some(Duration::from_secs(2)))
    ///     .build()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn fail_safe_window(mut self, window: Option<Duration>) -> Self {
        self.fail_safe_window = window;
        self
    }

    /// After a fail-safe answer, the loader of that key is not retried for
    /// `throttle`; reads in between get the stale value at once. Default
    /// [`defaults::FAIL_SAFE_THROTTLE`].
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = throttle;
        self
    }

    /// After `soft`, a caller that has a stale fallback (see
    /// [`fail_safe_window`](Self::fail_safe_window)) gets it, while the
    /// load goes on in the background and fills the cache when it finishes.
    /// `None` (the default): no soft timeout.
    pub fn soft_timeout(mut self, soft: Option<Duration>) -> Self {
        self.soft_timeout = soft;
        self
    }

    /// After `hard`, the load is abandoned: the caller gets the stale
    /// fallback if there is one, else
    /// [`LoadError::TimedOut`](crate::LoadError::TimedOut). `None` (the
    /// default): loads are never abandoned.
    pub fn hard_timeout(mut self, hard: Option<Duration>) -> Self {
        self.hard_timeout = hard;
        self
    }

    /// Eager refresh: a hit on an L1 entry older than `fraction` of its TTL
    /// (e.g. 0.8) reloads it in the background, once per key however many
    /// callers hit it, so hot keys never expire into a miss. A failed
    /// refresh is retried after the fail-safe throttle. Default: off.
    pub fn eager_refresh(mut self, fraction: Option<f64>) -> Self {
        self.eager_refresh = fraction;
        self
    }

    /// Records this cache's metrics to `recorder` instead of the global
    /// recorder (see [`telemetry`](crate::telemetry)): for a service that
    /// keeps its own registry, or tests that run several at once.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn example(recorder: std::sync::Arc<dyn metrics::Recorder + Send + Sync>) {
    /// let builder = tiercache::TieredCache::<u64, String>::builder()
    ///     .metrics_recorder(recorder)
    ///     .metrics_labels([("cache", "product")]);
    /// # }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn metrics_recorder(mut self, recorder: Arc<dyn metrics::Recorder + Send + Sync>) -> Self {
        self.metrics_target = crate::telemetry::Target::Recorder(recorder);
        self
    }

    /// Labels added to every series this cache records, to tell several
    /// caches on one recorder apart (e.g. `[("cache", "product")]`).
    /// Default: none.
    #[cfg(feature = "metrics")]
    pub fn metrics_labels<L, N>(mut self, labels: impl IntoIterator<Item = (L, N)>) -> Self
    where
        L: Into<String>,
        N: Into<String>,
    {
        self.metrics_labels = labels
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect();
        self
    }
}
