//! Write-behind for products (SPEC §4, `CACHE_WRITE_STRATEGY=write-behind`):
//! how an update or delete becomes the next version without the store, and
//! how queued changes reach the store.
//!
//! An update reads the current product through the cache, checks `If-Match`
//! against it, builds the next version
//! ([`Product::replaced`](crate::domain::Product::replaced) or
//! [`Product::patched`](crate::domain::Product::patched): `version + 1`,
//! `updated_at` now) and hands it to `TieredCache::write_behind`, which puts it in Redis and in
//! the durable queue in one step, or reports that another writer got there
//! first (then we read again and retry). Creates still go to the store
//! first: it assigns the ids.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tiercache::{Change, Flush, FlushError, Queued};

use super::{ProductService, RenderedProduct, ServiceError, version_of};
use crate::domain::Product;
use crate::store::{Expected, ProductChange, Store, StoreError, Updated};

/// How long a write-behind change is retried while other writers keep
/// winning the race for the product's next version; then it fails with 503
/// (retry later).
///
/// On a Redis Cluster the winner stores its value only after its change is
/// queued and, by default, a replica confirmed it (`WAIT`, up to
/// `WRITE_BEHIND_REPLICA_WAIT_MS`, 100 ms by default): a read in between
/// still finds the version it beat, so a loser must retry for longer than
/// that. With 15 ms of retries, `bench/write_behind_latency.sh` (16
/// connections patching 10,000 products on a local cluster) saw 1 to 6 of
/// about 30,000 PATCHes answered 503.
const WRITE_BEHIND_RETRY_FOR: Duration = Duration::from_secs(1);
/// Longest pause between two attempts.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Pauses between the attempts of one write-behind change: 1, 2, 4 … ms, at
/// most [`MAX_RETRY_PAUSE`], for [`WRITE_BEHIND_RETRY_FOR`] in all.
struct Retries {
    started: Instant,
    pause: Duration,
}

impl Retries {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            pause: Duration::from_millis(1),
        }
    }

    /// Waits before the next attempt; `false` when the time is up.
    async fn pause(&mut self) -> bool {
        if self.started.elapsed() + self.pause > WRITE_BEHIND_RETRY_FOR {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(MAX_RETRY_PAUSE);
        true
    }
}

impl ProductService {
    /// Write-behind update: the next version of the current product, put in
    /// the cache and the durable queue (SPEC §4).
    pub(super) async fn queue_update(
        &self,
        id: i64,
        expected: Expected,
        next: impl Fn(&Product) -> Product,
    ) -> Result<Updated, ServiceError> {
        self.queue_change(id, expected, |current| {
            let product = next(&current);
            let change = Change::Put(RenderedProduct::new(&product));
            let updated = Updated {
                previous_category: current.category,
                product,
            };
            (version_of(&updated.product), change, updated)
        })
        .await
    }

    /// Write-behind delete: a "deleted" marker in the cache and the change
    /// in the durable queue; returns the product as it was.
    pub(super) async fn queue_delete(
        &self,
        id: i64,
        expected: Expected,
    ) -> Result<Product, ServiceError> {
        self.queue_change(id, expected, |current| {
            (
                version_of(&current).saturating_add(1),
                Change::Delete,
                current,
            )
        })
        .await
    }

    /// Puts the change `change` makes of the current product (its version,
    /// the change, and what to return) in the cache and the durable queue,
    /// from a fresh read of the product each time other writers won the race
    /// for that version (see [`Retries`]).
    async fn queue_change<T>(
        &self,
        id: i64,
        expected: Expected,
        change: impl Fn(Product) -> (u64, Change<RenderedProduct>, T),
    ) -> Result<T, ServiceError> {
        let mut retries = Retries::new();
        loop {
            let current = self.current(id, expected).await?.product();
            let (version, queued, result) = change(current);
            match self.cache.write_behind(&id, version, queued).await {
                Ok(()) => return Ok(result),
                Err(error) if error.is_conflict() && retries.pause().await => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The product a write-behind change starts from, through the cache;
    /// checks `If-Match` against it.
    async fn current(
        &self,
        id: i64,
        expected: Expected,
    ) -> Result<Arc<RenderedProduct>, ServiceError> {
        let lookup = self.lookup(id).await?;
        let current = lookup.value.ok_or(StoreError::NotFound)?;
        match expected {
            Expected::Version(v) if v != current.version() => {
                Err(StoreError::VersionConflict.into())
            }
            Expected::Version(_) | Expected::Any => Ok(current),
        }
    }
}

/// Writes queued product changes to the store, one transaction per batch.
#[derive(Debug, Clone)]
pub struct StoreFlusher {
    store: Arc<dyn Store>,
}

impl StoreFlusher {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

impl Flush<i64, RenderedProduct> for StoreFlusher {
    fn flush<'a>(
        &'a self,
        batch: &'a [Queued<i64, RenderedProduct>],
    ) -> BoxFuture<'a, Result<(), FlushError>> {
        Box::pin(async move {
            let changes: Vec<ProductChange> = batch
                .iter()
                .map(|queued| match &queued.change {
                    Change::Put(product) => ProductChange::Put(product.product()),
                    Change::Delete => ProductChange::Delete {
                        id: queued.key,
                        version: i64::try_from(queued.version).unwrap_or(i64::MAX),
                    },
                })
                .collect();
            self.store.apply(&changes).await.map_err(|error| {
                if error.is_unavailable() {
                    FlushError::Unavailable(Box::new(error))
                } else {
                    FlushError::Rejected(Box::new(error))
                }
            })
        })
    }
}
