//! `GET /health`: is the store reachable, and in what state is L2.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use tiercache::{BusState, L2State};
use utoipa::ToSchema;

use super::AppState;

/// A health probe must answer quickly even when the database hangs.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The health report (SPEC §3).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    /// `ok`; `degraded` when the store or L2 is down, or this instance is
    /// not (yet) subscribed to the invalidation bus.
    status: &'static str,
    /// `up` or `down`.
    db: &'static str,
    /// `up`, `down` or `disabled` (no `REDIS_URL`).
    l2: &'static str,
}

/// Service health.
#[utoipa::path(
    get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "The store is up", body = Health),
        (status = 503, description = "The store is down", body = Health),
    )
)]
pub(super) async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let db_up = matches!(
        tokio::time::timeout(PING_TIMEOUT, state.products.store().ping()).await,
        Ok(Ok(()))
    );
    let cache = state.products.cache();
    let l2 = cache.l2_state();
    // Until the bus is subscribed this instance could miss another's
    // invalidations (SPEC §3): not healthy yet.
    let bus_ready = cache.bus_state() != BusState::Connecting;
    let status = if db_up && l2 != L2State::Down && bus_ready {
        "ok"
    } else {
        "degraded"
    };
    let code = if db_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Health {
            status,
            db: if db_up { "up" } else { "down" },
            l2: l2.as_str(),
        }),
    )
}
