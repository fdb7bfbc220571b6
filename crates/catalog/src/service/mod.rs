//! The catalog's use cases, between the HTTP handlers and the store: reads,
//! batch reads, pages and writes of products.
//!
//! Handlers call this and never the store directly, so that caching (and its
//! invalidation on writes) lives in one place and not in every handler.

use std::collections::HashMap;
use std::sync::Arc;

use crate::domain::{NewProduct, Product, ProductPatch};
use crate::store::{Expected, PageRequest, Store, StoreError};

/// Most ids one batch read may ask for (SPEC §3).
pub const MAX_BATCH_IDS: usize = 100;
/// Most products one page may hold (SPEC §3).
pub const MAX_PAGE_LIMIT: u32 = 100;
/// Page size when the client names none.
pub const DEFAULT_PAGE_LIMIT: u32 = 20;

/// The answer to a batch read: found products in request order, then the
/// ids that do not exist.
#[derive(Debug)]
pub struct Batch {
    pub items: Vec<Product>,
    pub missing: Vec<i64>,
}

/// One keyset page and the cursor of the next one, if there is more.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Product>,
    pub next_after: Option<i64>,
}

/// Product reads and writes over a [`Store`].
#[derive(Debug, Clone)]
pub struct ProductService {
    store: Arc<dyn Store>,
}

impl ProductService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The store, for health checks and tooling.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn get(&self, id: i64) -> Result<Option<Product>, StoreError> {
        self.store.get(id).await
    }

    /// `ids` must be distinct; the result keeps their order.
    pub async fn get_many(&self, ids: &[i64]) -> Result<Batch, StoreError> {
        let mut found: HashMap<i64, Product> = self
            .store
            .get_many(ids)
            .await?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let mut batch = Batch {
            items: Vec::with_capacity(found.len()),
            missing: Vec::new(),
        };
        for id in ids {
            match found.remove(id) {
                Some(product) => batch.items.push(product),
                None => batch.missing.push(*id),
            }
        }
        Ok(batch)
    }

    /// One page; asks the store for one row more than `limit` so that the
    /// cursor is `null` exactly when nothing follows.
    pub async fn page(
        &self,
        category: Option<String>,
        after: i64,
        limit: u32,
    ) -> Result<Page, StoreError> {
        let request = PageRequest {
            category,
            after,
            limit: limit + 1,
        };
        let mut items = self.store.list(&request).await?;
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_after = if more {
            items.last().map(|p| p.id)
        } else {
            None
        };
        Ok(Page { items, next_after })
    }

    pub async fn create(&self, new: &NewProduct) -> Result<Product, StoreError> {
        self.store.create(new).await
    }

    pub async fn replace(
        &self,
        id: i64,
        new: &NewProduct,
        expected: Expected,
    ) -> Result<Product, StoreError> {
        self.store.replace(id, new, expected).await
    }

    pub async fn patch(
        &self,
        id: i64,
        patch: &ProductPatch,
        expected: Expected,
    ) -> Result<Product, StoreError> {
        self.store.patch(id, patch, expected).await
    }

    pub async fn delete(&self, id: i64, expected: Expected) -> Result<(), StoreError> {
        self.store.delete(id, expected).await
    }
}
