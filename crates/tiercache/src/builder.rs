//! [`TieredCacheBuilder`]: every knob of a [`TieredCache`], with its default.
//!
//! The builder only collects and validates settings; `build` creates the
//! levels. It never reads the environment: services map their own
//! configuration (e.g. `L1_MAX_ENTRIES`) onto these methods.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bus::log::LogConfig;
use crate::bus::{Bus, BusConfig, LOG_SUFFIX};
use crate::error::Error;
use crate::local::LocalCache;
use crate::manager::{CacheKey, L1Handle, LocalLevel, OwnWrites, Parts, Settings, TieredCache};
use crate::remote::breaker::BreakerConfig;
use crate::remote::codec::{Codec, JsonCodec};
use crate::remote::topology::{RedisTopology, redact};
use crate::remote::{RemoteCache, RemoteConfig};
use crate::write_behind::{self, Flush, WriteBehind};

/// Default for [`TieredCacheBuilder::namespace`].
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default for [`TieredCacheBuilder::key_prefix`] (SPEC §5 `CACHE_PREFIX`).
pub const DEFAULT_KEY_PREFIX: &str = "cache:";
/// Default for [`TieredCacheBuilder::l1_max_entries`].
pub const DEFAULT_L1_MAX_ENTRIES: u64 = 10_000;
/// Default for [`TieredCacheBuilder::l1_max_bytes`]: 64 MiB.
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default for [`TieredCacheBuilder::l1_ttl`].
pub const DEFAULT_L1_TTL: Duration = Duration::from_secs(300);
/// Default for [`TieredCacheBuilder::l2_ttl`].
pub const DEFAULT_L2_TTL: Duration = Duration::from_secs(3_600);
/// Default for [`TieredCacheBuilder::negative_ttl`].
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Default for [`TieredCacheBuilder::ttl_jitter`].
pub const DEFAULT_TTL_JITTER: f64 = 0.1;
/// Default for [`TieredCacheBuilder::l2_timeout`].
pub const DEFAULT_L2_TIMEOUT: Duration = Duration::from_millis(100);
/// Default for [`TieredCacheBuilder::l2_connect_timeout`].
pub const DEFAULT_L2_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::breaker_failure_threshold`].
pub const DEFAULT_BREAKER_FAILURE_THRESHOLD: u32 = 5;
/// Default for [`TieredCacheBuilder::breaker_cooldown`].
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::heartbeat_interval`].
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::change_log_len`].
pub const DEFAULT_CHANGE_LOG_LEN: usize = 10_000;
/// Default for [`TieredCacheBuilder::fail_safe`]'s throttle.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::tombstone_ttl`].
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// Where the builder's Redis setting came from; URLs are parsed in `build`.
#[derive(Clone)]
enum RedisSetting {
    None,
    Url(String),
    Topology(RedisTopology),
}

impl fmt::Debug for RedisSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Url(url) => f.debug_tuple("Url").field(&redact(url)).finish(),
            Self::Topology(topology) => f.debug_tuple("Topology").field(topology).finish(),
        }
    }
}

/// Configures and builds a [`TieredCache`]; obtained from [`TieredCache::builder`].
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
pub struct TieredCacheBuilder<K, V> {
    namespace: String,
    key_prefix: String,
    l1_max_entries: u64,
    l1_max_bytes: u64,
    l1_ttl: Duration,
    l2_ttl: Duration,
    negative_ttl: Duration,
    ttl_jitter: f64,
    codec: Arc<dyn Codec<V>>,
    compression_threshold: Option<usize>,
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
    fail_safe_window: Duration,
    fail_safe_throttle: Duration,
    soft_timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    eager_refresh: Option<f64>,
    write_behind: Option<(Arc<dyn Flush<K, V>>, Duration)>,
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
        f.debug_struct("TieredCacheBuilder")
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
            .field("redis", &self.redis)
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
            .field("eager_refresh", &self.eager_refresh)
            .field(
                "write_behind_interval",
                &self.write_behind.as_ref().map(|(_, interval)| interval),
            )
            .finish()
    }
}

impl<K, V> TieredCacheBuilder<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) fn new() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            l1_max_entries: DEFAULT_L1_MAX_ENTRIES,
            l1_max_bytes: DEFAULT_L1_MAX_BYTES,
            l1_ttl: DEFAULT_L1_TTL,
            l2_ttl: DEFAULT_L2_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            ttl_jitter: DEFAULT_TTL_JITTER,
            codec: Arc::new(JsonCodec),
            compression_threshold: None,
            redis: RedisSetting::None,
            l2_timeout: DEFAULT_L2_TIMEOUT,
            l2_connect_timeout: DEFAULT_L2_CONNECT_TIMEOUT,
            breaker_failure_threshold: DEFAULT_BREAKER_FAILURE_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            bus: true,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            change_log_len: DEFAULT_CHANGE_LOG_LEN,
            client_tracking: true,
            versioning: None,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            fail_safe_window: Duration::ZERO,
            fail_safe_throttle: DEFAULT_FAIL_SAFE_THROTTLE,
            soft_timeout: None,
            hard_timeout: None,
            eager_refresh: None,
            write_behind: None,
            _key: PhantomData,
        }
    }

    /// Names this cache's keyspace; Redis keys are
    /// `{key_prefix}{namespace}:{key}`. Default [`DEFAULT_NAMESPACE`].
    ///
    /// Caches of different value types sharing one Redis must use different
    /// namespaces. Must be non-empty and must not contain `:`, so that
    /// [`clear`](TieredCache::clear) of one namespace cannot match another's
    /// keys.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Prefix of every Redis key, shared by all caches of a service.
    /// Default [`DEFAULT_KEY_PREFIX`] (`cache:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Most entries L1 holds, negative entries included.
    /// Default [`DEFAULT_L1_MAX_ENTRIES`] (10,000).
    pub fn l1_max_entries(mut self, max: u64) -> Self {
        self.l1_max_entries = max;
        self
    }

    /// Most bytes L1 holds, an entry weighing its encoded size plus a small
    /// fixed overhead. Default [`DEFAULT_L1_MAX_BYTES`] (64 MiB).
    pub fn l1_max_bytes(mut self, max: u64) -> Self {
        self.l1_max_bytes = max;
        self
    }

    /// How long a value stays in L1. Default [`DEFAULT_L1_TTL`] (300 s).
    ///
    /// This bounds how long an instance can serve a value that was changed
    /// elsewhere without an invalidation reaching it.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl;
        self
    }

    /// How long a value stays in Redis. Default [`DEFAULT_L2_TTL`] (3,600 s).
    pub fn l2_ttl(mut self, ttl: Duration) -> Self {
        self.l2_ttl = ttl;
        self
    }

    /// How long "not found" is remembered, in both levels.
    /// Default [`DEFAULT_NEGATIVE_TTL`] (30 s). `Duration::ZERO` disables
    /// negative caching.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Fraction by which each stored TTL is randomly shortened, so entries
    /// filled together do not expire together. `0.1` stores a 300 s TTL as
    /// 270–300 s. Must be in `[0, 1)`. Default [`DEFAULT_TTL_JITTER`] (0.1).
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.ttl_jitter = fraction;
        self
    }

    /// How values are encoded in Redis. Default [`JsonCodec`].
    pub fn codec(mut self, codec: impl Codec<V>) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// Encoded values of at least this many bytes are LZ4-compressed in
    /// Redis (when that makes them smaller). Default `None`: never, so that
    /// JSON values stay readable by any client.
    pub fn compression_threshold(mut self, bytes: Option<usize>) -> Self {
        self.compression_threshold = bytes;
        self
    }

    /// Uses Redis as L2, given a URL in any form [`RedisTopology::parse`]
    /// accepts; parsed by [`build`](Self::build). Default: no L2.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis = RedisSetting::Url(url.into());
        self
    }

    /// Uses Redis as L2 at `topology`. Default: no L2.
    pub fn redis(mut self, topology: RedisTopology) -> Self {
        self.redis = RedisSetting::Topology(topology);
        self
    }

    /// Bound on every Redis call; a call that takes longer counts as an L2
    /// error and the lookup falls through. Default [`DEFAULT_L2_TIMEOUT`] (100 ms).
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.l2_timeout = timeout;
        self
    }

    /// Bound on every attempt to connect to Redis, including the one
    /// `build` waits for. Default [`DEFAULT_L2_CONNECT_TIMEOUT`] (1 s).
    pub fn l2_connect_timeout(mut self, timeout: Duration) -> Self {
        self.l2_connect_timeout = timeout;
        self
    }

    /// Consecutive failed Redis calls after which Redis is skipped (the
    /// circuit breaker opens). Default [`DEFAULT_BREAKER_FAILURE_THRESHOLD`] (5).
    pub fn breaker_failure_threshold(mut self, failures: u32) -> Self {
        self.breaker_failure_threshold = failures;
        self
    }

    /// How long Redis is skipped once the breaker opens before a probe is
    /// sent; also the probe interval while it stays down.
    /// Default [`DEFAULT_BREAKER_COOLDOWN`] (1 s).
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Whether this cache joins the invalidation bus (the pub/sub channel
    /// `{key_prefix}{namespace}:bus`) when Redis is configured. Default
    /// `true`; without Redis there is no bus whatever this says.
    ///
    /// Turn it off only for a cache that is never written to by more than
    /// one instance: without the bus other instances' L1 copies live until
    /// their L1 TTL.
    pub fn bus(mut self, enabled: bool) -> Self {
        self.bus = enabled;
        self
    }

    /// How often this instance publishes a heartbeat on the bus. A
    /// connection that hears nothing (not even its own heartbeats) for
    /// three intervals is presumed dead: it is rebuilt and the change log
    /// replayed. Default [`DEFAULT_HEARTBEAT_INTERVAL`] (1 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How many bus messages the change log (`{key_prefix}{namespace}:bus:log`,
    /// a capped Redis stream) keeps, about. An instance that missed
    /// messages replays them from the log and drops only the keys they
    /// named; one that was away longer than the log reaches back empties
    /// its L1 instead. Each entry is one coalesced message (up to 500 keys).
    /// Default [`DEFAULT_CHANGE_LOG_LEN`] (10,000).
    pub fn change_log_len(mut self, entries: usize) -> Self {
        self.change_log_len = entries;
        self
    }

    /// Whether the bus asks Redis for client tracking of this cache's keys
    /// (`CLIENT TRACKING ON BCAST PREFIX {key_prefix}{namespace}: NOLOOP`),
    /// so that a value changed, deleted, expired or evicted in Redis by
    /// anyone (another service, a script, `redis-cli`) leaves every
    /// instance's L1 within the bus's delay. Default `true`; on a cluster
    /// every primary is tracked. Costs one invalidation message per changed
    /// key per instance; an instance that holds the key reads it back once
    /// to tell its own writes from others' (in an unversioned cache on a
    /// cluster, its own writes drop its copy: the next read is an L2 hit).
    pub fn client_tracking(mut self, enabled: bool) -> Self {
        self.client_tracking = enabled;
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
    /// [`TieredCache::invalidate_version`], which leaves a short-lived
    /// tombstone (see [`tombstone_ttl`](Self::tombstone_ttl)) instead of
    /// deleting. Off by default: sets are plain `SET`s.
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

    /// How long a tombstone left by [`TieredCache::invalidate_version`]
    /// refuses older versions. It must outlast the slowest load that can
    /// race a write (bound it with [`loader_timeouts`](Self::loader_timeouts)).
    /// Default [`DEFAULT_TOMBSTONE_TTL`] (60 s).
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// Turns on fail-safe: an L1 entry past its TTL is kept `window` longer
    /// as a fallback, answered (as [`Source::Stale`](crate::Source::Stale))
    /// when the loader fails or times out. After such an answer the loader
    /// of that key is not retried for `throttle`; reads in between get the
    /// stale value at once. Redis copies are not kept longer: they are
    /// served until their own TTL.
    ///
    /// Default: off (`window` zero); throttle [`DEFAULT_FAIL_SAFE_THROTTLE`].
    pub fn fail_safe(mut self, window: Duration, throttle: Duration) -> Self {
        self.fail_safe_window = window;
        self.fail_safe_throttle = throttle;
        self
    }

    /// Loader timeouts. After `soft`, a caller that has a stale fallback
    /// (see [`fail_safe`](Self::fail_safe)) gets it, while the load goes on
    /// in the background and fills the cache when it finishes. After
    /// `hard`, the load is abandoned: the caller gets the stale fallback if
    /// there is one, else [`Error::Loader`] with a [`LoaderTimedOut`](crate::LoaderTimedOut).
    /// Default: neither.
    pub fn loader_timeouts(mut self, soft: Option<Duration>, hard: Option<Duration>) -> Self {
        self.soft_timeout = soft;
        self.hard_timeout = hard;
        self
    }

    /// Turns on write-behind (see [`TieredCache::write_behind`]): changes
    /// are queued in a Redis Stream and `flush` writes them to the store in
    /// batches, polling every `interval` when idle. Needs a versioned cache
    /// and a single Redis node (not a cluster). Default: off.
    pub fn write_behind(mut self, flush: impl Flush<K, V>, interval: Duration) -> Self {
        self.write_behind = Some((Arc::new(flush), interval));
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

    /// Builds the cache.
    ///
    /// With Redis configured, makes one connection attempt (bounded by
    /// [`l2_connect_timeout`](Self::l2_connect_timeout)) and returns whether
    /// or not it succeeded: an unreachable Redis yields a working cache whose
    /// L2 is [`Down`](crate::L2State::Down) and reconnects in the background.
    /// Must be called within a Tokio runtime when Redis is configured.
    ///
    /// With Redis up and the bus on, also waits (at most the connect
    /// timeout) until the bus is subscribed; otherwise the bus keeps
    /// subscribing in the background (see
    /// [`TieredCache::wait_subscribed`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid setting: zero L1 bounds, a namespace
    /// that is empty or contains `:`, a jitter outside `[0, 1)`, zero
    /// timeouts, a zero breaker cooldown or heartbeat interval, or a Redis
    /// URL that does not parse.
    pub async fn build(self) -> Result<TieredCache<K, V>, Error> {
        if self.namespace.is_empty() || self.namespace.contains(':') {
            return Err(Error::config(format!(
                "namespace must be non-empty and contain no ':' (got {:?})",
                self.namespace
            )));
        }
        if !(0.0..1.0).contains(&self.ttl_jitter) {
            return Err(Error::config(format!(
                "ttl_jitter must be in [0, 1) (got {})",
                self.ttl_jitter
            )));
        }
        if self.breaker_cooldown.is_zero() {
            return Err(Error::config("breaker_cooldown must be positive"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(Error::config("heartbeat_interval must be positive"));
        }
        if self.change_log_len == 0 {
            return Err(Error::config("change_log_len must be positive"));
        }
        if let Some(fraction) = self.eager_refresh
            && !(fraction > 0.0 && fraction < 1.0)
        {
            return Err(Error::config(format!(
                "eager_refresh must be in (0, 1) (got {fraction})"
            )));
        }
        if [self.soft_timeout, self.hard_timeout].contains(&Some(Duration::ZERO)) {
            return Err(Error::config("loader timeouts must be positive"));
        }
        if self.versioning.is_some() && self.tombstone_ttl.is_zero() {
            return Err(Error::config("tombstone_ttl must be positive"));
        }
        if let Some((_, interval)) = &self.write_behind {
            if self.versioning.is_none() {
                return Err(Error::config("write-behind needs a versioned cache"));
            }
            if interval.is_zero() {
                return Err(Error::config("the write-behind interval must be positive"));
            }
            match &self.redis {
                RedisSetting::None => {
                    return Err(Error::config(
                        "write-behind needs Redis: its queue is a Redis Stream",
                    ));
                }
                RedisSetting::Url(url) if RedisTopology::parse(url)?.is_cluster() => {
                    return Err(Error::config(
                        "write-behind needs a single Redis node, not a cluster",
                    ));
                }
                RedisSetting::Topology(topology) if topology.is_cluster() => {
                    return Err(Error::config(
                        "write-behind needs a single Redis node, not a cluster",
                    ));
                }
                RedisSetting::Url(_) | RedisSetting::Topology(_) => {}
            }
        }
        let topology = match self.redis {
            RedisSetting::None => None,
            RedisSetting::Url(url) => Some(RedisTopology::parse(&url)?),
            RedisSetting::Topology(topology) => Some(topology),
        };
        let local = LocalLevel::new(LocalCache::new(self.l1_max_entries, self.l1_max_bytes)?);
        let l2 = match topology {
            None => None,
            Some(topology) => Some(
                RemoteCache::connect(RemoteConfig {
                    topology,
                    timeout: self.l2_timeout,
                    connect_timeout: self.l2_connect_timeout,
                    breaker: BreakerConfig {
                        failure_threshold: self.breaker_failure_threshold,
                        cooldown: self.breaker_cooldown,
                    },
                })
                .await?,
            ),
        };
        let key_prefix = format!("{}{}:", self.key_prefix, self.namespace);
        let own_writes = Arc::new(OwnWrites::new());
        let bus = match &l2 {
            Some(l2) if self.bus => {
                let config = BusConfig {
                    channel: format!("{key_prefix}bus"),
                    heartbeat_interval: self.heartbeat_interval,
                    log: LogConfig {
                        key: format!("{key_prefix}{LOG_SUFFIX}"),
                        max_len: self.change_log_len,
                    },
                    key_prefix: key_prefix.clone(),
                    tracking: self.client_tracking,
                };
                let sink = L1Handle {
                    local: local.clone(),
                    versions: self
                        .versioning
                        .clone()
                        .map(|versioning| (Arc::clone(&self.codec), versioning)),
                    own_writes: Arc::clone(&own_writes),
                };
                let bus = Bus::start(l2.clone(), config, Arc::new(sink));
                if l2.state() == crate::L2State::Up {
                    bus.wait_subscribed(self.l2_connect_timeout).await;
                }
                Some(bus)
            }
            _ => None,
        };
        let settings = Settings {
            key_prefix,
            l1_ttl: self.l1_ttl,
            l2_ttl: self.l2_ttl,
            negative_ttl: self.negative_ttl,
            ttl_jitter: self.ttl_jitter,
            compression_threshold: self.compression_threshold,
            tombstone_ttl: self.tombstone_ttl,
            fail_safe_window: self.fail_safe_window,
            fail_safe_throttle: self.fail_safe_throttle,
            soft_timeout: self.soft_timeout,
            hard_timeout: self.hard_timeout,
            eager_refresh: self.eager_refresh,
        };
        let write_behind = match (self.write_behind, &l2, &self.versioning) {
            (Some((flush, interval)), Some(l2), Some(versioning)) => Some(WriteBehind::start(
                l2.clone(),
                Arc::clone(&self.codec),
                &settings.key_prefix,
                &versioning.field,
                write_behind::Config { flush, interval },
            )),
            _ => None,
        };
        Ok(TieredCache::from_parts(Parts {
            local,
            l2,
            bus,
            write_behind,
            codec: self.codec,
            versioning: self.versioning,
            own_writes,
            settings,
        }))
    }
}
