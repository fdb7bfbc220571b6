//! A small HTTP service that caches its store with `TieredCache`, outside
//! the catalog: `GET /items/{id}` reads through the cache, `PUT /items/{id}`
//! writes the store then the cache (write-through), `DELETE /items/{id}`
//! deletes and invalidates everywhere, `GET /stats` shows the counters.
//!
//! ```text
//! cargo run -p tiercache --example axum_service            # L1 only
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p tiercache --example axum_service
//! curl -s localhost:3000/items/7; curl -s localhost:3000/stats
//! ```
//!
//! Start two of them on one Redis (`PORT=3001` for the second) and a `PUT`
//! on one is seen by the other at once: the bus drops the old copy from its
//! L1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tiercache::TieredCache;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
}

#[derive(Debug, thiserror::Error)]
#[error("the store is unavailable")]
struct StoreError;

/// Stands in for a database.
#[derive(Clone, Default)]
struct Store(Arc<Mutex<HashMap<u64, Item>>>);

impl Store {
    async fn get(&self, id: u64) -> Result<Option<Item>, StoreError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(self.0.lock().map_err(|_| StoreError)?.get(&id).cloned())
    }

    fn put(&self, item: Item) -> Result<(), StoreError> {
        self.0.lock().map_err(|_| StoreError)?.insert(item.id, item);
        Ok(())
    }

    fn delete(&self, id: u64) -> Result<(), StoreError> {
        self.0.lock().map_err(|_| StoreError)?.remove(&id);
        Ok(())
    }
}

#[derive(Clone)]
struct App {
    cache: TieredCache<u64, Item>,
    store: Store,
}

async fn read(State(app): State<App>, Path(id): Path<u64>) -> Result<Json<Item>, StatusCode> {
    let store = app.store.clone();
    let lookup = app
        .cache
        .get_or_load(&id, || async move { store.get(id).await })
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let item = lookup.into_value().ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(Item::clone(&item)))
}

async fn write(
    State(app): State<App>,
    Path(id): Path<u64>,
    Json(name): Json<String>,
) -> Result<StatusCode, StatusCode> {
    let item = Item { id, name };
    app.store
        .put(item.clone())
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    app.cache.set(&id, item).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete(State(app): State<App>, Path(id): Path<u64>) -> Result<StatusCode, StatusCode> {
    app.store
        .delete(id)
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    app.cache.invalidate(&id).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(State(app): State<App>) -> Json<tiercache::CacheStats> {
    Json(app.cache.stats())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::default();
    for id in 1..=100 {
        store.put(Item {
            id,
            name: format!("item {id}"),
        })?;
    }
    let mut builder = TieredCache::builder()
        .namespace("item")
        .l1_ttl(Duration::from_secs(60))
        .l2_ttl(Duration::from_secs(600));
    if let Ok(url) = std::env::var("REDIS_URL") {
        builder = builder.redis_url(url);
    }
    let cache = builder.build().await?;
    let app = Router::new()
        .route("/items/{id}", get(read).put(write).delete(delete))
        .route("/stats", get(stats))
        .with_state(App { cache, store });
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
