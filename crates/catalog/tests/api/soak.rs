//! Soak: three instances sharing PostgreSQL, Redis and one key prefix take a
//! few seconds of concurrent mixed traffic (reads, price updates, cache
//! invalidations and category pages on random instances). Every write must
//! succeed, and within a second of the last one every instance serves the
//! store's version of every product and page, and Redis holds nothing older
//! than the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use catalog::config::ServeConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use testkit::{poll_until, shared_redis, unique_prefix};
use tokio::task::JoinSet;

use crate::helpers::{Backend, TestApp, use_redis};

const PRODUCTS: usize = 30;
const CATEGORIES: [&str; 3] = ["tools", "garden", "kitchen"];
/// Concurrent clients.
const CLIENTS: usize = 6;
/// How long the clients run.
const RUN_FOR: Duration = Duration::from_secs(5);
/// Store connections per instance.
const POOL: u32 = 4;
/// Most requests one client sends, whatever the time.
const MAX_REQUESTS: usize = 20_000;
/// SPEC §3: every instance stops serving an old version within 1 s.
const CONVERGE_WITHIN: Duration = Duration::from_secs(1);
/// First byte of a tombstone in Redis.
const TOMBSTONE: u8 = 0x04;

/// What the clients did.
#[derive(Debug, Default, Clone, Copy)]
struct Done {
    reads: usize,
    writes: usize,
    invalidations: usize,
    pages: usize,
}

impl std::ops::AddAssign for Done {
    fn add_assign(&mut self, other: Self) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.invalidations += other.invalidations;
        self.pages += other.pages;
    }
}

/// Waits until `app` reports itself healthy: store and L2 up and the bus
/// subscribed, so that it misses no other instance's invalidation.
async fn wait_healthy(app: &TestApp) {
    let health = poll_until(
        Duration::from_secs(10),
        async || app.get("/health").await.json::<Value>().await.unwrap(),
        |health| health["status"] == "ok",
    )
    .await;
    if let Err(health) = health {
        panic!("never healthy: {health}");
    }
}

/// One client: a random mix of requests on random instances until `until`.
async fn client(apps: Arc<Vec<TestApp>>, ids: Arc<Vec<i64>>, until: Instant) -> Done {
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut done = Done::default();
    for _ in 0..MAX_REQUESTS {
        if Instant::now() >= until {
            break;
        }
        let app = &apps[rng.random_range(0..apps.len())];
        let id = ids[rng.random_range(0..ids.len())];
        match rng.random_range(0..100) {
            0..70 => {
                let response = app.get(&format!("/products/{id}")).await;
                assert_eq!(response.status(), StatusCode::OK, "GET /products/{id}");
                done.reads += 1;
            }
            70..95 => {
                let cents = rng.random_range(100..100_000);
                let response = app
                    .send_json(
                        Method::PATCH,
                        &format!("/products/{id}"),
                        &json!({"price": f64::from(cents) / 100.0}),
                    )
                    .await;
                assert_eq!(response.status(), StatusCode::OK, "PATCH /products/{id}");
                done.writes += 1;
            }
            95..98 => {
                let response = app.delete(&format!("/cache/products/{id}")).await;
                assert_eq!(response.status(), StatusCode::NO_CONTENT);
                done.invalidations += 1;
            }
            _ => {
                let category = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
                let response = app.get(&format!("/products?category={category}")).await;
                assert_eq!(response.status(), StatusCode::OK);
                done.pages += 1;
            }
        }
    }
    done
}

/// Every product's `(version, category)` in the store, read with SQL.
async fn store_rows(app: &TestApp) -> BTreeMap<i64, (i64, String)> {
    let mut conn = PgConnection::connect(&app.db.url()).await.unwrap();
    let rows: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT id, version, category FROM products")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, version, category)| (id, (version, category)))
        .collect()
}

/// What the instances serve that differs from the store.
async fn differences(apps: &[TestApp], store: &BTreeMap<i64, (i64, String)>) -> Vec<String> {
    let mut found = Vec::new();
    for (n, app) in apps.iter().enumerate() {
        for (id, (version, _)) in store {
            let response = app.get(&format!("/products/{id}")).await;
            let status = response.status();
            let source = response.headers()["x-cache"].to_str().unwrap().to_owned();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status != StatusCode::OK || body["version"] != *version {
                found.push(format!(
                    "instance {n}, product {id}: {status} {source} version {} (store: {version})",
                    body["version"]
                ));
            }
        }
        for category in CATEGORIES {
            let expected: Vec<(i64, i64)> = store
                .iter()
                .filter(|(_, (_, c))| c == category)
                .map(|(id, (version, _))| (*id, *version))
                .collect();
            let body: Value = app
                .get_json(&format!("/products?category={category}&limit=100"))
                .await;
            let served: Vec<(i64, i64)> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["id"].as_i64().unwrap(), p["version"].as_i64().unwrap()))
                .collect();
            if served != expected {
                found.push(format!(
                    "instance {n}, page {category}: {served:?} (store: {expected:?})"
                ));
            }
        }
    }
    found
}

/// What Redis holds for a product that is not the store's version: each
/// key must be absent, a tombstone no newer than the store, or the store's
/// version as JSON.
async fn redis_differences(prefix: &str, store: &BTreeMap<i64, (i64, String)>) -> Vec<String> {
    let mut redis = shared_redis().await;
    let mut found = Vec::new();
    for (id, (version, _)) in store {
        let key = format!("{prefix}product:{id}");
        let Some(stored): Option<Vec<u8>> = redis.get(&key).await.unwrap() else {
            continue;
        };
        let wrong = match stored.split_first() {
            Some((&TOMBSTONE, digits)) => {
                let tombstone: i64 = std::str::from_utf8(digits).unwrap().parse().unwrap();
                (tombstone > *version).then(|| format!("a tombstone of version {tombstone}"))
            }
            _ => {
                let value: Value = serde_json::from_slice(&stored).unwrap_or(Value::Null);
                (value["version"] != *version).then(|| {
                    format!(
                        "{:?}",
                        String::from_utf8_lossy(&stored[..stored.len().min(120)])
                    )
                })
            }
        };
        if let Some(wrong) = wrong {
            found.push(format!("{key}: {wrong} (store: version {version})"));
        }
    }
    found
}

/// One instance of the soak: shared Redis under `prefix`, and a small pool
/// (three instances must not take PostgreSQL's connections from the tests
/// running beside this one).
fn configure(config: &mut ServeConfig, prefix: &str) {
    use_redis(config, prefix);
    config.db.db_max_connections = POOL;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_under_mixed_traffic_converge_on_the_store() {
    shared_redis().await;
    let prefix = unique_prefix();
    let first = TestApp::spawn_with(Backend::Postgres, |c| configure(c, &prefix)).await;
    let second = first.spawn_peer(|c| configure(c, &prefix)).await;
    let third = first.spawn_peer(|c| configure(c, &prefix)).await;
    let apps = Arc::new(vec![first, second, third]);
    for app in apps.iter() {
        wait_healthy(app).await;
    }
    let mut ids = Vec::with_capacity(PRODUCTS);
    for n in 0..PRODUCTS {
        let category = CATEGORIES[n % CATEGORIES.len()];
        let product = apps[0]
            .create_product(&format!("Soak {n}"), category, 10.0)
            .await;
        ids.push(product["id"].as_i64().unwrap());
    }
    let ids = Arc::new(ids);

    let until = Instant::now() + RUN_FOR;
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        clients.spawn(client(Arc::clone(&apps), Arc::clone(&ids), until));
    }
    let mut done = Done::default();
    while let Some(client) = clients.join_next().await {
        done += client.expect("a client failed a request");
    }
    let last_write = Instant::now();
    eprintln!(
        "soak: {} reads, {} writes, {} invalidations, {} page reads on {} instances",
        done.reads,
        done.writes,
        done.invalidations,
        done.pages,
        apps.len()
    );

    let store = store_rows(&apps[0]).await;
    let served = poll_until(
        CONVERGE_WITHIN.saturating_sub(last_write.elapsed()),
        async || differences(&apps, &store).await,
        Vec::is_empty,
    )
    .await
    .unwrap_or_else(|last| last);
    let in_redis = redis_differences(&prefix, &store).await;

    assert!(done.writes > 0 && done.reads > 0, "{done:?}");
    assert_eq!(store.len(), PRODUCTS);
    assert_eq!(
        store.values().map(|(version, _)| version - 1).sum::<i64>(),
        i64::try_from(done.writes).unwrap(),
        "every write took exactly one version"
    );
    assert!(
        served.is_empty(),
        "still served {} s after the last write:\n{}",
        CONVERGE_WITHIN.as_secs(),
        served.join("\n")
    );
    assert!(in_redis.is_empty(), "Redis holds:\n{}", in_redis.join("\n"));
}
