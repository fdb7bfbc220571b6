//! Every metric's name (SPEC §3 "Metrics" and our additions) as a
//! constant, and its HELP text ([`describe_all`]). A name is written here
//! once; everything else refers to the constant. The cache's own series
//! are named and described by tiercache (`tiercache::telemetry::names`,
//! re-exported here).

use metrics::{KeyName, Recorder};
use metrics_exporter_prometheus::PrometheusRecorder;
pub use tiercache::telemetry::names::*;

/// Handling time of HTTP requests by route template, `endpoint`.
pub const REQUEST_DURATION: &str = "request_duration_seconds";
/// Time of store calls by operation, `op`.
pub const DB_QUERY_DURATION: &str = "db_query_duration_seconds";
/// Single-product store reads, each answered by a batch query.
pub const DB_BATCHED_READS: &str = "db_batched_reads_total";
/// Batch queries those reads took (reads / batches = mean batch size).
pub const DB_READ_BATCHES: &str = "db_read_batches_total";
/// 1 while the store's circuit breaker refuses calls, else 0.
pub const DB_CIRCUIT_OPEN: &str = "db_circuit_open";
/// HTTP connections open now.
pub const HTTP_CONNECTIONS_OPEN: &str = "http_connections_open";
/// HTTP connections closed by a timeout, `kind="header"|"idle"`.
pub const HTTP_CONNECTION_TIMEOUTS: &str = "http_connection_timeouts_total";

/// HELP text of every family; registered before any series.
pub(super) fn describe_all(recorder: &PrometheusRecorder) {
    tiercache::telemetry::names::describe(recorder);
    let counters = [
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
    ];
    for (name, help) in histograms {
        recorder.describe_histogram(KeyName::from_const_str(name), None, help.into());
    }
}
