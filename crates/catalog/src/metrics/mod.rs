//! Prometheus metrics: [`Metrics`], one application's registry, which
//! registers every series at start, hands out the handles the request path
//! records into, and renders `GET /metrics`. The names and their HELP text
//! are in `names.rs` (the cache's own are tiercache's), the striped request
//! histogram in `timer.rs`.
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
//! - the product cache records its own series into this recorder
//!   (tiercache's `metrics` feature, [`Metrics::recorder`]): what it counts
//!   per thread is published when `/metrics` is scraped
//!   (`TieredCache::record_metrics`), so the hit path pays nothing extra.
//!
//! **Per-request cost.** The only metrics written on the request path are the
//! two duration histograms. Their handles are registered once, at start (one
//! per route template and one per store operation), so recording is a push
//! into the handle's lock-free bucket, never a registry lookup by name and
//! labels. Those buckets grow until drained, so an upkeep task drains them
//! every [`UPKEEP_INTERVAL`] even when nobody scrapes.
//!
//! Every family is registered when [`Metrics`] is built (the cache's when
//! the product cache is built on it, also at start), so a scrape right
//! after start shows all of them at zero.

mod names;
mod timer;

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tiercache::telemetry::DURATION_BUCKETS_SECONDS;
use tokio_util::task::AbortOnDropHandle;

use crate::store::{Op, StoreMetrics};
pub use names::*;
pub use timer::RequestTimer;
use timer::{RegisteredTimer, TIMER_SLOTS};

/// How often histogram samples are drained into their buckets when no
/// scrape does it.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Bucket bounds of both duration histograms, in seconds: from an L1 hit
/// (tens of µs) to the request timeout's order of magnitude.
pub(super) const DURATION_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The exporter ignores metadata; the recorder API wants some.
pub(super) static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// One application's metrics registry. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
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
        for name in [
            REQUEST_DURATION,
            DB_QUERY_DURATION,
            CACHE_L2_DURATION,
            CACHE_LOADER_DURATION,
        ] {
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
        names::describe_all(&recorder);
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
        Self(Arc::new(Inner {
            recorder: Arc::new(recorder),
            handle,
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
    fn counter(&self, name: &'static str) -> Counter {
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

    /// This registry, for a cache to record its series into
    /// (`TieredCacheBuilder::metrics_recorder`).
    pub fn recorder(&self) -> Arc<dyn Recorder + Send + Sync> {
        Arc::clone(&self.0.recorder) as Arc<dyn Recorder + Send + Sync>
    }

    /// The exposition text. Publish the caches' counters first
    /// (`TieredCache::record_metrics`) for numbers as of this scrape.
    pub fn render(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{ProductCache, RenderedCodec};

    /// `metrics`'s exposition with an L1-only product cache recording into it.
    async fn render_with_cache(metrics: &Metrics) -> String {
        let cache = ProductCache::builder()
            .namespace("product")
            .codec(RenderedCodec)
            .metrics_recorder(metrics.recorder())
            .build()
            .await
            .unwrap();
        cache.record_metrics();
        metrics.render()
    }

    #[tokio::test]
    async fn each_registry_keeps_its_own_numbers() {
        let (one, two) = (Metrics::start(), Metrics::start());

        one.request_timer("/things/{id}")
            .record(Duration::from_millis(3));
        // Registered in the second registry too, but never recorded there.
        let _idle = two.request_timer("/things/{id}");
        let (one, two) = (one.render(), two.render());

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
        let first = metrics.render();
        timer.record(Duration::from_secs(30));
        let second = metrics.render();
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

        let text = render_with_cache(&metrics).await;

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
