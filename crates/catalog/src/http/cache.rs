//! `/cache` handlers: statistics, warming and invalidation (SPEC §3).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat,
    Type,
};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::AppState;
use super::error::{ApiError, Problem};
use super::extract::{Authenticated, JsonBody, ProductId};
use super::schema;
use crate::domain::Category;
use crate::service::WarmScope;

/// Most ids one warm request may name.
const MAX_WARM_IDS: usize = 10_000;

/// `GET /cache/stats`, in the SPEC's shape.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CacheStatsBody {
    /// Product reads (a batch counts once).
    total_requests: u64,
    /// Reads answered entirely by a cache level.
    cache_hits: u64,
    /// Reads that needed the store.
    cache_misses: u64,
    /// `cache_hits / (cache_hits + cache_misses)`, 0 when there were none.
    hit_rate: f64,
    avg_response_time_ms: f64,
    levels: Levels,
    write_behind: WriteBehind,
}

#[derive(Debug, Serialize, ToSchema)]
struct Levels {
    l1: L1Level,
    l2: L2Level,
}

#[derive(Debug, Serialize, ToSchema)]
struct L1Level {
    hits: u64,
    misses: u64,
    entries: u64,
    bytes: u64,
    evictions: u64,
    /// What L1 holds beyond its entries: the keys of recent evictions,
    /// which its eviction policy remembers, and slots freed for reuse.
    /// `bytes + ghost_bytes` is what L1 takes of `L1_MAX_BYTES`.
    ghost_bytes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
struct L2Level {
    hits: u64,
    misses: u64,
    errors: u64,
    /// `up`, `down` or `disabled`.
    state: &'static str,
}

/// Write-behind queue counters; zero unless the write strategy is `write-behind`.
#[derive(Debug, Serialize, ToSchema)]
struct WriteBehind {
    /// Changes queued and not yet in the store (every instance's).
    pending: u64,
    /// Queue entries this instance wrote to the store.
    flushed: u64,
    /// Flush attempts that failed (and were retried) or were rejected.
    failed: u64,
    /// Changes the store rejected for good (in the dead-letter stream).
    dead_lettered: u64,
    /// Changes acknowledged before a Redis replica confirmed them (see
    /// `WRITE_BEHIND_REPLICA_WAIT_MS`).
    unreplicated: u64,
    /// Batches this instance wrote to the store.
    batches: u64,
    /// Distinct products in the last batch.
    last_batch_size: u64,
    /// Mean time to write one batch, in ms (0 before the first).
    avg_flush_ms: f64,
}

/// Cache statistics.
#[utoipa::path(
    get, path = "/cache/stats", tag = "cache",
    responses((status = 200, description = "Counters since start", body = CacheStatsBody))
)]
pub(super) async fn stats(State(state): State<AppState>) -> Json<CacheStatsBody> {
    let requests = state.products.request_stats().snapshot();
    let cache = state.products.cache().stats();
    Json(CacheStatsBody {
        total_requests: requests.requests,
        cache_hits: requests.hits,
        cache_misses: requests.misses,
        hit_rate: requests.hit_rate,
        avg_response_time_ms: requests.avg_response_time_ms,
        levels: Levels {
            l1: L1Level {
                hits: cache.l1.hits,
                misses: cache.l1.misses,
                entries: cache.l1.entries,
                bytes: cache.l1.bytes,
                evictions: cache.l1.evictions,
                ghost_bytes: cache.l1.ghost_bytes,
            },
            l2: L2Level {
                hits: cache.l2.hits,
                misses: cache.l2.misses,
                errors: cache.l2.errors,
                state: cache.l2.state.as_str(),
            },
        },
        write_behind: WriteBehind {
            pending: cache.write_behind.pending,
            flushed: cache.write_behind.flushed,
            failed: cache.write_behind.failed,
            dead_lettered: cache.write_behind.dead_lettered,
            unreplicated: cache.write_behind.unreplicated,
            batches: cache.write_behind.batches,
            last_batch_size: cache.write_behind.last_batch,
            avg_flush_ms: if cache.write_behind.batches == 0 {
                0.0
            } else {
                cache.write_behind.flush_ms_sum as f64 / cache.write_behind.batches as f64
            },
        },
    })
}

/// What to warm: exactly one of the three fields. Its OpenAPI form is
/// written by hand below, as one of three objects.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WarmRequest {
    /// Product ids (at most 10,000).
    ids: Option<Vec<WholeNumber>>,
    /// Every product of this category.
    category: Option<String>,
    /// `true`: every product.
    all: Option<bool>,
}

impl WarmRequest {
    fn into_scope(self) -> Result<WarmScope, ApiError> {
        let invalid = |field: &str, reason: &str| ApiError::Validation {
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        match (self.ids, self.category, self.all) {
            (Some(ids), None, None) => {
                if ids.is_empty() || ids.len() > MAX_WARM_IDS {
                    return Err(invalid("ids", "must hold 1 to 10000 ids"));
                }
                if ids.iter().any(|id| id.0 <= 0) {
                    return Err(invalid("ids", "must be positive integers"));
                }
                Ok(WarmScope::Ids(ids.into_iter().map(|id| id.0).collect()))
            }
            (None, Some(category), None) => Category::parse(&category)
                .map(|c| WarmScope::Category(c.as_str().to_owned()))
                .map_err(|reason| invalid("category", reason)),
            (None, None, Some(true)) => Ok(WarmScope::All),
            (None, None, Some(false)) => Err(invalid("all", "must be true when given")),
            _ => Err(invalid(
                "body",
                "give exactly one of `ids`, `category` or `all`",
            )),
        }
    }
}

/// A JSON integer: JSON Schema counts `1.0` as the integer 1, and so
/// does this (a fraction or a value beyond 64 bits is refused).
#[derive(Debug, Clone, Copy)]
struct WholeNumber(i64);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        let whole = number.as_i64().or_else(|| {
            let float = number.as_f64()?;
            // 2^63 is the first float past i64::MAX.
            (float.fract() == 0.0 && float.abs() < 9_223_372_036_854_775_808.0)
                .then_some(float as i64)
        });
        whole
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom(format!("{number} is not a 64-bit integer")))
    }
}

impl PartialSchema for WarmRequest {
    fn schema() -> RefOr<Schema> {
        let only = |field: &str, schema: RefOr<Schema>| {
            ObjectBuilder::new()
                .title(Some(field))
                .property(field, schema)
                .required(field)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        let id = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1));
        let ids = ArrayBuilder::new()
            .items(id)
            .min_items(Some(1))
            .max_items(Some(MAX_WARM_IDS))
            .description(Some("Product ids (1 to 10,000)."));
        let all = ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .enum_values(Some([true]))
            .description(Some("Every product."));
        OneOfBuilder::new()
            .item(only("ids", ids.build().into()))
            .item(only("category", schema::category().into()))
            .item(only("all", all.build().into()))
            .description(Some("Exactly one of `ids`, `category` or `all`."))
            .into()
    }
}

impl ToSchema for WarmRequest {}

/// The answer to a warm request.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Warmed {
    /// Products put into L2 and this instance's L1.
    warmed: usize,
}

/// Warm the cache.
#[utoipa::path(
    post, path = "/cache/warm", tag = "cache", request_body = WarmRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Warmed", body = Warmed),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON (or missing)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not exactly one of ids, category, all", body = Problem,
         content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable; retry after `Retry-After` seconds", body = Problem,
         headers(("Retry-After" = u32)), content_type = "application/problem+json"),
    )
)]
pub(super) async fn warm(
    _: Authenticated,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<WarmRequest>,
) -> Result<Json<Warmed>, ApiError> {
    let scope = request.into_scope()?;
    let warmed = state.products.warm(scope, |_| {}).await?;
    Ok(Json(Warmed { warmed }))
}

/// Clear every cache level.
#[utoipa::path(
    delete, path = "/cache", tag = "cache",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Cleared"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn clear(_: Authenticated, State(state): State<AppState>) -> StatusCode {
    state.products.clear_cache().await;
    StatusCode::NO_CONTENT
}

/// Drop one product from every cache level.
#[utoipa::path(
    delete, path = "/cache/products/{id}", tag = "cache",
    security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1, description = "Product id (positive)")),
    responses(
        (status = 204, description = "Invalidated (also when it was not cached)"),
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn invalidate(
    _: Authenticated,
    State(state): State<AppState>,
    ProductId(id): ProductId,
) -> StatusCode {
    state.products.invalidate(id).await;
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(json: &str) -> Result<WarmScope, ApiError> {
        serde_json::from_str::<WarmRequest>(json)
            .unwrap()
            .into_scope()
    }

    #[test]
    fn exactly_one_warm_scope_is_accepted() {
        assert_eq!(
            scope(r#"{"ids":[1,2]}"#).unwrap(),
            WarmScope::Ids(vec![1, 2])
        );
        assert_eq!(
            scope(r#"{"category":" tools "}"#).unwrap(),
            WarmScope::Category("tools".into())
        );
        assert_eq!(scope(r#"{"all":true}"#).unwrap(), WarmScope::All);
        assert_eq!(
            scope(r#"{"ids":[1.0, 2e0]}"#).unwrap(),
            WarmScope::Ids(vec![1, 2]),
            "JSON Schema integers"
        );
        for bad in [
            "{}",
            r#"{"all":false}"#,
            r#"{"ids":[]}"#,
            r#"{"ids":[0]}"#,
            r#"{"ids":[1],"all":true}"#,
            r#"{"category":""}"#,
        ] {
            assert!(
                matches!(scope(bad), Err(ApiError::Validation { .. })),
                "{bad}"
            );
        }
    }
}
