//! The load-test floor: a plain axum server answering `GET /products/{id}`
//! from a precomputed map of bodies shaped like the catalog's (the same
//! fields, ~290 bytes each, an ETag). It shares no code with the catalog, only
//! its allocator, so nothing the catalog does can make it faster:
//! `bench/load.sh` measures the catalog's hit paths against it.
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

/// The catalog binary's allocator, so that the comparison is of request
/// handling, not of allocators.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Body and ETag per id.
type Bodies = Arc<HashMap<i64, (Bytes, HeaderValue)>>;

const ADJECTIVES: [&str; 6] = ["Rustic", "Sleek", "Sturdy", "Compact", "Classic", "Modern"];
const NOUNS: [&str; 6] = [
    "Chair",
    "Power Bank",
    "Kettle",
    "Drill",
    "Camping Stove",
    "Shelf",
];
const MATERIALS: [&str; 4] = ["oak", "steel", "bamboo", "recycled plastic"];
const CATEGORIES: [&str; 4] = ["furniture", "electronics", "tools", "outdoor"];

/// A product body of the catalog's shape, varied by `id`.
fn body(id: i64) -> serde_json::Value {
    let pick =
        |choices: &[&'static str], salt: i64| choices[(id * 31 + salt) as usize % choices.len()];
    let (adjective, noun) = (pick(&ADJECTIVES, 1), pick(&NOUNS, 2));
    let (material, category) = (pick(&MATERIALS, 3), pick(&CATEGORIES, 4));
    let model = 100 + id % 900;
    serde_json::json!({
        "id": id,
        "name": format!("{adjective} {noun} {model}"),
        "description": format!(
            "{adjective} {} made of {material}. Model {model}, part of our {category} range.",
            noun.to_lowercase()
        ),
        "price": (id % 50_000) as f64 / 100.0 + 1.0,
        "category": category,
        "in_stock": id % 7 != 0,
        "version": 1,
        "created_at": "2026-12-04T12:00:00.000000Z",
        "updated_at": null,
    })
}

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
    let bodies: HashMap<i64, (Bytes, HeaderValue)> = (1..=count)
        .map(|id| {
            let body = Bytes::from(serde_json::to_vec(&body(id)).expect("JSON values serialise"));
            let etag = HeaderValue::from_str(&format!("\"{id}-1\"")).expect("a valid ETag");
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
