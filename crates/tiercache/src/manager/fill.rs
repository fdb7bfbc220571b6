//! The manager's work behind a miss: asking L2, calling the loader, and
//! writing values back to the levels (encoding, compression, TTL jitter).
//!
//! Everything here absorbs cache-level failures: a value that cannot be
//! encoded is kept in L1 only, one that cannot be decoded is a miss.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BLOCKING_FROM, CacheKey, DECODE_ERRORS, ENTRY_OVERHEAD, FENCED_FILLS, FlightResult,
    GUARD_REJECTIONS, HARD_TIMEOUTS, Inner, L2_HITS, L2_MISSES, LOADER_ERRORS, LOADS, Lookup,
    NEGATIVE_HITS, REFRESH_ERRORS, REFRESHES, SOFT_TIMEOUTS, STALE_LOADER_ERROR,
    STALE_SOFT_TIMEOUT, Shared, Source,
};
use crate::error::LoaderTimedOut;
use crate::fence::Ticket;
use crate::local::Lifetime;
use crate::remote::Write;
use crate::remote::codec::{self, Codec, Opened};

type LoadError = Arc<dyn StdError + Send + Sync>;

/// Whether [`Inner::store`] left Redis as it should be (stored, refused as
/// older than what Redis holds, or not meant for Redis), or failed to
/// reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum L2Write {
    Done,
    Failed,
}

/// The loader error when the loader's task panicked.
#[derive(Debug, thiserror::Error)]
#[error("the cache loader panicked")]
struct LoaderPanicked;

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub(super) fn redis_key(&self, key: &K) -> String {
        use std::fmt::Write as _;
        let mut redis_key = self.settings.key_prefix.clone();
        write!(redis_key, "{key}").expect("writing to a String cannot fail");
        redis_key
    }

    /// The leader's half of a miss: L2, then the loader, filling on the way
    /// back; `stale` is the fail-safe fallback (value and weight), if any.
    pub(super) async fn fill<F, Fut, E>(
        self: &Arc<Self>,
        key: &K,
        loader: F,
        stale: Option<(Shared<V>, u64)>,
    ) -> FlightResult<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: StdError + Send + Sync + 'static,
    {
        let ticket = self.fences.start();
        // A flight that finished between our L1 miss and our joining may
        // have filled L1 already.
        if let Some(value) = self.l1.peek(key) {
            return Ok((value, Source::L1));
        }
        // Redis may hold a version older than a write it missed.
        let l2 = self.l2.as_ref().filter(|_| !self.unapplied.distrusts(key));
        if let Some(l2) = l2 {
            let mut found = match l2.get(self.redis_key(key)).await {
                Some(Some(stored)) => self.decode(stored).await,
                Some(None) | None => None,
            };
            if found.is_none() {
                found = self.pending_value(key).await;
            }
            if let Some((value, weight)) = found {
                self.record_l2_hit(&value);
                self.fill_l1(key, value.clone(), weight, ticket);
                return Ok((value, Source::L2));
            }
            self.counters.incr(L2_MISSES);
        }
        self.counters.incr(LOADS);
        let load = self.load_and_store(loader(), key, ticket);
        let loaded = match (self.settings.soft_timeout, &stale) {
            (Some(soft), Some((fallback, bytes))) => {
                // In a task, so that it can finish (and fill the cache)
                // after we answered with the fallback.
                let mut task = tokio::spawn(load);
                match tokio::time::timeout(soft, &mut task).await {
                    Ok(joined) => joined.unwrap_or_else(|_| Err(Arc::new(LoaderPanicked))),
                    Err(_) => {
                        self.counters.incr(SOFT_TIMEOUTS);
                        self.counters.incr(STALE_SOFT_TIMEOUT);
                        self.degrade(key, fallback.clone(), *bytes, ticket);
                        if task.is_finished() {
                            // Its fresh value may have landed before our
                            // fallback and been overwritten: make it a miss.
                            self.l1.remove(key);
                        }
                        return Ok((fallback.clone(), Source::Stale));
                    }
                }
            }
            _ => load.await,
        };
        match (loaded, stale) {
            (Ok(value), _) => Ok((value, Source::Loader)),
            // A fallback invalidated while we loaded is known to be old.
            (Err(error), Some((fallback, bytes))) if !self.fences.crossed(key, ticket) => {
                self.counters.incr(STALE_LOADER_ERROR);
                self.stale_log.warn(|suppressed| {
                    tracing::warn!(%error, suppressed, "loader failed; serving a stale value");
                });
                self.degrade(key, fallback.clone(), bytes, ticket);
                Ok((fallback, Source::Stale))
            }
            (Err(error), _) => Err(error),
        }
    }

    /// Runs a load (bounded by the hard timeout) and stores its result.
    fn load_and_store<Fut, E>(
        self: &Arc<Self>,
        load: Fut,
        key: &K,
        ticket: Ticket,
    ) -> impl Future<Output = Result<Shared<V>, LoadError>> + Send + 'static
    where
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: StdError + Send + Sync + 'static,
    {
        let inner = Arc::clone(self);
        let key = key.clone();
        async move {
            match inner.bounded(load).await {
                Ok(value) => {
                    let value = value.map(Arc::new);
                    inner.store(&key, value.clone(), ticket).await;
                    Ok(value)
                }
                Err(error) => {
                    inner.counters.incr(LOADER_ERRORS);
                    Err(error)
                }
            }
        }
    }

    /// Reloads `key` in the background (eager refresh), unless a refresh of
    /// it runs already or failed less than the fail-safe throttle ago.
    pub(super) fn refresh<F, Fut, E>(self: &Arc<Self>, key: &K, loader: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: StdError + Send + Sync + 'static,
    {
        if !self.refreshes.begin(key) {
            return;
        }
        self.counters.incr(REFRESHES);
        let ticket = self.fences.start();
        let load = self.load_and_store(loader(), key, ticket);
        let inner = Arc::clone(self);
        let key = key.clone();
        tokio::spawn(async move {
            let succeeded = match load.await {
                Ok(_) => true,
                Err(error) => {
                    inner.counters.incr(REFRESH_ERRORS);
                    tracing::debug!(%error, "eager refresh failed");
                    false
                }
            };
            let throttle =
                u64::try_from(inner.settings.fail_safe_throttle.as_millis()).unwrap_or(u64::MAX);
            inner.refreshes.end(&key, succeeded, throttle);
        });
    }

    /// Awaits a loader, abandoning it at the hard timeout.
    pub(super) async fn bounded<T, E>(
        &self,
        load: impl Future<Output = Result<T, E>>,
    ) -> Result<T, LoadError>
    where
        E: StdError + Send + Sync + 'static,
    {
        let Some(limit) = self.settings.hard_timeout else {
            return load.await.map_err(|e| Arc::new(e) as LoadError);
        };
        match tokio::time::timeout(limit, load).await {
            Ok(result) => result.map_err(|e| Arc::new(e) as LoadError),
            Err(_) => {
                self.counters.incr(HARD_TIMEOUTS);
                Err(Arc::new(LoaderTimedOut(limit)))
            }
        }
    }

    /// Keeps a fail-safe answer in L1 for the throttle time, so that the
    /// failing loader is not called again by every request meanwhile.
    fn degrade(&self, key: &K, value: Shared<V>, bytes: u64, ticket: Ticket) {
        let life = Lifetime {
            fresh: self.settings.fail_safe_throttle,
            stale: self.settings.fail_safe_window,
            refresh_after: None,
            degraded: true,
        };
        self.insert_fenced(
            key,
            value,
            usize::try_from(bytes).unwrap_or(usize::MAX),
            life,
            ticket,
        );
    }

    /// Puts a value that was loaded under `ticket` into L1, unless its key
    /// was invalidated meanwhile.
    fn fill_l1(&self, key: &K, value: Shared<V>, weight: usize, ticket: Ticket) {
        let life = self.l1_lifetime(&value);
        self.insert_fenced(key, value, weight, life, ticket);
    }

    /// Puts a value this instance wrote (write-behind) into L1 as fresh as a
    /// fill, negative entries included, unless invalidated meanwhile.
    pub(super) fn fill_written(&self, key: &K, value: Shared<V>, weight: usize, ticket: Ticket) {
        let life = if value.is_some() {
            self.l1_lifetime(&value)
        } else {
            Lifetime::ttl(self.jitter(self.settings.l1_ttl))
        };
        self.insert_fenced(key, value, weight, life, ticket);
    }

    fn insert_fenced(
        &self,
        key: &K,
        value: Shared<V>,
        weight: usize,
        life: Lifetime,
        ticket: Ticket,
    ) {
        self.l1.insert_with(key, value, weight, life);
        // After the insert: see `fence.rs` for why this order is race-free.
        if self.fences.crossed(key, ticket) {
            self.l1.remove(key);
            self.counters.incr(FENCED_FILLS);
        }
    }

    /// One `MGET` for `missing`; answers what it can and returns the rest.
    pub(super) async fn fill_many_from_l2<'k>(
        &self,
        missing: Vec<&'k K>,
        answers: &mut HashMap<&'k K, Lookup<V>>,
        ticket: Ticket,
    ) -> Vec<&'k K> {
        let Some(l2) = &self.l2 else {
            return missing;
        };
        // Keys Redis may hold old versions of go to the loader.
        let (missing, mut distrusted) = self.unapplied.split(missing);
        if missing.is_empty() {
            return distrusted;
        }
        let redis_keys: Vec<String> = missing.iter().map(|k| self.redis_key(k)).collect();
        let Some(stored) = l2.get_many(&redis_keys).await else {
            self.counters.add(L2_MISSES, missing.len() as u64);
            distrusted.extend(missing);
            return distrusted;
        };
        let mut still_missing = Vec::new();
        for (key, stored) in missing.into_iter().zip(stored) {
            let found = match stored {
                Some(stored) => self.decode(stored).await,
                None => None,
            };
            if !self.answer_from_l2(key, found, answers, ticket) {
                still_missing.push(key);
            }
        }
        let pending = match &self.write_behind {
            Some(queue) if !still_missing.is_empty() => {
                let keys: Vec<String> = still_missing.iter().map(ToString::to_string).collect();
                queue.pending(&keys).await
            }
            _ => None,
        };
        let mut pending = pending.unwrap_or_default().into_iter();
        let mut missing = Vec::new();
        for key in still_missing {
            let found = match pending.next().flatten() {
                Some(stored) => self.decode(stored).await,
                None => None,
            };
            if !self.answer_from_l2(key, found, answers, ticket) {
                self.counters.incr(L2_MISSES);
                missing.push(key);
            }
        }
        missing.extend(distrusted);
        missing
    }

    /// Records `found` (a value read from Redis: the cache or the
    /// write-behind queue) as `key`'s answer and fills L1; `false` if there
    /// is none.
    fn answer_from_l2<'k>(
        &self,
        key: &'k K,
        found: Option<(Shared<V>, usize)>,
        answers: &mut HashMap<&'k K, Lookup<V>>,
        ticket: Ticket,
    ) -> bool {
        let Some((value, weight)) = found else {
            return false;
        };
        self.record_l2_hit(&value);
        self.fill_l1(key, value.clone(), weight, ticket);
        answers.insert(
            key,
            Lookup {
                value,
                source: Source::L2,
            },
        );
        true
    }

    /// Write-behind: the newest queued value of `key`, which the store may
    /// not have yet (see `write_behind.rs`, "Pending values").
    async fn pending_value(&self, key: &K) -> Option<(Shared<V>, usize)> {
        let queue = self.write_behind.as_ref()?;
        let stored = queue.pending(&[key.to_string()]).await?.pop()??;
        self.decode(stored).await
    }

    fn record_l2_hit(&self, value: &Shared<V>) {
        self.counters.incr(L2_HITS);
        if value.is_none() {
            self.counters.incr(NEGATIVE_HITS);
        }
    }

    /// The guard's JSON field in a versioned cache.
    fn guard(&self) -> Option<&str> {
        self.versioning.as_ref().map(|v| v.field.as_str())
    }

    /// The Redis write of a stored value, with its version when versioned.
    fn write(&self, key: &K, stored: Vec<u8>, ttl: Duration, value: &Shared<V>) -> Write {
        let (stored, version) = match (&self.versioning, value) {
            (Some(versioning), Some(value)) => {
                let version = (versioning.version_of)(value);
                (
                    codec::with_version(stored, version),
                    i64::try_from(version).unwrap_or(i64::MAX),
                )
            }
            _ => (stored, -1),
        };
        Write {
            key: self.redis_key(key),
            value: stored,
            ttl,
            version,
        }
    }

    /// Stores one value (or negative entry) in Redis, then L1 (fenced by
    /// `ticket`). A value the version guard refused is not put in L1 either:
    /// Redis holds a newer one.
    pub(super) async fn store(&self, key: &K, value: Shared<V>, ticket: Ticket) -> L2Write {
        let (stored, weight) = self.encode(value.as_ref()).await;
        let mut outcome = L2Write::Done;
        // Held until the L1 fill below.
        let _own;
        if let (Some(l2), Some(stored)) = (&self.l2, stored) {
            let ttl = self.l2_ttl_for(&value);
            if !ttl.is_zero() {
                let write = self.write(key, stored, ttl, &value);
                _own = self
                    .guard()
                    .map(|_| self.own_writes.begin(key, write.version));
                match l2.set(&write, self.guard()).await {
                    Some(true) => {}
                    Some(false) => {
                        self.counters.incr(GUARD_REJECTIONS);
                        return L2Write::Done;
                    }
                    None => outcome = L2Write::Failed,
                }
            }
        }
        self.fill_l1(key, value, weight, ticket);
        outcome
    }

    /// Stores many values in Redis (one pipeline), then L1, like
    /// [`store`](Self::store). Negative entries are stored only when
    /// `negatives` is set.
    pub(super) async fn store_many(
        &self,
        fills: Vec<(K, Shared<V>)>,
        negatives: bool,
        ticket: Ticket,
    ) {
        let mut writes = Vec::with_capacity(fills.len());
        // Each L1 item with the index of its Redis write, if it has one.
        let mut l1_items = Vec::with_capacity(fills.len());
        // Held until the L1 fills below.
        let mut own = Vec::new();
        for (key, value) in fills {
            if value.is_none() && !negatives {
                continue;
            }
            let (stored, weight) = self.encode(value.as_ref()).await;
            let ttl = self.l2_ttl_for(&value);
            let mut written = None;
            if let Some(stored) = stored.filter(|_| self.l2.is_some() && !ttl.is_zero()) {
                written = Some(writes.len());
                let write = self.write(&key, stored, ttl, &value);
                if self.guard().is_some() {
                    own.push(self.own_writes.begin(&key, write.version));
                }
                writes.push(write);
            }
            l1_items.push((key, value, weight, written));
        }
        let stored = match &self.l2 {
            Some(l2) => l2.set_many(&writes, self.guard()).await,
            None => None,
        };
        for (key, value, weight, written) in l1_items {
            let refused = match (&stored, written) {
                (Some(stored), Some(index)) => !stored.get(index).copied().unwrap_or(true),
                _ => false,
            };
            if refused {
                self.counters.incr(GUARD_REJECTIONS);
                continue;
            }
            self.fill_l1(&key, value, weight, ticket);
        }
    }

    /// The stored form of a value (`None` if it cannot be encoded) and its L1 weight.
    async fn encode(&self, value: Option<&Arc<V>>) -> (Option<Vec<u8>>, usize) {
        let Some(value) = value else {
            return (Some(Vec::new()), ENTRY_OVERHEAD);
        };
        let encoded = match self.codec.encode(value) {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::warn!(%error, "value could not be encoded; cached in L1 only");
                return (None, ENTRY_OVERHEAD + std::mem::size_of::<V>());
            }
        };
        let weight = ENTRY_OVERHEAD + encoded.len();
        if self.l2.is_none() {
            return (None, weight);
        }
        let threshold = self.settings.compression_threshold;
        let sealed = if encoded.len() >= BLOCKING_FROM && threshold.is_some() {
            tokio::task::spawn_blocking(move || codec::seal(encoded, threshold))
                .await
                .unwrap_or_else(|_| Err(codec::CodecError::new("compression task failed")))
        } else {
            codec::seal(encoded, threshold)
        };
        match sealed {
            Ok(sealed) => (Some(sealed), weight),
            Err(error) => {
                tracing::warn!(%error, "value could not be sealed; cached in L1 only");
                (None, weight)
            }
        }
    }

    /// Decodes a stored value and weighs it; `None` (a miss) if it is foreign
    /// or corrupt.
    async fn decode(&self, stored: Vec<u8>) -> Option<(Shared<V>, usize)> {
        let decoded = if stored.len() >= BLOCKING_FROM {
            let codec = Arc::clone(&self.codec);
            tokio::task::spawn_blocking(move || decode_with(codec.as_ref(), &stored))
                .await
                .unwrap_or_else(|_| Err(codec::CodecError::new("decoding task failed")))
        } else {
            decode_with(self.codec.as_ref(), &stored)
        };
        match decoded {
            Ok(found) => found,
            Err(error) => {
                self.counters.incr(DECODE_ERRORS);
                tracing::debug!(%error, "undecodable L2 value treated as a miss");
                None
            }
        }
    }

    /// An L1 entry's life: the (jittered) TTL; for values also the
    /// fail-safe window and the eager-refresh point.
    fn l1_lifetime(&self, value: &Shared<V>) -> Lifetime {
        if value.is_none() {
            let ttl = self.settings.negative_ttl.min(self.settings.l1_ttl);
            return Lifetime::ttl(self.jitter(ttl));
        }
        let fresh = self.jitter(self.settings.l1_ttl);
        Lifetime {
            fresh,
            stale: self.settings.fail_safe_window,
            refresh_after: self.settings.eager_refresh.map(|f| fresh.mul_f64(f)),
            degraded: false,
        }
    }

    fn l2_ttl_for(&self, value: &Shared<V>) -> Duration {
        let ttl = if value.is_some() {
            self.settings.l2_ttl
        } else {
            self.settings.negative_ttl.min(self.settings.l2_ttl)
        };
        self.jitter(ttl)
    }

    /// Shortens `ttl` by a random fraction up to the configured jitter; never
    /// lengthens it, so the configured TTL stays a bound on staleness.
    fn jitter(&self, ttl: Duration) -> Duration {
        jitter(ttl, self.settings.ttl_jitter, rand::random::<f64>())
    }
}

fn jitter(ttl: Duration, fraction: f64, unit_random: f64) -> Duration {
    if fraction <= 0.0 || ttl.is_zero() {
        return ttl;
    }
    ttl.mul_f64(1.0 - fraction * unit_random)
}

/// A stored value and its weight; `None` for a tombstone (a miss).
pub(super) fn decode_with<V: 'static>(
    codec: &dyn Codec<V>,
    stored: &[u8],
) -> Result<Option<(Shared<V>, usize)>, codec::CodecError> {
    match codec::open(stored)? {
        Opened::Absent | Opened::Deleted => Ok(Some((None, ENTRY_OVERHEAD))),
        Opened::Tombstone => Ok(None),
        Opened::Value(bytes) => {
            let value = codec.decode(&bytes)?;
            Ok(Some((Some(Arc::new(value)), ENTRY_OVERHEAD + bytes.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::codec::{JsonCodec, PostcardCodec};

    #[test]
    fn jitter_only_shortens_within_the_fraction() {
        let ttl = Duration::from_secs(100);
        assert_eq!(jitter(ttl, 0.1, 0.0), ttl);
        assert_eq!(jitter(ttl, 0.1, 1.0), Duration::from_secs(90));
        assert_eq!(jitter(ttl, 0.0, 0.7), ttl);
        assert_eq!(jitter(Duration::ZERO, 0.5, 0.7), Duration::ZERO);
        let mid = jitter(ttl, 0.2, 0.5);
        assert_eq!(mid, Duration::from_secs(90));
    }

    #[test]
    fn negative_marker_decodes_as_absent_with_any_codec() {
        let json: &dyn Codec<String> = &JsonCodec;
        let postcard: &dyn Codec<String> = &PostcardCodec;
        assert_eq!(decode_with(json, b"").unwrap().unwrap().0, None);
        assert_eq!(decode_with(postcard, b"").unwrap().unwrap().0, None);
        assert!(decode_with(json, &codec::tombstone(3)).unwrap().is_none());
    }

    #[test]
    fn decoded_values_are_weighed_by_their_encoded_size() {
        let codec: &dyn Codec<String> = &JsonCodec;
        let (value, weight) = decode_with(codec, br#""hello""#).unwrap().unwrap();
        assert_eq!(value.as_deref().map(String::as_str), Some("hello"));
        assert_eq!(weight, ENTRY_OVERHEAD + 7);
    }
}
