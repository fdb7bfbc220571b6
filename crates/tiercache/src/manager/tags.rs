//! Tag generations: invalidating a group of keys at once.
//!
//! A tag (e.g. a product category) has a *generation*, a number that only
//! grows. Callers put the current generation into the keys of the entries
//! the tag covers (see [`TieredCache::tag_generation`](super::TieredCache::tag_generation));
//! invalidating the tag raises the generation, so those keys are never
//! asked for again and their entries age out. Nothing is scanned or
//! deleted, and a slow reader that stores an entry under the old
//! generation after the invalidation stores it where nobody looks.
//!
//! The authoritative generation lives in Redis (`{prefix}{namespace}:tag:{tag}`);
//! each instance remembers the ones it has seen and learns new ones from
//! the bus. Generations only move up here (a late or reordered message
//! cannot move one back), and forgetting them (when L1 is cleared) makes
//! the next read fetch them from Redis again. A receiver that missed
//! messages learns the generations they carried from the change log.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CacheKey, Inner, TieredCache};

/// The generations this instance knows.
#[derive(Debug, Default)]
pub(crate) struct Tags {
    known: Mutex<HashMap<String, u64>>,
}

impl Tags {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, tag: &str) -> Option<u64> {
        self.known().get(tag).copied()
    }

    /// Records `generation` unless a higher one is known; returns the
    /// generation now known.
    pub(crate) fn raise(&self, tag: &str, generation: u64) -> u64 {
        let mut known = self.known();
        let entry = known.entry(tag.to_owned()).or_default();
        *entry = (*entry).max(generation);
        *entry
    }

    /// The next generation without Redis: one more than the known one.
    pub(crate) fn bump_local(&self, tag: &str) -> u64 {
        let mut known = self.known();
        let entry = known.entry(tag.to_owned()).or_default();
        *entry += 1;
        *entry
    }

    pub(crate) fn forget_all(&self) {
        self.known().clear();
    }
}

impl<K, V> TieredCache<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The current generation of `tag`: put it into the keys of the entries
    /// the tag covers (e.g. `format!("{generation}:{category}:{page}")`), so
    /// that [`invalidate_tags`](Self::invalidate_tags) makes them
    /// unreachable everywhere at once. See this module's docs for why this
    /// is race-free.
    ///
    /// Known generations cost a map lookup; an unknown one costs a Redis
    /// `GET` (0 when Redis has none or is unreachable).
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// // A page of category "tools": its key carries the tag's generation.
    /// let generation = cache.tag_generation("tools").await;
    /// let page_key = 1_000 + generation;
    /// let page = cache
    ///     .get_or_load(&page_key, || async { Ok::<_, StoreDown>(Some("tools, page 1".to_owned())) })
    ///     .await?;
    /// assert_eq!(page.source, Source::Loader);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn tag_generation(&self, tag: &str) -> u64 {
        let inner = &*self.inner;
        if let Some(generation) = inner.local.tags.get(tag) {
            return generation;
        }
        let generation = inner.stored_generation(tag).await.unwrap_or(0);
        inner.local.tags.raise(tag, generation)
    }

    /// Moves each tag to a new generation (in Redis, here, and through the
    /// bus on every other instance), so that every entry keyed with an older
    /// generation is never read again. If Redis is unreachable only this
    /// instance moves on (the others see a bus gap, or their L1 TTL).
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// let generation = cache.tag_generation("tools").await;
    /// let key = generation; // e.g. a page key built from the generation
    /// let _ = cache.get_or_load(&key, || async { Ok::<_, StoreDown>(Some("page".to_owned())) }).await?;
    /// cache.invalidate_tags(&["tools"]).await;
    /// assert!(cache.tag_generation("tools").await > generation);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_tags(&self, tags: &[&str]) {
        let inner = &*self.inner;
        let mut published = Vec::with_capacity(tags.len());
        for &tag in tags {
            let generation = match inner.bump_stored_generation(tag).await {
                Some(generation) => inner.local.tags.raise(tag, generation),
                None => inner.local.tags.bump_local(tag),
            };
            published.push((tag.to_owned(), generation));
        }
        #[cfg(feature = "redis")]
        if let Some(bus) = &inner.bus {
            bus.publish_tags(published);
        }
    }
}

impl<K, V> Inner<K, V> {
    /// The generation Redis holds for `tag`, if it answered with one.
    #[cfg_attr(not(feature = "redis"), expect(unused_variables))]
    async fn stored_generation(&self, tag: &str) -> Option<u64> {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2
            && let crate::remote::Read::Found(bytes) = l2.get(self.tag_key(tag)).await
        {
            return std::str::from_utf8(&bytes).ok()?.parse().ok();
        }
        None
    }

    /// Raises `tag`'s generation in Redis; `None` when Redis could not.
    #[cfg_attr(not(feature = "redis"), expect(unused_variables))]
    async fn bump_stored_generation(&self, tag: &str) -> Option<u64> {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            return l2.bump_tag(&self.tag_key(tag)).await;
        }
        None
    }

    #[cfg(feature = "redis")]
    fn tag_key(&self, tag: &str) -> String {
        format!("{}tag:{tag}", self.settings.key_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_only_move_up_until_forgotten() {
        let tags = Tags::new();
        assert_eq!(tags.get("a"), None);
        assert_eq!(tags.raise("a", 5), 5);
        assert_eq!(tags.raise("a", 3), 5);
        assert_eq!(tags.bump_local("a"), 6);
        assert_eq!(tags.bump_local("b"), 1);
        tags.forget_all();
        assert_eq!(tags.get("a"), None);
    }
}
