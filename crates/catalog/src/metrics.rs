//! Prometheus metrics: every metric name (SPEC §3 "Metrics" and our
//! additions) as a constant, their registration with HELP text, and the
//! rendering of `GET /metrics`.
//!
//! **Facility.** `metrics` + `metrics-exporter-prometheus` (without its HTTP
//! listener and push gateway), chosen over `prometheus-client` because:
//! - each [`Metrics`] owns its own `PrometheusRecorder`, never installed as
//!   the process-global recorder, so the many applications an integration
//!   test binary runs at once keep separate numbers; handles are registered
//!   on that recorder directly instead of through the `counter!` macros,
//!   which would go to the global one;
//! - the exporter writes the classic text format (`text/plain;
//!   version=0.0.4`, `# TYPE cache_hits_total counter`) that the SPEC's
//!   names and `promtool check metrics` expect; `prometheus-client` writes
//!   OpenMetrics, where a counter family drops its `_total`;
//! - values the cache already counts (striped, per thread) are copied from a
//!   [`CacheStats`] snapshot into counters with `Counter::absolute` and into
//!   gauges at scrape time, so the hit path pays nothing extra for them.
//!
//! **Per-request cost.** The only metrics written on the request path are the
//! two duration histograms. Their handles are registered once, at start (one
//! per route template and one per store operation), so recording is a push
//! into the handle's lock-free bucket, never a registry lookup by name and
//! labels. Those buckets grow until drained, so an upkeep task drains them
//! every [`UPKEEP_INTERVAL`] even when nobody scrapes.
//!
//! Every family is registered when [`Metrics`] is built, so a scrape right
//! after start shows all of them at zero.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tiercache::{BusState, CacheStats, DURATION_BUCKETS_MS, L2State};
use tokio_util::task::AbortOnDropHandle;

use crate::store::{Op, StoreMetrics};

/// Lookups answered by a cache level, `cache_type="l1"|"l2"` (negative
/// entries included).
pub const CACHE_HITS: &str = "cache_hits_total";
/// Lookups a level could not answer, `cache_type="l1"|"l2"`.
pub const CACHE_MISSES: &str = "cache_misses_total";
/// Handling time of HTTP requests by route template, `endpoint`.
pub const REQUEST_DURATION: &str = "request_duration_seconds";
/// Bytes held by L1, `cache_type="l1"`.
pub const CACHE_SIZE_BYTES: &str = "cache_size_bytes";
/// Entries held by L1, `cache_type="l1"`.
pub const CACHE_ENTRIES: &str = "cache_entries";
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
/// Time of store calls by operation, `op`.
pub const DB_QUERY_DURATION: &str = "db_query_duration_seconds";
/// Single-product store reads, each answered by a batch query.
pub const DB_BATCHED_READS: &str = "db_batched_reads_total";
/// Batch queries those reads took (reads / batches = mean batch size).
pub const DB_READ_BATCHES: &str = "db_read_batches_total";

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
/// Write-behind batches written to the store.
pub const WRITE_BEHIND_BATCHES: &str = "write_behind_batches_total";
/// Distinct products in the last write-behind batch.
pub const WRITE_BEHIND_LAST_BATCH: &str = "write_behind_last_batch_size";
/// Time to write one write-behind batch to the store.
pub const WRITE_BEHIND_FLUSH_DURATION: &str = "write_behind_flush_duration_seconds";

/// 1 while the store's circuit breaker refuses calls, else 0.
pub const DB_CIRCUIT_OPEN: &str = "db_circuit_open";
/// HTTP connections open now.
pub const HTTP_CONNECTIONS_OPEN: &str = "http_connections_open";
/// HTTP connections closed by a timeout, `kind="header"|"idle"`.
pub const HTTP_CONNECTION_TIMEOUTS: &str = "http_connection_timeouts_total";

/// Propagation lag of invalidations from other instances (publish → applied).
pub const CACHE_INVALIDATION_LAG: &str = "cache_invalidation_lag_seconds";

/// How often histogram samples are drained into their buckets when no
/// scrape does it.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Bucket bounds of both duration histograms, in seconds: from an L1 hit
/// (tens of µs) to the request timeout's order of magnitude.
const DURATION_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Bounds of the lag histogram: tiercache's own buckets, in seconds.
const DURATION_BUCKETS_SECONDS: [f64; DURATION_BUCKETS_MS.len()] = {
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

/// The exporter ignores metadata; the recorder API wants some.
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The L2 states, in the order of [`CacheHandles::l2_state`].
const L2_STATES: [L2State; 3] = [L2State::Up, L2State::Down, L2State::Disabled];
/// The bus states, in the order of [`CacheHandles::bus_state`].
const BUS_STATES: [BusState; 3] = [
    BusState::Subscribed,
    BusState::Connecting,
    BusState::Disabled,
];

/// One application's metrics registry. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    cache: CacheHandles,
    request_timers: std::sync::Mutex<Vec<RegisteredTimer>>,
    /// Drains histogram samples every [`UPKEEP_INTERVAL`]; aborted when the
    /// last clone of [`Metrics`] goes.
    _upkeep: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Handles of the values copied from [`CacheStats`] at scrape time.
struct CacheHandles {
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
    write_behind_batches: Counter,
    write_behind_last_batch: Gauge,
    write_behind_flush: Histogram,
    /// The flush bucket counts already recorded into `write_behind_flush`.
    flush_seen: std::sync::Mutex<[u64; DURATION_BUCKETS_MS.len() + 1]>,
}

impl Metrics {
    /// A fresh registry with every family described and the cache's series
    /// registered at zero, plus its upkeep task.
    ///
    /// # Panics
    /// Outside a tokio runtime (the upkeep task is spawned on it).
    pub fn start() -> Self {
        // Durations (requests, product reads, store calls) are measured with
        // quanta's clock, which reads the TSC: 9.6 ns a read on this
        // project's 2-core VM against 23.3 ns for `std::time::Instant`, and
        // an L1 hit takes two pairs of reads. Its calibration (up to 200 ms,
        // once per process) happens here, at start, not on the first request.
        let _ = quanta::Instant::now();
        let mut builder = PrometheusBuilder::new();
        for name in [REQUEST_DURATION, DB_QUERY_DURATION] {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), &DURATION_BUCKETS)
                .expect("the bucket list is a non-empty constant");
        }
        for name in [CACHE_INVALIDATION_LAG, WRITE_BEHIND_FLUSH_DURATION] {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), &DURATION_BUCKETS_SECONDS)
                .expect("the bucket list is a non-empty constant");
        }
        let recorder = builder.build_recorder();
        describe(&recorder);
        let handle = recorder.handle();
        let upkeep = {
            let handle = handle.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
                loop {
                    ticks.tick().await;
                    // Draining is proportional to the requests since the
                    // last drain: keep it off the request workers.
                    let handle = handle.clone();
                    let _ = tokio::task::spawn_blocking(move || handle.run_upkeep()).await;
                }
            }))
        };
        let cache = CacheHandles::register(&recorder);
        Self(Arc::new(Inner {
            recorder,
            handle,
            cache,
            request_timers: std::sync::Mutex::new(Vec::new()),
            _upkeep: upkeep,
        }))
    }

    /// The `request_duration_seconds` series of one route template
    /// (`/products/{id}`, never a concrete path, so the series stay few).
    pub fn request_timer(&self, endpoint: &str) -> Arc<RequestTimer> {
        let histogram = self.0.recorder.register_histogram(
            &Key::from_parts(
                REQUEST_DURATION,
                vec![Label::new("endpoint", endpoint.to_owned())],
            ),
            &METADATA,
        );
        let timer = Arc::new(RequestTimer::default());
        self.0
            .request_timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((histogram, Arc::clone(&timer), [0; TIMER_SLOTS]));
        timer
    }

    /// An unlabelled counter of `name`.
    pub fn counter(&self, name: &'static str) -> Counter {
        self.0
            .recorder
            .register_counter(&Key::from_static_name(name), &METADATA)
    }

    /// The counter of `name` with one label.
    pub fn labelled_counter(
        &self,
        name: &'static str,
        label: &'static str,
        value: &'static str,
    ) -> Counter {
        self.0.recorder.register_counter(
            &Key::from_parts(name, vec![Label::from_static_parts(label, value)]),
            &METADATA,
        )
    }

    /// An unlabelled gauge of `name`.
    pub fn gauge(&self, name: &'static str) -> Gauge {
        self.0
            .recorder
            .register_gauge(&Key::from_static_name(name), &METADATA)
    }

    /// The exposition text, with the cache's counters as of `cache`.
    pub fn render(&self, cache: &CacheStats) -> String {
        self.0.cache.update(cache);
        for (histogram, timer, seen) in self
            .0
            .request_timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            timer.replay_into(histogram, seen);
        }
        self.0.handle.render()
    }
}

/// The store's figures, under their SPEC names.
impl StoreMetrics for Metrics {
    fn query_duration(&self, op: Op) -> Histogram {
        self.0.recorder.register_histogram(
            &Key::from_parts(
                DB_QUERY_DURATION,
                vec![Label::from_static_parts("op", op.as_str())],
            ),
            &METADATA,
        )
    }

    fn batched_reads(&self) -> Counter {
        self.counter(DB_BATCHED_READS)
    }

    fn read_batches(&self) -> Counter {
        self.counter(DB_READ_BATCHES)
    }

    fn circuit_open(&self) -> Gauge {
        self.gauge(DB_CIRCUIT_OPEN)
    }
}

/// HELP text of every family; registered before any series.
fn describe(recorder: &PrometheusRecorder) {
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
            WRITE_BEHIND_BATCHES,
            "Write-behind batches written to the store.",
        ),
        (
            DB_BATCHED_READS,
            "Single-product store reads (cache misses), each answered by one batch query.",
        ),
        (
            DB_READ_BATCHES,
            "Queries the single-product reads took: reads that arrive together share one.",
        ),
        (
            HTTP_CONNECTION_TIMEOUTS,
            "HTTP connections closed because a request head took too long (header) or no request came (idle), by kind.",
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
        (HTTP_CONNECTIONS_OPEN, "HTTP connections open now."),
        (
            DB_CIRCUIT_OPEN,
            "1 while the store's circuit breaker refuses calls (the store failed repeatedly), else 0.",
        ),
    ];
    for (name, help) in gauges {
        recorder.describe_gauge(KeyName::from_const_str(name), None, help.into());
    }
    let histograms = [
        (
            REQUEST_DURATION,
            "Time to produce an HTTP response, by route template.",
        ),
        (
            DB_QUERY_DURATION,
            "Time of store (database) calls, by operation.",
        ),
        (
            WRITE_BEHIND_FLUSH_DURATION,
            "Time to write one write-behind batch to the store (bucketed by the cache, so the sum is an upper bound).",
        ),
        (
            CACHE_INVALIDATION_LAG,
            "Time from another instance publishing an invalidation to this one applying it (wall clocks; bucketed by the cache, so the sum is an upper bound).",
        ),
    ];
    for (name, help) in histograms {
        recorder.describe_histogram(KeyName::from_const_str(name), None, help.into());
    }
}

impl CacheHandles {
    fn register(recorder: &PrometheusRecorder) -> Self {
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
    fn update(&self, stats: &CacheStats) {
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
        self.write_behind_batches.absolute(wb.batches);
        self.write_behind_last_batch.set(wb.last_batch as f64);
        self.write_behind_pending
            .set(stats.write_behind.pending as f64);
    }
}

/// An endpoint's exporter histogram, its striped timer, and the timer's
/// counts already replayed into the histogram.
type RegisteredTimer = (Histogram, Arc<RequestTimer>, [u64; TIMER_SLOTS]);

/// Slots of a [`RequestTimer`]: one per [`DURATION_BUCKETS`] bound, one for
/// the overflow, one for the sum of durations in ns.
const TIMER_SLOTS: usize = DURATION_BUCKETS.len() + 2;
const TIMER_SUM: usize = TIMER_SLOTS - 1;
/// Where overflow durations (above the last bound) are replayed.
const TIMER_OVERFLOW_SECONDS: f64 = 2.0 * DURATION_BUCKETS[DURATION_BUCKETS.len() - 1];

/// `request_duration_seconds` of one endpoint, recorded without shared
/// writes: per-thread stripes of bucket counts and of the summed duration
/// (`tiercache::Striped`), replayed into the exporter's histogram at scrape
/// time ([`Metrics::render`]). Recording straight into the exporter's
/// histogram (an atomic bucket all cores append to) cost about a tenth of
/// the L1-hit throughput on 2 cores (measured); this costs two striped
/// increments.
#[derive(Debug, Default)]
pub struct RequestTimer {
    slots: tiercache::Striped<TIMER_SLOTS>,
}

impl RequestTimer {
    /// Counts one request that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS.partition_point(|&bound| bound < seconds);
        self.slots.incr(bucket);
        self.slots.add(
            TIMER_SUM,
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// Records the requests counted since `seen` into `histogram` so that
    /// both its bucket counts and its sum come out exact: each bucket's new
    /// requests are recorded at one point inside the bucket, the same
    /// fraction of the way up in every bucket, chosen to make the values
    /// add up to the measured sum (overflow requests at twice the last
    /// bound).
    fn replay_into(&self, histogram: &Histogram, seen: &mut [u64; TIMER_SLOTS]) {
        let now: [u64; TIMER_SLOTS] = std::array::from_fn(|slot| self.slots.sum(slot));
        let new: [u64; TIMER_SLOTS] =
            std::array::from_fn(|slot| now[slot].saturating_sub(seen[slot]));
        *seen = now;
        let lower = |i: usize| if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
        let mut floor = TIMER_OVERFLOW_SECONDS * new[DURATION_BUCKETS.len()] as f64;
        let mut spread = 0.0;
        for i in 0..DURATION_BUCKETS.len() {
            floor += lower(i) * new[i] as f64;
            spread += (DURATION_BUCKETS[i] - lower(i)) * new[i] as f64;
        }
        let sum = new[TIMER_SUM] as f64 / 1e9;
        // Strictly above the lower bound, so each value stays in its bucket.
        let fraction = if spread > 0.0 {
            ((sum - floor) / spread).clamp(1e-6, 1.0)
        } else {
            1.0
        };
        for (i, &count) in new[..DURATION_BUCKETS.len()].iter().enumerate() {
            if count > 0 {
                let value = lower(i) + fraction * (DURATION_BUCKETS[i] - lower(i));
                histogram.record_many(value, usize::try_from(count).unwrap_or(usize::MAX));
            }
        }
        let overflow = new[DURATION_BUCKETS.len()];
        if overflow > 0 {
            histogram.record_many(
                TIMER_OVERFLOW_SECONDS,
                usize::try_from(overflow).unwrap_or(usize::MAX),
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{ProductCache, RenderedCodec};

    async fn l1_only_stats() -> CacheStats {
        ProductCache::builder()
            .namespace("product")
            .codec(RenderedCodec)
            .build()
            .await
            .unwrap()
            .stats()
    }

    #[tokio::test]
    async fn each_registry_keeps_its_own_numbers() {
        let stats = l1_only_stats().await;
        let (one, two) = (Metrics::start(), Metrics::start());

        one.request_timer("/things/{id}")
            .record(Duration::from_millis(3));
        // Registered in the second registry too, but never recorded there.
        let _idle = two.request_timer("/things/{id}");
        let (one, two) = (one.render(&stats), two.render(&stats));

        assert!(
            one.contains(r#"request_duration_seconds_count{endpoint="/things/{id}"} 1"#),
            "{one}"
        );
        assert!(
            two.contains(r#"request_duration_seconds_count{endpoint="/things/{id}"} 0"#),
            "{two}"
        );
    }

    #[tokio::test]
    async fn request_timers_replay_exact_bucket_counts_and_sums() {
        let metrics = Metrics::start();
        let timer = metrics.request_timer("/x");
        timer.record(Duration::from_micros(40));
        timer.record(Duration::from_millis(3));
        timer.record(Duration::from_millis(4));
        let first = metrics.render(&l1_only_stats().await);
        timer.record(Duration::from_secs(30));
        let second = metrics.render(&l1_only_stats().await);
        let sample = |text: &str, series: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {series} in {text}"))
        };

        let x = r#"{endpoint="/x"}"#;
        assert_eq!(
            sample(&first, &format!("request_duration_seconds_count{x}")),
            3.0
        );
        let sum = sample(&first, &format!("request_duration_seconds_sum{x}"));
        assert!((sum - 0.00704).abs() < 1e-9, "{sum}");
        let bucket = |text: &str, le: &str| {
            sample(
                text,
                &format!(r#"request_duration_seconds_bucket{{endpoint="/x",le="{le}"}}"#),
            )
        };
        assert_eq!(bucket(&first, "0.00005"), 1.0);
        assert_eq!(bucket(&first, "0.0025"), 1.0);
        assert_eq!(bucket(&first, "0.005"), 3.0);
        assert_eq!(bucket(&second, "10"), 3.0);
        assert_eq!(bucket(&second, "+Inf"), 4.0);
    }

    #[tokio::test]
    async fn state_sets_mark_exactly_the_current_state() {
        let metrics = Metrics::start();

        let text = metrics.render(&l1_only_stats().await);

        assert!(
            text.contains(r#"cache_l2_state{state="disabled"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"cache_l2_state{state="up"} 0"#), "{text}");
        assert!(
            text.contains(r#"cache_bus_state{state="disabled"} 1"#),
            "{text}"
        );
        assert!(text.contains("write_behind_pending 0"), "{text}");
    }
}
