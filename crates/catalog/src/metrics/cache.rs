//! [`CacheHandles`]: the series of what the cache counts itself (hits,
//! misses, bus, write-behind, lag…), copied from a [`CacheStats`] snapshot
//! at scrape time, so the hit path pays nothing for them.

use metrics::{Counter, Gauge, Histogram, Key, Label, Recorder};
use metrics_exporter_prometheus::PrometheusRecorder;
use tiercache::{BusState, CacheStats, DURATION_BUCKETS_MS, L2State};

use super::METADATA;
use super::names::*;

/// Bounds of the lag histogram: tiercache's own buckets, in seconds.
pub(super) const DURATION_BUCKETS_SECONDS: [f64; DURATION_BUCKETS_MS.len()] = {
    let mut seconds = [0.0; DURATION_BUCKETS_MS.len()];
    let mut i = 0;
    while i < seconds.len() {
        seconds[i] = DURATION_BUCKETS_MS[i] as f64 / 1_000.0;
        i += 1;
    }
    seconds
};
/// Where lags above the last bound are recorded (anything above it lands
/// in the `+Inf` bucket).
const DURATION_OVERFLOW_SECONDS: f64 = 10.0;

/// The L2 states, in the order of [`CacheHandles::l2_state`].
const L2_STATES: [L2State; 3] = [L2State::Up, L2State::Down, L2State::Disabled];
/// The bus states, in the order of [`CacheHandles::bus_state`].
const BUS_STATES: [BusState; 3] = [
    BusState::Subscribed,
    BusState::Connecting,
    BusState::Disabled,
];

/// Handles of the values copied from [`CacheStats`] at scrape time.
pub(super) struct CacheHandles {
    l1_hits: Counter,
    l1_misses: Counter,
    l2_hits: Counter,
    l2_misses: Counter,
    l1_bytes: Gauge,
    l1_entries: Gauge,
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
    lag_seen: std::sync::Mutex<[u64; DURATION_BUCKETS_MS.len() + 1]>,
    write_behind_pending: Gauge,
    write_behind_flushed: Counter,
    write_behind_failures: Counter,
    write_behind_dead_letters: Counter,
    write_behind_unreplicated: Counter,
    write_behind_batches: Counter,
    write_behind_last_batch: Gauge,
    write_behind_flush: Histogram,
    /// The flush bucket counts already recorded into `write_behind_flush`.
    flush_seen: std::sync::Mutex<[u64; DURATION_BUCKETS_MS.len() + 1]>,
}

impl CacheHandles {
    pub(super) fn register(recorder: &PrometheusRecorder) -> Self {
        let key = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            let labels: Vec<Label> = labels
                .iter()
                .map(|&(key, value)| Label::from_static_parts(key, value))
                .collect();
            Key::from_parts(name, labels)
        };
        let counter = |name, labels: &[_]| recorder.register_counter(&key(name, labels), &METADATA);
        let gauge = |name, labels: &[_]| recorder.register_gauge(&key(name, labels), &METADATA);
        let l1 = [("cache_type", "l1")];
        let l2 = [("cache_type", "l2")];
        Self {
            l1_hits: counter(CACHE_HITS, &l1),
            l1_misses: counter(CACHE_MISSES, &l1),
            l2_hits: counter(CACHE_HITS, &l2),
            l2_misses: counter(CACHE_MISSES, &l2),
            l1_bytes: gauge(CACHE_SIZE_BYTES, &l1),
            l1_entries: gauge(CACHE_ENTRIES, &l1),
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
            lag: recorder.register_histogram(&key(CACHE_INVALIDATION_LAG, &[]), &METADATA),
            lag_seen: std::sync::Mutex::new([0; DURATION_BUCKETS_MS.len() + 1]),
            write_behind_pending: gauge(WRITE_BEHIND_PENDING, &[]),
            write_behind_flushed: counter(WRITE_BEHIND_FLUSHED, &[]),
            write_behind_failures: counter(WRITE_BEHIND_FAILURES, &[]),
            write_behind_dead_letters: counter(WRITE_BEHIND_DEAD_LETTERS, &[]),
            write_behind_unreplicated: counter(WRITE_BEHIND_UNREPLICATED, &[]),
            write_behind_batches: counter(WRITE_BEHIND_BATCHES, &[]),
            write_behind_last_batch: gauge(WRITE_BEHIND_LAST_BATCH, &[]),
            write_behind_flush: recorder
                .register_histogram(&key(WRITE_BEHIND_FLUSH_DURATION, &[]), &METADATA),
            flush_seen: std::sync::Mutex::new([0; DURATION_BUCKETS_MS.len() + 1]),
        }
    }

    /// Copies a snapshot in. The cache's counters are monotonic, so
    /// `absolute` (which never moves a counter backwards) keeps the
    /// exported ones monotonic even when two scrapes race.
    pub(super) fn update(&self, stats: &CacheStats) {
        self.l1_hits.absolute(stats.l1.hits);
        self.l1_misses.absolute(stats.l1.misses);
        self.l2_hits.absolute(stats.l2.hits);
        self.l2_misses.absolute(stats.l2.misses);
        self.l1_bytes.set(stats.l1.bytes as f64);
        self.l1_entries.set(stats.l1.entries as f64);
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
        replay(
            &self.write_behind_flush,
            &self.flush_seen,
            &stats.write_behind.flush_buckets,
        );
        let wb = &stats.write_behind;
        self.write_behind_flushed.absolute(wb.flushed);
        self.write_behind_failures.absolute(wb.failed);
        self.write_behind_dead_letters.absolute(wb.dead_lettered);
        self.write_behind_unreplicated.absolute(wb.unreplicated);
        self.write_behind_batches.absolute(wb.batches);
        self.write_behind_last_batch.set(wb.last_batch as f64);
        self.write_behind_pending
            .set(stats.write_behind.pending as f64);
    }
}

/// Replays what the cache counted in `buckets` since the last scrape
/// (`seen`) into `histogram`, each at its bucket's upper bound: the bucket
/// counts come out exact, the sum an upper bound.
fn replay(
    histogram: &Histogram,
    seen: &std::sync::Mutex<[u64; DURATION_BUCKETS_MS.len() + 1]>,
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
