//! `TieredCache` read paths against the raw operations under them:
//!
//! - `tiered_get/l1_hit`: `get_or_load` answered by L1;
//! - `tiered_get/l2_hit` vs `raw_redis_get`: `get_or_load` answered by Redis
//!   (L1 TTL zero, so L1 never keeps the value) against a bare `GET` on the
//!   same kind of connection (`ConnectionManager`, TCP_NODELAY);
//! - `mget_50/tiered` vs `mget_50/raw`: a 50-key `get_many_or_load`
//!   answered by one `MGET` against the bare `MGET`;
//! - `concurrent_l2_hits_50/tiered` vs `…/raw`: 50 single-key reads at once,
//!   `get_or_load` (L2 hits, which the manager batches into `MGET`s) against
//!   50 bare `GET`s pipelined on one connection.
//!
//! Runs on a current-thread runtime. Needs Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`); keys live
//! under `bench:<pid>:` and are deleted at the end.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{AsyncCommands, IntoConnectionInfo};
use serde::{Deserialize, Serialize};
use testkit::{START_SHARED_REDIS, redis_url};
use tiercache::TieredCache;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: i64,
    name: String,
    description: String,
    price: f64,
    category: String,
    in_stock: bool,
    version: i64,
}

impl Product {
    fn new(id: i64) -> Self {
        Self {
            id,
            name: format!("product {id}"),
            description: "a sturdy widget for everyday use".repeat(3),
            price: 19.99,
            category: "tools".into(),
            in_stock: true,
            version: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("benchmarks never load")]
struct NeverLoaded;

async fn raw_connection() -> ConnectionManager {
    let url = redis_url();
    let info = url
        .as_str()
        .into_connection_info()
        .unwrap()
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).unwrap();
    ConnectionManager::new_with_config(client, ConnectionManagerConfig::new())
        .await
        .unwrap_or_else(|e| {
            panic!("Redis is not reachable at {url} ({e}); start it with: {START_SHARED_REDIS}")
        })
}

fn benches(c: &mut Criterion) {
    // One thread runs both the benchmark and the connection's driver task:
    // on 2 cores, cross-thread wake-ups would dominate the measurement.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("bench:{}:", std::process::id());
    let ids: Vec<i64> = (0..50).collect();

    let (l1_cache, l2_cache, mut raw) = runtime.block_on(async {
        let raw = raw_connection().await;
        let l1_cache: TieredCache<i64, Product> = TieredCache::builder().build().await.unwrap();
        let l2_cache: TieredCache<i64, Product> = TieredCache::builder()
            .key_prefix(prefix.as_str())
            .namespace("product")
            .redis_url(redis_url())
            .l1_ttl(Duration::ZERO)
            .l2_ttl(Duration::from_secs(600))
            .build()
            .await
            .unwrap();
        for &id in &ids {
            l1_cache.set(&id, Product::new(id)).await;
            l2_cache.set(&id, Product::new(id)).await;
        }
        (l1_cache, l2_cache, raw)
    });
    let redis_keys: Vec<String> = ids.iter().map(|id| l2_cache.redis_key(id)).collect();

    let mut group = c.benchmark_group("tiered_get");
    group.bench_function("l1_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            let lookup = l1_cache
                .get_or_load(&7, || async { Err::<Option<Product>, _>(NeverLoaded) })
                .await
                .unwrap();
            assert!(lookup.value.is_some());
        });
    });
    group.bench_function("l2_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            let lookup = l2_cache
                .get_or_load(&7, || async { Err::<Option<Product>, _>(NeverLoaded) })
                .await
                .unwrap();
            assert_eq!(lookup.source, tiercache::Source::L2);
        });
    });
    group.bench_function("raw_redis_get", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = raw.clone();
            let key = &redis_keys[7];
            async move {
                let value: Option<Vec<u8>> = conn.get(key).await.unwrap();
                assert!(value.is_some());
            }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("mget_50");
    group.throughput(Throughput::Elements(50));
    group.bench_function("tiered", |b| {
        b.to_async(&runtime).iter(|| async {
            let lookups = l2_cache
                .get_many_or_load(&ids, |_| async {
                    Err::<HashMap<i64, Product>, _>(NeverLoaded)
                })
                .await
                .unwrap();
            assert_eq!(lookups.len(), 50);
        });
    });
    group.bench_function("raw", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = raw.clone();
            let keys = &redis_keys;
            async move {
                let values: Vec<Option<Vec<u8>>> = conn.mget(keys).await.unwrap();
                assert_eq!(values.len(), 50);
            }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("concurrent_l2_hits_50");
    group.throughput(Throughput::Elements(50));
    group.bench_function("tiered", |b| {
        b.to_async(&runtime).iter(|| async {
            let lookups = futures_util::future::join_all(ids.iter().map(|id| {
                l2_cache.get_or_load(id, || async { Err::<Option<Product>, _>(NeverLoaded) })
            }))
            .await;
            assert!(lookups.iter().all(|lookup| {
                lookup
                    .as_ref()
                    .is_ok_and(|lookup| lookup.source == tiercache::Source::L2)
            }));
        });
    });
    group.bench_function("raw", |b| {
        b.to_async(&runtime).iter(|| async {
            let values = futures_util::future::join_all(redis_keys.iter().map(|key| {
                let mut conn = raw.clone();
                async move { conn.get::<_, Option<Vec<u8>>>(key).await.unwrap() }
            }))
            .await;
            assert!(values.iter().all(Option::is_some));
        });
    });
    group.finish();

    runtime.block_on(async {
        let _: () = raw.del(&redis_keys).await.unwrap();
    });
}

criterion_group!(tiered, benches);
criterion_main!(tiered);
