//! `GET /metrics`: the Prometheus text exposition of this instance's
//! [`Metrics`](crate::metrics::Metrics), with the cache's counters as of
//! this scrape.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::AppState;

/// The classic Prometheus text format, which `promtool check metrics` and
/// every Prometheus server read.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition (format 0.0.4)", body = String,
         content_type = "text/plain; version=0.0.4; charset=utf-8"),
    )
)]
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.products.cache().record_metrics();
    let body = state.metrics.render();
    ([(CONTENT_TYPE, EXPOSITION)], body)
}
