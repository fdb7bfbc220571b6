//! What a read answers: [`Lookup`] (the value or "not found") and the
//! [`Source`] level that answered.

use std::sync::Arc;

use serde::Serialize;

/// Which level answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Source {
    /// The in-process cache.
    L1,
    /// Redis.
    L2,
    /// The caller's loader (a miss in every level).
    Loader,
    /// A fail-safe answer: an expired L1 value, served because the loader
    /// failed, timed out, or failed recently (see the builder's `fail_safe_window`).
    Stale,
}

/// The answer to a lookup: the value (or "not found") and where it came from.
///
/// # Example
///
/// ```
/// # use tiercache::{Source, TieredCache};
/// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tiercache::Error> {
/// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
/// let lookup = cache.get_or_load(&7, || async { Ok::<_, StoreDown>(None) }).await?;
/// assert!(!lookup.is_found() && !lookup.is_cache_hit());
/// let again = cache.get_or_load(&7, || async { Ok::<_, StoreDown>(None) }).await?;
/// assert!(again.is_cache_hit(), "the absence is remembered");
/// assert_eq!(again.into_value(), None);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use]
#[non_exhaustive]
pub struct Lookup<V> {
    /// The value, shared with the cache; `None` means the loader said it
    /// does not exist (possibly remembered as a negative entry).
    pub value: Option<Arc<V>>,
    /// The level that answered.
    pub source: Source,
}

impl<V> Clone for Lookup<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            source: self.source,
        }
    }
}

impl<V> Lookup<V> {
    /// Whether a value was found.
    pub fn is_found(&self) -> bool {
        self.value.is_some()
    }

    /// Whether a cache level answered with a current value (neither the
    /// loader nor a stale fallback).
    pub fn is_cache_hit(&self) -> bool {
        matches!(self.source, Source::L1 | Source::L2)
    }

    /// The value, dropping the source.
    pub fn into_value(self) -> Option<Arc<V>> {
        self.value
    }
}
