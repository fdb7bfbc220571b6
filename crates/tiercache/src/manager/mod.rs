//! [`TieredCache`]: cache-aside over L1 → L2 → loader.
//!
//! Owns the read paths (single, batch), the fill-on-the-way-back policy,
//! single-flight, negative caching, TTL jitter and the manager counters.
//! Levels themselves live in [`crate::local`] and [`crate::remote`]; the
//! plumbing of a miss (L2 lookups, write-backs, encoding, TTLs) in `fill`.
//!
//! Invariant: no cache level can fail a caller. L2 trouble (errors,
//! timeouts, undecodable values) is a miss; encoding trouble skips L2. The
//! only error a read returns is the loader's own.

use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builder::{TieredCacheBuilder, Versioning};
use crate::bus::Bus;
use crate::error::Error;
use crate::fence::Fences;
use crate::flight::Flights;
use crate::local::{LocalCache, Probe};
use crate::remote::codec::{self, Codec};
use crate::remote::{RemoteCache, Write};
use crate::stats::{
    BusState, BusStats, CacheStats, L2State, L2Stats, LoaderStats, StaleStats, Striped,
};
use crate::task::{AbortOnDrop, LogLimiter};
use crate::write_behind::{Change, Enqueue, Enqueued, WriteBehind};

mod fill;
mod own_writes;
mod refresh;
mod sink;
mod tags;
mod unapplied;

use fill::L2Write;
pub(crate) use own_writes::OwnWrites;
use refresh::Refreshes;
pub(crate) use sink::L1Handle;
pub(crate) use tags::Tags;
use unapplied::{Repair, Unapplied};

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

/// Which level answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Source {
    /// The in-process cache.
    L1,
    /// Redis.
    L2,
    /// The caller's loader (a miss in every level).
    Loader,
    /// A fail-safe answer: an expired L1 value, served because the loader
    /// failed, timed out, or failed recently (see the builder's `fail_safe`).
    Stale,
}

/// The answer to a lookup: the value (or "not found") and where it came from.
#[derive(Debug)]
pub struct Lookup<V> {
    /// The value, shared with the cache; `None` means the loader said it
    /// does not exist (possibly remembered as a negative entry).
    pub value: Option<Arc<V>>,
    /// The level that answered.
    pub source: Source,
}

impl<V> Clone for Lookup<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            source: self.source,
        }
    }
}

impl<V> Lookup<V> {
    /// Whether a value was found.
    pub fn is_found(&self) -> bool {
        self.value.is_some()
    }

    /// Whether a cache level answered with a current value (neither the
    /// loader nor a stale fallback).
    pub fn is_cache_hit(&self) -> bool {
        matches!(self.source, Source::L1 | Source::L2)
    }

    /// The value, dropping the source.
    pub fn into_value(self) -> Option<Arc<V>> {
        self.value
    }
}

/// Settings the manager applies on every fill; built by the builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `{key_prefix}{namespace}:`, the start of every Redis key of this cache.
    pub(crate) key_prefix: String,
    pub(crate) l1_ttl: Duration,
    pub(crate) l2_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) ttl_jitter: f64,
    pub(crate) compression_threshold: Option<usize>,
    pub(crate) tombstone_ttl: Duration,
    /// Zero: fail-safe off.
    pub(crate) fail_safe_window: Duration,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    /// Fraction of the L1 TTL after which a hit refreshes.
    pub(crate) eager_refresh: Option<f64>,
}

impl Settings {
    /// The bus's change log, which a clear of the cache leaves in place.
    pub(crate) fn change_log_key(&self) -> String {
        format!("{}{}", self.key_prefix, crate::bus::LOG_SUFFIX)
    }
}

/// What the builder hands to [`TieredCache::from_parts`].
pub(crate) struct Parts<K, V> {
    pub(crate) l1: LocalCache<K, Shared<V>>,
    pub(crate) l2: Option<RemoteCache>,
    pub(crate) bus: Option<Bus>,
    pub(crate) write_behind: Option<WriteBehind<K, V>>,
    pub(crate) codec: Arc<dyn Codec<V>>,
    pub(crate) versioning: Option<Versioning<V>>,
    pub(crate) fences: Arc<Fences>,
    pub(crate) own_writes: Arc<OwnWrites<K>>,
    pub(crate) tags: Arc<Tags>,
    pub(crate) settings: Settings,
}

// Manager counters (see `CacheStats` for meanings).
const NEGATIVE_HITS: usize = 0;
const L2_HITS: usize = 1;
const L2_MISSES: usize = 2;
const DECODE_ERRORS: usize = 3;
const LOADS: usize = 4;
const COALESCED: usize = 5;
const LOADER_ERRORS: usize = 6;
const STALE_LOADER_ERROR: usize = 7;
const STALE_SOFT_TIMEOUT: usize = 8;
const STALE_THROTTLED: usize = 9;
const SOFT_TIMEOUTS: usize = 10;
const HARD_TIMEOUTS: usize = 11;
const REFRESHES: usize = 12;
const REFRESH_ERRORS: usize = 13;
const GUARD_REJECTIONS: usize = 14;
const FENCED_FILLS: usize = 15;
const COUNTERS: usize = 16;

/// Per-entry weight on top of the encoded value: key, slot and map overhead.
const ENTRY_OVERHEAD: usize = 64;
/// Encoding, compression and decoding above this size run on the blocking
/// pool, so a huge value cannot stall a runtime worker.
const BLOCKING_FROM: usize = 64 * 1024;

type Shared<V> = Option<Arc<V>>;
type FlightResult<V> = Result<(Shared<V>, Source), Arc<dyn StdError + Send + Sync>>;

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
/// (counted in [`LoaderStats::coalesced`]); the other loaders are dropped
/// unrun. A loader error is handed to every waiter as the same
/// [`Error::Loader`] and is not cached. If the running caller is cancelled,
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
/// With [fail-safe](TieredCacheBuilder::fail_safe) on, an expired L1 entry
/// is kept for a while as a fallback: when the loader fails, or is slower
/// than the [soft timeout](TieredCacheBuilder::loader_timeouts), the caller
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
        f.debug_struct("TieredCache")
            .field("key_prefix", &self.inner.settings.key_prefix)
            .field("l1", &self.inner.l1)
            .field("l2", &self.inner.l2)
            .finish_non_exhaustive()
    }
}

struct Inner<K, V> {
    l1: LocalCache<K, Shared<V>>,
    l2: Option<RemoteCache>,
    /// Dropped with the last handle, which stops the bus tasks.
    bus: Option<Bus>,
    /// Dropped with the last handle, which stops the flusher.
    write_behind: Option<WriteBehind<K, V>>,
    codec: Arc<dyn Codec<V>>,
    versioning: Option<Versioning<V>>,
    fences: Arc<Fences>,
    /// Versioned writes on their way into L1 (shared with the bus sink).
    own_writes: Arc<OwnWrites<K>>,
    tags: Arc<Tags>,
    flights: Flights<K, FlightResult<V>>,
    refreshes: Refreshes<K>,
    settings: Settings,
    counters: Striped<COUNTERS>,
    /// Rate limit of the "serving stale" warnings.
    stale_log: LogLimiter,
    /// Invalidations Redis has not taken yet; shared with their repair task.
    unapplied: Arc<Unapplied<K>>,
    /// Retries them; stops with the last handle.
    _repair: Option<AbortOnDrop>,
}

impl<K, V> TieredCache<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts configuring a cache; see [`TieredCacheBuilder`] for the knobs
    /// and their defaults.
    pub fn builder() -> TieredCacheBuilder<K, V> {
        TieredCacheBuilder::new()
    }

    pub(crate) fn from_parts(parts: Parts<K, V>) -> Self {
        let unapplied = Arc::new(Unapplied::default());
        let repair_needed = parts.l2.is_some();
        Self {
            inner: Arc::new_cyclic(|inner| Inner {
                _repair: repair_needed.then(|| {
                    AbortOnDrop(tokio::spawn(unapplied::repair(
                        inner.clone(),
                        Arc::clone(&unapplied),
                    )))
                }),
                unapplied,
                l1: parts.l1,
                l2: parts.l2,
                bus: parts.bus,
                write_behind: parts.write_behind,
                codec: parts.codec,
                versioning: parts.versioning,
                fences: parts.fences,
                own_writes: parts.own_writes,
                tags: parts.tags,
                flights: Flights::new(),
                refreshes: Refreshes::new(),
                settings: parts.settings,
                counters: Striped::new(),
                stale_log: LogLimiter::default(),
            }),
        }
    }

    /// Returns the value for `key`: from L1, else Redis, else `loader`.
    ///
    /// An L2 hit fills L1; a loader result fills Redis and L1 (`Ok(None)` as
    /// a negative entry). Concurrent misses of one key run one loader (see
    /// the type-level docs). An L1 hit takes no lock beyond a shard read
    /// lock, allocates nothing and does not await.
    ///
    /// `loader` is only called on a miss (or for an eager refresh); the
    /// future it returns must own what it needs (`'static`), because a load
    /// may finish in the background after a soft timeout. Clone your
    /// handles inside `loader`, not before, to keep hits free of that cost.
    ///
    /// # Errors
    ///
    /// [`Error::Loader`] when the loader (this caller's or the one it
    /// waited for) fails or hits the hard timeout and no stale fallback
    /// exists. Cache-level failures are never errors.
    pub async fn get_or_load<F, Fut, E>(&self, key: &K, loader: F) -> Result<Lookup<V>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: StdError + Send + Sync + 'static,
    {
        let stale = match self.inner.l1.probe(key) {
            Probe::Fresh { value, refresh } => {
                if value.is_none() {
                    self.inner.counters.incr(NEGATIVE_HITS);
                }
                if refresh {
                    self.inner.refresh(key, loader);
                }
                return Ok(Lookup {
                    value,
                    source: Source::L1,
                });
            }
            Probe::Degraded(value) => {
                self.inner.counters.incr(STALE_THROTTLED);
                return Ok(Lookup {
                    value,
                    source: Source::Stale,
                });
            }
            Probe::Stale { value, bytes } => Some((value, bytes)),
            Probe::Missing => None,
        };
        let inner = &self.inner;
        // Boxed so that the hit path's future stays small: the fill's state
        // (Redis calls, the caller's loader) is large, and inline it would
        // make every caller's future that large, allocated and moved on
        // every call, hits included.
        let (result, ran) = Box::pin(
            inner
                .flights
                .run(key, || Inner::fill(inner, key, loader, stale)),
        )
        .await;
        if !ran {
            inner.counters.incr(COALESCED);
        }
        match result {
            Ok((value, source)) => Ok(Lookup { value, source }),
            Err(error) => Err(Error::Loader(error)),
        }
    }

    /// Returns the values for `keys`, in order (duplicates answered each
    /// time): L1 first, then one Redis `MGET` for the keys L1 lacked, then
    /// one `loader` call for the keys still missing.
    ///
    /// The loader gets each missing key once and returns the values it
    /// found; keys absent from its map are "not found" and stored as
    /// negative entries. Loaded values fill Redis in one pipeline, and L1.
    /// If every key is cached, the loader is not called.
    ///
    /// # Errors
    ///
    /// [`Error::Loader`] when the loader fails; nothing is cached then.
    pub async fn get_many_or_load<F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<(K, Lookup<V>)>, Error>
    where
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let ticket = inner.fences.start();
        let mut answers: HashMap<&K, Lookup<V>> = HashMap::with_capacity(keys.len());
        let mut missing: Vec<&K> = Vec::new();
        let mut seen: HashSet<&K> = HashSet::with_capacity(keys.len());
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            match inner.l1.get(key) {
                Some(value) => {
                    if value.is_none() {
                        inner.counters.incr(NEGATIVE_HITS);
                    }
                    answers.insert(
                        key,
                        Lookup {
                            value,
                            source: Source::L1,
                        },
                    );
                }
                None => missing.push(key),
            }
        }
        if !missing.is_empty() {
            missing = inner.fill_many_from_l2(missing, &mut answers, ticket).await;
        }
        if !missing.is_empty() {
            inner.counters.incr(LOADS);
            let load = loader(missing.iter().map(|k| (*k).clone()).collect());
            let mut loaded = match inner.bounded(load).await {
                Ok(loaded) => loaded,
                Err(error) => {
                    inner.counters.incr(LOADER_ERRORS);
                    return Err(Error::Loader(error));
                }
            };
            let mut fills = Vec::with_capacity(missing.len());
            for key in missing {
                let value = loaded.remove(key).map(Arc::new);
                fills.push(((*key).clone(), value.clone()));
                answers.insert(
                    key,
                    Lookup {
                        value,
                        source: Source::Loader,
                    },
                );
            }
            inner.store_many(fills, true, ticket).await;
        }
        Ok(keys
            .iter()
            .map(|key| {
                let answer = answers
                    .get(key)
                    .cloned()
                    .expect("every key was answered by L1, L2 or the loader");
                (key.clone(), answer)
            })
            .collect())
    }

    /// Stores `value` under `key` in Redis (one `SET … PX`, version-checked
    /// in a versioned cache) and L1, with the usual TTLs, then tells the
    /// other instances to drop their L1 copy. If the value cannot be
    /// encoded it is kept in L1 only. This is write-through: call it after
    /// the source of truth took the write.
    pub async fn set(&self, key: &K, value: V) {
        let inner = &*self.inner;
        let ticket = inner.fences.start();
        let value = Arc::new(value);
        let repair = inner.repair_for(Some(&value));
        if inner.store(key, Some(value), ticket).await == L2Write::Failed {
            // Redis may still hold the old version (L1 has the new one):
            // see `unapplied.rs`.
            inner.unapplied.record(key, repair);
        }
        inner.announce(std::slice::from_ref(key));
    }

    /// Removes `key` from Redis (`UNLINK`), then from this instance's L1,
    /// then tells the other instances to drop it from theirs.
    ///
    /// If Redis is unreachable, the removal is retried until Redis takes it,
    /// and this instance does not read the key from Redis meanwhile. In a
    /// versioned cache, writers should prefer
    /// [`invalidate_version`](Self::invalidate_version).
    pub async fn invalidate(&self, key: &K) {
        self.invalidate_many(std::slice::from_ref(key)).await;
    }

    /// Removes `keys` from Redis (one `UNLINK`), then from this instance's
    /// L1, then tells the other instances to drop them from theirs.
    pub async fn invalidate_many(&self, keys: &[K]) {
        let inner = &*self.inner;
        if let Some(l2) = &inner.l2 {
            let redis_keys: Vec<String> = keys.iter().map(|k| inner.redis_key(k)).collect();
            if !l2.delete(&redis_keys).await {
                for key in keys {
                    inner.unapplied.record(key, Repair::unlink());
                }
            }
        }
        inner.drop_local(keys);
        inner.announce(keys);
    }

    /// Invalidates `key` after a write that made `version` current (for a
    /// delete: one more than the deleted version). Redis gets a tombstone
    /// that refuses every older version for the tombstone TTL, so a slow
    /// reader that loaded the old value cannot put it back; then this
    /// instance's L1 and every other instance's drop the key.
    ///
    /// In an unversioned cache this is [`invalidate`](Self::invalidate).
    pub async fn invalidate_version(&self, key: &K, version: u64) {
        let inner = &*self.inner;
        let (Some(l2), Some(versioning)) = (&inner.l2, &inner.versioning) else {
            return self.invalidate(key).await;
        };
        let write = Write {
            key: inner.redis_key(key),
            value: codec::tombstone(version),
            ttl: inner.settings.tombstone_ttl,
            version: i64::try_from(version).unwrap_or(i64::MAX),
        };
        match l2.set(&write, Some(&versioning.field)).await {
            Some(true) => {}
            // Redis holds a newer version, which is fine.
            Some(false) => tracing::debug!(key = %write.key, version, "tombstone refused"),
            // Retried until Redis takes it; not trusted for `key` meanwhile.
            None => inner.unapplied.record(key, Repair::tombstone(version)),
        }
        inner.drop_local(std::slice::from_ref(key));
        inner.announce(std::slice::from_ref(key));
    }

    /// Write-behind (SPEC §4): records that `key` changed to `version` (for
    /// a delete: one more than the deleted version) in Redis, both in the
    /// cache (readers everywhere see it at once; a delete reads as
    /// "absent") and in the durable queue the flusher writes to the store
    /// from, in one atomic step; then in this instance's L1, and tells the
    /// other instances to drop their copy. Once this returns `Ok` the change
    /// survives a crash of this process.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when Redis holds `version` or a newer one (a
    /// concurrent writer won: read again and retry); [`Error::Unavailable`]
    /// when Redis cannot be used or the cache has no write-behind queue. In
    /// both cases nothing changed.
    pub async fn write_behind(
        &self,
        key: &K,
        version: u64,
        change: Change<V>,
    ) -> Result<(), Error> {
        let inner = &*self.inner;
        let (Some(queue), Some(versioning)) = (&inner.write_behind, &inner.versioning) else {
            return Err(Error::Unavailable);
        };
        let ticket = inner.fences.start();
        let (stored, payload, value, weight) = match change {
            Change::Put(value) => {
                let encoded = inner.codec.encode(&value).map_err(|error| {
                    tracing::error!(%error, "a write-behind value could not be encoded");
                    Error::Unavailable
                })?;
                let weight = ENTRY_OVERHEAD + encoded.len();
                let sealed = codec::seal(encoded.clone(), inner.settings.compression_threshold)
                    .map_err(|_| Error::Unavailable)?;
                let stored = codec::with_version(sealed, version);
                (stored, encoded, Some(Arc::new(value)), weight)
            }
            Change::Delete => (codec::deleted(version), Vec::new(), None, ENTRY_OVERHEAD),
        };
        let redis_key = inner.redis_key(key);
        let own_version = if value.is_some() {
            i64::try_from(version).unwrap_or(i64::MAX)
        } else {
            -1
        };
        let _own = inner.own_writes.begin(key, own_version);
        let enqueued = queue
            .enqueue(Enqueue {
                redis_key: &redis_key,
                key: key.to_string(),
                version,
                delete: value.is_none(),
                stored,
                ttl: inner.settings.l2_ttl,
                field: &versioning.field,
                payload,
            })
            .await;
        match enqueued {
            Enqueued::Queued => {
                inner.fill_written(key, value, weight, ticket);
                inner.announce(std::slice::from_ref(key));
                Ok(())
            }
            Enqueued::Conflict => {
                // Our copy is older than Redis's: the next read fetches it.
                inner.drop_local(std::slice::from_ref(key));
                Err(Error::Conflict)
            }
            Enqueued::Unavailable => Err(Error::Unavailable),
        }
    }

    /// Writes every queued write-behind change to the store, for at most
    /// `limit`; returns whether the queue is empty (`true` without one).
    /// For graceful shutdown (SPEC §4: drain before exit).
    pub async fn drain_write_behind(&self, limit: Duration) -> bool {
        match &self.inner.write_behind {
            Some(queue) => queue.drain(limit).await,
            None => true,
        }
    }

    /// Removes `key` from this instance's L1 only (e.g. on an invalidation
    /// message from another instance).
    pub fn invalidate_local(&self, key: &K) {
        self.inner.drop_local(std::slice::from_ref(key));
    }

    /// Removes every key of this cache (`{key_prefix}{namespace}:*`) from
    /// Redis, by `SCAN` + `UNLINK` in batches (never `KEYS` or `FLUSHDB`),
    /// then empties this instance's L1, then tells the other instances to
    /// empty theirs. The bus's change log stays: the clear is one of its
    /// entries.
    ///
    /// Keys written while the scan runs may survive it.
    pub async fn clear(&self) {
        let inner = &*self.inner;
        if let Some(l2) = &inner.l2 {
            match l2
                .clear_prefix(&inner.settings.key_prefix, &inner.settings.change_log_key())
                .await
            {
                Some(unlinked) => tracing::debug!(unlinked, "L2 cleared"),
                None => {
                    tracing::warn!("L2 clear did not complete; Redis is not trusted until it does");
                    inner.unapplied.distrust_all();
                }
            }
        }
        inner.clear_local();
        if let Some(bus) = &inner.bus {
            bus.publish_clear();
        }
    }

    /// Empties this instance's L1 only (and forgets the tag generations it
    /// knew; they are read from Redis again).
    pub fn clear_local(&self) {
        self.inner.clear_local();
    }

    /// Loads `keys` in batches of `batch_size` and stores every value the
    /// loader returns in Redis (one pipeline per batch) and L1, whether or
    /// not it was cached. Keys the loader does not return are skipped (no
    /// negative entries). Returns how many values were stored.
    ///
    /// # Errors
    ///
    /// [`Error::Loader`] from the first failing batch; the batches before it
    /// stay cached.
    pub async fn warm<F, Fut, E>(
        &self,
        keys: Vec<K>,
        batch_size: usize,
        mut loader: F,
    ) -> Result<usize, Error>
    where
        F: FnMut(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let mut warmed = 0;
        for batch in keys.chunks(batch_size.max(1)) {
            let ticket = inner.fences.start();
            inner.counters.incr(LOADS);
            let loaded = inner
                .bounded(loader(batch.to_vec()))
                .await
                .map_err(|error| {
                    inner.counters.incr(LOADER_ERRORS);
                    Error::Loader(error)
                })?;
            warmed += loaded.len();
            let warmed_keys: Vec<K> = loaded.keys().cloned().collect();
            let fills = loaded
                .into_iter()
                .map(|(key, value)| (key, Some(Arc::new(value))))
                .collect();
            inner.store_many(fills, false, ticket).await;
            inner.announce(&warmed_keys);
        }
        Ok(warmed)
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> CacheStats {
        let inner = &*self.inner;
        let count = |counter| inner.counters.sum(counter);
        CacheStats {
            l1: inner.l1.stats(),
            l2: L2Stats {
                hits: count(L2_HITS),
                misses: count(L2_MISSES),
                errors: inner.l2.as_ref().map_or(0, RemoteCache::errors),
                decode_errors: count(DECODE_ERRORS),
                guard_rejections: count(GUARD_REJECTIONS),
                state: self.l2_state(),
            },
            loader: LoaderStats {
                loads: count(LOADS),
                coalesced: count(COALESCED),
                errors: count(LOADER_ERRORS),
                soft_timeouts: count(SOFT_TIMEOUTS),
                hard_timeouts: count(HARD_TIMEOUTS),
                refreshes: count(REFRESHES),
                refresh_errors: count(REFRESH_ERRORS),
            },
            negative_hits: count(NEGATIVE_HITS),
            stale: StaleStats {
                loader_error: count(STALE_LOADER_ERROR),
                soft_timeout: count(STALE_SOFT_TIMEOUT),
                throttled: count(STALE_THROTTLED),
            },
            fenced_fills: count(FENCED_FILLS),
            write_behind: inner
                .write_behind
                .as_ref()
                .map(WriteBehind::stats)
                .unwrap_or_default(),
            bus: inner
                .bus
                .as_ref()
                .map_or_else(BusStats::disabled, Bus::stats),
        }
    }

    /// The current generation of `tag`: put it into the keys of the entries
    /// the tag covers (e.g. `format!("{generation}:{category}:{page}")`), so
    /// that [`invalidate_tags`](Self::invalidate_tags) makes them
    /// unreachable everywhere at once. See `manager/tags.rs` for why this
    /// is race-free.
    ///
    /// Known generations cost a map lookup; an unknown one costs a Redis
    /// `GET` (0 when Redis has none or is unreachable).
    pub async fn tag_generation(&self, tag: &str) -> u64 {
        let inner = &*self.inner;
        if let Some(generation) = inner.tags.get(tag) {
            return generation;
        }
        let stored = match &inner.l2 {
            Some(l2) => l2.get(inner.tag_key(tag)).await.flatten(),
            None => None,
        };
        let generation = stored
            .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
            .unwrap_or(0);
        inner.tags.raise(tag, generation)
    }

    /// Moves each tag to a new generation (in Redis, here, and through the
    /// bus on every other instance), so that every entry keyed with an older
    /// generation is never read again. If Redis is unreachable only this
    /// instance moves on (the others see a bus gap, or their L1 TTL).
    pub async fn invalidate_tags(&self, tags: &[&str]) {
        let inner = &*self.inner;
        let mut published = Vec::with_capacity(tags.len());
        for &tag in tags {
            let bumped = match &inner.l2 {
                Some(l2) => l2.bump_tag(&inner.tag_key(tag)).await,
                None => None,
            };
            let generation = match bumped {
                Some(generation) => inner.tags.raise(tag, generation),
                None => inner.tags.bump_local(tag),
            };
            published.push((tag.to_owned(), generation));
        }
        if let Some(bus) = &inner.bus {
            bus.publish_tags(published);
        }
    }

    /// Whether this instance listens to the invalidation bus right now:
    /// `Disabled` without Redis (or with the bus turned off), else
    /// `Subscribed` or `Connecting`.
    pub fn bus_state(&self) -> BusState {
        self.inner
            .bus
            .as_ref()
            .map_or(BusState::Disabled, Bus::state)
    }

    /// Waits until the invalidation bus is subscribed, at most `limit`, and
    /// returns whether it is; `true` at once when there is no bus.
    ///
    /// SPEC: an instance subscribes to the bus before it reports healthy.
    /// `build` already waits for the first subscription as long as it
    /// waits for Redis, so this only waits when Redis was slow or down.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(cache: tiercache::TieredCache<i64, String>) {
    /// use std::time::Duration;
    /// let healthy = cache.wait_subscribed(Duration::from_secs(5)).await;
    /// # }
    /// ```
    pub async fn wait_subscribed(&self, limit: Duration) -> bool {
        match &self.inner.bus {
            Some(bus) => bus.wait_subscribed(limit).await,
            None => true,
        }
    }

    /// The bus channel of this cache, `{key_prefix}{namespace}:bus`, or
    /// `None` without a bus.
    pub fn bus_channel(&self) -> Option<&str> {
        self.inner.bus.as_ref().map(Bus::channel)
    }

    /// Health of the Redis level: `Disabled` without Redis, else `Up` or `Down`.
    pub fn l2_state(&self) -> L2State {
        self.inner
            .l2
            .as_ref()
            .map_or(L2State::Disabled, RemoteCache::state)
    }

    /// The Redis key under which `key` is stored: `{key_prefix}{namespace}:{key}`.
    pub fn redis_key(&self, key: &K) -> String {
        self.inner.redis_key(key)
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
{
    /// Tells the other instances that `keys` changed.
    fn announce(&self, keys: &[K]) {
        if let Some(bus) = &self.bus {
            bus.publish_keys(keys.iter().map(ToString::to_string));
        }
    }

    /// Drops `keys` from L1, fencing out fills that are still loading them.
    fn drop_local(&self, keys: &[K]) {
        for key in keys {
            self.fences.invalidate(key);
            self.l1.remove(key);
        }
    }

    fn clear_local(&self) {
        self.fences.clear();
        self.l1.clear();
        self.tags.forget_all();
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}tag:{tag}", self.settings.key_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(build(|b| b).await.is_ok());
    }
}
