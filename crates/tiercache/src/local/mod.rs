//! L1: the in-process level, on `quick_cache`'s sharded S3-FIFO cache.
//!
//! Owns per-entry expiry, both size bounds and the L1 counters. Does not know
//! about Redis, codecs or loaders: the manager decides what to store and
//! weighs it.
//!
//! How the two bounds become quick_cache's single weight bound, and when
//! the cache is sharded, is [`layout`]'s business; what an entry carries
//! is `entry`'s; the byte and eviction accounting is `accounting`'s.
//!
//! # Expiry
//!
//! Each entry carries times on the [coarse clock](crate::clock::coarse):
//! `fresh_until` (its TTL), `expires_at` (when it is dropped; later than
//! `fresh_until` only for the manager's fail-safe window, during which the
//! entry is a *stale* fallback, not a hit) and `refresh_at` (when a hit
//! asks the manager for an eager refresh). A read past `expires_at` is a
//! miss and removes the entry. Expired entries nobody reads again stay
//! until eviction pushes them out (they are cold, so they go first). There
//! is no background sweeper.
//!
//! # Byte accounting
//!
//! `bytes` is exact, not the weight: inserts add, and every way out subtracts
//! (eviction through the [`Lifecycle`] hook, removal, replacement, clear).
//! Replacement must see the old value, which plain `insert` hides, so inserts
//! go through `entry(.., ReplaceWithGuard)` and fill the placeholder.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, OptionsBuilder};

use crate::clock::coarse;
use crate::error::Error;
use crate::stats::L1Stats;
use crate::striped::Striped;

mod accounting;
mod entry;
mod layout;

use accounting::{Accounting, HITS, MISSES, Shared, SlotWeighter};
use entry::Slot;
pub(crate) use entry::{Lifetime, Probe};
use layout::Layout;
pub(crate) use layout::SLOT_BYTES;

/// A bounded, TTL-aware, concurrent in-process cache: the L1 of a
/// [`TieredCache`](crate::TieredCache), usable on its own.
///
/// Values are handed out by `clone`, so `T` should be cheap to clone (an
/// `Arc`, `Option<Arc<_>>`, `Bytes`…): a hit clones `T` and nothing else.
/// Eviction is quick_cache's S3-FIFO (scan-resistant, LRU-class).
///
/// Cloning a `LocalCache` is cheap and yields a handle to the same cache.
///
/// # Bounds
///
/// Both bounds hold at all times: an entry of `b` bytes is charged for
/// `b` bytes or for one entry, whichever is the larger share of its bound,
/// so neither the byte total nor the entry count can exceed its bound. Mixed sizes may leave up to half of each bound unused. Up to
/// 3 % of `max_bytes` is kept for the keys of recent evictions, which
/// the eviction policy remembers, so that they too stay within it. A
/// cache of fewer than 256 entries is one shard and holds `max_entries`
/// small entries exactly; larger ones split over up to 16 shards by key
/// hash and hold 96–99 % of `max_entries` before the fullest shard
/// evicts. A value larger than one shard's share of `max_bytes` is not
/// stored.
///
/// # Expiry
///
/// Each entry has its own TTL, checked on read (a read past it is a miss
/// and removes the entry); an entry may outlive its TTL by up to the
/// clock's 10 ms tick. Expired entries nobody reads are removed by
/// eviction, not by a background sweep.
///
/// # Example
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use tiercache::LocalCache;
///
/// let cache: LocalCache<u64, Arc<String>> = LocalCache::new(1_000, 1 << 20)?;
/// let value = Arc::new("hello".to_owned());
/// cache.insert(&1, Arc::clone(&value), value.len(), Duration::from_secs(60));
/// assert_eq!(cache.get(&1), Some(value));
/// assert_eq!(cache.stats().hits, 1);
/// # Ok::<(), tiercache::Error>(())
/// ```
pub struct LocalCache<K, T> {
    cache: Arc<Cache<K, Slot<T>, SlotWeighter, DefaultHashBuilder, Accounting>>,
    shared: Arc<Shared>,
    _clock: Arc<coarse::Handle>,
}

impl<K, T> Clone for LocalCache<K, T> {
    fn clone(&self) -> Self {
        Self {
            cache: Arc::clone(&self.cache),
            shared: Arc::clone(&self.shared),
            _clock: Arc::clone(&self._clock),
        }
    }
}

impl<K, T> fmt::Debug for LocalCache<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCache")
            .field("max_entries", &self.shared.max_entries)
            .field("max_bytes", &self.shared.max_bytes)
            .finish_non_exhaustive()
    }
}

/// What an insert pushed out of L1: the entries evicted for room (their
/// values drop with this, after the shard lock), or the inserted key itself
/// when it was too heavy to admit.
pub(crate) struct Evicted<K, T> {
    entries: Vec<(K, Slot<T>)>,
    refused: Option<K>,
}

impl<K, T> Default for Evicted<K, T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            refused: None,
        }
    }
}

impl<K, T> Evicted<K, T> {
    /// The keys that left (or never entered) L1.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(key, _)| key).chain(&self.refused)
    }
}

impl<K, T> LocalCache<K, T>
where
    K: Eq + Hash + Clone,
    T: Clone,
{
    /// Creates a cache holding at most `max_entries` entries and at most
    /// `max_bytes` bytes (as weighed on insert), whichever binds first.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if either bound is zero.
    pub fn new(max_entries: u64, max_bytes: u64) -> Result<Self, Error> {
        if max_entries == 0 || max_bytes == 0 {
            return Err(Error::config("L1 bounds must be positive"));
        }
        let layout = Layout::new(max_entries, max_bytes)?;
        let options = OptionsBuilder::new()
            .shards(usize::try_from(layout.shards).unwrap_or(1))
            .hot_allocation(layout.hot_allocation)
            .ghost_allocation(layout.ghost_allocation)
            .estimated_items_capacity(usize::try_from(layout.slots()).unwrap_or(usize::MAX))
            .weight_capacity(layout.capacity())
            .build()
            .map_err(|e| Error::config(format!("L1 options: {e}")))?;
        let shared = Arc::new(Shared {
            counters: Striped::new(),
            evictions: AtomicU64::new(0),
            bytes: AtomicI64::new(0),
            max_entries,
            max_bytes,
            weigh: layout.weigh,
            max_weight: layout.max_weight(),
        });
        let cache = Cache::with_options(
            options,
            SlotWeighter(layout.weigh),
            DefaultHashBuilder::default(),
            Accounting(Arc::clone(&shared)),
        );
        debug_assert_eq!(
            u64::try_from(cache.num_shards()).ok(),
            Some(layout.shards),
            "quick_cache kept the shard count"
        );
        Ok(Self {
            cache: Arc::new(cache),
            shared,
            _clock: Arc::new(coarse::acquire()),
        })
    }

    /// Returns the value for `key` if present and not expired.
    ///
    /// Counts a hit or a miss. An expired entry is removed and is a miss.
    /// Takes a shard read lock; never allocates.
    #[inline]
    pub fn get(&self, key: &K) -> Option<T> {
        let found = self.lookup(key);
        self.shared
            .counters
            .incr(if found.is_some() { HITS } else { MISSES });
        found
    }

    /// Like [`get`](Self::get) but without touching the hit/miss counters.
    pub fn peek(&self, key: &K) -> Option<T> {
        self.lookup(key)
    }

    #[inline]
    fn lookup(&self, key: &K) -> Option<T> {
        let slot = self.cache.get(key)?;
        let now = coarse::now_ms();
        if now < slot.fresh_until {
            return (!slot.degraded).then_some(slot.value);
        }
        if now >= slot.expires_at() {
            self.remove_expired(key, now);
        }
        None
    }

    /// The manager's read: like [`get`](Self::get) (a `Fresh` answer counts
    /// as a hit, anything else as a miss) but also hands out stale
    /// fallbacks and says when a hit is due for a refresh.
    #[inline]
    pub(crate) fn probe(&self, key: &K) -> Probe<T> {
        let found = self.probe_uncounted(key);
        self.shared
            .counters
            .incr(if matches!(found, Probe::Fresh { .. }) {
                HITS
            } else {
                MISSES
            });
        found
    }

    #[inline]
    fn probe_uncounted(&self, key: &K) -> Probe<T> {
        let Some(slot) = self.cache.get(key) else {
            return Probe::Missing;
        };
        let now = coarse::now_ms();
        if now < slot.fresh_until {
            if slot.degraded {
                return Probe::Degraded(slot.value);
            }
            let refresh = slot.refresh_due(now);
            return Probe::Fresh {
                value: slot.value,
                refresh,
            };
        }
        if now < slot.expires_at() {
            let bytes = slot.bytes();
            return Probe::Stale {
                value: slot.value,
                bytes,
            };
        }
        self.remove_expired(key, now);
        Probe::Missing
    }

    #[cold]
    fn remove_expired(&self, key: &K, now: u64) {
        // Only if still expired: a fresh insert may have landed since the read.
        if let Some((_, old)) = self.cache.remove_if(key, |s| s.expires_at() <= now) {
            self.shared.sub_bytes(old.bytes());
        }
    }

    /// Stores `value` under `key` for `ttl`, weighing it as `bytes`.
    ///
    /// `bytes` is the caller's measure of the entry's size; the manager
    /// passes the encoded size of the value plus a fixed per-entry overhead.
    /// It drives the byte bound and the `bytes` statistic. Inserting may
    /// evict other entries; a value too large for the cache is not stored
    /// (and counted as an eviction). A zero `ttl` stores nothing.
    pub fn insert(&self, key: &K, value: T, bytes: usize, ttl: Duration) {
        let _evicted = self.insert_with(key, value, bytes, Lifetime::ttl(ttl));
    }

    /// [`insert`](Self::insert) with a stale window, a refresh point and
    /// the degraded mark. A zero fresh time with no stale window stores
    /// nothing. Returns what was evicted to make room (`key` itself when it
    /// is too heavy to admit); nothing, and nothing allocated, in the common
    /// case.
    #[must_use = "the evicted keys are for the cache's events"]
    pub(crate) fn insert_with(
        &self,
        key: &K,
        value: T,
        bytes: usize,
        life: Lifetime,
    ) -> Evicted<K, T> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (fresh_ms, stale_ms) = (ms(life.fresh), ms(life.stale));
        if fresh_ms == 0 && stale_ms == 0 {
            self.remove(key);
            return Evicted::default();
        }
        // Weighed as the slot will be: its bytes saturate at `u32::MAX`.
        let stored_bytes = u64::try_from(bytes)
            .unwrap_or(u64::MAX)
            .min(u64::from(u32::MAX));
        if self.shared.weigh.weight(stored_bytes) > self.shared.max_weight {
            // Would be refused by its shard anyway (see "Bounds"); this
            // skips the shard lock and the lifecycle round trip, which an
            // L1 too small for anything (an "L2 only" setup) pays on
            // every fill.
            self.remove(key);
            self.shared.evictions.fetch_add(1, Ordering::Relaxed);
            return Evicted {
                refused: Some(key.clone()),
                ..Evicted::default()
            };
        }
        let now = coarse::now_ms();
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let slot = Slot {
            value,
            fresh_until: now.saturating_add(fresh_ms),
            // Windows past ~49 days are cut to it.
            stale_ms: narrow(stale_ms),
            // A lead of at least 1 ms, so that 0 keeps meaning "never".
            refresh_lead_ms: life
                .refresh_after
                .map_or(0, |after| narrow(fresh_ms.saturating_sub(ms(after)).max(1))),
            bytes: narrow(u64::try_from(bytes).unwrap_or(u64::MAX)),
            degraded: life.degraded,
        };
        let bytes = slot.bytes();
        // Added before the slot is visible, so the eviction of this very
        // slot (e.g. when too large to admit) never drives the total below
        // what is actually held.
        self.shared.add_bytes(bytes);
        let mut evicted = Vec::new();
        let guard = match self
            .cache
            .entry(key, None, |_, _| EntryAction::<()>::ReplaceWithGuard)
        {
            EntryResult::Replaced(guard, old) => {
                self.shared.sub_bytes(old.bytes());
                guard
            }
            EntryResult::Vacant(guard) => guard,
            // The callback never retains or removes, and without a timeout
            // `entry` waits instead of timing out.
            EntryResult::Retained(()) | EntryResult::Removed(..) | EntryResult::Timeout => {
                self.shared.sub_bytes(bytes);
                return Evicted::default();
            }
        };
        if let Err(slot) = guard.insert_with_lifecycle(slot, &mut evicted) {
            // A concurrent remove or clear took the placeholder: that
            // operation happened after this insert, so the value stays out.
            self.shared.sub_bytes(slot.bytes());
        }
        Evicted {
            entries: evicted,
            refused: None,
        }
    }

    /// Removes `key`; returns whether an entry (expired or not) was present.
    pub fn remove(&self, key: &K) -> bool {
        match self.cache.remove(key) {
            Some((_, old)) => {
                self.shared.sub_bytes(old.bytes());
                true
            }
            None => false,
        }
    }

    /// Removes every entry.
    ///
    /// Entries inserted concurrently with the clear may survive it.
    pub fn clear(&self) {
        for (_, old) in self.cache.drain() {
            self.shared.sub_bytes(old.bytes());
        }
    }

    /// Number of entries held, expired ones not yet removed included.
    pub fn len(&self) -> u64 {
        u64::try_from(self.cache.len()).unwrap_or(u64::MAX)
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// A snapshot of the counters.
    ///
    /// Takes each shard's read lock once (for [`L1Stats::ghost_bytes`]).
    pub fn stats(&self) -> L1Stats {
        let entries = self.len();
        L1Stats {
            hits: self.shared.counters.sum(HITS),
            misses: self.shared.counters.sum(MISSES),
            entries,
            bytes: u64::try_from(self.shared.bytes.load(Ordering::Relaxed)).unwrap_or(0),
            evictions: self.shared.evictions.load(Ordering::Relaxed),
            ghost_bytes: self.empty_slots(entries).saturating_mul(SLOT_BYTES),
        }
    }

    /// quick_cache's slab slots that hold no entry, given that `entries`
    /// do: its ghosts (see "Memory" in [`layout`]) and slots freed by
    /// removals, which the slab keeps for reuse.
    fn empty_slots(&self, entries: u64) -> u64 {
        let slots = self.cache.memory_used().entries / layout::slab_slot_bytes::<K, Slot<T>>();
        u64::try_from(slots)
            .unwrap_or(u64::MAX)
            .saturating_sub(entries)
    }

    /// The entry bound this cache was built with.
    pub fn max_entries(&self) -> u64 {
        self.shared.max_entries
    }

    /// The byte bound this cache was built with.
    pub fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
    }
}

#[cfg(test)]
mod tests;
