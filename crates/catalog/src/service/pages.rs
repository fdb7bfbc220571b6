//! Pages of products: the page read, and the cache of category pages (keys
//! and the cache type).
//!
//! A page of one category (`GET /products?category=C&after=A&limit=L`) is
//! cached under a key that includes the category's *tag generation*
//! (tiercache's tags, see `TieredCache::tag_generation`). A write to any
//! product of that category (both categories on a move) moves the
//! generation on every instance, so the old pages are never read again and
//! age out; nothing has to find and delete them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tiercache::TieredCache;

use super::{ProductService, Served, ServiceError};
use crate::domain::Product;
use crate::store::{PageRequest, Store, StoreError};

/// Category pages: [`PageKey`] → [`Page`] (plain JSON in Redis).
pub type PageCache = TieredCache<PageKey, Page>;

/// One keyset page and the cursor of the next one, if there is more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub items: Vec<Product>,
    pub next_after: Option<i64>,
}

/// Which page of which category, under which generation of its tag.
///
/// Displayed as `{generation}:{after}:{limit}:{category}` (the category
/// last, since it may itself contain `:`); that string is the Redis key
/// suffix and what the bus carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub generation: u64,
    pub after: i64,
    pub limit: u32,
    pub category: String,
}

impl fmt::Display for PageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.generation, self.after, self.limit, self.category
        )
    }
}

/// A string that is not a [`PageKey`]'s display form.
#[derive(Debug, thiserror::Error)]
#[error("not a page key")]
pub struct NotAPageKey;

impl FromStr for PageKey {
    type Err = NotAPageKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(4, ':');
        let mut next = || parts.next().ok_or(NotAPageKey);
        Ok(Self {
            generation: next()?.parse().map_err(|_| NotAPageKey)?,
            after: next()?.parse().map_err(|_| NotAPageKey)?,
            limit: next()?.parse().map_err(|_| NotAPageKey)?,
            category: next()?.to_owned(),
        })
    }
}

/// One page read: the page and, for a cached (category) page, who answered.
#[derive(Debug)]
pub struct PageRead {
    pub page: Arc<Page>,
    pub served: Option<Served>,
}

impl ProductService {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_keys_round_trip_through_their_display_form() {
        let key = PageKey {
            generation: 1_764_020_000_123,
            after: 40,
            limit: 20,
            category: "garden: tools & more".into(),
        };
        assert_eq!(key.to_string(), "1764020000123:40:20:garden: tools & more");
        assert_eq!(key.to_string().parse::<PageKey>().unwrap(), key);
        assert!("1:2:x:c".parse::<PageKey>().is_err());
        assert!("1:2".parse::<PageKey>().is_err());
    }
}
