//! The write paths of [`TieredCache`]: write-through `set`, invalidations
//! (plain, versioned with tombstones, whole cache), write-behind, warming;
//! and the stores they share (one value, or many in one pipeline, Redis
//! first, then L1, version-guarded in a versioned cache).
//!
//! Every write changes Redis first, then this instance's L1, then announces
//! the keys on the bus. A Redis step that fails leaves the key distrusted
//! and its repair queued (see `unapplied.rs`); the write itself completes.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
#[cfg(feature = "redis")]
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::counters::Counter;
#[cfg(feature = "redis")]
use super::encode::Encoded;
#[cfg(feature = "redis")]
use super::unapplied::Repair;
use super::{CacheKey, EntryOptions, Inner, Policy, Shared, TieredCache};
#[cfg(feature = "redis")]
use crate::codec;
use crate::events::{ClearReason, InvalidationOrigin};
use crate::fence::Ticket;
use crate::load_error::LoadError;
#[cfg(feature = "redis")]
use crate::remote::Write;

/// Whether [`Inner::store`] left Redis as it should be (stored, refused as
/// older than what Redis holds, or not meant for Redis), or failed to
/// reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum L2Write {
    Done,
    Failed,
}

impl<K, V> TieredCache<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Stores `value` under `key` in Redis (one `SET … PX`, version-checked
    /// in a versioned cache) and L1, with the usual TTLs, then tells the
    /// other instances to drop their L1 copy. If the value cannot be
    /// encoded it is kept in L1 only. This is write-through: call it after
    /// the source of truth took the write.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// cache.set(&7, "widget v2".to_owned()).await;
    /// let lookup = cache.get_or_load(&7, || async { Ok::<_, StoreDown>(None) }).await?;
    /// assert_eq!(lookup.source, Source::L1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set(&self, key: &K, value: V) {
        self.set_with(key, value, &EntryOptions::new()).await;
    }

    /// [`set`](Self::set) with this call's TTLs and levels (see
    /// [`EntryOptions`]). A level the options skip (or give a zero TTL)
    /// is not written; this instance's L1 drops its copy then, so that it
    /// never answers with the value this write replaced.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// # use tiercache::{EntryOptions, Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// // A flash-sale price: cached for ten seconds only.
    /// let short = EntryOptions::new().ttl(Duration::from_secs(10));
    /// cache.set_with(&7, "9.99".to_owned(), &short).await;
    /// let lookup = cache.get_or_load(&7, || async { Ok::<_, StoreDown>(None) }).await?;
    /// assert_eq!(lookup.source, Source::L1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_with(&self, key: &K, value: V, options: &EntryOptions) {
        let inner = &*self.inner;
        let policy = options.apply(&inner.settings.policy);
        let ticket = inner.local.ticket();
        let value = Arc::new(value);
        #[cfg(feature = "redis")]
        let repair = inner.repair_for(Some(&value));
        if inner.store(key, Some(value), ticket, &policy).await == L2Write::Failed {
            // Redis may still hold the old version (L1 has the new one):
            // see `unapplied.rs`.
            #[cfg(feature = "redis")]
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
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// cache.set(&7, "widget".to_owned()).await;
    /// cache.invalidate(&7).await;
    /// let lookup = cache.get_or_load(&7, || async { Ok::<_, StoreDown>(None) }).await?;
    /// assert_eq!(lookup.source, Source::Loader);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate(&self, key: &K) {
        self.invalidate_many(std::slice::from_ref(key)).await;
    }

    /// Removes `keys` from Redis (one `UNLINK`), then from this instance's
    /// L1, then tells the other instances to drop them from theirs.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// cache.invalidate_many(&[1, 2, 3]).await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_many(&self, keys: &[K]) {
        let inner = &*self.inner;
        #[cfg(feature = "redis")]
        if let Some(l2) = &inner.l2 {
            let redis_keys: Vec<String> = keys.iter().map(|k| inner.redis_key(k)).collect();
            if !l2.delete(&redis_keys).await {
                for key in keys {
                    inner.unapplied.record(key, Repair::unlink());
                }
            }
        }
        for key in keys {
            inner.local.drop_key(key, InvalidationOrigin::Local);
        }
        inner.announce(keys);
    }

    /// Invalidates `key` after a write that made `version` current (for a
    /// delete: one more than the deleted version). Redis gets a tombstone
    /// that refuses every older version for the tombstone TTL, so a slow
    /// reader that loaded the old value cannot put it back; then this
    /// instance's L1 and every other instance's drop the key.
    ///
    /// In an unversioned cache this is [`invalidate`](Self::invalidate).
    ///
    /// # Example
    ///
    /// ```
    /// use tiercache::TieredCache;
    ///
    /// #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// struct Doc { id: u64, version: u64 }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// let cache: TieredCache<u64, Doc> = TieredCache::builder()
    ///     .versioned("version", |doc: &Doc| doc.version)
    ///     .build()
    ///     .await?;
    /// // The store has just made version 3 of doc 1 current:
    /// cache.invalidate_version(&1, 3).await;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(not(feature = "redis"), expect(unused_variables))]
    pub async fn invalidate_version(&self, key: &K, version: u64) {
        #[cfg(feature = "redis")]
        if let (Some(l2), Some(versioning)) = (&self.inner.l2, &self.inner.versioning) {
            return self
                .store_tombstone(l2, &versioning.field, key, version)
                .await;
        }
        self.invalidate(key).await;
    }

    /// [`invalidate_version`](Self::invalidate_version) in a versioned
    /// cache with Redis.
    #[cfg(feature = "redis")]
    async fn store_tombstone(
        &self,
        l2: &crate::remote::RemoteCache,
        field: &str,
        key: &K,
        version: u64,
    ) {
        let inner = &*self.inner;
        let write = Write {
            key: inner.redis_key(key),
            value: codec::tombstone(version),
            ttl: inner.settings.tombstone_ttl,
            version: i64::try_from(version).unwrap_or(i64::MAX),
        };
        match l2.set(&write, Some(field)).await {
            Some(true) => {}
            // Redis holds a newer version, which is fine.
            Some(false) => tracing::debug!(key = %write.key, version, "tombstone refused"),
            // Retried until Redis takes it; not trusted for `key` meanwhile.
            None => inner.unapplied.record(key, Repair::tombstone(version)),
        }
        inner.local.drop_key(key, InvalidationOrigin::Local);
        inner.announce(std::slice::from_ref(key));
    }

    /// Removes every key of this cache (`{key_prefix}{namespace}:*`) from
    /// Redis, by `SCAN` + `UNLINK` in batches (never `KEYS` or `FLUSHDB`),
    /// then empties this instance's L1, then tells the other instances to
    /// empty theirs. The bus's change log stays: the clear is one of its
    /// entries.
    ///
    /// Keys written while the scan runs may survive it.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// cache.set(&7, "widget".to_owned()).await;
    /// cache.clear().await;
    /// assert_eq!(cache.stats().l1.entries, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn clear(&self) {
        let inner = &*self.inner;
        #[cfg(feature = "redis")]
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
        inner.local.clear(ClearReason::Requested);
        #[cfg(feature = "redis")]
        if let Some(bus) = &inner.bus {
            bus.publish_clear();
        }
    }

    /// Empties this instance's L1 only (and forgets the tag generations it
    /// knew; they are read from Redis again).
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// cache.set(&7, "widget".to_owned()).await;
    /// cache.clear_local();
    /// assert_eq!(cache.stats().l1.entries, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn clear_local(&self) {
        self.inner.local.clear(ClearReason::Requested);
    }

    /// Loads `keys` in batches of `batch_size` and stores every value the
    /// loader returns in Redis (one pipeline per batch) and L1, whether or
    /// not it was cached. Keys the loader does not return are skipped (no
    /// negative entries). Returns how many values were stored.
    ///
    /// # Errors
    ///
    /// [`LoadError`] from the first failing batch; the batches before it
    /// stay cached.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// let warmed = cache
    ///     .warm((1..=1_000).collect(), 100, |ids| async move {
    ///         Ok::<_, StoreDown>(ids.into_iter().map(|id| (id, format!("item {id}"))).collect())
    ///     })
    ///     .await?;
    /// assert_eq!(warmed, 1_000);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn warm<F, Fut, E>(
        &self,
        keys: Vec<K>,
        batch_size: usize,
        mut loader: F,
    ) -> Result<usize, LoadError<E>>
    where
        F: FnMut(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let mut warmed = 0;
        for batch in keys.chunks(batch_size.max(1)) {
            let ticket = inner.local.ticket();
            inner.counters.incr(Counter::Loads);
            let loaded = inner
                .bounded(loader(batch.to_vec()), inner.settings.policy.hard_timeout)
                .await
                .map_err(|error| {
                    inner.counters.incr(Counter::LoaderErrors);
                    error.typed()
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
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The guard's JSON field in a versioned cache.
    #[cfg(feature = "redis")]
    fn guard(&self) -> Option<&str> {
        self.versioning.as_ref().map(|v| v.field.as_str())
    }

    /// The Redis write of a stored value, with its version when versioned.
    #[cfg(feature = "redis")]
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
    pub(super) async fn store(
        &self,
        key: &K,
        value: Shared<V>,
        ticket: Ticket,
        policy: &Policy,
    ) -> L2Write {
        #[cfg_attr(not(feature = "redis"), expect(unused_variables))]
        let (encoded, weight) = self.encode(value.as_ref()).await;
        #[cfg_attr(not(feature = "redis"), expect(unused_mut))]
        let mut outcome = L2Write::Done;
        // Held until the L1 fill below.
        #[cfg(feature = "redis")]
        let _own;
        #[cfg(feature = "redis")]
        if let (Some(l2), Encoded::Stored(stored)) = (&self.l2, encoded) {
            let ttl = self.l2_ttl_for(&value, policy);
            if !ttl.is_zero() {
                let write = self.write(key, stored, ttl, &value);
                _own = self
                    .guard()
                    .map(|_| self.own_writes.begin(key, write.version));
                match l2.set(&write, self.guard()).await {
                    Some(true) => {}
                    Some(false) => {
                        self.counters.incr(Counter::GuardRejections);
                        return L2Write::Done;
                    }
                    None => outcome = L2Write::Failed,
                }
            }
        }
        self.fill_l1(key, value, weight, ticket, policy);
        outcome
    }

    /// Stores many values in Redis (one pipeline), then L1, like
    /// [`store`](Self::store). Negative entries are stored only when
    /// `negatives` is set.
    pub(super) async fn store_many(
        &self,
        mut fills: Vec<(K, Shared<V>)>,
        negatives: bool,
        ticket: Ticket,
    ) {
        fills.retain(|(_, value)| value.is_some() || negatives);
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            return self.store_many_through(l2, fills, ticket).await;
        }
        for (key, value) in fills {
            let (_, weight) = self.encode(value.as_ref()).await;
            self.fill_l1(&key, value, weight, ticket, &self.settings.policy);
        }
    }

    /// [`store_many`](Self::store_many) with Redis.
    #[cfg(feature = "redis")]
    async fn store_many_through(
        &self,
        l2: &crate::remote::RemoteCache,
        fills: Vec<(K, Shared<V>)>,
        ticket: Ticket,
    ) {
        let mut writes = Vec::with_capacity(fills.len());
        // Each L1 item with the index of its Redis write, if it has one.
        let mut l1_items = Vec::with_capacity(fills.len());
        // Held until the L1 fills below.
        let mut own = Vec::new();
        for (key, value) in fills {
            let (encoded, weight) = self.encode(value.as_ref()).await;
            let ttl = self.l2_ttl_for(&value, &self.settings.policy);
            let mut written = None;
            if let Encoded::Stored(stored) = encoded
                && !ttl.is_zero()
            {
                written = Some(writes.len());
                let write = self.write(&key, stored, ttl, &value);
                if self.guard().is_some() {
                    own.push(self.own_writes.begin(&key, write.version));
                }
                writes.push(write);
            }
            l1_items.push((key, value, weight, written));
        }
        let stored = l2.set_many(&writes, self.guard()).await;
        for (key, value, weight, written) in l1_items {
            let refused = match (&stored, written) {
                (Some(stored), Some(index)) => !stored.get(index).copied().unwrap_or(true),
                _ => false,
            };
            if refused {
                self.counters.incr(Counter::GuardRejections);
                continue;
            }
            self.fill_l1(&key, value, weight, ticket, &self.settings.policy);
        }
    }
}
