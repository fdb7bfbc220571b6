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

use futures_util::future::BoxFuture;
use std::sync::Arc;
use tiercache::{Change, Flush, FlushError, Queued};

use super::RenderedProduct;
use crate::store::{ProductChange, Store};

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
                    Change::Put(product) => ProductChange::Put(product.product().clone()),
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
