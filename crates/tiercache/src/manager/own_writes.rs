//! Versioned writes this instance has sent to Redis and not yet put in its
//! own L1.
//!
//! Client tracking reports every change of a key to every instance, this
//! instance's own versioned writes included: they are scripts, which Redis's
//! `NOLOOP` does not recognise as the connection's own. The bus sink keeps
//! an L1 entry whose version is the one Redis now holds; but a writer puts
//! its value in L1 only after Redis answered, so the report can arrive while
//! the entry is not there yet. Dropping (and fencing) then would throw away
//! the writer's own fresh value. A write registers `(key, version)` here
//! *before* it is sent and ends the registration after its L1 fill; a report
//! for a key whose Redis version is a registered one is that write coming
//! back, and leaves L1 alone.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// The registry of one cache.
#[derive(Debug)]
pub(crate) struct OwnWrites<K> {
    /// Key → the versions of its writes in flight (one element per write).
    pending: Mutex<HashMap<K, Vec<i64>>>,
}

/// One registered write; ends when dropped.
#[must_use = "the registration ends when this is dropped"]
pub(crate) struct OwnWrite<'a, K: Hash + Eq + Clone> {
    registry: &'a OwnWrites<K>,
    key: K,
    version: i64,
}

impl<K: Hash + Eq + Clone> OwnWrites<K> {
    pub(crate) fn new() -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a write of `version` (`-1`: a negative entry) of `key`,
    /// until the returned guard is dropped.
    pub(crate) fn begin(&self, key: &K, version: i64) -> OwnWrite<'_, K> {
        self.lock().entry(key.clone()).or_default().push(version);
        OwnWrite {
            registry: self,
            key: key.clone(),
            version,
        }
    }

    /// Whether a write of exactly this version of `key` is in flight here.
    pub(crate) fn pending(&self, key: &K, version: i64) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|versions| versions.contains(&version))
    }

    /// Whether any write of `key` is in flight here.
    pub(crate) fn writing(&self, key: &K) -> bool {
        self.lock().contains_key(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Vec<i64>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K: Hash + Eq + Clone> Drop for OwnWrite<'_, K> {
    fn drop(&mut self) {
        let mut pending = self.registry.lock();
        if let Some(versions) = pending.get_mut(&self.key) {
            if let Some(at) = versions.iter().position(|&v| v == self.version) {
                versions.swap_remove(at);
            }
            if versions.is_empty() {
                pending.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_pending_until_every_registration_of_it_ends() {
        let writes = OwnWrites::new();
        let first = writes.begin(&1, 5);
        let second = writes.begin(&1, 5);
        assert!(writes.pending(&1, 5) && writes.writing(&1));
        assert!(!writes.pending(&1, 4), "another version");
        assert!(!writes.pending(&2, 5) && !writes.writing(&2), "another key");
        drop(first);
        assert!(writes.pending(&1, 5));
        drop(second);
        assert!(!writes.pending(&1, 5) && !writes.writing(&1));
        assert!(writes.lock().is_empty());
    }
}
