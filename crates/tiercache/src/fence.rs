//! Fill fences: an L1 fill whose load started before an invalidation of
//! its key is dropped.
//!
//! The race they close: a reader misses, loads version N (from Redis or
//! the loader), and meanwhile a writer stores N+1 and invalidates the key
//! (here, or on another instance through the bus). Without a fence the
//! reader's late L1 fill puts N back, to be served until the L1 TTL.
//!
//! How: a global counter is bumped by every invalidation, and the key's
//! bucket (one of [`BUCKETS`], by key hash) records the bump. A fill notes
//! the counter when its load starts ([`Fences::start`]) and, *after*
//! inserting, checks whether the key's bucket (or a clear) moved past that
//! note; if so it removes what it inserted. With sequentially consistent
//! atomics either the fill sees the bump, or the invalidation's removal
//! comes after the fill's insert and removes it: no interleaving keeps the
//! old value. Buckets are shared by many keys, so an invalidation can also
//! drop an unrelated concurrent fill: that costs a miss, never a stale hit.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets of the per-key part; more buckets, fewer needless drops.
const BUCKETS: usize = 4096;

/// The fences of one L1.
#[derive(Debug)]
pub(crate) struct Fences {
    /// Bumped by every invalidation and clear.
    epoch: AtomicU64,
    /// The epoch of the last clear.
    cleared: AtomicU64,
    /// The epoch of the last invalidation of any key hashing here.
    buckets: Box<[AtomicU64]>,
    hasher: RandomState,
}

/// Taken when a load starts; checked after its L1 fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

impl Fences {
    pub(crate) fn new() -> Self {
        Self {
            epoch: AtomicU64::new(0),
            cleared: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    fn bucket<K: Hash>(&self, key: &K) -> &AtomicU64 {
        let index = usize::try_from(self.hasher.hash_one(key) % BUCKETS as u64).unwrap_or(0);
        &self.buckets[index]
    }

    /// Call before reading any level for a fill.
    pub(crate) fn start(&self) -> Ticket {
        Ticket(self.epoch.load(Ordering::SeqCst))
    }

    /// Call *before* removing `key` from L1 on an invalidation.
    pub(crate) fn invalidate<K: Hash>(&self, key: &K) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.bucket(key).fetch_max(epoch, Ordering::SeqCst);
    }

    /// Call *before* clearing L1.
    pub(crate) fn clear(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.cleared.fetch_max(epoch, Ordering::SeqCst);
    }

    /// Call *after* a fill of `key` under `ticket` went into L1: whether an
    /// invalidation came in between, in which case the fill must be removed.
    pub(crate) fn crossed<K: Hash>(&self, key: &K, ticket: Ticket) -> bool {
        self.cleared.load(Ordering::SeqCst) > ticket.0
            || self.bucket(key).load(Ordering::SeqCst) > ticket.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_is_crossed_only_by_later_invalidations_of_its_key_or_a_clear() {
        let fences = Fences::new();
        fences.invalidate(&1);
        let ticket = fences.start();
        assert!(
            !fences.crossed(&1, ticket),
            "earlier invalidations do not count"
        );
        fences.invalidate(&1);
        assert!(fences.crossed(&1, ticket));

        let ticket = fences.start();
        // Another key: crossed only if it shares the bucket (rare).
        let others = (2..200).filter(|k| {
            let fences = Fences {
                hasher: fences.hasher.clone(),
                ..Fences::new()
            };
            let t = fences.start();
            fences.invalidate(k);
            fences.crossed(&1, t)
        });
        assert!(others.count() < 10);
        assert!(!fences.crossed(&1, ticket));
        fences.clear();
        assert!(fences.crossed(&1, ticket));
        assert!(!fences.crossed(&1, fences.start()));
    }
}
