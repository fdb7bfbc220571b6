//! A tour of `TieredCache`: which level answers each lookup.
//!
//! Run with a Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`):
//!
//! ```text
//! cargo run -p tiercache --example basic
//! ```
//!
//! If Redis is unreachable the cache still works (L2 reports `down` and every
//! miss goes to the loader); the output shows it.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tiercache::{Lookup, TieredCache};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: i64,
    name: String,
    price_cents: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the product store is unavailable")]
struct StoreError;

/// Stands in for a database: ids 1–100 exist.
async fn load_product(id: i64) -> Result<Option<Product>, StoreError> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok((1..=100).contains(&id).then(|| Product {
        id,
        name: format!("product {id}"),
        price_cents: 100 * u64::try_from(id).unwrap_or(0),
    }))
}

async fn load_products(ids: Vec<i64>) -> Result<HashMap<i64, Product>, StoreError> {
    let mut found = HashMap::new();
    for id in ids {
        if let Some(product) = load_product(id).await? {
            found.insert(id, product);
        }
    }
    Ok(found)
}

fn show(what: &str, lookup: &Lookup<Product>) {
    let value = lookup
        .value
        .as_ref()
        .map_or("not found".to_owned(), |p| p.name.clone());
    println!("{what:<38} -> {value:<12} from {:?}", lookup.source);
}

#[tokio::main]
async fn main() -> Result<(), tiercache::Error> {
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let namespace = format!("example{}", std::process::id());
    let cache: TieredCache<i64, Product> = TieredCache::builder()
        .key_prefix("cache:")
        .namespace(namespace)
        .redis_url(&redis_url)
        .build()
        .await?;
    println!("L2 ({redis_url}) is {}", cache.l2_state());

    show(
        "first get of 7",
        &cache.get_or_load(&7, || load_product(7)).await?,
    );
    show(
        "second get of 7",
        &cache.get_or_load(&7, || load_product(7)).await?,
    );
    cache.clear_local();
    show(
        "get of 7 after clearing L1",
        &cache.get_or_load(&7, || load_product(7)).await?,
    );
    show(
        "first get of unknown 1000",
        &cache.get_or_load(&1000, || load_product(1000)).await?,
    );
    show(
        "second get of unknown 1000",
        &cache.get_or_load(&1000, || load_product(1000)).await?,
    );

    for (id, lookup) in cache
        .get_many_or_load(&[7, 8, 9, 1000], load_products)
        .await?
    {
        show(&format!("batch get of {id}"), &lookup);
    }
    cache.invalidate(&7).await;
    show(
        "get of 7 after invalidate",
        &cache.get_or_load(&7, || load_product(7)).await?,
    );
    let warmed = cache.warm((10..=30).collect(), 8, load_products).await?;
    println!("warmed {warmed} products");
    show(
        "get of 20 after warming",
        &cache.get_or_load(&20, || load_product(20)).await?,
    );

    println!(
        "stats: {}",
        serde_json::to_string_pretty(&cache.stats()).unwrap_or_default()
    );
    cache.clear().await;
    Ok(())
}
