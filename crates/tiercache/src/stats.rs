//! Statistics: the public snapshot types a cache reports
//! ([`TieredCache::stats`](crate::TieredCache::stats)). The counters behind
//! them are striped per thread (see [`Striped`](crate::Striped)), so
//! snapshots are not atomic across counters; each counter is monotonic.

use serde::Serialize;

/// A point-in-time snapshot of a [`TieredCache`](crate::TieredCache)'s counters.
///
/// Counters are monotonic since the cache was built; `entries` and `bytes`
/// are gauges. Each counter is read independently, so under load two fields
/// may be a few operations apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// The in-process level.
    pub l1: L1Stats,
    /// The Redis level.
    pub l2: L2Stats,
    /// Calls of the caller-supplied loaders.
    pub loader: LoaderStats,
    /// Lookups answered "not found" from a negative entry (L1 or L2) without
    /// calling the loader. They are also counted as hits of their level.
    pub negative_hits: u64,
    /// Fail-safe answers: stale values served instead of an error or a wait.
    pub stale: StaleStats,
    /// Fills dropped from L1 because their key was invalidated while they
    /// loaded (the value was still returned to its caller).
    pub fenced_fills: u64,
    /// The invalidation bus.
    pub bus: BusStats,
    /// The write-behind queue (all zero without one).
    pub write_behind: WriteBehindStats,
}

/// Counters of the write-behind queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[non_exhaustive]
pub struct WriteBehindStats {
    /// Changes in the queue not yet in the store (all instances'), as of
    /// the flusher's last round.
    pub pending: u64,
    /// Queue entries this instance flushed (coalesced ones included).
    pub flushed: u64,
    /// Flush attempts that failed (retried) or were rejected.
    pub failed: u64,
    /// Changes the store rejected for good, moved to the dead letters.
    pub dead_lettered: u64,
    /// Changes acknowledged without a replica confirming them in time (see
    /// [`write_behind_replica_wait`](crate::TieredCacheBuilder::write_behind_replica_wait)).
    pub unreplicated: u64,
    /// Batches written to the store.
    pub batches: u64,
    /// Entries made redundant by a newer change of the same key in their batch.
    pub coalesced: u64,
    /// Size (distinct keys) of the last batch.
    pub last_batch: u64,
    /// Total time spent in the store's flush, in ms.
    pub flush_ms_sum: u64,
    /// Flush durations: `flush_buckets[i]` counts batches that took at most
    /// [`DURATION_BUCKETS_MS`]`[i]` ms (and more than the bound before it);
    /// the last element counts the rest. Not cumulative.
    pub flush_buckets: [u64; DURATION_BUCKETS_MS.len() + 1],
}

/// Stale (fail-safe) answers, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[non_exhaustive]
pub struct StaleStats {
    /// The loader failed (or hit its hard timeout).
    pub loader_error: u64,
    /// The loader was slower than the soft timeout; it went on in the background.
    pub soft_timeout: u64,
    /// The loader of this key failed recently and is not retried yet.
    pub throttled: u64,
}

/// Upper bounds (inclusive, in ms) of the duration histograms in the stats
/// ([`BusStats::lag_buckets`], [`WriteBehindStats::flush_buckets`]); a
/// last, implicit bucket holds the rest.
pub const DURATION_BUCKETS_MS: [u64; 8] = [1, 5, 10, 50, 100, 500, 1_000, 5_000];

#[cfg(feature = "redis")]
/// The index of the [`DURATION_BUCKETS_MS`] bucket that counts `ms`.
pub(crate) fn duration_bucket(ms: u64) -> usize {
    DURATION_BUCKETS_MS
        .iter()
        .position(|&bound| ms <= bound)
        .unwrap_or(DURATION_BUCKETS_MS.len())
}

/// Counters of the invalidation bus (all zero, state `disabled`, without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BusStats {
    /// Whether this instance is subscribed (and in step with the change
    /// log) right now.
    pub state: BusState,
    /// Whether Redis client tracking reports outside writes to this instance.
    pub tracking: BusTracking,
    /// Messages this instance published (keys, clears and heartbeats).
    pub published: u64,
    /// Messages from other instances received.
    pub received: u64,
    /// Messages that did not continue this instance's log position (one
    /// was missed, or a heartbeat named a later head); each started a
    /// catch-up.
    pub gaps: u64,
    /// Publishes Redis did not take; each is queued again and retried.
    pub publish_errors: u64,
    /// Connections made (the first included); each is followed by a catch-up.
    pub subscriptions: u64,
    /// Connections dropped because nothing, not even our own heartbeat,
    /// arrived for three heartbeat intervals.
    pub silences: u64,
    /// Catch-ups that replayed the change log (instead of clearing L1).
    pub replays: u64,
    /// Keys dropped from L1 by those replays.
    pub keys_replayed: u64,
    /// Keys dropped from L1 because Redis client tracking reported a change.
    pub tracked_keys: u64,
    /// Times L1 was emptied by the bus, by reason.
    pub l1_clears: BusClears,
    /// Sum of propagation lags (receive time minus the sender's wall-clock
    /// send time, in ms) over `lag_samples` messages from other instances.
    /// Includes clock skew between hosts.
    pub lag_ms_sum: u64,
    /// Messages the lag was measured on.
    pub lag_samples: u64,
    /// Largest propagation lag seen, in ms.
    pub lag_ms_max: u64,
    /// Lag histogram: `lag_buckets[i]` counts messages with a lag of at most
    /// [`DURATION_BUCKETS_MS`]`[i]` ms (and more than the bound before it); the
    /// last element counts the rest. Not cumulative.
    pub lag_buckets: [u64; DURATION_BUCKETS_MS.len() + 1],
}

impl BusStats {
    pub(crate) fn disabled() -> Self {
        Self {
            state: BusState::Disabled,
            tracking: BusTracking::Off,
            published: 0,
            received: 0,
            gaps: 0,
            publish_errors: 0,
            subscriptions: 0,
            silences: 0,
            replays: 0,
            keys_replayed: 0,
            tracked_keys: 0,
            l1_clears: BusClears::default(),
            lag_ms_sum: 0,
            lag_samples: 0,
            lag_ms_max: 0,
            lag_buckets: [0; DURATION_BUCKETS_MS.len() + 1],
        }
    }
}

/// Why the bus emptied L1, counted per reason. Missed messages, lost
/// connections and silences do not empty it: the change log is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[non_exhaustive]
pub struct BusClears {
    /// The change log had been trimmed past this instance's position (it
    /// was away longer than the log reaches back).
    pub log_truncated: u64,
    /// The change log was gone or had started again: Redis lost its data
    /// (a restart without persistence, a flush) or the log was deleted.
    pub log_lost: u64,
    /// Another instance cleared the whole cache.
    pub remote_clear: u64,
    /// Redis client tracking reported a flush of the database.
    pub redis_flush: u64,
}

/// Whether Redis client tracking reports outside writes to this instance.
///
/// Serialized in lowercase (`"on"`, `"off"`, `"unavailable"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BusTracking {
    /// On: a key of this cache written in Redis by anyone leaves every L1.
    On,
    /// Off: turned off, no bus, or not connected yet.
    Off,
    /// Redis refused `CLIENT TRACKING` (older than 6.0, or an ACL).
    Unavailable,
}

/// Whether the invalidation bus is listening.
///
/// Serialized in lowercase (`"subscribed"`, `"connecting"`, `"disabled"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BusState {
    /// Subscribed: invalidations from other instances reach this one.
    Subscribed,
    /// Not subscribed yet, or reconnecting after the connection was lost;
    /// what was missed meanwhile is replayed from the change log once
    /// subscribed again.
    Connecting,
    /// No bus: no Redis configured, or the bus was turned off.
    Disabled,
}

impl BusState {
    /// The lowercase name used in serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribed => "subscribed",
            Self::Connecting => "connecting",
            Self::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for BusState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of the in-process level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[non_exhaustive]
pub struct L1Stats {
    /// Lookups answered from L1, negative entries included.
    pub hits: u64,
    /// Lookups L1 could not answer (absent or expired).
    pub misses: u64,
    /// Entries currently held, negative entries included.
    pub entries: u64,
    /// Bytes currently held, as weighed on insert (see
    /// [`LocalCache::insert`](crate::LocalCache::insert)).
    pub bytes: u64,
    /// Entries pushed out to respect the entry or byte bound, plus values too
    /// large to be admitted at all. Expiry and explicit removal are not
    /// evictions.
    pub evictions: u64,
    /// Memory L1's structures hold beyond its entries: the keys of recent
    /// evictions, which its S3-FIFO policy remembers so that a returning
    /// key goes straight to its main queue, and slots that removals freed
    /// (kept for reuse), each at what L1's structures take per entry (the
    /// cost a [`TieredCache`](crate::TieredCache) adds to each entry's
    /// `bytes`). Within `max_bytes` together with `bytes`: the
    /// entries' share of the bound leaves room for the remembered keys.
    pub ghost_bytes: u64,
}

/// Counters of the Redis level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct L2Stats {
    /// Lookups answered from Redis, negative entries included.
    pub hits: u64,
    /// Lookups Redis could not answer: key absent, value undecodable, Redis
    /// failing, or the circuit breaker open.
    pub misses: u64,
    /// Failed Redis calls (errors and timeouts). Never surfaced to callers.
    pub errors: u64,
    /// Values found in Redis that the codec could not decode (foreign or
    /// corrupt); each was treated as a miss.
    pub decode_errors: u64,
    /// Writes the version guard refused because Redis held a newer version
    /// (or a tombstone): each was a slow reader's old value kept out.
    pub guard_rejections: u64,
    /// Whether the level is usable right now.
    pub state: L2State,
}

/// Counters of the loaders passed to `get_or_load` and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[non_exhaustive]
pub struct LoaderStats {
    /// Loader invocations (a batch loader call counts once).
    pub loads: u64,
    /// Callers that waited for another caller's in-flight load of the same
    /// key instead of running their own loader.
    pub coalesced: u64,
    /// Loader invocations that returned an error (hard timeouts included).
    pub errors: u64,
    /// Loads that outlived the soft timeout (and went on in the background).
    pub soft_timeouts: u64,
    /// Loads abandoned at the hard timeout.
    pub hard_timeouts: u64,
    /// Background refreshes started by hits late in an entry's life.
    pub refreshes: u64,
    /// Background refreshes that failed.
    pub refresh_errors: u64,
}

/// Health of the Redis level.
///
/// Serialized in lowercase (`"up"`, `"down"`, `"disabled"`), as a health
/// or stats endpoint would show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum L2State {
    /// Connected, and the circuit breaker is closed: lookups go to Redis.
    Up,
    /// Not connected yet, or the circuit breaker is open: lookups skip Redis
    /// and fall through to the loader while the connection is retried.
    Down,
    /// No Redis configured: the cache is L1-only.
    Disabled,
}

impl L2State {
    /// The lowercase name used in serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for L2State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_state_serializes_in_lowercase() {
        let json = serde_json::to_string(&[L2State::Up, L2State::Down, L2State::Disabled]).unwrap();
        assert_eq!(json, r#"["up","down","disabled"]"#);
        assert_eq!(L2State::Down.to_string(), "down");
    }
}
