//! Cached category pages: keys and the cache type.
//!
//! A page of one category (`GET /products?category=C&after=A&limit=L`) is
//! cached under a key that includes the category's *tag generation*
//! (tiercache's tags, see `TieredCache::tag_generation`). A write to any
//! product of that category (both categories on a move) moves the
//! generation on every instance, so the old pages are never read again and
//! age out; nothing has to find and delete them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tiercache::TieredCache;

use crate::domain::Product;

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
