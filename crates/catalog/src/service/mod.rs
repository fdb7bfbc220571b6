//! The catalog's use cases, between the HTTP handlers and the store:
//! [`ProductService`] and its product reads through the tiered cache (this
//! file), pages (`pages.rs`), writes and invalidation (`writes.rs`,
//! `write_behind.rs`) and warming (`warm.rs`).
//!
//! Handlers call this and never the store or the cache directly, so that the
//! write strategy (SPEC §4: `invalidate`, store first, then drop the key from
//! L2 and L1; `write-through`, store first, then put the new version in L2
//! and L1) lives in one place.

mod pages;
mod rendered;
mod stats;
mod warm;
mod write_behind;
mod writes;

use std::collections::HashMap;
use std::sync::Arc;

use tiercache::{Lookup, Source, TieredCache};

use crate::config::WriteStrategy;
use crate::domain::Product;
use crate::store::{Store, StoreError};

pub use pages::{Page, PageCache, PageKey, PageRead};
pub use rendered::{RenderedCodec, RenderedProduct};
pub use stats::{RequestSnapshot, RequestStats};
pub use warm::WarmScope;
pub use write_behind::StoreFlusher;

/// Most ids one batch read may ask for (SPEC §3).
pub const MAX_BATCH_IDS: usize = 100;
/// Most products one page may hold (SPEC §3).
pub const MAX_PAGE_LIMIT: u32 = 100;
/// Page size when the client names none.
pub const DEFAULT_PAGE_LIMIT: u32 = 20;

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

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A cache read's load (the store) failed or timed out; the store
    /// error is inside, typed.
    #[error(transparent)]
    Load(#[from] tiercache::LoadError<StoreError>),
    /// The cache refused a write-behind change (a newer version won, or
    /// Redis could not take it).
    #[error(transparent)]
    Cache(#[from] tiercache::Error),
}

impl ServiceError {
    /// Whether the store could not be reached or was too slow (retry
    /// later) as opposed to a bug.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Store(err) => err.is_unavailable(),
            Self::Load(err) => match err {
                tiercache::LoadError::Loader(store) => store.is_unavailable(),
                tiercache::LoadError::TimedOut(_) => true,
                _ => false,
            },
            // A queue Redis cannot take: retry later. (Writers that kept
            // winning the race for the next version are their own 503.)
            Self::Cache(err) => err.is_unavailable(),
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
    pub(super) async fn lookup(&self, id: i64) -> Result<Lookup<RenderedProduct>, ServiceError> {
        Ok(self
            .cache
            .get_or_load(&id, || {
                // Cloned here, on a miss only: a hit never touches it.
                let store = Arc::clone(&self.store);
                async move {
                    Ok::<_, StoreError>(store.get(id).await?.as_ref().map(RenderedProduct::new))
                }
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
}

/// A product's version as the cache counts them.
pub(super) fn version_of(product: &Product) -> u64 {
    u64::try_from(product.version).unwrap_or(0)
}

pub(super) fn by_id(products: Vec<Product>) -> HashMap<i64, RenderedProduct> {
    products
        .into_iter()
        .map(|p| (p.id, RenderedProduct::new(&p)))
        .collect()
}
