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

use futures_util::future::BoxFuture;
use tiercache::{Change, Flush, FlushError, Queued};

use super::{ProductService, RenderedProduct, ServiceError, version_of};
use crate::domain::Product;
use crate::store::{Expected, ProductChange, Store, StoreError, Updated};

/// Write-behind updates retried this often when other writers keep winning.
const WRITE_BEHIND_ATTEMPTS: u32 = 5;

/// The pause before retry `retry` (1..) after a lost race: 1, 2, 4, 8 ms.
/// On a Redis Cluster the winner stores its value a round trip after it
/// queued it, and a read in between still finds the version it beat;
/// retrying at once would spend every attempt in that gap.
async fn before_retry(retry: u32) {
    if retry > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1 << (retry - 1))).await;
    }
}

impl ProductService {
    /// Write-behind update: the next version of the current product, put in
    /// the cache and the durable queue (SPEC §4), retried while other
    /// writers win the race for that version.
    pub(super) async fn queue_update(
        &self,
        id: i64,
        expected: Expected,
        next: impl Fn(&Product) -> Product,
    ) -> Result<Updated, ServiceError> {
        for retry in 0..WRITE_BEHIND_ATTEMPTS {
            before_retry(retry).await;
            let current = self.current(id, expected).await?;
            let current = current.product();
            let product = next(&current);
            let change = Change::Put(RenderedProduct::new(&product));
            match self
                .cache
                .write_behind(&id, version_of(&product), change)
                .await
            {
                Ok(()) => {
                    return Ok(Updated {
                        product,
                        previous_category: current.category.clone(),
                    });
                }
                Err(error) if error.is_conflict() => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(tiercache::Error::Conflict.into())
    }

    /// Write-behind delete: a "deleted" marker in the cache and the change
    /// in the durable queue; returns the product as it was.
    pub(super) async fn queue_delete(
        &self,
        id: i64,
        expected: Expected,
    ) -> Result<Product, ServiceError> {
        for retry in 0..WRITE_BEHIND_ATTEMPTS {
            before_retry(retry).await;
            let current = self.current(id, expected).await?;
            let current = current.product();
            let version = version_of(&current).saturating_add(1);
            match self.cache.write_behind(&id, version, Change::Delete).await {
                Ok(()) => return Ok(current),
                Err(error) if error.is_conflict() => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(tiercache::Error::Conflict.into())
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
