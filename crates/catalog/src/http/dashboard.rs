//! `GET /dashboard`: a live page of the cache counters, for people, and
//! `GET /cache/latency`, the read-latency histogram it charts percentiles
//! from.
//!
//! The page is one HTML file compiled into the binary, with its CSS and
//! JavaScript inline, so it works offline and needs no front-end build. It
//! reads the same `GET /cache/stats` and `GET /cache/latency` as any client
//! and derives rates and percentiles from successive snapshots in the
//! browser; the server keeps no history for it. Read-only like
//! `/cache/stats`, so neither needs a token.

use axum::Json;
use axum::extract::State;
use axum::response::Html;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::service::RequestStats;

/// The whole page (`dashboard.html` beside this file).
const PAGE: &str = include_str!("dashboard.html");

/// Live cache dashboard (HTML).
#[utoipa::path(
    get, path = "/dashboard", tag = "operations",
    responses((status = 200, description = "A page charting `/cache/stats` and \
               `/cache/latency` every second", body = String, content_type = "text/html"))
)]
pub(super) async fn dashboard() -> Html<&'static str> {
    Html(PAGE)
}

/// `GET /cache/latency`: a histogram of product-read durations since start.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LatencyBody {
    /// Upper bounds of the buckets in ms, ascending (1-2-5 steps from 1 µs
    /// to 10 s). Fixed: they never change while the service runs.
    bounds_ms: Vec<f64>,
    /// Reads per bucket since start, not cumulative: `counts[i]` took more
    /// than `bounds_ms[i - 1]` and at most `bounds_ms[i]`; the last entry
    /// (one more than the bounds) took more than every bound. They add up to
    /// `total_requests` of `/cache/stats`. Subtract two snapshots for the
    /// histogram of the reads between them.
    counts: Vec<u64>,
}

/// Product-read latency histogram.
#[utoipa::path(
    get, path = "/cache/latency", tag = "cache",
    responses((status = 200, description = "Reads per latency bucket since start",
               body = LatencyBody))
)]
pub(super) async fn latency(State(state): State<AppState>) -> Json<LatencyBody> {
    Json(LatencyBody {
        bounds_ms: RequestStats::latency_bounds_ms().collect(),
        counts: state.products.request_stats().latency_counts().to_vec(),
    })
}
