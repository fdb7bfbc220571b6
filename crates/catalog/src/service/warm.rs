//! Warming (`POST /cache/warm`, `catalog warm`): products loaded from the
//! store into L2 (pipelined, in batches) and this instance's L1.

use super::{ProductService, ServiceError, by_id};
use crate::store::{PageRequest, StoreError};

/// Products per store query and Redis pipeline when warming.
const WARM_BATCH: u32 = 500;

/// What to warm (`POST /cache/warm`, `catalog warm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarmScope {
    Ids(Vec<i64>),
    Category(String),
    All,
}

impl ProductService {
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
