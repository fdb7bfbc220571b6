//! `GET /dashboard`: a live page of the cache counters, for people.
//!
//! The page is one HTML file compiled into the binary, with its CSS and
//! JavaScript inline, so it works offline and needs no front-end build. It
//! reads the same `GET /cache/stats` as any client and derives rates from
//! successive snapshots in the browser; the server keeps no history for it.
//! Read-only like `/cache/stats`, so it needs no token.

use axum::response::Html;

/// The whole page (`dashboard.html` beside this file).
const PAGE: &str = include_str!("dashboard.html");

/// Live cache dashboard (HTML).
#[utoipa::path(
    get, path = "/dashboard", tag = "operations",
    responses((status = 200, description = "A page charting `/cache/stats` every second",
               body = String, content_type = "text/html"))
)]
pub(super) async fn dashboard() -> Html<&'static str> {
    Html(PAGE)
}
