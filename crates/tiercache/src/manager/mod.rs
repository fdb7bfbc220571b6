//! [`TieredCache`]: cache-aside over L1 → L2 → loader.
//!
//! This file owns the type and its parts; the work is split by concept:
//! [`read`](self::read) (lookups, single-flight, fail-safe) with its Redis
//! half `l2_read`, `write` (write-through, invalidation, warming), `behind`
//! (write-behind), `options` (per-call settings), `observe` (stats, events,
//! metrics, L2 and bus state), `encode`/`decode` (stored forms), `ttl`
//! (lifetimes), `local_level` (L1 with its fences and tags, shared with the
//! bus), `counters`, `tags`, `refresh`, `lease` (the stampede lease),
//! `unapplied` (writes Redis missed) and the bus-facing `sink` and
//! `own_writes`. Levels themselves live in `local` and `remote`.

use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builder::TieredCacheBuilder;
#[cfg(feature = "redis")]
use crate::builder::Versioning;
#[cfg(feature = "redis")]
use crate::bus::Bus;
use crate::codec::Codec;
use crate::flight::Flights;
use crate::load_error::Failure;
#[cfg(feature = "redis")]
use crate::remote::RemoteCache;
#[cfg(any(feature = "redis", feature = "metrics"))]
use crate::task::AbortOnDrop;
use crate::task::LogLimiter;
#[cfg(feature = "metrics")]
use crate::telemetry::Telemetry;
use crate::timing::Timing;
#[cfg(feature = "redis")]
use crate::write_behind::WriteBehind;

#[cfg(feature = "redis")]
mod behind;
mod counters;
#[cfg(feature = "redis")]
mod decode;
mod encode;
#[cfg(feature = "redis")]
mod l2_read;
#[cfg(feature = "redis")]
mod lease;
mod local_level;
mod lookup;
mod observe;
mod options;
#[cfg(feature = "redis")]
mod own_writes;
mod read;
mod refresh;
#[cfg(feature = "redis")]
mod sink;
mod tags;
mod ttl;
#[cfg(feature = "redis")]
mod unapplied;
mod write;

use counters::Counters;
pub(crate) use local_level::LocalLevel;
pub use lookup::{Lookup, Source};
pub(crate) use options::Policy;
pub use options::{EntryOptions, Loaded};
#[cfg(feature = "redis")]
pub(crate) use own_writes::OwnWrites;
use refresh::Refreshes;
#[cfg(feature = "redis")]
pub(crate) use sink::L1Handle;
pub(crate) use tags::Tags;
#[cfg(feature = "redis")]
use unapplied::Unapplied;

/// Keys a [`TieredCache`] accepts: anything hashable whose `Display` form is
/// unique per key (it becomes the Redis key suffix) and parses back
/// (`FromStr`), e.g. `i64`, `u64`, `String`, `Uuid`.
///
/// Implemented for every type with those bounds; there is nothing to
/// implement by hand. Two keys that are not equal must not display equal,
/// or they would share a Redis entry. The invalidation bus sends keys as
/// their `Display` strings and the receiving instance parses them back to
/// drop them from its L1, so `key.to_string().parse()` should give `key`
/// again; a string that does not parse makes the receiver clear its whole
/// L1 instead (safe, but costly).
pub trait CacheKey: fmt::Display + FromStr + Eq + Hash + Clone + Send + Sync + 'static {}

impl<T> CacheKey for T where T: fmt::Display + FromStr + Eq + Hash + Clone + Send + Sync + 'static {}

/// Settings the manager applies on every fill; built by the builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `{key_prefix}{namespace}:`, the start of every Redis key of this cache.
    pub(crate) key_prefix: String,
    /// The namespace, naming the cache in traces.
    pub(crate) name: String,
    /// TTLs, fail-safe, timeouts and eager refresh, unless a call overrides them.
    pub(crate) policy: Policy,
    pub(crate) ttl_jitter: f64,
    pub(crate) compression_threshold: Option<usize>,
    #[cfg(feature = "redis")]
    pub(crate) tombstone_ttl: Duration,
    pub(crate) fail_safe_throttle: Duration,
    /// How long one instance may hold a key's load for the others (`lease`).
    #[cfg(feature = "redis")]
    pub(crate) stampede_lease: Option<Duration>,
}

#[cfg(feature = "redis")]
impl Settings {
    /// The bus's change log, which a clear of the cache leaves in place.
    pub(crate) fn change_log_key(&self) -> String {
        format!("{}{}", self.key_prefix, crate::bus::LOG_SUFFIX)
    }
}

/// What the builder hands to [`TieredCache::from_parts`].
pub(crate) struct Parts<K, V> {
    pub(crate) local: LocalLevel<K, V>,
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<RemoteCache>,
    #[cfg(feature = "redis")]
    pub(crate) bus: Option<Bus>,
    #[cfg(feature = "redis")]
    pub(crate) write_behind: Option<WriteBehind<K, V>>,
    pub(crate) codec: Arc<dyn Codec<V>>,
    pub(crate) loader_timing: Timing,
    #[cfg(feature = "metrics")]
    pub(crate) telemetry: Arc<Telemetry>,
    #[cfg(feature = "redis")]
    pub(crate) versioning: Option<Versioning<V>>,
    #[cfg(feature = "redis")]
    pub(crate) own_writes: Arc<OwnWrites<K>>,
    pub(crate) settings: Settings,
}

type Shared<V> = Option<Arc<V>>;
type FlightResult<V> = Result<(Shared<V>, Source), Failure>;

/// A multi-level cache: in-process L1, optional Redis L2, and the caller's
/// loader behind them.
///
/// Cloning is cheap (an `Arc`); clones share everything. `TieredCache` is
/// `Send + Sync` and every future it returns is `Send` when the loader's is.
///
/// # Reads
///
/// [`get_or_load`](Self::get_or_load) tries L1, then Redis, then the loader,
/// and fills the levels above the one that answered. "Not found" (`Ok(None)`
/// from the loader) is remembered for the negative TTL in both levels, so
/// floods of unknown keys do not reach the store.
///
/// # Concurrent calls on the same key
///
/// Concurrent misses of one key are coalesced: one caller's loader runs
/// (after one Redis lookup) and the others wait and receive the same result
/// (counted in [`LoaderStats::coalesced`](crate::LoaderStats::coalesced)); the other loaders are dropped
/// unrun. A loader error is handed to every waiter as the same
/// [`LoadError`](crate::LoadError) and is not cached. If the running caller is cancelled,
/// a waiting caller runs its own loader instead. Batch reads
/// ([`get_many_or_load`](Self::get_many_or_load)) are not coalesced.
///
/// # Consistency
///
/// Each level has its own TTL; an L2 hit refills L1 with a full L1 TTL.
/// Writes ([`set`](Self::set), [`invalidate`](Self::invalidate)) go to Redis
/// first, then L1. A load racing an invalidation never puts the old value
/// back into this instance's L1 (or another's, once the bus delivered the
/// invalidation): fills are fenced (see `fence.rs`). Redis is protected
/// from it in a [versioned](TieredCacheBuilder::versioned) cache, whose
/// writes are version-checked on the server and whose writers invalidate
/// with [`invalidate_version`](Self::invalidate_version); in an unversioned
/// one a racing load can put an old value back into Redis until its TTL.
/// If Redis fails or times out during a write's invalidation (or a
/// write-through `set`), the write still completes: this instance stops
/// trusting Redis for the key (its reads go to the loader) and retries the
/// invalidation in the background until Redis takes it, then announces
/// the key again on the bus (see `unapplied.rs`).
///
/// # Failures of the loader
///
/// With [fail-safe](TieredCacheBuilder::fail_safe_window) on, an expired L1 entry
/// is kept for a while as a fallback: when the loader fails, or is slower
/// than the [soft timeout](TieredCacheBuilder::soft_timeout), the caller
/// gets it as [`Source::Stale`] instead of an error or a wait, and the
/// failing loader is not retried for the throttle time. Invalidation
/// removes fallbacks too: a value known to be outdated is never served.
///
/// # Other instances
///
/// With Redis configured, every instance listens on the invalidation bus
/// (see the crate docs). [`set`](Self::set), [`invalidate`](Self::invalidate),
/// [`invalidate_many`](Self::invalidate_many), [`warm`](Self::warm) and
/// [`clear`](Self::clear) publish the keys they changed after changing
/// Redis, and every other instance drops them from its L1, typically within
/// milliseconds. Publishing is queued and coalesced by a background task:
/// these methods never wait for it. A service should wait for
/// [`wait_subscribed`](Self::wait_subscribed) before reporting healthy.
///
/// # Example
///
/// ```no_run
/// use std::collections::HashMap;
/// use tiercache::{Source, TieredCache};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("database unavailable")]
/// struct DbError;
///
/// # async fn example() -> Result<(), tiercache::Error> {
/// let cache: TieredCache<i64, String> = TieredCache::builder()
///     .namespace("greeting")
///     .redis_url("redis://127.0.0.1:6379")
///     .build()
///     .await?;
///
/// let hit = cache
///     .get_or_load(&1, || async { Ok::<_, DbError>(Some("hello".to_owned())) })
///     .await?;
/// assert_eq!(hit.value.as_deref().map(String::as_str), Some("hello"));
///
/// let again = cache.get_or_load(&1, || async { Ok::<_, DbError>(None) }).await?;
/// assert_eq!(again.source, Source::L1);
/// # Ok(())
/// # }
/// ```
pub struct TieredCache<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for TieredCache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V> fmt::Debug for TieredCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("TieredCache");
        debug
            .field("key_prefix", &self.inner.settings.key_prefix)
            .field("l1", &self.inner.local.l1);
        #[cfg(feature = "redis")]
        debug.field("l2", &self.inner.l2);
        debug.finish_non_exhaustive()
    }
}

struct Inner<K, V> {
    /// L1 with its fences and tag generations (shared with the bus sink).
    local: LocalLevel<K, V>,
    #[cfg(feature = "redis")]
    l2: Option<RemoteCache>,
    /// Dropped with the last handle, which stops the bus tasks.
    #[cfg(feature = "redis")]
    bus: Option<Bus>,
    /// Dropped with the last handle, which stops the flusher.
    #[cfg(feature = "redis")]
    write_behind: Option<WriteBehind<K, V>>,
    codec: Arc<dyn Codec<V>>,
    /// Where each loader call's duration is recorded.
    loader_timing: Timing,
    /// The series the cache publishes its counters to.
    #[cfg(feature = "metrics")]
    telemetry: Arc<Telemetry>,
    /// Publishes them every second; stops with the last handle.
    #[cfg(feature = "metrics")]
    _publisher: AbortOnDrop,
    #[cfg(feature = "redis")]
    versioning: Option<Versioning<V>>,
    /// Versioned writes on their way into L1 (shared with the bus sink).
    #[cfg(feature = "redis")]
    own_writes: Arc<OwnWrites<K>>,
    /// Loads in flight, by key and loader error type.
    flights: Flights<(K, std::any::TypeId), FlightResult<V>>,
    refreshes: Refreshes<K>,
    settings: Settings,
    counters: Counters,
    /// Rate limit of the "serving stale" warnings.
    stale_log: LogLimiter,
    /// Invalidations Redis has not taken yet; shared with their repair task.
    #[cfg(feature = "redis")]
    unapplied: Arc<Unapplied<K>>,
    /// Retries them; stops with the last handle.
    #[cfg(feature = "redis")]
    _repair: Option<AbortOnDrop>,
}

impl<K, V> TieredCache<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts configuring a cache; see [`TieredCacheBuilder`] for the knobs
    /// and their defaults.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{L2State, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// // Every setting has a default: this is an L1-only cache.
    /// let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// assert_eq!(cache.l2_state(), L2State::Disabled);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> TieredCacheBuilder<K, V> {
        TieredCacheBuilder::new()
    }

    pub(crate) fn from_parts(parts: Parts<K, V>) -> Self {
        #[cfg(feature = "redis")]
        let unapplied = Arc::new(Unapplied::default());
        Self {
            #[cfg_attr(
                not(any(feature = "redis", feature = "metrics")),
                allow(unused_variables)
            )]
            inner: Arc::new_cyclic(|inner| Inner {
                #[cfg(feature = "redis")]
                _repair: parts.l2.is_some().then(|| {
                    AbortOnDrop(tokio::spawn(unapplied::repair(
                        inner.clone(),
                        Arc::clone(&unapplied),
                    )))
                }),
                #[cfg(feature = "redis")]
                unapplied,
                local: parts.local,
                #[cfg(feature = "redis")]
                l2: parts.l2,
                #[cfg(feature = "redis")]
                bus: parts.bus,
                #[cfg(feature = "redis")]
                write_behind: parts.write_behind,
                codec: parts.codec,
                loader_timing: parts.loader_timing,
                #[cfg(feature = "metrics")]
                _publisher: AbortOnDrop(tokio::spawn(observe::publish_metrics(inner.clone()))),
                #[cfg(feature = "metrics")]
                telemetry: parts.telemetry,
                #[cfg(feature = "redis")]
                versioning: parts.versioning,
                #[cfg(feature = "redis")]
                own_writes: parts.own_writes,
                flights: Flights::new(),
                refreshes: Refreshes::new(),
                settings: parts.settings,
                counters: Counters::default(),
                stale_log: LogLimiter::default(),
            }),
        }
    }

    /// The Redis key under which `key` is stored: `{key_prefix}{namespace}:{key}`.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{BusState, L2State, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// assert_eq!(cache.redis_key(&7), "cache:default:7");
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis_key(&self, key: &K) -> String {
        self.inner.redis_key(key)
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
{
    /// Tells the other instances that `keys` changed.
    #[cfg_attr(not(feature = "redis"), expect(unused_variables))]
    fn announce(&self, keys: &[K]) {
        #[cfg(feature = "redis")]
        if let Some(bus) = &self.bus {
            bus.publish_keys(keys.iter().map(ToString::to_string));
        }
    }

    /// Whether this cache has a Redis level (up or down).
    fn has_l2(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.l2.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    fn redis_key(&self, key: &K) -> String {
        value_key(&self.settings.key_prefix, key)
    }
}

/// The Redis key of a cache key's value: `{key_prefix}{namespace}:` then
/// the key's `Display` string (also used by write-behind's flusher, which
/// has only the string).
pub(crate) fn value_key(key_prefix: &str, key: &impl fmt::Display) -> String {
    use std::fmt::Write as _;
    let mut redis_key = key_prefix.to_owned();
    write!(redis_key, "{key}").expect("writing to a String cannot fail");
    redis_key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[tokio::test]
    async fn redis_keys_are_prefix_namespace_key() {
        let cache: TieredCache<i64, String> = TieredCache::builder()
            .key_prefix("cache:")
            .namespace("product")
            .build()
            .await
            .unwrap();
        assert_eq!(cache.redis_key(&42), "cache:product:42");
        assert_eq!(cache.redis_key(&-1), "cache:product:-1");
    }

    #[tokio::test]
    async fn builder_rejects_bad_settings() {
        async fn build(
            f: impl FnOnce(TieredCacheBuilder<u64, String>) -> TieredCacheBuilder<u64, String>,
        ) -> Result<TieredCache<u64, String>, Error> {
            f(TieredCache::builder()).build().await
        }
        assert!(build(|b| b.namespace("")).await.unwrap_err().is_config());
        assert!(build(|b| b.namespace("a:b")).await.unwrap_err().is_config());
        assert!(build(|b| b.ttl_jitter(1.0)).await.unwrap_err().is_config());
        assert!(build(|b| b.ttl_jitter(-0.1)).await.unwrap_err().is_config());
        assert!(
            build(|b| b.l1_max_entries(0))
                .await
                .unwrap_err()
                .is_config()
        );
        #[cfg(feature = "redis")]
        {
            assert!(
                build(|b| b.redis_url("http://nope"))
                    .await
                    .unwrap_err()
                    .is_config()
            );
            assert!(
                build(|b| b.breaker_cooldown(Duration::ZERO))
                    .await
                    .unwrap_err()
                    .is_config()
            );
        }
        assert!(build(|b| b).await.is_ok());
    }
}
