//! Invalidation from PostgreSQL itself: changes made with plain SQL (as
//! `psql` would) reach every instance's cache through the trigger and the
//! change listener, API writes are not announced twice, and a killed
//! listener connection reconnects and clears what it missed. PostgreSQL
//! only: SQLite has no change notifications.

use std::time::{Duration, Instant};

use catalog::store::{CHANNEL, LISTENER_APPLICATION_NAME};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::postgres::PgListener;
use sqlx::{Connection, Executor, PgConnection};
use testkit::{eventually, shared_redis, unique_prefix};

use crate::helpers::{
    Backend, TestApp, TestDb, category_page, product_eventually, read_product, spawn_pair,
    use_redis,
};

/// SPEC §4: a change made outside the API is seen within a second.
const WITHIN: Duration = Duration::from_secs(1);

/// A connection of our own to the app's database, like `psql`'s (its
/// `application_name` is not the service's, so the trigger announces it).
async fn sql(app: &TestApp) -> PgConnection {
    PgConnection::connect(&app.db.url()).await.unwrap()
}

/// Whether A, then B, answer product `id` as `done` accepts, both within
/// [`WITHIN`] from now (the change was just made).
async fn on_both_within_a_second(
    a: &TestApp,
    b: &TestApp,
    id: i64,
    done: impl Fn(StatusCode, &str, &Value) -> bool + Copy,
) -> (bool, bool) {
    let changed = Instant::now();
    let on_a = product_eventually(a, id, WITHIN, done).await;
    let on_b = product_eventually(b, id, WITHIN.saturating_sub(changed.elapsed()), done).await;
    (on_a, on_b)
}

/// Creates a product through `app` and reads it twice on each of `apps`, so
/// that every one holds it in L1.
async fn cached_product(app: &TestApp, apps: &[&TestApp]) -> i64 {
    let id = app.create_product_id("Listened", "tools", 1.0).await;
    for app in apps {
        // A read that races the bus message of the create is rightly kept
        // out of L1; read until the product is held.
        let held = eventually(WITHIN, async || {
            let (status, source, _) = read_product(app, id).await;
            assert_eq!(status, StatusCode::OK);
            source == "HIT-L1"
        })
        .await;
        assert!(held, "never cached in L1");
    }
    id
}

#[tokio::test]
async fn a_category_move_in_sql_refreshes_both_pages_and_bumps_the_version() {
    let (a, b, _) = spawn_pair(Backend::Postgres).await;
    let id = cached_product(&a, &[&a, &b]).await;
    for app in [&a, &b] {
        // Until both pages are cached (the create's tag message may still
        // be on its way and move the generation once more).
        let cached = eventually(WITHIN, async || {
            (
                category_page(app, "tools").await,
                category_page(app, "garden").await,
            ) == (
                (vec![id], "HIT-L1".to_owned()),
                (vec![], "HIT-L1".to_owned()),
            )
        })
        .await;
        assert!(cached, "pages never cached");
    }
    let mut conn = sql(&a).await;

    // No `version = version + 1`: the database bumps it itself.
    sqlx::query("UPDATE products SET category = 'garden' WHERE id = $1")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    let changed = Instant::now();
    let mut moved = Vec::new();
    for app in [&a, &b] {
        let pages_moved = eventually(WITHIN.saturating_sub(changed.elapsed()), async || {
            (
                category_page(app, "tools").await.0,
                category_page(app, "garden").await.0,
            ) == (vec![], vec![id])
        })
        .await;
        moved.push(pages_moved);
    }
    let (_, _, product) = read_product(&b, id).await;

    assert_eq!(moved, vec![true, true], "a page kept the old category");
    assert_eq!(product["version"], 2);
    assert_eq!(product["category"], "garden");
}

#[tokio::test]
async fn an_update_in_sql_is_served_fresh_by_every_instance_within_a_second() {
    let (a, b, _) = spawn_pair(Backend::Postgres).await;
    let id = cached_product(&a, &[&a, &b]).await;
    let mut conn = sql(&a).await;

    sqlx::query("UPDATE products SET price = 42.50, version = version + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    let fresh = |status: StatusCode, _: &str, body: &Value| {
        status == StatusCode::OK && body["price"] == json!(42.5) && body["version"] == 2
    };
    let (a_fresh, b_fresh) = on_both_within_a_second(&a, &b, id, fresh).await;

    assert!(a_fresh, "A kept serving the old version");
    assert!(b_fresh, "B kept serving the old version");
}

#[tokio::test]
async fn a_delete_in_sql_is_a_404_on_every_instance_within_a_second() {
    let (a, b, _) = spawn_pair(Backend::Postgres).await;
    let id = cached_product(&a, &[&a, &b]).await;
    let mut conn = sql(&a).await;

    sqlx::query("DELETE FROM products WHERE id = $1")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    let gone = |status: StatusCode, _: &str, _: &Value| status == StatusCode::NOT_FOUND;
    let (a_gone, b_gone) = on_both_within_a_second(&a, &b, id, gone).await;

    assert!(a_gone, "A kept serving a deleted product");
    assert!(b_gone, "B kept serving a deleted product");
}

#[tokio::test]
async fn an_insert_in_sql_replaces_a_cached_absence() {
    let (a, b, _) = spawn_pair(Backend::Postgres).await;
    let id = cached_product(&a, &[]).await;
    let next = id + 1;
    for app in [&a, &b] {
        assert_eq!(read_product(app, next).await.0, StatusCode::NOT_FOUND);
    }
    let mut conn = sql(&a).await;

    sqlx::query(
        "INSERT INTO products (name, price, category, created_at) \
         VALUES ('Inserted', 3.00, 'tools', now())",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let found = |status: StatusCode, _: &str, body: &Value| {
        status == StatusCode::OK && body["name"] == json!("Inserted")
    };
    let (a_found, b_found) = on_both_within_a_second(&a, &b, next, found).await;

    assert!(a_found, "A kept answering 404 for an inserted product");
    assert!(b_found, "B kept answering 404 for an inserted product");
}

#[tokio::test]
async fn a_truncate_in_sql_empties_every_instance() {
    let (a, b, _) = spawn_pair(Backend::Postgres).await;
    let id = cached_product(&a, &[&a, &b]).await;
    let mut conn = sql(&a).await;

    conn.execute("TRUNCATE products").await.unwrap();
    let gone = |status: StatusCode, _: &str, _: &Value| status == StatusCode::NOT_FOUND;
    let (a_gone, b_gone) = on_both_within_a_second(&a, &b, id, gone).await;

    assert!(a_gone, "A kept serving a truncated product");
    assert!(b_gone, "B kept serving a truncated product");
}

#[tokio::test]
async fn api_writes_are_not_announced_again_by_the_database() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let stats = app
        .changes
        .clone()
        .expect("PostgreSQL has a change listener");
    let mut watcher = PgListener::connect(&app.db.url()).await.unwrap();
    watcher.listen(CHANNEL).await.unwrap();

    let kept = app.create_product_id("Kept", "tools", 1.0).await;
    let removed = app.create_product_id("Removed", "tools", 1.0).await;
    let put = app
        .send_json(
            Method::PUT,
            &format!("/products/{kept}"),
            &json!({"name": "Kept", "price": 2.0, "category": "tools"}),
        )
        .await;
    let patch = app
        .send_json(
            Method::PATCH,
            &format!("/products/{kept}"),
            &json!({"price": 3.0}),
        )
        .await;
    let delete = app.delete(&format!("/products/{removed}")).await;
    // A change from outside, after the API writes: notifications arrive in
    // commit order, so it is the first one only if they sent none.
    let mut conn = sql(&app).await;
    sqlx::query("UPDATE products SET version = version + 1 WHERE id = $1")
        .bind(kept)
        .execute(&mut conn)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), watcher.recv())
        .await
        .expect("the outside change is notified")
        .unwrap();
    let first: Value = serde_json::from_str(first.payload()).unwrap();
    let listener_saw_one =
        eventually(Duration::from_secs(5), async || stats.notifications() >= 1).await;

    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(patch.status(), StatusCode::OK);
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        first,
        json!({"op": "UPDATE", "id": kept, "version": 4, "category": "tools", "old_category": "tools"})
    );
    assert!(
        listener_saw_one,
        "the app's listener missed the outside change"
    );
    assert_eq!(stats.notifications(), 1);
}

#[tokio::test]
async fn a_killed_listener_reconnects_and_clears_what_it_missed() {
    shared_redis().await;
    let prefix = unique_prefix();
    let app = TestApp::spawn_with(Backend::Postgres, |c| use_redis(c, &prefix)).await;
    let stats = app
        .changes
        .clone()
        .expect("PostgreSQL has a change listener");
    let id = cached_product(&app, &[&app]).await;
    let TestDb::Postgres { admin_url, name } = &*app.db else {
        unreachable!("a PostgreSQL app runs on a PostgreSQL database")
    };
    let mut admin = PgConnection::connect(admin_url).await.unwrap();
    let mut conn = sql(&app).await;

    // Keep the listener out while the row changes, so that the change is
    // certainly not notified to it.
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false"
        )))
        .await
        .unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = $2",
    )
    .bind(name)
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let noticed = eventually(Duration::from_secs(5), async || !stats.is_listening()).await;
    sqlx::query("UPDATE products SET price = 7.00, version = version + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    let (_, while_down, stale) = read_product(&app, id).await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS true"
        )))
        .await
        .unwrap();
    let recovered = product_eventually(&app, id, Duration::from_secs(10), |status, _, body| {
        status == StatusCode::OK && body["price"] == json!(7.0) && body["version"] == 2
    })
    .await;

    assert_eq!(terminated, [true], "one listener connection was killed");
    assert!(noticed, "the listener did not notice its connection died");
    assert_eq!(
        (while_down.as_str(), &stale["version"]),
        ("HIT-L1", &json!(1)),
        "the change was missed while the listener was down"
    );
    assert!(recovered, "the missed change was never served");
    assert!(stats.is_listening());
    assert_eq!(stats.reconnects(), 1);
}
