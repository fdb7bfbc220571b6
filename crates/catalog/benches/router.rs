//! One `GET /products/{id}` answered from L1, through the whole router in
//! process: routing, the request-context middleware (request id, span,
//! timeout guard, panic guard, duration histogram), the handler and the L1
//! lookup, with the service's logging set up as `catalog serve` sets it.
//! No sockets and no HTTP parsing, so a change to the hit path shows here
//! without the noise of a load test that shares two cores with its client.
//!
//! The store is a temporary SQLite file of 100,000 products, all warmed into
//! L1 (as in `bench/load.sh`'s L1-hit run), read in a scrambled order so
//! that lookups miss the CPU caches as they do under load.
//!
//! `cargo bench -p catalog --bench router`

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use catalog::app::build_caches;
use catalog::config::{CacheConfig, DbConfig, LogFormat};
use catalog::http::{self, App, AppState};
use catalog::metrics::Metrics;
use catalog::service::{ProductService, WarmScope};
use catalog::store::{self, Store};
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use testkit::bench::Workers;
use tower::ServiceExt;

/// The catalog binary's allocator, so that allocations cost what they cost
/// in the service.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PRODUCTS: i64 = 100_000;

/// The catalog's router over a freshly seeded and fully warmed SQLite file,
/// which is deleted when the returned guard drops.
async fn warmed_router() -> (App, TempFile) {
    let file = TempFile(std::env::temp_dir().join(format!(
        "catalog-bench-{}.db",
        uuid::Uuid::new_v4().simple()
    )));
    let url = format!("sqlite://{}?mode=rwc", file.0.display());
    let store: Arc<dyn Store> = Arc::from(
        store::connect(&url, &DbConfig::new(&url).pool())
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    catalog::seed::seed(store.as_ref(), PRODUCTS as u64)
        .await
        .unwrap();
    let config = CacheConfig {
        l1_max_entries: 2 * PRODUCTS as u64,
        l1_max_bytes: 1 << 30,
        ..CacheConfig::default()
    };
    let metrics = Metrics::start();
    let caches = build_caches(&config, &store, &metrics).await.unwrap();
    let service = ProductService::new(store, caches, config.write_strategy);
    let warmed = service.warm(WarmScope::All, |_| {}).await.unwrap();
    assert_eq!(warmed, PRODUCTS as usize, "every product is warmed into L1");
    let state = AppState::new(service, "bench".to_owned().into(), metrics);
    (http::router(state, Duration::from_secs(30)), file)
}

/// Deletes the benchmark's SQLite file (and its journal files) on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `GET` of `path` through `app`, which must answer 200, with the response
/// written out as a server would: header names and values, then the body,
/// copied into one buffer. Reading what a response points to is part of
/// the cost of a hit (those bytes are likely cache misses), so a change
/// that moves a miss from the handler into the writing shows as such.
async fn get(app: &App, path: &str) -> usize {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut written = Vec::with_capacity(1024);
    for (name, value) in response.headers() {
        written.extend_from_slice(name.as_str().as_bytes());
        written.extend_from_slice(value.as_bytes());
    }
    let body = response.into_body().collect().await.unwrap().to_bytes();
    written.extend_from_slice(&body);
    std::hint::black_box(written).len()
}

fn router(c: &mut Criterion) {
    catalog::telemetry::init(LogFormat::Pretty);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (app, _file) = runtime.block_on(warmed_router());
    // Every id once, in a scrambled order (7,919 is prime, so coprime with
    // the count).
    let paths: Vec<String> = (0..PRODUCTS)
        .map(|i| format!("/products/{}", (i * 7_919) % PRODUCTS + 1))
        .collect();

    let mut group = c.benchmark_group("router");
    // The time is per request per thread: with two threads it equals the
    // one-thread time unless they contend (shared counters, locks, cache
    // lines written by both).
    for threads in [1, 2] {
        // Each worker serves through the one router on its own
        // single-threaded runtime, so two requests truly run at once, as on
        // a 2-core server.
        Workers::scoped(
            threads,
            |worker| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let (app, paths) = (app.clone(), &paths);
                // Each worker its own stretch of the ids.
                let mut next = worker * paths.len() / threads;
                move |iters| {
                    runtime.block_on(async {
                        for _ in 0..iters {
                            next = (next + 1) % paths.len();
                            get(&app, &paths[next]).await;
                        }
                    });
                }
            },
            |workers| {
                group.bench_function(format!("l1_hit/{threads}_thread"), |b| {
                    b.iter_custom(|iters| workers.run(iters));
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, router);
criterion_main!(benches);
