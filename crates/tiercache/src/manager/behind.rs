//! Write-behind on [`TieredCache`]: a change goes to Redis (the cache and
//! the durable queue) now and to the store later, by the flusher (see the
//! crate docs, "Write-behind").

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::counters::Counter;
use super::encode::{ENTRY_OVERHEAD, entry_weight};
use super::local_level::Filled;
use super::{CacheKey, TieredCache};
use crate::codec;
use crate::error::Error;
use crate::events::InvalidationOrigin;
use crate::write_behind::{Change, Enqueue, Enqueued};

impl<K, V> TieredCache<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Write-behind: records that `key` changed to `version` (for a delete:
    /// one more than the deleted version) in Redis, both in the cache
    /// (readers everywhere see it at once; a delete reads as "absent") and
    /// in the durable queue the flusher writes to the store from (in one
    /// atomic step on a single server; on a cluster queued first, then
    /// stored); then in this instance's L1, and tells the other instances
    /// to drop their copy. Once this returns `Ok` the change survives a
    /// crash of this process (and, with a replica wait, of its Redis
    /// primary).
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when Redis holds `version` or a newer one (a
    /// concurrent writer won: read again and retry); [`Error::Unavailable`]
    /// when Redis cannot be used or the cache has no write-behind queue. In
    /// both cases nothing changed.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use futures_util::future::BoxFuture;
    /// use tiercache::{Change, Flush, FlushError, Queued, TieredCache};
    ///
    /// #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// struct Doc { id: u64, version: u64, text: String }
    ///
    /// /// Writes batches to your store, each change only over an older version.
    /// struct ToStore;
    /// impl Flush<u64, Doc> for ToStore {
    ///     fn flush<'a>(&'a self, batch: &'a [Queued<u64, Doc>]) -> BoxFuture<'a, Result<(), FlushError>> {
    ///         Box::pin(async move {
    ///             for queued in batch {
    ///                 // UPDATE docs SET … WHERE id = $key AND version < $version
    ///                 let _ = (&queued.key, queued.version, &queued.change);
    ///             }
    ///             Ok(())
    ///         })
    ///     }
    /// }
    ///
    /// # async fn example() -> Result<(), tiercache::Error> {
    /// let cache: TieredCache<u64, Doc> = TieredCache::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .versioned("version", |doc: &Doc| doc.version)
    ///     .write_behind(ToStore, Duration::from_millis(100))
    ///     .build()
    ///     .await?;
    /// let doc = Doc { id: 1, version: 2, text: "hello".into() };
    /// match cache.write_behind(&1, 2, Change::Put(doc)).await {
    ///     Ok(()) => {}                                // queued: durable now
    ///     Err(e) if e.is_conflict() => { /* read again, retry */ }
    ///     Err(e) => return Err(e),                    // Redis unusable: nothing queued
    /// }
    /// // At shutdown: write what is queued to the store.
    /// cache.drain_write_behind(Duration::from_secs(10)).await;
    /// # Ok(())
    /// # }
    /// ```
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
        let ticket = inner.local.ticket();
        let (stored, payload, value, weight) = match change {
            Change::Put(value) => {
                let encoded = inner.codec.encode(&value).map_err(|error| {
                    tracing::error!(%error, "a write-behind value could not be encoded");
                    Error::Unavailable
                })?;
                let weight = entry_weight(inner.codec.as_ref(), &value, encoded.len());
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
                ttl: inner.settings.policy.l2_ttl,
                field: &versioning.field,
                payload,
            })
            .await;
        match enqueued {
            Enqueued::Queued => {
                let life = inner.written_lifetime(&value);
                if inner.local.insert_newest(key, value, weight, life, ticket) == Filled::Fenced {
                    inner.counters.incr(Counter::FencedFills);
                }
                inner.announce(std::slice::from_ref(key));
                Ok(())
            }
            Enqueued::Conflict => {
                // Our copy is older than Redis's: the next read fetches it.
                inner.local.drop_key(key, InvalidationOrigin::Local);
                Err(Error::Conflict)
            }
            Enqueued::Unavailable => Err(Error::Unavailable),
        }
    }

    /// Writes every queued write-behind change to the store, for at most
    /// `limit`; returns whether the queue is empty (`true` without one).
    /// For graceful shutdown: drain before exit.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn shutdown(cache: tiercache::TieredCache<u64, String>) {
    /// use std::time::Duration;
    /// if !cache.drain_write_behind(Duration::from_secs(10)).await {
    ///     eprintln!("changes left in the queue; another instance will flush them");
    /// }
    /// # }
    /// ```
    pub async fn drain_write_behind(&self, limit: Duration) -> bool {
        match &self.inner.write_behind {
            Some(queue) => queue.drain(limit).await,
            None => true,
        }
    }
}
