//! The HTTP API (SPEC §3): routes, shared state and the middleware stack.
//!
//! Handlers are thin: they extract, call [`ProductService`], and shape the
//! response. Every error leaves as problem+json, whether a handler returned
//! it, an extractor rejected the request, a layer refused it or a handler
//! panicked.

mod cache;
mod error;
mod extract;
mod health;
mod openapi;
mod products;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware;
use secrecy::{ExposeSecret, SecretString};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

pub use error::{ApiError, PROBLEM_JSON, Problem};
pub use extract::MAX_BODY_BYTES;

use crate::service::ProductService;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach. Cloned for every request, so it is one
/// `Arc` (one reference-count increment per request, not one per field).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The fields of [`AppState`].
pub struct Shared {
    pub products: ProductService,
    /// The bearer token writes must present.
    api_token: SecretString,
}

impl AppState {
    pub fn new(products: ProductService, api_token: SecretString) -> Self {
        Self(Arc::new(Shared {
            products,
            api_token,
        }))
    }

    fn token_bytes(&self) -> &[u8] {
        self.0.api_token.expose_secret().as_bytes()
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("products", &self.products)
            .field("api_token", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("products", &self.products)
            .finish_non_exhaustive()
    }
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(products::list_products, products::create_product))
        .routes(routes!(
            products::get_product,
            products::replace_product,
            products::patch_product,
            products::delete_product
        ))
        .routes(routes!(health::health))
        .routes(routes!(cache::stats))
        .routes(routes!(cache::warm))
        .routes(routes!(cache::clear))
        .routes(routes!(cache::invalidate))
}

/// The whole application: API routes, docs, and the middleware stack.
/// `request_timeout` bounds each request (also how long shutdown waits for
/// in-flight requests).
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let (api, spec) = api_routes().split_for_parts();
    let app = api
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .with_state(state);
    with_middleware(app, request_timeout)
}

/// Request ids, tracing, panics as 500s, problem+json for bare errors and
/// the request timeout, outermost first.
///
/// Every layer here runs on every request, the cache-hit path included, so
/// each one is chosen to cost no allocation or system call it can avoid:
/// request ids come from a counter, not a random UUID; the problem mapper sits
/// inside the panic catcher so that it sees axum's own body type and does not
/// box it again; the body limit is enforced by the JSON extractor, not by a
/// layer that touches every request's extensions.
fn with_middleware(app: Router, request_timeout: Duration) -> Router {
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds::default()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let request_id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    uri = %request.uri(),
                    request_id,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(middleware::map_response(error::problem_for_bare_errors))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ));
    app.layer(stack)
}

/// Request ids for requests that bring none: this process's random prefix
/// and a counter (`4f1c9a2e-17`), unique across instances without a random
/// draw per request.
#[derive(Clone)]
struct RequestIds {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            prefix: format!("{:08x}", rand::random::<u32>()).into(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    async fn call(app: Router, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_500_problem_without_the_message() {
        let app = with_middleware(
            Router::new().route(
                "/boom",
                get(|| async {
                    panic!("secret detail: SELECT * FROM products");
                    #[expect(unreachable_code, reason = "the handler must have a type")]
                    ""
                }),
            ),
            Duration::from_secs(5),
        );

        let (status, headers, body) = call(app, "/boom").await;

        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers["content-type"], PROBLEM_JSON);
        assert!(!body.contains("secret"), "{body}");
        assert!(headers.contains_key("x-request-id"));
    }

    #[tokio::test]
    async fn a_slow_request_times_out_as_a_408_problem() {
        let app = with_middleware(
            Router::new().route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            ),
            Duration::from_millis(20),
        );

        let (status, headers, body) = call(app, "/slow").await;

        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(headers["content-type"], PROBLEM_JSON);
        assert!(body.contains("\"status\":408"), "{body}");
    }

    #[tokio::test]
    async fn requests_without_an_id_get_distinct_ones() {
        let app = with_middleware(
            Router::new().route("/", get(|| async { "ok" })),
            Duration::from_secs(5),
        );

        let (_, first, _) = call(app.clone(), "/").await;
        let (_, second, _) = call(app, "/").await;

        assert_ne!(first["x-request-id"], second["x-request-id"]);
    }

    #[tokio::test]
    async fn a_given_request_id_is_echoed() {
        let app = with_middleware(
            Router::new().route("/", get(|| async { "ok" })),
            Duration::from_secs(5),
        );

        let response = app
            .oneshot(
                Request::get("/")
                    .header("x-request-id", "abc-123")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();

        assert_eq!(response.headers()["x-request-id"], "abc-123");
    }
}
