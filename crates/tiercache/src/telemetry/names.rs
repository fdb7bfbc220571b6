//! The name of every series the cache records (with the `metrics`
//! feature), as a constant, and its HELP text ([`describe`]). Names follow
//! Prometheus conventions (`_total` counters, `_seconds` histograms).

use metrics::{KeyName, Recorder};

/// Lookups answered by a cache level, `cache_type="l1"|"l2"` (negative
/// entries included).
pub const CACHE_HITS: &str = "cache_hits_total";
/// Lookups a level could not answer, `cache_type="l1"|"l2"`.
pub const CACHE_MISSES: &str = "cache_misses_total";
/// Bytes held by L1, `cache_type="l1"`.
pub const CACHE_SIZE_BYTES: &str = "cache_size_bytes";
/// Entries held by L1, `cache_type="l1"`.
pub const CACHE_ENTRIES: &str = "cache_entries";
/// What L1 holds beyond its entries (the keys of recent evictions, slots
/// freed for reuse), `cache_type="l1"`.
pub const CACHE_GHOST_BYTES: &str = "cache_ghost_bytes";
/// L1 entries pushed out by its entry or byte bound.
pub const CACHE_EVICTIONS: &str = "cache_evictions_total";
/// Failed Redis calls (errors and timeouts).
pub const CACHE_L2_ERRORS: &str = "cache_l2_errors_total";
/// Invalidation-bus messages, `direction="published"|"received"`.
pub const CACHE_INVALIDATIONS: &str = "cache_invalidations_total";
/// Lookups that waited for another caller's load of the same key.
pub const CACHE_LOADER_COALESCED: &str = "cache_loader_coalesced_total";
/// Writes queued by write-behind and not yet in the store.
pub const WRITE_BEHIND_PENDING: &str = "write_behind_pending";
/// Loader (store) calls made by the cache.
pub const CACHE_LOADER_LOADS: &str = "cache_loader_loads_total";
/// Loader calls that failed.
pub const CACHE_LOADER_ERRORS: &str = "cache_loader_errors_total";
/// Redis values the codec could not decode (each treated as a miss).
pub const CACHE_L2_DECODE_ERRORS: &str = "cache_l2_decode_errors_total";
/// Lookups answered "absent" from a negative entry.
pub const CACHE_NEGATIVE_HITS: &str = "cache_negative_hits_total";
/// L2 state as a state set, `state="up"|"down"|"disabled"`: 1 for the
/// current state, 0 for the others.
pub const CACHE_L2_STATE: &str = "cache_l2_state";
/// Bus messages that did not continue this instance's change-log position.
pub const CACHE_BUS_GAPS: &str = "cache_bus_gaps_total";
/// Catch-ups that replayed the change log instead of clearing L1.
pub const CACHE_BUS_REPLAYS: &str = "cache_bus_replays_total";
/// Keys dropped from L1 by change-log replays.
pub const CACHE_BUS_KEYS_REPLAYED: &str = "cache_bus_keys_replayed_total";
/// Keys dropped from L1 because Redis client tracking reported a change.
pub const CACHE_BUS_TRACKED_KEYS: &str = "cache_bus_tracked_keys_total";
/// Bus publishes that failed.
pub const CACHE_BUS_PUBLISH_ERRORS: &str = "cache_bus_publish_errors_total";
/// Bus state as a state set, `state="subscribed"|"connecting"|"disabled"`.
pub const CACHE_BUS_STATE: &str = "cache_bus_state";
/// Times the bus emptied L1, `reason="log_truncated"|"log_lost"|"remote_clear"|"redis_flush"`.
pub const CACHE_L1_CLEARS: &str = "cache_l1_clears_total";
/// Answers served stale (fail-safe), `reason="loader_error"|"soft_timeout"|"throttled"`.
pub const CACHE_STALE_ANSWERS: &str = "cache_stale_answers_total";
/// Loads that outlived a loader timeout, `kind="soft"|"hard"`.
pub const CACHE_LOADER_TIMEOUTS: &str = "cache_loader_timeouts_total";
/// Background refreshes of entries late in their life.
pub const CACHE_EAGER_REFRESHES: &str = "cache_eager_refreshes_total";
/// Background refreshes that failed.
pub const CACHE_EAGER_REFRESH_ERRORS: &str = "cache_eager_refresh_errors_total";
/// Redis writes the version guard refused (an older version kept out).
pub const CACHE_L2_GUARD_REJECTIONS: &str = "cache_l2_guard_rejections_total";
/// L1 fills dropped because their key was invalidated while they loaded.
pub const CACHE_FENCED_FILLS: &str = "cache_fenced_fills_total";
/// Write-behind queue entries this instance wrote to the store.
pub const WRITE_BEHIND_FLUSHED: &str = "write_behind_flushed_total";
/// Write-behind flush attempts that failed (retried) or were rejected.
pub const WRITE_BEHIND_FAILURES: &str = "write_behind_failures_total";
/// Write-behind changes the store rejected for good (dead-lettered).
pub const WRITE_BEHIND_DEAD_LETTERS: &str = "write_behind_dead_letters_total";
/// Write-behind changes acknowledged before a Redis replica confirmed them.
pub const WRITE_BEHIND_UNREPLICATED: &str = "write_behind_unreplicated_total";
/// Write-behind batches written to the store.
pub const WRITE_BEHIND_BATCHES: &str = "write_behind_batches_total";
/// Distinct products in the last write-behind batch.
pub const WRITE_BEHIND_LAST_BATCH: &str = "write_behind_last_batch_size";
/// Time to write one write-behind batch to the store.
pub const WRITE_BEHIND_FLUSH_DURATION: &str = "write_behind_flush_duration_seconds";
/// Propagation lag of invalidations from other instances (publish → applied).
pub const CACHE_INVALIDATION_LAG: &str = "cache_invalidation_lag_seconds";
/// Time of each Redis call, successful or not.
pub const CACHE_L2_DURATION: &str = "cache_l2_duration_seconds";
/// Time of each loader call (a batch counts once).
pub const CACHE_LOADER_DURATION: &str = "cache_loader_duration_seconds";

/// Registers the HELP text of every family above with `recorder` (the
/// cache does this itself for the recorder it records to).
pub fn describe(recorder: &dyn Recorder) {
    let counters = [
        (
            CACHE_HITS,
            "Cache lookups answered by a level (negative entries included), by level.",
        ),
        (
            CACHE_MISSES,
            "Cache lookups a level could not answer, by level.",
        ),
        (
            CACHE_EVICTIONS,
            "L1 entries pushed out by its entry or byte bound, or too large to admit.",
        ),
        (
            CACHE_L2_ERRORS,
            "Failed Redis calls (errors and timeouts); each was served as a miss.",
        ),
        (
            CACHE_INVALIDATIONS,
            "Invalidation-bus messages (invalidations, clears and heartbeats) this instance published or received from others.",
        ),
        (
            CACHE_LOADER_COALESCED,
            "Lookups that waited for another caller's load of the same key instead of loading.",
        ),
        (
            CACHE_LOADER_LOADS,
            "Loader calls the cache made (a batch counts once).",
        ),
        (CACHE_LOADER_ERRORS, "Loader calls that failed."),
        (
            CACHE_L2_DECODE_ERRORS,
            "Redis values that could not be decoded; each was treated as a miss.",
        ),
        (
            CACHE_NEGATIVE_HITS,
            "Lookups answered 'absent' from a negative entry without calling the loader.",
        ),
        (
            CACHE_BUS_GAPS,
            "Bus messages that did not continue this instance's change-log position; each started a catch-up.",
        ),
        (
            CACHE_BUS_REPLAYS,
            "Catch-ups that replayed the bus change log instead of clearing L1.",
        ),
        (
            CACHE_BUS_KEYS_REPLAYED,
            "Keys dropped from L1 by bus change-log replays.",
        ),
        (
            CACHE_BUS_TRACKED_KEYS,
            "Keys dropped from L1 because Redis client tracking reported a change made in Redis.",
        ),
        (CACHE_BUS_PUBLISH_ERRORS, "Bus publishes that failed."),
        (
            CACHE_L1_CLEARS,
            "Times the invalidation bus emptied L1, by reason.",
        ),
        (
            CACHE_STALE_ANSWERS,
            "Answers served from an expired entry because the loader failed, was slow, or failed recently, by reason.",
        ),
        (
            CACHE_LOADER_TIMEOUTS,
            "Loads that outlived the soft (answered stale, finished in the background) or hard (abandoned) timeout.",
        ),
        (
            CACHE_EAGER_REFRESHES,
            "Background reloads of entries hit late in their life.",
        ),
        (
            CACHE_EAGER_REFRESH_ERRORS,
            "Background reloads that failed.",
        ),
        (
            CACHE_L2_GUARD_REJECTIONS,
            "Redis writes refused by the version guard because Redis held a newer version or a tombstone.",
        ),
        (
            CACHE_FENCED_FILLS,
            "L1 fills dropped because their key was invalidated while they loaded.",
        ),
        (
            WRITE_BEHIND_FLUSHED,
            "Write-behind queue entries this instance wrote to the store (coalesced ones included).",
        ),
        (
            WRITE_BEHIND_FAILURES,
            "Write-behind flush attempts that failed (and were retried) or were rejected.",
        ),
        (
            WRITE_BEHIND_DEAD_LETTERS,
            "Write-behind changes the store rejected for good, moved to the dead letters.",
        ),
        (
            WRITE_BEHIND_UNREPLICATED,
            "Write-behind changes acknowledged without a Redis replica confirming them within the replica wait (a failover of their primary could lose them).",
        ),
        (
            WRITE_BEHIND_BATCHES,
            "Write-behind batches written to the store.",
        ),
    ];
    for (name, help) in counters {
        recorder.describe_counter(KeyName::from_const_str(name), None, help.into());
    }
    let gauges = [
        (
            CACHE_SIZE_BYTES,
            "Bytes held by the cache level, as weighed on insert.",
        ),
        (
            CACHE_ENTRIES,
            "Entries held by the cache level, negative entries included.",
        ),
        (
            CACHE_GHOST_BYTES,
            "Bytes the cache level holds beyond its entries: the keys of recent evictions and slots freed for reuse.",
        ),
        (
            WRITE_BEHIND_PENDING,
            "Writes queued by write-behind and not yet in the store.",
        ),
        (
            WRITE_BEHIND_LAST_BATCH,
            "Distinct products in the last write-behind batch.",
        ),
        (
            CACHE_L2_STATE,
            "Redis level state: 1 for the current state, 0 for the others.",
        ),
        (
            CACHE_BUS_STATE,
            "Invalidation-bus state: 1 for the current state, 0 for the others.",
        ),
    ];
    for (name, help) in gauges {
        recorder.describe_gauge(KeyName::from_const_str(name), None, help.into());
    }
    let histograms = [
        (
            WRITE_BEHIND_FLUSH_DURATION,
            "Time to write one write-behind batch to the store (bucketed by the cache, so the sum is an upper bound).",
        ),
        (
            CACHE_INVALIDATION_LAG,
            "Time from another instance publishing an invalidation to this one applying it (wall clocks; bucketed by the cache, so the sum is an upper bound).",
        ),
        (
            CACHE_L2_DURATION,
            "Time of each Redis call the cache made, successful or not.",
        ),
        (
            CACHE_LOADER_DURATION,
            "Time of each loader call the cache made (a batch counts once).",
        ),
    ];
    for (name, help) in histograms {
        recorder.describe_histogram(KeyName::from_const_str(name), None, help.into());
    }
}
