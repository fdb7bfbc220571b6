//! The load-test floor: a minimal axum server answering `GET /products/{id}`
//! from a precomputed in-memory map of rendered bodies. Nothing can answer
//! this route faster on this stack; `bench/load.sh` compares the catalog's
//! cache-hit path with it.
//!
//! `cargo run --release -p catalog --example floor -- 127.0.0.1:18081 100000`

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use catalog::domain::Product;

/// The catalog binary's allocator, so that the comparison is of request
/// handling, not of allocators.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rendered body and ETag per id, as the catalog's L1 keeps them.
type Bodies = Arc<HashMap<i64, (Bytes, HeaderValue)>>;

async fn product(State(bodies): State<Bodies>, Path(id): Path<i64>) -> Response {
    match bodies.get(&id) {
        Some((body, etag)) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::ETAG, etag.clone()),
            ],
            body.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18081".to_owned());
    let count: i64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let mut rng = rand::rng();
    let created_at = chrono::Utc::now();
    let bodies: HashMap<i64, (Bytes, HeaderValue)> = (1..=count)
        .map(|id| {
            let new = catalog::seed::product(&mut rng);
            let product = Product {
                id,
                name: new.name.as_str().to_owned(),
                description: new.description.as_str().to_owned(),
                price: new.price,
                category: new.category.as_str().to_owned(),
                in_stock: new.in_stock,
                version: 1,
                created_at,
                updated_at: None,
            };
            let body = Bytes::from(serde_json::to_vec(&product).expect("a product serialises"));
            let etag = HeaderValue::from_str(&product.etag()).expect("an ETag is a valid header");
            (id, (body, etag))
        })
        .collect();
    let app = Router::new()
        .route("/products/{id}", get(product))
        .route("/health", get(|| async { "ok" }))
        .with_state(Arc::new(bodies));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("floor listening on {addr} with {count} products");
    axum::serve(listener, app).await
}
