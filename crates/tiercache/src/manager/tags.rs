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
