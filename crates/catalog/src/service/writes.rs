//! Writes under the write strategy (SPEC §4), and invalidation: what a
//! write, an outside change (PostgreSQL's [`InvalidationSink`]) or an
//! administrator makes the caches forget.
//!
//! `invalidate`: store first, then the product leaves L2 and L1 (a
//! tombstone keeps slower readers' older copies out of Redis).
//! `write-through`: store first, then the new version goes into L2 and L1.
//! `write-behind`: updates and deletes go to the cache and a durable queue
//! (`write_behind.rs`). Then, always, the pages of the categories touched.

use std::future::Future;

use super::{ProductService, RenderedProduct, ServiceError, version_of};
use crate::config::WriteStrategy;
use crate::domain::{NewProduct, Product, ProductPatch};
use crate::store::{self, Expected, Invalidation, InvalidationSink, StoreError, Updated};

impl ProductService {
    pub async fn create(&self, new: &NewProduct) -> Result<Product, ServiceError> {
        let product = self.store.create(new).await?;
        // A read of this id before it existed may have cached "absent".
        self.written(&product, None).await;
        Ok(product)
    }

    pub async fn replace(
        &self,
        id: i64,
        new: &NewProduct,
        expected: Expected,
    ) -> Result<Product, ServiceError> {
        self.update(
            id,
            expected,
            |current| current.replaced(new, store::now()),
            || self.store.replace(id, new, expected),
        )
        .await
    }

    pub async fn patch(
        &self,
        id: i64,
        patch: &ProductPatch,
        expected: Expected,
    ) -> Result<Product, ServiceError> {
        self.update(
            id,
            expected,
            |current| current.patched(patch, store::now()),
            || self.store.patch(id, patch, expected),
        )
        .await
    }

    /// An update under the write strategy: through the queue (`next` builds
    /// the new version from the current one) or through the store
    /// (`store_write`), then the caches.
    async fn update<'a, Fut>(
        &'a self,
        id: i64,
        expected: Expected,
        next: impl Fn(&Product) -> Product,
        store_write: impl FnOnce() -> Fut,
    ) -> Result<Product, ServiceError>
    where
        Fut: Future<Output = Result<Updated, StoreError>> + 'a,
    {
        let Updated {
            product,
            previous_category,
        } = match self.write_strategy {
            WriteStrategy::WriteBehind => self.queue_update(id, expected, next).await?,
            WriteStrategy::Invalidate | WriteStrategy::WriteThrough => store_write().await?,
        };
        self.written(&product, Some(&previous_category)).await;
        Ok(product)
    }

    pub async fn delete(&self, id: i64, expected: Expected) -> Result<(), ServiceError> {
        if self.write_strategy == WriteStrategy::WriteBehind {
            let deleted = self.queue_delete(id, expected).await?;
            self.pages.invalidate_tags(&[&deleted.category]).await;
            return Ok(());
        }
        let deleted = self.store.delete(id, expected).await?;
        // The tombstone refuses the deleted version and every older one.
        let stale_below = version_of(&deleted).saturating_add(1);
        self.forget(id, Some(stale_below), &[&deleted.category])
            .await;
        Ok(())
    }

    /// After a write the store took (SPEC §4). `invalidate`: forgets the
    /// product ([`forget`](Self::forget)). `write-through`: stores the new
    /// version in Redis (version-checked) and L1, and the other instances
    /// drop theirs. Either way, then the pages of its category (and of the
    /// one it left).
    async fn written(&self, product: &Product, previous_category: Option<&str>) {
        let mut tags = vec![product.category.as_str()];
        if let Some(previous) = previous_category.filter(|c| *c != product.category) {
            tags.push(previous);
        }
        let put = match self.write_strategy {
            WriteStrategy::Invalidate => {
                self.forget(product.id, Some(version_of(product)), &tags)
                    .await;
                return;
            }
            WriteStrategy::WriteThrough => true,
            // Updates are in the cache already (`queue_update`); creates
            // went to the store first and enter the cache like this.
            WriteStrategy::WriteBehind => product.version == 1,
        };
        if put {
            self.cache
                .set(&product.id, RenderedProduct::new(product))
                .await;
        }
        self.pages.invalidate_tags(&tags).await;
    }

    /// Forgets product `id` everywhere, then the pages of `categories`.
    /// With a `version`, copies older than it leave every level and a
    /// tombstone keeps slower readers' older copies out of Redis; without
    /// one, every copy leaves. The bus tells the other instances. The one
    /// way a change is invalidated, whether the service made it or
    /// PostgreSQL reported it ([`InvalidationSink`]).
    async fn forget(&self, id: i64, version: Option<u64>, categories: &[&str]) {
        match version {
            Some(version) => self.cache.invalidate_version(&id, version).await,
            None => self.cache.invalidate(&id).await,
        }
        self.pages.invalidate_tags(categories).await;
    }

    /// Drops one product from every cache level.
    pub async fn invalidate(&self, id: i64) {
        self.cache.invalidate(&id).await;
    }

    /// Empties every cache level (L2: this prefix's keys only).
    pub async fn clear_cache(&self) {
        self.cache.clear().await;
        self.pages.clear().await;
    }
}

/// Changes made outside the service, from the PostgreSQL change listener:
/// forgotten as the service forgets its own writes.
impl InvalidationSink for ProductService {
    async fn invalidate(&self, invalidation: Invalidation) {
        match invalidation {
            Invalidation::Product {
                id,
                version,
                categories,
            } => {
                let categories: Vec<&str> = categories.iter().map(String::as_str).collect();
                self.forget(id, version, &categories).await;
            }
            Invalidation::All => self.clear_cache().await,
        }
    }
}
