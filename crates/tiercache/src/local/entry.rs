//! One L1 entry: the [`Slot`] stored per key (value, weight, times), the
//! [`Lifetime`] a fill asks for, and the [`Probe`] answer a read gets.

use std::time::Duration;

/// What the cache stores per key. Times are coarse-clock milliseconds.
///
/// Kept small (32 bytes next to a pointer-sized value): a hit copies it,
/// and every byte per entry is a byte of the working set that the L1 hit
/// path walks (a 48-byte slot measured about 1.7× slower gets on 2 threads
/// than this layout). Hence deltas in `u32` rather than three `u64` times.
#[derive(Clone)]
pub(super) struct Slot<T> {
    pub(super) value: T,
    /// Served as a hit until then.
    pub(super) fresh_until: u64,
    /// Kept as a stale fallback this much longer, then dropped.
    pub(super) stale_ms: u32,
    /// A hit this close to `fresh_until` asks for a refresh (0: never).
    pub(super) refresh_lead_ms: u32,
    /// The caller's weight, saturated at `u32::MAX`.
    pub(super) bytes: u32,
    /// A fail-safe answer: while "fresh" it is served, but as stale.
    pub(super) degraded: bool,
}

impl<T> Slot<T> {
    pub(super) fn expires_at(&self) -> u64 {
        self.fresh_until.saturating_add(u64::from(self.stale_ms))
    }

    pub(super) fn refresh_due(&self, now: u64) -> bool {
        self.refresh_lead_ms != 0
            && now
                >= self
                    .fresh_until
                    .saturating_sub(u64::from(self.refresh_lead_ms))
    }

    pub(super) fn bytes(&self) -> u64 {
        u64::from(self.bytes)
    }
}

/// How long an entry lives; see [`LocalCache::insert_with`](super::LocalCache::insert_with).
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

/// What a [`LocalCache::probe`](super::LocalCache::probe) found.
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
