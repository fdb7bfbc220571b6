//! The read paths of [`TieredCache`]: one key (L1, then single-flight over
//! L2 and the loader, with fail-safe answers) and a batch (L1, one `MGET`,
//! one loader call), filling the levels above the one that answered.
//!
//! Invariant: no cache level can fail a caller. L2 trouble (errors,
//! timeouts, undecodable values) is a miss; the only error a read returns
//! is the loader's own.

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::counters::Counter;
#[cfg(feature = "redis")]
use super::l2_read::L2Answer;
use super::local_level::Filled;
use super::{
    CacheKey, EntryOptions, FlightResult, Inner, Loaded, Lookup, Policy, Shared, Source,
    TieredCache,
};
use crate::events::{CacheEvent, StaleReason};
use crate::fence::Ticket;
use crate::load_error::{Failure, LoadError};
use crate::local::Probe;

/// A fail-safe fallback: an expired L1 value and its weight.
struct Fallback<V> {
    value: Shared<V>,
    bytes: u64,
}

impl<K, V> TieredCache<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
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
    /// [`LoadError`] when the loader (this caller's or the one it waited
    /// for) fails, panics or hits the hard timeout and no stale fallback
    /// exists: the loader's own error comes back as
    /// [`LoadError::Loader`]`(Arc<E>)`. Cache-level failures are never
    /// errors.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// let lookup = cache
    ///     .get_or_load(&7, || async { Ok::<_, StoreDown>(Some("widget".to_owned())) })
    ///     .await?;
    /// assert_eq!(lookup.source, Source::Loader);
    /// assert_eq!(lookup.value.as_deref().map(String::as_str), Some("widget"));
    /// # Ok(())
    /// # }
    /// ```
    // Not an `async fn` around `get_or_load_with`: its future would wrap
    // that one, and a hit would pay for moving the larger state machine.
    pub fn get_or_load<'a, F, Fut, E>(
        &'a self,
        key: &'a K,
        loader: F,
    ) -> impl Future<Output = Result<Lookup<V>, LoadError<E>>> + 'a
    where
        F: FnOnce() -> Fut + 'a,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: StdError + Send + Sync + 'static,
    {
        const DEFAULTS: EntryOptions = EntryOptions::new();
        self.get_or_load_with(key, &DEFAULTS, move || {
            let load = loader();
            async move { load.await.map(Loaded::from) }
        })
    }

    /// [`get_or_load`](Self::get_or_load) with this call's own settings
    /// (TTLs, levels, fail-safe, timeouts, eager refresh: see
    /// [`EntryOptions`]), and a loader that may decide how long what it
    /// loaded is cached, or that it is not cached at all (see [`Loaded`]).
    ///
    /// # Errors
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tiercache::{EntryOptions, Loaded, Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// let options = EntryOptions::new().fail_safe_window(None);
    /// // The store says how long this page may be cached.
    /// let page = cache
    ///     .get_or_load_with(&7, &options, || async {
    ///         let draft = true;
    ///         let ttl = if draft { Duration::from_secs(5) } else { Duration::from_secs(600) };
    ///         Ok::<_, StoreDown>(Loaded::found("draft page".to_owned()).ttl(ttl))
    ///     })
    ///     .await?;
    /// assert_eq!(page.source, Source::Loader);
    ///
    /// // An answer that must not be cached: the next read loads again.
    /// let once = cache
    ///     .get_or_load_with(&8, &options, || async {
    ///         Ok::<_, StoreDown>(Loaded::found("one-off".to_owned()).uncached())
    ///     })
    ///     .await?;
    /// assert_eq!(once.source, Source::Loader);
    /// let again = cache
    ///     .get_or_load(&8, || async { Ok::<_, StoreDown>(None) })
    ///     .await?;
    /// assert_eq!((again.source, again.value), (Source::Loader, None));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_load_with<F, Fut, E>(
        &self,
        key: &K,
        options: &EntryOptions,
        loader: F,
    ) -> Result<Lookup<V>, LoadError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: StdError + Send + Sync + 'static,
    {
        let probe = if options.reads_l1() {
            self.inner.local.l1.probe(key)
        } else {
            Probe::Missing
        };
        let stale = match probe {
            Probe::Fresh { value, refresh } => {
                if value.is_none() {
                    self.inner.counters.incr(Counter::NegativeHits);
                }
                if refresh && options.refreshes() {
                    let policy = options.apply(&self.inner.settings.policy);
                    self.inner.refresh(key, loader, policy);
                }
                return Ok(Lookup {
                    value,
                    source: Source::L1,
                });
            }
            Probe::Degraded(value) if options.serves_stale() => {
                self.inner.counters.incr(Counter::StaleThrottled);
                self.inner.stale_answer(key, StaleReason::Throttled);
                return Ok(Lookup {
                    value,
                    source: Source::Stale,
                });
            }
            Probe::Stale { value, bytes } if options.serves_stale() => {
                Some(Fallback { value, bytes })
            }
            Probe::Degraded(_) | Probe::Stale { .. } | Probe::Missing => None,
        };
        let inner = &self.inner;
        let policy = options.apply(&inner.settings.policy);
        // Boxed so that the hit path's future stays small: the fill's state
        // (Redis calls, the caller's loader) is large, and inline it would
        // make every caller's future that large, allocated and moved on
        // every call, hits included.
        // Keyed by the loader's error type too, so that every waiter gets
        // a failure of the type it expects.
        let flight = (key.clone(), TypeId::of::<E>());
        let (result, ran) = Box::pin(
            inner
                .flights
                .run(&flight, || Inner::fill(inner, key, loader, stale, policy)),
        )
        .await;
        if !ran {
            inner.counters.incr(Counter::Coalesced);
        }
        match result {
            Ok((value, source)) => Ok(Lookup { value, source }),
            Err(failure) => Err(failure.typed()),
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
    /// [`LoadError`] when the loader fails; nothing is cached then.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// let found = cache
    ///     .get_many_or_load(&[1, 2, 3], |missing| async move {
    ///         // One store query for every key no level had.
    ///         Ok::<_, StoreDown>(missing.into_iter().map(|id| (id, format!("item {id}"))).collect())
    ///     })
    ///     .await?;
    /// assert_eq!(found.len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_many_or_load<F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<(K, Lookup<V>)>, LoadError<E>>
    where
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let ticket = inner.local.ticket();
        let mut answers: HashMap<&K, Lookup<V>> = HashMap::with_capacity(keys.len());
        let mut missing: Vec<&K> = Vec::new();
        let mut seen: HashSet<&K> = HashSet::with_capacity(keys.len());
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            match inner.local.l1.get(key) {
                Some(value) => {
                    if value.is_none() {
                        inner.counters.incr(Counter::NegativeHits);
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
            #[cfg(feature = "redis")]
            {
                missing = inner.fill_many_from_l2(missing, &mut answers, ticket).await;
            }
        }
        if !missing.is_empty() {
            inner.counters.incr(Counter::Loads);
            let load = loader(missing.iter().map(|k| (*k).clone()).collect());
            let mut loaded = match inner
                .bounded(load, inner.settings.policy.hard_timeout)
                .await
            {
                Ok(loaded) => loaded,
                Err(error) => {
                    inner.counters.incr(Counter::LoaderErrors);
                    return Err(error.typed());
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
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The leader's half of a miss: L2, then the loader, filling on the way
    /// back; `stale` is the fail-safe fallback, if any.
    async fn fill<F, Fut, E>(
        self: &Arc<Self>,
        key: &K,
        loader: F,
        stale: Option<Fallback<V>>,
        policy: Policy,
    ) -> FlightResult<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: StdError + Send + Sync + 'static,
    {
        let ticket = self.local.ticket();
        // A flight that finished between our L1 miss and our joining may
        // have filled L1 already.
        if policy.use_l1
            && let Some(value) = self.local.l1.peek(key)
        {
            return Ok((value, Source::L1));
        }
        #[cfg(feature = "redis")]
        let lease = match self.read_l2(key, ticket, &policy).await {
            L2Answer::Hit(value) => return Ok((value, Source::L2)),
            L2Answer::Miss { lease } => lease,
        };
        self.counters.incr(Counter::Loads);
        let load = self.load_and_store(loader(), key, ticket, policy);
        let loaded = match (policy.soft_timeout, &stale) {
            (Some(soft), Some(fallback)) => {
                // In a task, so that it can finish (and fill the cache)
                // after we answered with the fallback.
                let mut task = tokio::spawn(load);
                match tokio::time::timeout(soft, &mut task).await {
                    Ok(joined) => joined.unwrap_or(Err(Failure::Panicked)),
                    Err(_) => {
                        self.counters.incr(Counter::SoftTimeouts);
                        self.counters.incr(Counter::StaleSoftTimeout);
                        self.stale_answer(key, StaleReason::SoftTimeout);
                        self.degrade(key, fallback, ticket, &policy);
                        if task.is_finished() {
                            // Its fresh value may have landed before our
                            // fallback and been overwritten: make it a miss.
                            self.local.l1.remove(key);
                        }
                        return Ok((fallback.value.clone(), Source::Stale));
                    }
                }
            }
            _ => load.await,
        };
        // (A load that outlived the soft timeout keeps its lease until it
        // expires: waiters find its value once it lands.)
        #[cfg(feature = "redis")]
        if let Some((l2, token)) = lease {
            self.release_lease(l2, key, &token).await;
        }
        match (loaded, stale) {
            (Ok(value), _) => Ok((value, Source::Loader)),
            // A fallback invalidated while we loaded is known to be old.
            (Err(error), Some(fallback)) if !self.local.crossed(key, ticket) => {
                self.counters.incr(Counter::StaleLoaderError);
                self.stale_answer(key, StaleReason::LoaderError);
                self.stale_log.warn(|suppressed| {
                    tracing::warn!(%error, suppressed, "loader failed; serving a stale value");
                });
                self.degrade(key, &fallback, ticket, &policy);
                Ok((fallback.value, Source::Stale))
            }
            (Err(error), _) => Err(error),
        }
    }

    /// Runs a load (bounded by the hard timeout) and stores its result as
    /// `policy` and the loader say.
    pub(super) fn load_and_store<Fut, E>(
        self: &Arc<Self>,
        load: Fut,
        key: &K,
        ticket: Ticket,
        policy: Policy,
    ) -> impl Future<Output = Result<Shared<V>, Failure>> + Send + 'static
    where
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: StdError + Send + Sync + 'static,
    {
        let inner = Arc::clone(self);
        let key = key.clone();
        async move {
            match inner.bounded(load, policy.hard_timeout).await {
                Ok(loaded) => {
                    let policy = policy.for_loaded(&loaded);
                    let value = loaded.value.map(Arc::new);
                    if loaded.cached {
                        inner.store(&key, value.clone(), ticket, &policy).await;
                    } else {
                        // Not even a fail-safe fallback stays: the next read loads.
                        inner.local.l1.remove(&key);
                    }
                    Ok(value)
                }
                Err(error) => {
                    inner.counters.incr(Counter::LoaderErrors);
                    Err(error)
                }
            }
        }
    }

    /// Awaits a loader, abandoning it at `hard_timeout`.
    pub(super) async fn bounded<T, E>(
        &self,
        load: impl Future<Output = Result<T, E>>,
        hard_timeout: Option<Duration>,
    ) -> Result<T, Failure>
    where
        E: StdError + Send + Sync + 'static,
    {
        // A debug span per load (`RUST_LOG=tiercache=debug`); with debug
        // off it costs one level check.
        let span = tracing::debug_span!("load", cache = %self.settings.name, level = "loader");
        let started = self.loader_timing.start();
        let result = match hard_timeout {
            None => load.instrument(span).await.map_err(Failure::loader),
            Some(limit) => match tokio::time::timeout(limit, load).instrument(span).await {
                Ok(result) => result.map_err(Failure::loader),
                Err(_) => {
                    self.counters.incr(Counter::HardTimeouts);
                    Err(Failure::TimedOut(limit))
                }
            },
        };
        self.loader_timing.record(started);
        result
    }

    fn stale_answer(&self, key: &K, reason: StaleReason) {
        self.local.events.emit(|| CacheEvent::StaleAnswer {
            key: key.to_string(),
            reason,
        });
    }

    /// Keeps a fail-safe answer in L1 for the throttle time, so that the
    /// failing loader is not called again by every request meanwhile.
    fn degrade(&self, key: &K, fallback: &Fallback<V>, ticket: Ticket, policy: &Policy) {
        let weight = usize::try_from(fallback.bytes).unwrap_or(usize::MAX);
        let life = self.degraded_lifetime(policy);
        self.insert_fenced(key, fallback.value.clone(), weight, life, ticket);
    }

    /// Puts a value that was loaded under `ticket` into L1, unless its key
    /// was invalidated meanwhile. A policy that keeps it out of L1 (skipped,
    /// or a zero TTL) removes the key instead: an older copy must not stay.
    pub(super) fn fill_l1(
        &self,
        key: &K,
        value: Shared<V>,
        weight: usize,
        ticket: Ticket,
        policy: &Policy,
    ) {
        let life = self.l1_lifetime(&value, policy);
        if !policy.use_l1 || life.fresh.is_zero() {
            self.local.l1.remove(key);
            return;
        }
        self.insert_fenced(key, value, weight, life, ticket);
    }

    /// [`LocalLevel::insert_fenced`](super::LocalLevel::insert_fenced), counted.
    pub(super) fn insert_fenced(
        &self,
        key: &K,
        value: Shared<V>,
        weight: usize,
        life: crate::local::Lifetime,
        ticket: Ticket,
    ) {
        if self.local.insert_fenced(key, value, weight, life, ticket) == Filled::Fenced {
            self.counters.incr(Counter::FencedFills);
        }
    }
}
