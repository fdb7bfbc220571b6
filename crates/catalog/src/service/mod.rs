//! The catalog's use cases, between the HTTP handlers and the store: product
//! reads through the tiered cache, batch reads, pages, writes and cache
//! administration.
//!
//! Handlers call this and never the store or the cache directly, so that the
//! write strategy (SPEC §4: `invalidate`, store first, then drop the key from
//! L2 and L1; `write-through`, store first, then put the new version in L2
//! and L1) lives in one place.

mod pages;
mod rendered;
mod stats;
mod write_behind;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tiercache::{Change, Lookup, Source, TieredCache};

use crate::config::WriteStrategy;
use crate::domain::{NewProduct, Product, ProductPatch};
use crate::store::{
    self, Expected, Invalidation, InvalidationSink, PageRequest, Store, StoreError, Updated,
};

pub use pages::{Page, PageCache, PageKey};
pub use rendered::{RenderedCodec, RenderedProduct};
pub use stats::{RequestSnapshot, RequestStats};
pub use write_behind::StoreFlusher;

/// Most ids one batch read may ask for (SPEC §3).
pub const MAX_BATCH_IDS: usize = 100;
/// Most products one page may hold (SPEC §3).
pub const MAX_PAGE_LIMIT: u32 = 100;
/// Page size when the client names none.
pub const DEFAULT_PAGE_LIMIT: u32 = 20;
/// Products per store query and Redis pipeline when warming.
const WARM_BATCH: u32 = 500;
/// Write-behind updates retried this often when other writers keep winning.
const WRITE_BEHIND_ATTEMPTS: usize = 5;

/// The product cache: product id → rendered product (or "absent").
pub type ProductCache = TieredCache<i64, RenderedProduct>;

/// The service's caches.
#[derive(Debug, Clone)]
pub struct Caches {
    pub products: ProductCache,
    pub pages: PageCache,
}

/// Which level answered a product read; becomes the `X-Cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    L1,
    L2,
    Store,
    /// A fail-safe answer: the store failed or was slow (SPEC §3 `STALE`).
    Stale,
}

impl Served {
    fn from_source(source: Source) -> Self {
        match source {
            Source::L1 => Self::L1,
            Source::L2 => Self::L2,
            Source::Stale => Self::Stale,
            // `Source` is non-exhaustive; anything else came from the
            // loader, i.e. the store.
            _ => Self::Store,
        }
    }

    /// The `X-Cache` value (SPEC §3).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::L1 => "HIT-L1",
            Self::L2 => "HIT-L2",
            Self::Store => "MISS",
            Self::Stale => "STALE",
        }
    }

    /// Answered by a cache level (a stale answer counts: the store was not
    /// needed, or could not be used).
    fn is_hit(self) -> bool {
        self != Self::Store
    }
}

/// One product read: the product (`None`: it does not exist) and who answered.
#[derive(Debug)]
pub struct Read {
    pub product: Option<Arc<RenderedProduct>>,
    pub served: Served,
}

/// The answer to a batch read: found products in request order, then the
/// ids that do not exist.
#[derive(Debug)]
pub struct Batch {
    pub items: Vec<Arc<RenderedProduct>>,
    pub missing: Vec<i64>,
}

/// One page read: the page and, for a cached (category) page, who answered.
#[derive(Debug)]
pub struct PageRead {
    pub page: Arc<Page>,
    pub served: Option<Served>,
}

/// What to warm (`POST /cache/warm`, `catalog warm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarmScope {
    Ids(Vec<i64>),
    Category(String),
    All,
}

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cache's loader (the store) failed; the store error is inside.
    #[error(transparent)]
    Cache(#[from] tiercache::Error),
}

impl ServiceError {
    /// Whether the store could not be reached or was too slow (retry
    /// later) as opposed to a bug.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Store(err) => err.is_unavailable(),
            Self::Cache(err) => {
                // A queue Redis cannot take, or writers that kept winning
                // the race for the next version: retry later.
                err.is_unavailable()
                    || err.is_conflict()
                    || err.is_timeout()
                    || err
                        .loader_error()
                        .and_then(|e| e.downcast_ref::<StoreError>())
                        .is_some_and(StoreError::is_unavailable)
            }
        }
    }
}

/// Product reads and writes over a [`Store`] and a [`ProductCache`].
#[derive(Debug, Clone)]
pub struct ProductService {
    store: Arc<dyn Store>,
    cache: ProductCache,
    pages: PageCache,
    write_strategy: WriteStrategy,
    stats: Arc<RequestStats>,
}

impl ProductService {
    pub fn new(store: Arc<dyn Store>, caches: Caches, write_strategy: WriteStrategy) -> Self {
        Self {
            store,
            cache: caches.products,
            pages: caches.pages,
            write_strategy,
            stats: Arc::new(RequestStats::default()),
        }
    }

    /// The store, for health checks and tooling.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn cache(&self) -> &ProductCache {
        &self.cache
    }

    /// Request-level counters of product reads.
    pub fn request_stats(&self) -> &RequestStats {
        &self.stats
    }

    /// One product: L1 → L2 → store, filling the levels on the way back.
    pub async fn get(&self, id: i64) -> Result<Read, ServiceError> {
        let started = quanta::Instant::now();
        let lookup = self.lookup(id).await?;
        let served = Served::from_source(lookup.source);
        self.stats.record(served.is_hit(), started.elapsed());
        Ok(Read {
            product: lookup.value,
            served,
        })
    }

    /// The cache's answer for `id`, loading it from the store on a miss.
    async fn lookup(&self, id: i64) -> Result<Lookup<RenderedProduct>, ServiceError> {
        Ok(self
            .cache
            .get_or_load(&id, || {
                // Cloned here, on a miss only: a hit never touches it.
                let store = Arc::clone(&self.store);
                async move { Ok::<_, StoreError>(store.get(id).await?.map(RenderedProduct::new)) }
            })
            .await?)
    }

    /// A batch: L1 first, then one L2 `MGET`, then one SQL query for the
    /// rest. `ids` must be distinct; the result keeps their order.
    pub async fn get_many(&self, ids: &[i64]) -> Result<Batch, ServiceError> {
        let started = quanta::Instant::now();
        let lookups = self
            .cache
            .get_many_or_load(ids, |missing| async move {
                let found = self.store.get_many(&missing).await?;
                Ok::<_, StoreError>(by_id(found))
            })
            .await?;
        let hit = lookups.iter().all(|(_, lookup)| lookup.is_cache_hit());
        self.stats.record(hit, started.elapsed());
        let mut batch = Batch {
            items: Vec::with_capacity(lookups.len()),
            missing: Vec::new(),
        };
        for (id, lookup) in lookups {
            match lookup.value {
                Some(product) => batch.items.push(product),
                None => batch.missing.push(id),
            }
        }
        Ok(batch)
    }

    /// One page. Category pages are cached (and dropped by tag when a
    /// product of the category changes); pages of all products are not, as
    /// every write would drop them.
    pub async fn page(
        &self,
        category: Option<String>,
        after: i64,
        limit: u32,
    ) -> Result<PageRead, ServiceError> {
        let Some(category) = category else {
            let page = load_page(self.store.as_ref(), None, after, limit).await?;
            return Ok(PageRead {
                page: Arc::new(page),
                served: None,
            });
        };
        let key = PageKey {
            generation: self.pages.tag_generation(&category).await,
            after,
            limit,
            category,
        };
        let lookup = self
            .pages
            .get_or_load(&key, || {
                let store = Arc::clone(&self.store);
                let category = key.category.clone();
                async move {
                    Ok::<_, StoreError>(Some(
                        load_page(store.as_ref(), Some(category), after, limit).await?,
                    ))
                }
            })
            .await?;
        let page = lookup
            .value
            .expect("the page loader never answers \"absent\"");
        Ok(PageRead {
            page,
            served: Some(Served::from_source(lookup.source)),
        })
    }

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
                .set(&product.id, RenderedProduct::new(product.clone()))
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

    /// Write-behind update: the next version of the current product, put in
    /// the cache and the durable queue (SPEC §4), retried while other
    /// writers win the race for that version.
    async fn queue_update(
        &self,
        id: i64,
        expected: Expected,
        next: impl Fn(&Product) -> Product,
    ) -> Result<Updated, ServiceError> {
        for _ in 0..WRITE_BEHIND_ATTEMPTS {
            let current = self.current(id, expected).await?;
            let current = current.product();
            let product = next(current);
            let change = Change::Put(RenderedProduct::new(product.clone()));
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
    async fn queue_delete(&self, id: i64, expected: Expected) -> Result<Product, ServiceError> {
        for _ in 0..WRITE_BEHIND_ATTEMPTS {
            let current = self.current(id, expected).await?;
            let current = current.product();
            let version = version_of(current).saturating_add(1);
            match self.cache.write_behind(&id, version, Change::Delete).await {
                Ok(()) => return Ok(current.clone()),
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
            Expected::Version(v) if v != current.product().version => {
                Err(StoreError::VersionConflict.into())
            }
            Expected::Version(_) | Expected::Any => Ok(current),
        }
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

    /// Loads products into L2 (pipelined, in batches) and this instance's
    /// L1; returns how many were warmed. `progress` gets the running total
    /// after each batch (the CLI draws a progress bar with it).
    pub async fn warm(
        &self,
        scope: WarmScope,
        mut progress: impl FnMut(usize),
    ) -> Result<usize, ServiceError> {
        match scope {
            WarmScope::Ids(ids) => {
                let warmed = self
                    .cache
                    .warm(ids, WARM_BATCH as usize, |batch| async move {
                        let found = self.store.get_many(&batch).await?;
                        Ok::<_, StoreError>(by_id(found))
                    })
                    .await?;
                progress(warmed);
                Ok(warmed)
            }
            WarmScope::Category(category) => self.warm_pages(Some(category), progress).await,
            WarmScope::All => self.warm_pages(None, progress).await,
        }
    }

    /// Walks the store page by page and puts each page in the cache as it
    /// comes (no second read of rows already in hand).
    async fn warm_pages(
        &self,
        category: Option<String>,
        mut progress: impl FnMut(usize),
    ) -> Result<usize, ServiceError> {
        let mut warmed = 0;
        let mut after = 0;
        loop {
            let page = self
                .store
                .list(&PageRequest {
                    category: category.clone(),
                    after,
                    limit: WARM_BATCH,
                })
                .await?;
            let Some(last) = page.last() else {
                return Ok(warmed);
            };
            after = last.id;
            let ids: Vec<i64> = page.iter().map(|p| p.id).collect();
            let mut rows = Some(by_id(page));
            warmed += self
                .cache
                .warm(ids, WARM_BATCH as usize, |_| {
                    let rows = rows.take().unwrap_or_default();
                    async move { Ok::<_, StoreError>(rows) }
                })
                .await?;
            progress(warmed);
        }
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

/// One page from the store; asks for one row more than `limit` so that the
/// cursor is `null` exactly when nothing follows.
async fn load_page(
    store: &dyn Store,
    category: Option<String>,
    after: i64,
    limit: u32,
) -> Result<Page, StoreError> {
    let request = PageRequest {
        category,
        after,
        limit: limit + 1,
    };
    let mut items = store.list(&request).await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_after = if more {
        items.last().map(|p| p.id)
    } else {
        None
    };
    Ok(Page { items, next_after })
}

/// A product's version as the cache counts them.
fn version_of(product: &Product) -> u64 {
    u64::try_from(product.version).unwrap_or(0)
}

fn by_id(products: Vec<Product>) -> HashMap<i64, RenderedProduct> {
    products
        .into_iter()
        .map(|p| (p.id, RenderedProduct::new(p)))
        .collect()
}
