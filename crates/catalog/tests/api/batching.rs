//! Batched store reads (`store::BatchedReads`): cache misses that arrive
//! together share one query, and every reader still gets exactly what its
//! own `get` would have returned.
//!
//! On PostgreSQL the batching is made certain rather than likely: a test
//! transaction locks the table, so the first read holds the only lane
//! while the others queue behind it.

use std::collections::HashMap;
use std::time::Duration;

use catalog::domain::{Category, Description, NewProduct, Price, ProductName};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};
use testkit::eventually;

use crate::helpers::{Backend, TestApp, assert_problem, both_stores, metric};

both_stores!(concurrent_misses_each_get_their_own_product);

/// Ids that no product has.
const UNKNOWN: [i64; 5] = [900_001, 900_002, 900_003, 900_004, 900_005];

/// An app with one read lane and an L1 of one entry (every read a miss),
/// holding `count` products; returns it with the products' ids and names.
async fn app_with_products(backend: Backend, count: usize) -> (TestApp, Vec<(i64, String)>) {
    let app = TestApp::spawn_with(backend, |c| {
        c.db.db_read_lanes = 1;
        c.cache.l1_max_entries = 1;
    })
    .await;
    let store = app.db.store().await;
    let new: Vec<NewProduct> = (0..count)
        .map(|i| NewProduct {
            name: ProductName::parse(&format!("Batched {i}")).unwrap(),
            description: Description::parse("").unwrap(),
            price: Price::from_cents(100 + i64::try_from(i).unwrap()).unwrap(),
            category: Category::parse("batch").unwrap(),
            in_stock: true,
        })
        .collect();
    store.create_many(&new).await.unwrap();
    let page = store
        .list(&catalog::store::PageRequest {
            category: None,
            after: 0,
            limit: 1_000,
        })
        .await
        .unwrap();
    let products = page.into_iter().map(|p| (p.id, p.name)).collect();
    (app, products)
}

/// GETs every id at once; returns status and body by id.
async fn read_all(app: &TestApp, ids: &[i64]) -> HashMap<i64, (StatusCode, Value)> {
    let reads = ids.iter().map(|id| async move {
        let response = app.get(&format!("/products/{id}")).await;
        let status = response.status();
        (*id, (status, response.json::<Value>().await.unwrap()))
    });
    join_all(reads).await.into_iter().collect()
}

async fn concurrent_misses_each_get_their_own_product(backend: Backend) {
    let (app, products) = app_with_products(backend, 60).await;
    let mut ids: Vec<i64> = products.iter().map(|(id, _)| *id).collect();
    ids.extend(UNKNOWN);

    let answers = read_all(&app, &ids).await;

    for (id, name) in &products {
        let (status, body) = &answers[id];
        assert_eq!(*status, StatusCode::OK, "{id}: {body}");
        assert_eq!(body["id"], *id);
        assert_eq!(body["name"], name.as_str());
    }
    for id in UNKNOWN {
        assert_eq!(answers[&id].0, StatusCode::NOT_FOUND, "{id}");
    }
    let reads = metric(&app, "db_batched_reads_total").await;
    let batches = metric(&app, "db_read_batches_total").await;
    assert_eq!(reads, 65, "every miss went through the batcher");
    assert!((1..=reads).contains(&batches), "{batches} batches");
}

/// Locks `products` in a transaction on `sql`: reads wait until it ends.
async fn lock_products(sql: &mut PgConnection) {
    sql.execute("BEGIN").await.unwrap();
    sql.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
}

/// Waits (bounded) until a session of the app waits for the table lock:
/// the lane is taken, and later reads queue.
async fn wait_for_blocked_read(sql: &mut PgConnection) {
    let blocked = eventually(Duration::from_secs(10), async || {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *sql)
        .await
        .unwrap();
        waiting > 0
    })
    .await;
    assert!(blocked, "no read reached the store");
}

/// Runs `first` alone until it blocks on the locked table, then `rest`
/// at once, gives them time to queue, and unlocks.
async fn read_behind_a_lock(
    app: &TestApp,
    first: i64,
    rest: &[i64],
) -> HashMap<i64, (StatusCode, Value)> {
    let mut sql = app.db.sql().await;
    lock_products(&mut sql).await;
    let first = [first];
    let first_read = read_all(app, &first);
    let unlock = async {
        wait_for_blocked_read(&mut sql).await;
        let queued = read_all(app, rest);
        let release = async {
            // Reads queue within microseconds of arriving; this is slack
            // for a loaded machine, not a correctness margin.
            tokio::time::sleep(Duration::from_millis(500)).await;
            sql.execute("COMMIT").await.unwrap();
        };
        let (queued, ()) = tokio::join!(queued, release);
        queued
    };
    let (mut answers, queued) = tokio::join!(first_read, unlock);
    answers.extend(queued);
    answers
}

#[tokio::test]
async fn reads_queued_behind_a_busy_lane_share_one_query() {
    let (app, products) = app_with_products(Backend::Postgres, 40).await;
    let mut rest: Vec<i64> = products[1..].iter().map(|(id, _)| *id).collect();
    rest.extend(UNKNOWN);

    let answers = read_behind_a_lock(&app, products[0].0, &rest).await;

    for (id, name) in &products {
        let (status, body) = &answers[id];
        assert_eq!(*status, StatusCode::OK, "{id}: {body}");
        assert_eq!(body["name"], name.as_str());
    }
    for id in UNKNOWN {
        assert_eq!(answers[&id].0, StatusCode::NOT_FOUND, "{id}");
    }
    assert_eq!(metric(&app, "db_batched_reads_total").await, 45);
    // The blocked read, then (all going well) the 44 queued ones together.
    let batches = metric(&app, "db_read_batches_total").await;
    assert!(batches <= 4, "45 reads took {batches} queries");
    let gets = metric(&app, r#"db_query_duration_seconds_count{op="get_many"}"#).await;
    assert!(gets >= 1, "the queued reads went out as a batch query");
}

#[tokio::test]
async fn a_row_that_breaks_its_batch_fails_only_its_own_read() {
    let (app, products) = app_with_products(Backend::Postgres, 12).await;
    let bad = products[5].0;
    let mut sql = app.db.sql().await;
    // A price the schema refuses and the service cannot decode: a broken
    // row, as a bad migration or a manual edit might leave one.
    sql.execute("ALTER TABLE products DROP CONSTRAINT products_price_check")
        .await
        .unwrap();
    sqlx::query("UPDATE products SET price = 5000000000 WHERE id = $1")
        .bind(bad)
        .execute(&mut sql)
        .await
        .unwrap();
    sql.close().await.unwrap();
    let rest: Vec<i64> = products[1..].iter().map(|(id, _)| *id).collect();

    let mut answers = read_behind_a_lock(&app, products[0].0, &rest).await;

    let batches = metric(&app, "db_read_batches_total").await;
    assert!(batches <= 4, "12 reads took {batches} queries");
    let (status, body) = answers.remove(&bad).unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        !body.to_string().contains("price"),
        "no internals leak: {body}"
    );
    for (id, name) in products.iter().filter(|(id, _)| *id != bad) {
        let (status, body) = &answers[id];
        assert_eq!(*status, StatusCode::OK, "{id}: {body}");
        assert_eq!(body["name"], name.as_str());
    }
    // The bad row's problem document is a proper one.
    let response = app.get(&format!("/products/{bad}")).await;
    assert_problem(response, StatusCode::INTERNAL_SERVER_ERROR).await;
}
