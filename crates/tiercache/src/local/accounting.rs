//! L1 bookkeeping beside quick_cache: the striped hit/miss counters, the
//! eviction count and the exact byte total, kept right by the [`Lifecycle`]
//! hook on evictions; and the weigher that turns both bounds into one.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use quick_cache::{Lifecycle, Weighter};

use super::entry::Slot;
use super::layout::Weigh;
use crate::striped::Striped;

pub(super) const HITS: usize = 0;
pub(super) const MISSES: usize = 1;

/// Counters shared by the cache handle and its lifecycle hook.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) counters: Striped<2>,
    pub(super) evictions: AtomicU64,
    /// Signed because an eviction can be recorded before its insert's add
    /// becomes visible to a concurrent reader; snapshots clamp at zero.
    pub(super) bytes: AtomicI64,
    pub(super) max_entries: u64,
    pub(super) max_bytes: u64,
    /// How entries are weighed.
    pub(super) weigh: Weigh,
    /// Heaviest entry one shard admits; heavier ones are refused before
    /// touching the cache.
    pub(super) max_weight: u64,
}

impl Shared {
    pub(super) fn sub_bytes(&self, bytes: u64) {
        self.bytes
            .fetch_sub(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    pub(super) fn add_bytes(&self, bytes: u64) {
        self.bytes
            .fetch_add(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub(super) struct SlotWeighter(pub(super) Weigh);

impl<K, T> Weighter<K, Slot<T>> for SlotWeighter {
    #[inline]
    fn weight(&self, _key: &K, slot: &Slot<T>) -> u64 {
        self.0.weight(slot.bytes())
    }
}

/// Counts evictions and keeps `bytes` exact when quick_cache pushes entries out.
#[derive(Clone)]
pub(super) struct Accounting(pub(super) Arc<Shared>);

impl<K, T> Lifecycle<K, Slot<T>> for Accounting {
    /// Evicted entries are dropped after the shard lock is released, so that
    /// dropping the last `Arc` of a large value never happens under the lock.
    type RequestState = Vec<(K, Slot<T>)>;

    fn on_evict(&self, state: &mut Self::RequestState, key: K, slot: Slot<T>) {
        self.0.evictions.fetch_add(1, Ordering::Relaxed);
        self.0.sub_bytes(slot.bytes());
        state.push((key, slot));
    }
}
