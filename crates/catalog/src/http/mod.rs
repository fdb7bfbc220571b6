//! The HTTP API (SPEC §3): routes, shared state and the middleware stack.
//!
//! Handlers are thin: they extract, call [`ProductService`], and shape the
//! response. Every error leaves as problem+json, whether a handler returned
//! it, an extractor rejected the request, a layer refused it or a handler
//! panicked.

mod body;
mod cache;
mod connection;
mod context;
mod dashboard;
mod error;
mod extract;
mod health;
mod list_query;
mod metrics;
mod openapi;
mod products;
mod schema;
mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use tower::Layer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

pub use body::{DRAIN_LIMIT, MAX_BODY_BYTES};
pub use connection::ConnectionMetrics;
pub use error::{ApiError, PROBLEM_JSON, Problem};
pub use server::{ConnectionLimits, serve};

use crate::metrics::Metrics;
use crate::service::ProductService;
use body::ReadBody;
use context::{RequestContext, RequestContextLayer, RequestTimers};

/// The application as a service: the router behind the body reader, inside
/// the request middleware. Serve it with [`server::serve`]; call it in tests
/// with `tower::ServiceExt::oneshot`.
pub type App = RequestContext<ReadBody<Router>>;

/// Where Swagger UI is served.
const DOCS_PATH: &str = "/docs";
/// Where the OpenAPI document is served.
const SPEC_PATH: &str = "/openapi.json";

/// What every handler can reach. Cloned for every request, so it is one
/// `Arc` (one reference-count increment per request, not one per field).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The fields of [`AppState`].
pub struct Shared {
    pub products: ProductService,
    /// This application's metrics registry (never the process-global one).
    pub metrics: Metrics,
    /// The bearer token writes must present.
    api_token: SecretString,
}

impl AppState {
    pub fn new(products: ProductService, api_token: SecretString, metrics: Metrics) -> Self {
        Self(Arc::new(Shared {
            products,
            metrics,
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
        .routes(routes!(metrics::metrics))
        .routes(routes!(cache::stats))
        .routes(routes!(cache::warm))
        .routes(routes!(cache::clear))
        .routes(routes!(cache::invalidate))
        .routes(routes!(dashboard::dashboard))
        .routes(routes!(dashboard::latency))
}

/// The whole application: API routes, docs, and the middleware stack.
/// `request_timeout` bounds each request (also how long shutdown waits for
/// in-flight requests).
pub fn router(state: AppState, request_timeout: Duration) -> App {
    let (api, spec) = api_routes().split_for_parts();
    // Every route template, for the request-duration series: the documented
    // paths plus the routes `SwaggerUi` adds.
    let docs_routes = [
        DOCS_PATH.to_owned(),
        format!("{DOCS_PATH}/"),
        format!("{DOCS_PATH}/{{*rest}}"),
        SPEC_PATH.to_owned(),
    ];
    let templates = spec
        .paths
        .paths
        .keys()
        .map(String::as_str)
        .chain(docs_routes.iter().map(String::as_str));
    let timers = RequestTimers::new(&state.metrics, templates);
    let app = api
        .merge(SwaggerUi::new(DOCS_PATH).url(SPEC_PATH, spec))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .with_state(state);
    with_middleware(app, request_timeout, timers)
}

/// Bodies read whole before routing ([`body`]); request ids, tracing,
/// timeout, panics, bare errors as problems and request durations, around
/// the whole router ([`context`]).
fn with_middleware(app: Router, request_timeout: Duration, timers: RequestTimers) -> App {
    RequestContextLayer::new(request_timeout, timers).layer(ReadBody::new(app))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    /// The middleware alone, with request-duration series for the test routes.
    fn middleware(app: Router, request_timeout: Duration) -> App {
        let timers = RequestTimers::new(&Metrics::start(), ["/", "/boom", "/slow"]);
        with_middleware(app, request_timeout, timers)
    }

    async fn call(app: App, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
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
        let app = middleware(
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
        let app = middleware(
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
        let app = middleware(
            Router::new().route("/", get(|| async { "ok" })),
            Duration::from_secs(5),
        );

        let (_, first, _) = call(app.clone(), "/").await;
        let (_, second, _) = call(app, "/").await;

        assert_ne!(first["x-request-id"], second["x-request-id"]);
    }

    #[tokio::test]
    async fn a_given_request_id_is_echoed() {
        let app = middleware(
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
