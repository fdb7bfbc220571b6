//! The cache's metrics through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`), so that any exporter records them
//! (Prometheus, OpenTelemetry, StatsD…).
//!
//! What the cache counts on its hot paths (hits, misses, loads, bus and
//! write-behind figures) stays in its own per-thread counters, which cost a
//! hit nothing shared; they are published as counters and gauges every
//! [`PUBLISH_INTERVAL`] by a background task, and at once by
//! [`TieredCache::record_metrics`](crate::TieredCache::record_metrics)
//! (call it before rendering a scrape for exact numbers). The latency of
//! each Redis call and each loader call is recorded when it happens, in the
//! histograms [`names::CACHE_L2_DURATION`] and
//! [`names::CACHE_LOADER_DURATION`].
//!
//! Series go to the recorder given to
//! [`TieredCacheBuilder::metrics_recorder`](crate::TieredCacheBuilder::metrics_recorder),
//! else to the global one (`metrics::set_global_recorder`, which exporters
//! install), registered when the cache is built. Several caches on one
//! recorder need [`metrics_labels`](crate::TieredCacheBuilder::metrics_labels)
//! to tell their series apart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};

use crate::stats::{BusState, CacheStats, DURATION_BUCKETS_MS, L2State};

pub mod names;

use names::*;

/// How often the cache's own counters are published to the recorder.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Bucket bounds (seconds) that match the cache's own duration buckets
/// ([`DURATION_BUCKETS_MS`]): configure them in the exporter for
/// [`names::CACHE_INVALIDATION_LAG`] and
/// [`names::WRITE_BEHIND_FLUSH_DURATION`], whose samples are replayed at
/// their bucket's upper bound.
pub const DURATION_BUCKETS_SECONDS: [f64; DURATION_BUCKETS_MS.len()] = {
    let mut seconds = [0.0; DURATION_BUCKETS_MS.len()];
    let mut i = 0;
    while i < seconds.len() {
        seconds[i] = DURATION_BUCKETS_MS[i] as f64 / 1_000.0;
        i += 1;
    }
    seconds
};
/// Where replayed durations above the last bound are recorded.
const DURATION_OVERFLOW_SECONDS: f64 = 10.0;

/// The L2 states, in the order of [`Telemetry::l2_state`].
const L2_STATES: [L2State; 3] = [L2State::Up, L2State::Down, L2State::Disabled];
/// The bus states, in the order of [`Telemetry::bus_state`].
const BUS_STATES: [BusState; 3] = [
    BusState::Subscribed,
    BusState::Connecting,
    BusState::Disabled,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Where a cache records its metrics: a recorder, or the global one.
#[derive(Clone, Default)]
pub(crate) enum Target {
    #[default]
    Global,
    Recorder(Arc<dyn Recorder + Send + Sync>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Global => f.write_str("Global"),
            Self::Recorder(_) => f.write_str("Recorder"),
        }
    }
}

impl Target {
    fn with<T>(&self, f: impl FnOnce(&dyn Recorder) -> T) -> T {
        match self {
            Self::Global => metrics::with_recorder(f),
            Self::Recorder(recorder) => f(recorder.as_ref()),
        }
    }
}

/// One cache's registered series.
pub(crate) struct Telemetry {
    l1_hits: Counter,
    l1_misses: Counter,
    l2_hits: Counter,
    l2_misses: Counter,
    l1_bytes: Gauge,
    l1_entries: Gauge,
    l1_ghost_bytes: Gauge,
    evictions: Counter,
    l2_errors: Counter,
    l2_decode_errors: Counter,
    l2_state: [Gauge; L2_STATES.len()],
    negative_hits: Counter,
    loader_loads: Counter,
    loader_errors: Counter,
    coalesced: Counter,
    published: Counter,
    received: Counter,
    bus_gaps: Counter,
    bus_publish_errors: Counter,
    bus_state: [Gauge; BUS_STATES.len()],
    bus_replays: Counter,
    bus_keys_replayed: Counter,
    bus_tracked_keys: Counter,
    clears_log_truncated: Counter,
    clears_log_lost: Counter,
    clears_remote_clear: Counter,
    clears_redis_flush: Counter,
    stale_loader_error: Counter,
    stale_soft_timeout: Counter,
    stale_throttled: Counter,
    soft_timeouts: Counter,
    hard_timeouts: Counter,
    refreshes: Counter,
    refresh_errors: Counter,
    guard_rejections: Counter,
    fenced_fills: Counter,
    lag: Histogram,
    /// The lag bucket counts already recorded into `lag`.
    lag_seen: Mutex<[u64; DURATION_BUCKETS_MS.len() + 1]>,
    write_behind_pending: Gauge,
    write_behind_flushed: Counter,
    write_behind_failures: Counter,
    write_behind_dead_letters: Counter,
    write_behind_unreplicated: Counter,
    write_behind_batches: Counter,
    write_behind_last_batch: Gauge,
    write_behind_flush: Histogram,
    /// The flush bucket counts already recorded into `write_behind_flush`.
    flush_seen: Mutex<[u64; DURATION_BUCKETS_MS.len() + 1]>,
    pub(crate) l2_duration: Histogram,
    pub(crate) loader_duration: Histogram,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Describes and registers every series with `target`, each with
    /// `labels` besides its own.
    pub(crate) fn register(target: &Target, labels: &[Label]) -> Self {
        target.with(|recorder| {
            describe(recorder);
            let key = |name: &'static str, own: &[(&'static str, &'static str)]| {
                let mut all: Vec<Label> = labels.to_vec();
                all.extend(own.iter().map(|&(k, v)| Label::from_static_parts(k, v)));
                Key::from_parts(name, all)
            };
            let counter = |name, own: &[_]| recorder.register_counter(&key(name, own), &METADATA);
            let gauge = |name, own: &[_]| recorder.register_gauge(&key(name, own), &METADATA);
            let histogram = |name| recorder.register_histogram(&key(name, &[]), &METADATA);
            let l1 = [("cache_type", "l1")];
            let l2 = [("cache_type", "l2")];
            Self {
                l1_hits: counter(CACHE_HITS, &l1),
                l1_misses: counter(CACHE_MISSES, &l1),
                l2_hits: counter(CACHE_HITS, &l2),
                l2_misses: counter(CACHE_MISSES, &l2),
                l1_bytes: gauge(CACHE_SIZE_BYTES, &l1),
                l1_entries: gauge(CACHE_ENTRIES, &l1),
                l1_ghost_bytes: gauge(CACHE_GHOST_BYTES, &l1),
                evictions: counter(CACHE_EVICTIONS, &[]),
                l2_errors: counter(CACHE_L2_ERRORS, &[]),
                l2_decode_errors: counter(CACHE_L2_DECODE_ERRORS, &[]),
                l2_state: L2_STATES.map(|s| gauge(CACHE_L2_STATE, &[("state", s.as_str())])),
                negative_hits: counter(CACHE_NEGATIVE_HITS, &[]),
                loader_loads: counter(CACHE_LOADER_LOADS, &[]),
                loader_errors: counter(CACHE_LOADER_ERRORS, &[]),
                coalesced: counter(CACHE_LOADER_COALESCED, &[]),
                published: counter(CACHE_INVALIDATIONS, &[("direction", "published")]),
                received: counter(CACHE_INVALIDATIONS, &[("direction", "received")]),
                bus_gaps: counter(CACHE_BUS_GAPS, &[]),
                bus_publish_errors: counter(CACHE_BUS_PUBLISH_ERRORS, &[]),
                bus_state: BUS_STATES.map(|s| gauge(CACHE_BUS_STATE, &[("state", s.as_str())])),
                bus_replays: counter(CACHE_BUS_REPLAYS, &[]),
                bus_keys_replayed: counter(CACHE_BUS_KEYS_REPLAYED, &[]),
                bus_tracked_keys: counter(CACHE_BUS_TRACKED_KEYS, &[]),
                clears_log_truncated: counter(CACHE_L1_CLEARS, &[("reason", "log_truncated")]),
                clears_log_lost: counter(CACHE_L1_CLEARS, &[("reason", "log_lost")]),
                clears_remote_clear: counter(CACHE_L1_CLEARS, &[("reason", "remote_clear")]),
                clears_redis_flush: counter(CACHE_L1_CLEARS, &[("reason", "redis_flush")]),
                stale_loader_error: counter(CACHE_STALE_ANSWERS, &[("reason", "loader_error")]),
                stale_soft_timeout: counter(CACHE_STALE_ANSWERS, &[("reason", "soft_timeout")]),
                stale_throttled: counter(CACHE_STALE_ANSWERS, &[("reason", "throttled")]),
                soft_timeouts: counter(CACHE_LOADER_TIMEOUTS, &[("kind", "soft")]),
                hard_timeouts: counter(CACHE_LOADER_TIMEOUTS, &[("kind", "hard")]),
                refreshes: counter(CACHE_EAGER_REFRESHES, &[]),
                refresh_errors: counter(CACHE_EAGER_REFRESH_ERRORS, &[]),
                guard_rejections: counter(CACHE_L2_GUARD_REJECTIONS, &[]),
                fenced_fills: counter(CACHE_FENCED_FILLS, &[]),
                lag: histogram(CACHE_INVALIDATION_LAG),
                lag_seen: Mutex::new([0; DURATION_BUCKETS_MS.len() + 1]),
                write_behind_pending: gauge(WRITE_BEHIND_PENDING, &[]),
                write_behind_flushed: counter(WRITE_BEHIND_FLUSHED, &[]),
                write_behind_failures: counter(WRITE_BEHIND_FAILURES, &[]),
                write_behind_dead_letters: counter(WRITE_BEHIND_DEAD_LETTERS, &[]),
                write_behind_unreplicated: counter(WRITE_BEHIND_UNREPLICATED, &[]),
                write_behind_batches: counter(WRITE_BEHIND_BATCHES, &[]),
                write_behind_last_batch: gauge(WRITE_BEHIND_LAST_BATCH, &[]),
                write_behind_flush: histogram(WRITE_BEHIND_FLUSH_DURATION),
                flush_seen: Mutex::new([0; DURATION_BUCKETS_MS.len() + 1]),
                l2_duration: histogram(CACHE_L2_DURATION),
                loader_duration: histogram(CACHE_LOADER_DURATION),
            }
        })
    }

    /// Publishes a snapshot. The cache's counters only grow, so
    /// `absolute` (which never moves a counter backwards) keeps the
    /// exported ones monotonic even when two publishes race.
    pub(crate) fn publish(&self, stats: &CacheStats) {
        self.l1_hits.absolute(stats.l1.hits);
        self.l1_misses.absolute(stats.l1.misses);
        self.l2_hits.absolute(stats.l2.hits);
        self.l2_misses.absolute(stats.l2.misses);
        self.l1_bytes.set(stats.l1.bytes as f64);
        self.l1_entries.set(stats.l1.entries as f64);
        self.l1_ghost_bytes.set(stats.l1.ghost_bytes as f64);
        self.evictions.absolute(stats.l1.evictions);
        self.l2_errors.absolute(stats.l2.errors);
        self.l2_decode_errors.absolute(stats.l2.decode_errors);
        for (gauge, state) in self.l2_state.iter().zip(L2_STATES) {
            gauge.set(if stats.l2.state == state { 1.0 } else { 0.0 });
        }
        self.negative_hits.absolute(stats.negative_hits);
        self.loader_loads.absolute(stats.loader.loads);
        self.loader_errors.absolute(stats.loader.errors);
        self.coalesced.absolute(stats.loader.coalesced);
        self.published.absolute(stats.bus.published);
        self.received.absolute(stats.bus.received);
        self.bus_gaps.absolute(stats.bus.gaps);
        self.bus_publish_errors.absolute(stats.bus.publish_errors);
        for (gauge, state) in self.bus_state.iter().zip(BUS_STATES) {
            gauge.set(if stats.bus.state == state { 1.0 } else { 0.0 });
        }
        self.bus_replays.absolute(stats.bus.replays);
        self.bus_keys_replayed.absolute(stats.bus.keys_replayed);
        self.bus_tracked_keys.absolute(stats.bus.tracked_keys);
        let clears = &stats.bus.l1_clears;
        self.clears_log_truncated.absolute(clears.log_truncated);
        self.clears_log_lost.absolute(clears.log_lost);
        self.clears_remote_clear.absolute(clears.remote_clear);
        self.clears_redis_flush.absolute(clears.redis_flush);
        self.stale_loader_error.absolute(stats.stale.loader_error);
        self.stale_soft_timeout.absolute(stats.stale.soft_timeout);
        self.stale_throttled.absolute(stats.stale.throttled);
        self.soft_timeouts.absolute(stats.loader.soft_timeouts);
        self.hard_timeouts.absolute(stats.loader.hard_timeouts);
        self.refreshes.absolute(stats.loader.refreshes);
        self.refresh_errors.absolute(stats.loader.refresh_errors);
        self.guard_rejections.absolute(stats.l2.guard_rejections);
        self.fenced_fills.absolute(stats.fenced_fills);
        replay(&self.lag, &self.lag_seen, &stats.bus.lag_buckets);
        let wb = &stats.write_behind;
        replay(
            &self.write_behind_flush,
            &self.flush_seen,
            &wb.flush_buckets,
        );
        self.write_behind_flushed.absolute(wb.flushed);
        self.write_behind_failures.absolute(wb.failed);
        self.write_behind_dead_letters.absolute(wb.dead_lettered);
        self.write_behind_unreplicated.absolute(wb.unreplicated);
        self.write_behind_batches.absolute(wb.batches);
        self.write_behind_last_batch.set(wb.last_batch as f64);
        self.write_behind_pending.set(wb.pending as f64);
    }
}

/// Replays what the cache counted in `buckets` since the last publish
/// (`seen`) into `histogram`, each at its bucket's upper bound: the bucket
/// counts come out exact, the sum an upper bound.
fn replay(
    histogram: &Histogram,
    seen: &Mutex<[u64; DURATION_BUCKETS_MS.len() + 1]>,
    buckets: &[u64; DURATION_BUCKETS_MS.len() + 1],
) {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    for (i, (&now, before)) in buckets.iter().zip(seen.iter_mut()).enumerate() {
        let new = usize::try_from(now.saturating_sub(*before)).unwrap_or(usize::MAX);
        if new > 0 {
            let bound = DURATION_BUCKETS_SECONDS
                .get(i)
                .copied()
                .unwrap_or(DURATION_OVERFLOW_SECONDS);
            histogram.record_many(bound, new);
        }
        *before = now;
    }
}
