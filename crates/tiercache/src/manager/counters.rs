//! The manager's counters: one [`Counter`] per event a snapshot reports,
//! counted in per-thread stripes (see [`Striped`]) because reads count on the
//! hit path.

use crate::striped::Striped;

/// An event the manager counts (see `CacheStats` for what each means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counter {
    NegativeHits,
    L2Hits,
    L2Misses,
    DecodeErrors,
    Loads,
    Coalesced,
    LoaderErrors,
    StaleLoaderError,
    StaleSoftTimeout,
    StaleThrottled,
    SoftTimeouts,
    HardTimeouts,
    Refreshes,
    RefreshErrors,
    GuardRejections,
    FencedFills,
}

/// How many [`Counter`]s there are.
const COUNTERS: usize = Counter::FencedFills as usize + 1;

/// Every [`Counter`] of one cache.
#[derive(Debug, Default)]
pub(super) struct Counters(Striped<COUNTERS>);

impl Counters {
    #[inline]
    pub(super) fn incr(&self, counter: Counter) {
        self.0.incr(counter as usize);
    }

    #[cfg(feature = "redis")]
    pub(super) fn add(&self, counter: Counter, n: u64) {
        self.0.add(counter as usize, n);
    }

    pub(super) fn sum(&self, counter: Counter) -> u64 {
        self.0.sum(counter as usize)
    }
}
