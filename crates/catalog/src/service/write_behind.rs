//! Write-behind for products (SPEC §4, `CACHE_WRITE_STRATEGY=write-behind`):
//! how an update or delete becomes the next version without the store, and
//! how queued changes reach the store.
//!
//! An update reads the current product through the cache, checks `If-Match`
//! against it, builds the next version (`version + 1`, `updated_at` now) and
//! hands it to `TieredCache::write_behind`, which puts it in Redis and in
//! the durable queue in one step, or reports that another writer got there
//! first (then we read again and retry). Creates still go to the store
//! first: it assigns the ids.

use futures_util::future::BoxFuture;
use std::sync::Arc;
use tiercache::{Change, Flush, FlushError, Queued};

use super::RenderedProduct;
use crate::domain::{NewProduct, Product, ProductPatch};
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

/// The next version of `current` after a full replace.
pub(super) fn replaced(current: &Product, new: &NewProduct) -> Product {
    Product {
        id: current.id,
        name: new.name.as_str().to_owned(),
        description: new.description.as_str().to_owned(),
        price: new.price,
        category: new.category.as_str().to_owned(),
        in_stock: new.in_stock,
        version: current.version + 1,
        created_at: current.created_at,
        updated_at: Some(crate::store::now()),
    }
}

/// The next version of `current` after a patch.
pub(super) fn patched(current: &Product, patch: &ProductPatch) -> Product {
    Product {
        id: current.id,
        name: patch
            .name
            .as_ref()
            .map_or_else(|| current.name.clone(), |n| n.as_str().to_owned()),
        description: patch
            .description
            .as_ref()
            .map_or_else(|| current.description.clone(), |d| d.as_str().to_owned()),
        price: patch.price.unwrap_or(current.price),
        category: patch
            .category
            .as_ref()
            .map_or_else(|| current.category.clone(), |c| c.as_str().to_owned()),
        in_stock: patch.in_stock.unwrap_or(current.in_stock),
        version: current.version + 1,
        created_at: current.created_at,
        updated_at: Some(crate::store::now()),
    }
}
