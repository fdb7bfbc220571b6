//! L1: the in-process level, on `quick_cache`'s sharded S3-FIFO cache.
//!
//! Owns per-entry expiry, both size bounds and the L1 counters. Does not know
//! about Redis, codecs or loaders: the manager decides what to store and
//! weighs it.
//!
//! How the two bounds become quick_cache's single weight bound, and when
//! the cache is sharded, is [`layout`]'s business.
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
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use crate::clock::coarse;
use crate::error::Error;
use crate::stats::{L1Stats, Striped};

mod layout;

use layout::{Layout, Weigh};

const HITS: usize = 0;
const MISSES: usize = 1;

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
/// so neither the byte total nor the entry count can exceed its bound. Mixed sizes may leave up to half of each bound unused. A
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

/// What the cache stores per key. Times are coarse-clock milliseconds.
///
/// Kept small (32 bytes next to a pointer-sized value): a hit copies it,
/// and every byte per entry is a byte of the working set that the L1 hit
/// path walks (a 48-byte slot measured about 1.7× slower gets on 2 threads
/// than this layout). Hence deltas in `u32` rather than three `u64` times.
#[derive(Clone)]
struct Slot<T> {
    value: T,
    /// Served as a hit until then.
    fresh_until: u64,
    /// Kept as a stale fallback this much longer, then dropped.
    stale_ms: u32,
    /// A hit this close to `fresh_until` asks for a refresh (0: never).
    refresh_lead_ms: u32,
    /// The caller's weight, saturated at `u32::MAX`.
    bytes: u32,
    /// A fail-safe answer: while "fresh" it is served, but as stale.
    degraded: bool,
}

impl<T> Slot<T> {
    fn expires_at(&self) -> u64 {
        self.fresh_until.saturating_add(u64::from(self.stale_ms))
    }

    fn refresh_due(&self, now: u64) -> bool {
        self.refresh_lead_ms != 0
            && now
                >= self
                    .fresh_until
                    .saturating_sub(u64::from(self.refresh_lead_ms))
    }

    fn bytes(&self) -> u64 {
        u64::from(self.bytes)
    }
}

/// How long an entry lives; see [`LocalCache::insert_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    /// How long it is served as a hit (its TTL).
    pub(crate) fresh: Duration,
    /// How much longer it is kept as a stale fallback.
    pub(crate) stale: Duration,
    /// After how long a hit asks for a refresh (`None`: never).
    pub(crate) refresh_after: Option<Duration>,
    /// Whether it is a fail-safe answer, served as stale while fresh.
    pub(crate) degraded: bool,
}

impl Lifetime {
    /// A plain TTL: fresh for `ttl`, then gone.
    pub(crate) fn ttl(ttl: Duration) -> Self {
        Self {
            fresh: ttl,
            stale: Duration::ZERO,
            refresh_after: None,
            degraded: false,
        }
    }
}

/// What a [`LocalCache::probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe<T> {
    /// A hit; `refresh` says it is old enough to be refreshed.
    Fresh { value: T, refresh: bool },
    /// A fail-safe answer still within its throttle: serve it as stale.
    Degraded(T),
    /// Past its TTL but within the stale window: a fallback, not a hit
    /// (with the weight it was stored with).
    Stale { value: T, bytes: u64 },
    /// Nothing usable.
    Missing,
}

/// Counters shared by the cache handle and its lifecycle hook.
#[derive(Debug)]
struct Shared {
    counters: Striped<2>,
    evictions: AtomicU64,
    /// Signed because an eviction can be recorded before its insert's add
    /// becomes visible to a concurrent reader; snapshots clamp at zero.
    bytes: AtomicI64,
    max_entries: u64,
    max_bytes: u64,
    /// How entries are weighed.
    weigh: Weigh,
    /// Heaviest entry one shard admits; heavier ones are refused before
    /// touching the cache.
    max_weight: u64,
}

impl Shared {
    fn sub_bytes(&self, bytes: u64) {
        self.bytes
            .fetch_sub(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    fn add_bytes(&self, bytes: u64) {
        self.bytes
            .fetch_add(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct SlotWeighter(Weigh);

impl<K, T> Weighter<K, Slot<T>> for SlotWeighter {
    #[inline]
    fn weight(&self, _key: &K, slot: &Slot<T>) -> u64 {
        self.0.weight(slot.bytes())
    }
}

/// Counts evictions and keeps `bytes` exact when quick_cache pushes entries out.
#[derive(Clone)]
struct Accounting(Arc<Shared>);

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
        self.insert_with(key, value, bytes, Lifetime::ttl(ttl));
    }

    /// [`insert`](Self::insert) with a stale window, a refresh point and
    /// the degraded mark. A zero fresh time with no stale window stores
    /// nothing.
    pub(crate) fn insert_with(&self, key: &K, value: T, bytes: usize, life: Lifetime) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (fresh_ms, stale_ms) = (ms(life.fresh), ms(life.stale));
        if fresh_ms == 0 && stale_ms == 0 {
            self.remove(key);
            return;
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
            return;
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
                return;
            }
        };
        if let Err(slot) = guard.insert_with_lifecycle(slot, &mut evicted) {
            // A concurrent remove or clear took the placeholder: that
            // operation happened after this insert, so the value stays out.
            self.shared.sub_bytes(slot.bytes());
        }
        drop(evicted);
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
    pub fn stats(&self) -> L1Stats {
        L1Stats {
            hits: self.shared.counters.sum(HITS),
            misses: self.shared.counters.sum(MISSES),
            entries: self.len(),
            bytes: u64::try_from(self.shared.bytes.load(Ordering::Relaxed)).unwrap_or(0),
            evictions: self.shared.evictions.load(Ordering::Relaxed),
        }
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
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn get_after_insert_hits_and_counts() {
        let cache = LocalCache::new(100, 1 << 20).unwrap();
        cache.insert(&1u64, Arc::new("a"), 10, MINUTE);
        assert_eq!(cache.get(&1).as_deref(), Some(&"a"));
        assert_eq!(cache.get(&2), None);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
    }

    #[test]
    fn bytes_follow_insert_replace_remove_and_clear() {
        let cache = LocalCache::new(100, 1 << 20).unwrap();
        cache.insert(&1u64, (), 100, MINUTE);
        cache.insert(&2u64, (), 50, MINUTE);
        assert_eq!(cache.stats().bytes, 150);
        cache.insert(&1u64, (), 30, MINUTE);
        assert_eq!(cache.stats().bytes, 80);
        assert!(cache.remove(&2));
        assert!(!cache.remove(&2));
        assert_eq!(cache.stats().bytes, 30);
        cache.clear();
        assert_eq!(cache.stats(), L1Stats::default());
    }

    #[test]
    fn entry_bound_holds_for_tiny_values() {
        let cache = LocalCache::new(64, 1 << 30).unwrap();
        for i in 0..10_000u64 {
            cache.insert(&i, (), 1, MINUTE);
        }
        let stats = cache.stats();
        assert!(stats.entries <= 64, "{stats:?}");
        assert!(stats.evictions >= 10_000 - 64, "{stats:?}");
        assert_eq!(stats.bytes, stats.entries);
    }

    #[test]
    fn byte_bound_holds_for_large_values() {
        let cache = LocalCache::new(1_000_000, 64 * 1024).unwrap();
        for i in 0..1_000u64 {
            cache.insert(&i, (), 1_000, MINUTE);
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 64 * 1024, "{stats:?}");
        assert!(stats.entries > 0, "{stats:?}");
        assert_eq!(stats.bytes, stats.entries * 1_000);
    }

    #[test]
    fn value_larger_than_a_shard_is_rejected_and_counted() {
        let cache = LocalCache::new(1_000, 10_000).unwrap();
        cache.insert(&1u64, (), 1_000_000, MINUTE);
        assert_eq!(cache.get(&1), None);
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes, stats.evictions), (0, 0, 1));
    }

    #[test]
    fn a_few_entries_under_the_default_byte_bound_are_all_held() {
        // The default byte bound over a handful of entries: the unit is
        // many megabytes, and each entry still fits.
        for max_entries in 1..=5u64 {
            let cache = LocalCache::new(max_entries, 64 << 20).unwrap();
            for i in 0..max_entries {
                cache.insert(&i, (), 300, MINUTE);
            }
            let stats = cache.stats();
            assert_eq!(
                (stats.entries, stats.evictions),
                (max_entries, 0),
                "{max_entries}"
            );
            assert!((0..max_entries).all(|i| cache.peek(&i).is_some()));
        }
    }

    mod bounds {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;

        /// Byte bounds from a few bytes to 128 MiB.
        fn max_bytes() -> impl Strategy<Value = u64> {
            prop_oneof![1u64..1_000, 1_000u64..1 << 20, 1u64 << 20..1 << 27]
        }

        /// The bytes held, summed over the entries still present.
        fn held_bytes(cache: &LocalCache<u64, ()>, keys: u64) -> u64 {
            (0..keys)
                .filter_map(|i| cache.cache.peek(&i))
                .map(|slot| slot.bytes())
                .sum()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            #[test]
            fn neither_bound_is_ever_exceeded(
                max_entries in 1u64..3_000,
                max_bytes in max_bytes(),
                sizes in vec(0usize..100_000, 1..3_000),
            ) {
                let cache = LocalCache::new(max_entries, max_bytes).unwrap();
                for (i, size) in (0u64..).zip(&sizes) {
                    cache.insert(&i, (), *size, MINUTE);
                    let stats = cache.stats();
                    prop_assert!(stats.entries <= max_entries, "{stats:?}");
                    prop_assert!(stats.bytes <= max_bytes, "{stats:?}");
                }
                let keys = u64::try_from(sizes.len()).unwrap();
                prop_assert_eq!(cache.stats().bytes, held_bytes(&cache, keys));
            }

            #[test]
            fn a_one_shard_cache_holds_every_small_entry_up_to_its_bound(
                max_entries in 1u64..256,
                max_bytes in max_bytes(),
                fill in 0.0f64..=1.0,
            ) {
                let cache = LocalCache::new(max_entries, max_bytes).unwrap();
                // Entries of at most their share of the bytes.
                let share = max_bytes / max_entries;
                let keys = (max_entries as f64 * fill).ceil() as u64;
                for i in 0..keys {
                    cache.insert(&i, (), usize::try_from(i % (share + 1)).unwrap(), MINUTE);
                }
                prop_assert_eq!(cache.stats().entries, keys);
                prop_assert_eq!(cache.stats().evictions, 0);
            }

            #[test]
            fn a_one_shard_cache_holds_large_entries_up_to_its_byte_bound(
                max_bytes in 1_000u64..1 << 20,
                parts in 2u64..64,
            ) {
                // More entry slots than entries: the bytes bind, exactly (one
                // entry alone may take at most 97 % of them, see "Shards").
                let cache = LocalCache::new(200, max_bytes).unwrap();
                let size = max_bytes / parts;
                for i in 0..parts {
                    cache.insert(&i, (), usize::try_from(size).unwrap(), MINUTE);
                }
                prop_assert_eq!(cache.stats().entries, parts);
                prop_assert_eq!(cache.stats().bytes, parts * size);
            }

            #[test]
            fn a_sharded_cache_holds_most_of_its_bound(
                max_entries in 256u64..20_000,
                bytes_per_entry in 300u64..4_096,
            ) {
                let cache = LocalCache::new(max_entries, max_entries * bytes_per_entry).unwrap();
                for i in 0..max_entries {
                    cache.insert(&i, (), 300, MINUTE);
                }
                let entries = cache.stats().entries;
                prop_assert!(entries * 100 >= max_entries * 85, "{entries} of {max_entries}");
            }

            #[test]
            fn a_value_is_stored_exactly_when_a_shard_can_take_it(
                max_entries in 1u64..20_000,
                max_bytes in max_bytes(),
                share in 0.0f64..2.0,
            ) {
                let cache = LocalCache::new(max_entries, max_bytes).unwrap();
                let (weigh, max_weight) = (cache.shared.weigh, cache.shared.max_weight);
                // The largest size a shard admits, then a share of it.
                let largest = max_weight / weigh.per_byte;
                let size = ((largest as f64 * share) as u64).min(u64::from(u32::MAX));
                cache.insert(&1, (), usize::try_from(size).unwrap(), MINUTE);
                prop_assert_eq!(cache.peek(&1).is_some(), weigh.weight(size) <= max_weight, "size {}", size);
                prop_assert!(max_weight >= weigh.unit, "every small entry fits");
            }
        }
    }

    #[test]
    fn expired_entry_is_a_miss_and_is_removed() {
        let cache = LocalCache::new(100, 1 << 20).unwrap();
        cache.insert(&1u64, (), 10, Duration::from_millis(1));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cache.peek(&1).is_some() {
            assert!(std::time::Instant::now() < deadline, "entry never expired");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn probe_tells_fresh_due_degraded_and_stale_entries_apart() {
        let cache = LocalCache::new(100, 1 << 20).unwrap();
        let life = |fresh, refresh_after, degraded| Lifetime {
            fresh,
            stale: MINUTE,
            refresh_after,
            degraded,
        };
        cache.insert_with(&1u64, 'a', 10, life(MINUTE, None, false));
        cache.insert_with(&2u64, 'b', 10, life(MINUTE, Some(Duration::ZERO), false));
        cache.insert_with(&3u64, 'c', 10, life(MINUTE, None, true));
        cache.insert_with(&4u64, 'd', 10, life(Duration::from_millis(1), None, false));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cache.peek(&4).is_some() {
            assert!(std::time::Instant::now() < deadline, "entry never expired");
            std::thread::sleep(Duration::from_millis(2));
        }

        assert_eq!(
            cache.probe(&1),
            Probe::Fresh {
                value: 'a',
                refresh: false
            }
        );
        assert_eq!(
            cache.probe(&2),
            Probe::Fresh {
                value: 'b',
                refresh: true
            }
        );
        assert_eq!(cache.probe(&3), Probe::Degraded('c'));
        assert_eq!(
            cache.probe(&4),
            Probe::Stale {
                value: 'd',
                bytes: 10
            }
        );
        assert_eq!(cache.probe(&5), Probe::Missing);
        assert_eq!(cache.get(&3), None, "a degraded entry is no hit");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.entries), (2, 4));
    }

    #[test]
    fn zero_ttl_stores_nothing() {
        let cache = LocalCache::new(100, 1 << 20).unwrap();
        cache.insert(&1u64, (), 10, MINUTE);
        cache.insert(&1u64, (), 10, Duration::ZERO);
        assert_eq!(cache.peek(&1), None);
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn zero_or_uncombinable_bounds_are_rejected() {
        assert!(LocalCache::<u64, ()>::new(0, 10).is_err());
        assert!(LocalCache::<u64, ()>::new(10, 0).is_err());
        assert!(LocalCache::<u64, ()>::new(u64::MAX, u64::MAX - 1).is_err());
        assert!(LocalCache::<u64, ()>::new(10_000_000, 1 << 40).is_ok());
    }

    #[test]
    fn concurrent_inserts_keep_bytes_exact() {
        let cache = LocalCache::new(1_000, 1 << 30).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        cache.insert(
                            &(i % 3_000),
                            (),
                            usize::try_from(t + i % 7).unwrap(),
                            MINUTE,
                        );
                        if i % 5 == 0 {
                            cache.remove(&(i % 3_000));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stats = cache.stats();
        let mut sum = 0;
        for i in 0..3_000u64 {
            if cache.cache.peek(&i).is_some() {
                sum += cache.cache.peek(&i).map_or(0, |s| s.bytes());
            }
        }
        assert_eq!(stats.bytes, sum);
    }
}
