//! Every error the API returns, as RFC 9457 problem details.
//!
//! [`ApiError`] is the one way a handler fails. Its status is chosen in one
//! exhaustive `match`; server-side errors are logged here, once, inside the
//! request's span, and their bodies say nothing about the cause (no SQL, no
//! driver text). [`problem_for_bare_errors`] turns the error responses that
//! axum and tower produce on their own (unknown route, wrong method, timeout)
//! into the same format.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::service::ServiceError;
use crate::store::{self, StoreError};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status code and `title` say what happened.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The offending input field, on validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Why a request failed, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be understood (malformed JSON, bad id or query).
    #[error("{0}")]
    BadRequest(String),
    /// 401: the bearer token is missing or wrong.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 412: `If-Match` names a revision that is not current.
    #[error("the product has changed since the given ETag")]
    PreconditionFailed,
    /// 413.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the body is well-formed JSON but a field breaks a rule.
    #[error("{field}: {reason}")]
    Validation { field: String, reason: String },
    /// 503: the store cannot be reached; the cause is logged, not returned.
    #[error("the store is unavailable")]
    Unavailable(#[source] Cause),
    /// 503: other writers kept changing the product for as long as a
    /// write-behind change is retried; retrying later succeeds.
    #[error("the product is being changed by other requests; retry")]
    Contended,
    /// 500: a bug; the cause is logged, not returned.
    #[error("internal error")]
    Internal(#[source] Cause),
}

/// The error behind a 5xx. A plain box, not `anyhow::Error`: with
/// `RUST_BACKTRACE=1` in the environment anyhow captures a backtrace per
/// error, which during an outage (every uncached read a 503) cost
/// milliseconds of CPU and over 100 MiB of memory per instance.
pub(super) type Cause = Box<dyn std::error::Error + Send + Sync>;

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::Contended => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A 404 for product `id`.
    pub fn product_not_found(id: i64) -> Self {
        Self::NotFound(format!("product {id} does not exist"))
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound("product does not exist".into()),
            StoreError::VersionConflict => Self::PreconditionFailed,
            StoreError::Unavailable(_) | StoreError::Down => Self::Unavailable(err.into()),
            StoreError::Query(_) | StoreError::Migrate(_) => Self::Internal(err.into()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Store(err) => err.into(),
            ServiceError::Cache(ref cache) if cache.is_conflict() => Self::Contended,
            ServiceError::Load(_) | ServiceError::Cache(_) if err.is_unavailable() => {
                Self::Unavailable(err.into())
            }
            ServiceError::Load(_) | ServiceError::Cache(_) => Self::Internal(err.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error.cause_chain = %CauseChain(&self), error.message = %self, "request failed");
            let mut response = problem(status, self.to_string(), None);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                // The store's breaker probes once per cooldown: try again then.
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after());
            }
            return response;
        }
        let field = match &self {
            Self::Validation { field, .. } => Some(field.clone()),
            _ => None,
        };
        let mut response = problem(status, self.to_string(), field);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"catalog\""),
            );
        }
        response
    }
}

/// An error and its sources, `: `-separated, for the log.
struct CauseChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for CauseChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// `Retry-After` of a 503: the store breaker's cooldown, in whole seconds.
fn retry_after() -> HeaderValue {
    let seconds = store::breaker::COOLDOWN.as_secs().max(1);
    HeaderValue::from(seconds)
}

/// A problem+json response.
pub(super) fn problem(status: StatusCode, detail: String, field: Option<String>) -> Response {
    let body = Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        field,
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// Middleware body: replaces a bare error response (axum's 405, a timeout's
/// 408: no body, no Content-Type) with a problem+json one of the same status.
pub(super) fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    // Bodies we produced carry a Content-Type; the bare ones have none.
    let is_bare = !response.headers().contains_key(header::CONTENT_TYPE);
    if !(status.is_client_error() || status.is_server_error()) || !is_bare {
        return response;
    }
    let detail = match status {
        StatusCode::NOT_FOUND => "no such resource".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this resource".to_owned(),
        StatusCode::REQUEST_TIMEOUT => "the request took too long".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_owned(),
        other => other.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut replacement = problem(status, detail, None);
    // Keep headers such as `Allow` on a 405.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replacement.headers_mut().insert(name, value.clone());
        }
    }
    replacement
}

/// The panic handler of the catch-panic layer: a 500 problem, the panic
/// message logged, never sent.
#[expect(
    clippy::needless_pass_by_value,
    reason = "the catch-panic layer hands the payload over by value"
)]
pub(super) fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    tracing::error!(panic.message = %message, "handler panicked");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error".to_owned(),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_statuses_a_client_can_act_on() {
        assert_eq!(
            ApiError::from(StoreError::NotFound).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(StoreError::VersionConflict).status(),
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            ApiError::from(StoreError::Unavailable(sqlx::Error::PoolTimedOut)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(StoreError::Down).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(StoreError::Query(sqlx::Error::Protocol("syntax".into()))).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn a_503_says_when_to_retry() {
        let response = ApiError::from(StoreError::Down).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn writers_that_keep_losing_the_race_get_a_503_that_says_so() {
        let err = ApiError::from(ServiceError::Cache(tiercache::Error::Conflict));
        assert_eq!(
            err.to_string(),
            "the product is being changed by other requests; retry"
        );
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        // A queue Redis cannot take is still the store being unavailable.
        let unavailable = ApiError::from(ServiceError::Cache(tiercache::Error::Unavailable));
        assert_eq!(unavailable.to_string(), "the store is unavailable");
    }

    #[test]
    fn server_errors_do_not_leak_their_cause() {
        let err = ApiError::from(StoreError::Query(sqlx::Error::Protocol(
            "SELECT secret FROM products".into(),
        )));
        assert_eq!(err.to_string(), "internal error");
    }
}
