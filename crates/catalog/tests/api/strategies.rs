//! The write strategies (SPEC §4) end to end on PostgreSQL with Redis:
//! what each write leaves in the store (read back with SQL, not through the
//! service) and in the writer's cache; and write-behind's queue: two
//! instances flushing one stream, coalescing under rapid writes, and a
//! change the store rejects going to the dead letters without blocking the
//! others. Crashes and signals are in `process.rs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use catalog::config::{ServeConfig, WriteStrategy};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Executor;
use testkit::{eventually, shared_redis, unique_prefix};

use crate::helpers::{
    Backend, Row, TestApp, metric, pg_rows, pg_rows_within, read_product as read, use_redis,
    write_behind_stats,
};

/// SPEC §3: a write-behind write reaches the store within 1 s.
const WRITE_BEHIND_BOUND: Duration = Duration::from_secs(1);
/// Longest wait for a queue to drain once the writes stopped.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// A configuration using the test Redis under `prefix` and `strategy`.
fn with_strategy(config: &mut ServeConfig, prefix: &str, strategy: WriteStrategy) {
    use_redis(config, prefix);
    config.cache.write_strategy = strategy;
}

async fn spawn(strategy: WriteStrategy, prefix: &str) -> TestApp {
    // Fails with how to start Redis rather than with a confusing timeout.
    shared_redis().await;
    TestApp::spawn_with(Backend::Postgres, |c| with_strategy(c, prefix, strategy)).await
}

/// Sends a write and returns its status and, when it has one, its body.
async fn write(app: &TestApp, method: Method, id: i64, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = app.authed(method, &format!("/products/{id}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Waits (bounded) until every app reports an empty write-behind queue.
async fn drained(apps: &[&TestApp]) -> bool {
    eventually(DRAIN_BOUND, async || {
        let mut empty = true;
        for app in apps {
            let stats = write_behind_stats(&app.client, &app.url("")).await;
            empty &= stats["pending"] == 0;
        }
        empty
    })
    .await
}

/// One product's expected row.
fn expect(id: i64, row: Option<Row>) -> HashMap<i64, Option<Row>> {
    HashMap::from([(id, row)])
}

#[tokio::test]
async fn invalidate_writes_reach_postgresql_and_the_next_read_misses() {
    writes_reach_postgresql(WriteStrategy::Invalidate).await;
}

#[tokio::test]
async fn write_through_writes_reach_postgresql_and_the_next_read_hits() {
    writes_reach_postgresql(WriteStrategy::WriteThrough).await;
}

#[tokio::test]
async fn write_behind_writes_reach_postgresql_within_a_second_and_the_next_read_hits() {
    writes_reach_postgresql(WriteStrategy::WriteBehind).await;
}

/// Create, PUT, PATCH and DELETE through the API; after each, the row in
/// PostgreSQL is what the API answered (store-first strategies: at once;
/// write-behind: within SPEC's bound), and the writer's next read comes from
/// where the strategy puts the new version.
async fn writes_reach_postgresql(strategy: WriteStrategy) {
    let app = spawn(strategy, &unique_prefix()).await;
    let mut sql = app.db.sql().await;
    let bound = if strategy == WriteStrategy::WriteBehind {
        WRITE_BEHIND_BOUND
    } else {
        Duration::ZERO
    };

    let created = app.create_product("Original", "tools", 1.25).await;
    let id = created["id"].as_i64().unwrap();
    let after_create = pg_rows(&mut sql, &[id]).await;
    let mut updates = Vec::new();
    for (method, body) in [
        (
            Method::PUT,
            json!({"name": "Replaced", "price": 2.5, "category": "tools"}),
        ),
        (Method::PATCH, json!({"name": "Patched", "price": 3.75})),
    ] {
        let (status, answered) = write(&app, method.clone(), id, Some(body)).await;
        let written = Instant::now();
        let next_read = read(&app, id).await;
        let in_store = pg_rows_within(
            &mut sql,
            &expect(id, Some(Row::of(&answered))),
            bound.saturating_sub(written.elapsed()),
        )
        .await;
        updates.push((method, status, answered, next_read, in_store));
    }
    let (deleted, _) = write(&app, Method::DELETE, id, None).await;
    let written = Instant::now();
    let read_after_delete = read(&app, id).await;
    let after_delete = pg_rows_within(
        &mut sql,
        &expect(id, None),
        bound.saturating_sub(written.elapsed()),
    )
    .await;

    assert_eq!(after_create, expect(id, Some(Row::of(&created))));
    assert_eq!(created["version"], 1);
    for (version, (method, status, answered, next_read, in_store)) in (2..).zip(updates) {
        assert_eq!(status, StatusCode::OK, "{method}: {answered}");
        assert_eq!(answered["version"], version, "{method}: {answered}");
        assert_eq!(
            in_store,
            expect(id, Some(Row::of(&answered))),
            "{method}: PostgreSQL does not hold what the API answered"
        );
        let (read_status, source, read_body) = next_read;
        assert_eq!(read_status, StatusCode::OK, "{method}");
        assert_eq!(
            read_body, answered,
            "{method}: GET differs from the write's answer"
        );
        match strategy {
            WriteStrategy::Invalidate => assert_eq!(source, "MISS", "{method}"),
            WriteStrategy::WriteThrough | WriteStrategy::WriteBehind => {
                assert!(source.starts_with("HIT"), "{method}: {source}");
            }
        }
    }
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(read_after_delete.0, StatusCode::NOT_FOUND);
    assert_eq!(after_delete, expect(id, None), "the row outlived DELETE");
}

#[tokio::test]
async fn two_write_behind_instances_flush_one_queue_to_postgresql() {
    let prefix = unique_prefix();
    let a = spawn(WriteStrategy::WriteBehind, &prefix).await;
    let b = a
        .spawn_peer(|c| with_strategy(c, &prefix, WriteStrategy::WriteBehind))
        .await;
    let apps = [&a, &b];
    let mut ids = Vec::new();
    for i in 0..20 {
        let created = apps[i % 2]
            .create_product(&format!("Shared {i}"), "tools", 1.0)
            .await;
        ids.push(created["id"].as_i64().unwrap());
    }

    // Products in parallel, each one's PATCHes in turn on A and B, so that
    // every PATCH knows the version it makes.
    let last = join_all(ids.iter().enumerate().map(|(i, &id)| async move {
        let mut answers = Vec::new();
        for n in 0..10 {
            let cents = u32::try_from(100 + 100 * i + n).unwrap();
            let price = f64::from(cents) / 100.0;
            answers.push(
                write(
                    apps[n % 2],
                    Method::PATCH,
                    id,
                    Some(json!({"price": price})),
                )
                .await,
            );
        }
        (id, answers)
    }))
    .await;
    let all_drained = drained(&apps).await;
    let expected: HashMap<i64, Option<Row>> = last
        .iter()
        .map(|(id, answers)| (*id, Some(Row::of(&answers[9].1))))
        .collect();
    let mut sql = a.db.sql().await;
    let rows = pg_rows_within(&mut sql, &expected, DRAIN_BOUND).await;
    let mut flushed = 0;
    for app in apps {
        flushed += write_behind_stats(&app.client, &app.url("")).await["flushed"]
            .as_u64()
            .unwrap();
    }

    for (id, answers) in &last {
        for (n, (status, body)) in (2..).zip(answers) {
            assert_eq!(*status, StatusCode::OK, "product {id}: {body}");
            assert_eq!(body["version"], n, "product {id}");
        }
    }
    assert!(all_drained, "the queue did not drain on both instances");
    assert!(expected.values().flatten().all(|row| row.version == 11));
    assert_eq!(rows, expected);
    assert!(flushed >= 200, "flushed {flushed} of 200 writes");
}

#[tokio::test]
async fn rapid_writes_to_one_product_are_coalesced_into_few_store_batches() {
    let app = spawn(WriteStrategy::WriteBehind, &unique_prefix()).await;
    let id = app.create_product_id("Busy", "tools", 1.0).await;

    let mut answers = Vec::new();
    for n in 1..=100 {
        let price = f64::from(100 + n) / 100.0;
        answers.push(write(&app, Method::PATCH, id, Some(json!({"price": price}))).await);
    }
    let all_drained = drained(&[&app]).await;
    let last = answers.last().unwrap().1.clone();
    let mut sql = app.db.sql().await;
    let rows = pg_rows_within(&mut sql, &expect(id, Some(Row::of(&last))), DRAIN_BOUND).await;
    let batches = metric(&app, r#"db_query_duration_seconds_count{op="apply"}"#).await;
    eprintln!("100 writes reached PostgreSQL in {batches} store batches");

    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
    assert!(all_drained, "the queue did not drain");
    assert_eq!(last["version"], 101);
    assert_eq!(rows, expect(id, Some(Row::of(&last))));
    assert!(batches >= 1);
    assert!(batches < 50, "{batches} store batches for 100 writes");
}

#[tokio::test]
async fn a_change_the_store_rejects_is_dead_lettered_and_the_others_flush() {
    let prefix = unique_prefix();
    let app = spawn(WriteStrategy::WriteBehind, &prefix).await;
    let mut sql = app.db.sql().await;
    let victim = app.create_product("Victim", "tools", 1.0).await;
    let victim_id = victim["id"].as_i64().unwrap();
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(app.create_product(&format!("Fine {i}"), "tools", 1.0).await);
    }
    sql.execute(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.name = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_poison BEFORE UPDATE ON products \
         FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .await
    .unwrap();

    // The poison and the others concurrently, so that they may share a
    // batch: the batch is refused, and only the poison may stay behind.
    let poisoned = write(
        &app,
        Method::PATCH,
        victim_id,
        Some(json!({"name": "poison"})),
    );
    let fine = join_all(others.iter().map(|product| {
        let id = product["id"].as_i64().unwrap();
        write(&app, Method::PATCH, id, Some(json!({"price": 9.5})))
    }));
    let (poisoned, fine) = tokio::join!(poisoned, fine);
    let all_drained = drained(&[&app]).await;
    let mut expected: HashMap<i64, Option<Row>> = fine
        .iter()
        .map(|(_, body)| (body["id"].as_i64().unwrap(), Some(Row::of(body))))
        .collect();
    expected.insert(victim_id, Some(Row::of(&victim)));
    let rows = pg_rows_within(&mut sql, &expected, DRAIN_BOUND).await;
    let mut redis = shared_redis().await;
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}product#wb:dead"))
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();

    assert_eq!(poisoned.0, StatusCode::OK, "the write is acknowledged");
    assert!(fine.iter().all(|(status, _)| *status == StatusCode::OK));
    assert!(all_drained, "the queue did not drain");
    assert_eq!(rows, expected);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (_, fields) = &dead[0];
    assert_eq!(fields["k"], victim_id.to_string(), "{fields:?}");
    assert_eq!(fields["v"], "2", "{fields:?}");
    assert!(fields["reason"].contains("poisoned"), "{fields:?}");
}

/// SPEC §4: the instance that took a write never serves the old version
/// again, and a crash-free run loses no acknowledged write. A clear
/// (`DELETE /cache`, or the change listener after a reconnection) while a
/// change is still queued must not hand out the store's older row, nor let
/// the next write build on it.
#[tokio::test]
async fn a_cache_clear_while_writes_are_queued_serves_and_loses_no_acknowledged_write() {
    let app = spawn(WriteStrategy::WriteBehind, &unique_prefix()).await;
    let id = app.create_product_id("Queued", "tools", 1.0).await;
    // A row lock holds the flusher's UPDATE back (reads still pass), so
    // that the first write is still queued when the cache is cleared.
    let mut blocker = app.db.sql().await;
    blocker.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT id FROM products WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut blocker)
        .await
        .unwrap();

    let (_, first) = write(&app, Method::PATCH, id, Some(json!({"price": 2.0}))).await;
    let cleared = app.delete("/cache").await;
    let (_, _, read_after_clear) = read(&app, id).await;
    let (_, second) = write(&app, Method::PATCH, id, Some(json!({"price": 3.0}))).await;
    blocker.execute("COMMIT").await.unwrap();
    let mut sql = app.db.sql().await;
    let rows = pg_rows_within(&mut sql, &expect(id, Some(Row::of(&second))), DRAIN_BOUND).await;

    assert_eq!(first["version"], 2, "{first}");
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        read_after_clear["version"], 2,
        "the instance served the version before its acknowledged write: {read_after_clear}"
    );
    assert_eq!(second["version"], 3, "{second}");
    assert_eq!(
        rows,
        expect(id, Some(Row::of(&second))),
        "an acknowledged write was lost"
    );
}
