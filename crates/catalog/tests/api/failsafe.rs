//! Fail-safe: with the store cut off or slow (a [`Proxy`] between the app and
//! PostgreSQL), a product read before answers from its expired L1 copy as
//! `X-Cache: STALE`, writes and products never read answer 503, and the
//! service recovers by itself once the store is back. PostgreSQL only (the
//! proxy forwards TCP). L2 is off, so a stale answer can only come from the
//! L1 fallback.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use catalog::config::ServeConfig;
use catalog::store::APPLICATION_NAME;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use testkit::{eventually, poll_until};

use crate::helpers::{
    Backend, TestApp, TestDb, assert_problem, pg_server_addr, read_product as read, sample, scrape,
};
use crate::proxy::Proxy;

/// The shortest L1 TTL the configuration accepts.
const L1_TTL: Duration = Duration::from_secs(1);
/// Longer than [`L1_TTL`], so that a product read before is expired in L1.
const PAST_TTL: Duration = Duration::from_millis(1_300);
/// How long recovery may take: the change listener reconnects with a
/// backoff of up to 5 s after its connection was cut.
const RECOVERY: Duration = Duration::from_secs(15);

/// An app whose store is reached through a proxy, with a 1 s L1 TTL, the
/// fail-safe on (its default) and no eager refresh (no background reload
/// racing the reads under test), adjusted by `configure`.
async fn spawn_behind_proxy(configure: impl FnOnce(&mut ServeConfig)) -> (TestApp, Proxy) {
    let proxy = Proxy::start(pg_server_addr().await).await;
    let db = Arc::new(TestDb::create(Backend::Postgres).await);
    let url = db.url_via(proxy.addr());
    let app = TestApp::spawn_via(db, &url, |config| {
        config.cache.l1_ttl = L1_TTL;
        config.cache.eager_refresh = 0.0;
        configure(config);
    })
    .await;
    (app, proxy)
}

/// Asserts a 503 problem that tells nothing of the store's internals.
async fn assert_unavailable(response: Response, what: &str) {
    // The body is read (consumed) only to show it when the status is wrong.
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {}",
        response.text().await.unwrap()
    );
    let body = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    let text = body.to_string().to_lowercase();
    for internal in ["sqlx", "pool", "io error", "127.0.0.1", "postgres", "5432"] {
        assert!(
            !text.contains(internal),
            "{what}: the problem shows {internal:?}: {body}"
        );
    }
}

/// Creates a product and reads it once, so that it is in L1.
async fn read_product(app: &TestApp, name: &str) -> (i64, Value) {
    let id = app.create_product_id(name, "tools", 1.0).await;
    let (status, source, body) = read(app, id).await;
    assert_eq!((status, source.as_str()), (StatusCode::OK, "MISS"));
    (id, body)
}

#[tokio::test]
async fn a_cut_store_is_answered_stale_and_recovers() {
    let (app, proxy) = spawn_behind_proxy(|config| {
        // The store fails (within the acquire timeout) long before the soft
        // timeout: every stale answer here is for an error, not slowness.
        config.db.db_acquire_timeout = Duration::from_millis(300);
        config.cache.loader_soft_timeout = Duration::from_secs(5);
        config.cache.loader_hard_timeout = Duration::from_secs(10);
    })
    .await;
    let listener = app.changes.clone().expect("PostgreSQL has a listener");
    let (id, fresh) = read_product(&app, "Kept").await;
    let unread = app.create_product_id("Unread", "tools", 2.0).await;
    tokio::time::sleep(PAST_TTL).await;

    proxy.cut();
    let first = read(&app, id).await;
    let second = read(&app, id).await;
    let create = app
        .create(json!({"name": "New", "price": 1.0, "category": "tools"}))
        .await;
    let put = app
        .send_json(
            Method::PUT,
            &format!("/products/{id}"),
            &json!({"name": "Kept", "price": 2.0, "category": "tools"}),
        )
        .await;
    let patch = app
        .send_json(
            Method::PATCH,
            &format!("/products/{id}"),
            &json!({"price": 3.0}),
        )
        .await;
    let delete = app.delete(&format!("/products/{id}")).await;
    let never_read = app.get(&format!("/products/{unread}")).await;
    let health = app.get("/health").await;
    let health_status = health.status();
    let health: Value = health.json().await.unwrap();

    proxy.restore();
    let mut stale_seen = [&first, &second]
        .iter()
        .filter(|(_, source, _)| source == "STALE")
        .count();
    // The listener's reconnection clears the cache (it may have missed
    // changes): wait for it, then for a load followed by an L1 hit.
    let recovered = poll_until(
        RECOVERY,
        async || {
            if !listener.is_listening() || listener.reconnects() == 0 {
                return None;
            }
            let (status, source, body) = read(&app, id).await;
            match source.as_str() {
                "STALE" => stale_seen += 1,
                "MISS" if status == StatusCode::OK => {
                    let again = read(&app, id).await;
                    if again.1 == "HIT-L1" {
                        return Some((body, again.2));
                    }
                }
                _ => {}
            }
            None
        },
        Option::is_some,
    )
    .await
    .ok()
    .flatten();
    let write_after = app
        .send_json(
            Method::PATCH,
            &format!("/products/{id}"),
            &json!({"price": 4.0}),
        )
        .await;
    let metrics = scrape(&app).await;

    assert_eq!(
        (first.0, first.1.as_str(), &first.2),
        (StatusCode::OK, "STALE", &fresh),
        "the first read with the store cut"
    );
    assert_eq!(
        (second.0, second.1.as_str(), &second.2),
        (StatusCode::OK, "STALE", &fresh),
        "a second read within the throttle"
    );
    assert_unavailable(create, "POST").await;
    assert_unavailable(put, "PUT").await;
    assert_unavailable(patch, "PATCH").await;
    assert_unavailable(delete, "DELETE").await;
    assert_unavailable(never_read, "GET of a product never read").await;
    assert_eq!(health_status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["db"], "down", "{health}");
    let (miss, hit) = recovered.expect("never served MISS then HIT-L1 after the restore");
    assert_eq!(miss, fresh);
    assert_eq!(hit, fresh);
    assert_eq!(write_after.status(), StatusCode::OK);
    let loader_error = sample(
        &metrics,
        r#"cache_stale_answers_total{reason="loader_error"}"#,
    );
    let throttled = sample(&metrics, r#"cache_stale_answers_total{reason="throttled"}"#);
    let soft = sample(
        &metrics,
        r#"cache_stale_answers_total{reason="soft_timeout"}"#,
    );
    assert!(loader_error >= 1, "loader_error {loader_error}");
    assert!(throttled >= 1, "throttled {throttled}");
    assert_eq!(soft, 0, "no read outlived the soft timeout");
    assert_eq!(
        loader_error + throttled,
        u64::try_from(stale_seen).unwrap(),
        "the stale answers counted are the ones seen"
    );
}

/// A connection of our own to the app's database, not through the proxy,
/// named like the service's, so that the change trigger stays silent: the
/// cache must learn of the change from its own (slow) reload, not from an
/// invalidation (which would rightly drop the stale fallback).
async fn direct_sql(db: &TestDb) -> PgConnection {
    PgConnectOptions::from_str(&db.url())
        .unwrap()
        .application_name(APPLICATION_NAME)
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_slow_store_is_answered_stale_then_refreshed_in_the_background() {
    let (app, proxy) = spawn_behind_proxy(|config| {
        config.cache.loader_soft_timeout = Duration::from_millis(100);
        config.cache.loader_hard_timeout = Duration::from_secs(30);
    })
    .await;
    let (id, old) = read_product(&app, "Slow").await;
    tokio::time::sleep(PAST_TTL).await;
    let mut conn = direct_sql(&app.db).await;
    sqlx::query("UPDATE products SET price = 42.50, version = version + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();

    proxy.delay(Duration::from_millis(600));
    let slow = read(&app, id).await;
    // Until the background load lands, reads are stale (old version);
    // after, they are current: never the old version under another name.
    let mut answers = Vec::new();
    // The last answer says whether L1 was filled.
    let _ = eventually(Duration::from_secs(10), async || {
        let answer = read(&app, id).await;
        let done = answer.1 == "HIT-L1";
        answers.push(answer);
        done
    })
    .await;
    proxy.delay(Duration::ZERO);
    let metrics = scrape(&app).await;

    assert_eq!(
        (slow.0, slow.1.as_str(), &slow.2),
        (StatusCode::OK, "STALE", &old),
        "a read slower than the soft timeout"
    );
    for (status, source, body) in &answers {
        assert_eq!(*status, StatusCode::OK);
        if source == "STALE" {
            assert_eq!(body, &old);
        } else {
            assert_eq!(
                (&body["version"], &body["price"]),
                (&json!(2), &json!(42.5)),
                "{source}"
            );
        }
    }
    let last = answers.last().unwrap();
    assert_eq!(last.1, "HIT-L1", "the background load never filled L1");
    assert!(sample(&metrics, r#"cache_loader_timeouts_total{kind="soft"}"#) >= 1);
    assert!(
        sample(
            &metrics,
            r#"cache_stale_answers_total{reason="soft_timeout"}"#
        ) >= 1
    );
}

#[tokio::test]
async fn a_load_past_the_hard_timeout_without_fallback_is_a_503() {
    let (app, proxy) = spawn_behind_proxy(|config| {
        config.cache.loader_soft_timeout = Duration::from_millis(100);
        config.cache.loader_hard_timeout = Duration::from_millis(300);
    })
    .await;
    let id = app.create_product_id("Never read", "tools", 1.0).await;

    proxy.delay(Duration::from_secs(1));
    let response = app.get(&format!("/products/{id}")).await;
    assert_unavailable(response, "a read past the hard timeout").await;
    proxy.delay(Duration::ZERO);
    let metrics = scrape(&app).await;

    assert!(sample(&metrics, r#"cache_loader_timeouts_total{kind="hard"}"#) >= 1);
}

#[tokio::test]
async fn a_hung_store_read_does_not_hold_up_later_reads() {
    let (app, proxy) = spawn_behind_proxy(|config| {
        config.db.db_read_lanes = 1;
        config.cache.loader_soft_timeout = Duration::from_millis(100);
        config.cache.loader_hard_timeout = Duration::from_millis(300);
    })
    .await;
    let hung = app.create_product_id("Hung", "tools", 1.0).await;
    let later = app.create_product_id("Later", "tools", 1.0).await;

    // The answer to the first read is held back for a minute: its query
    // hangs on its connection, as on a half-dead link.
    proxy.delay(Duration::from_secs(60));
    let response = app.get(&format!("/products/{hung}")).await;
    assert_unavailable(response, "a read of a hung store").await;
    proxy.delay(Duration::ZERO);
    // Past the abandoned batch's deadline (the hard timeout, from its start).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, source, body) = read(&app, later).await;

    // The only lane was not left waiting for the hung query.
    assert_eq!(
        (status, source.as_str()),
        (StatusCode::OK, "MISS"),
        "{body}"
    );
    assert_eq!(body["name"], "Later");
}

#[tokio::test]
async fn a_store_known_down_is_answered_at_once_and_recovers() {
    // A hung store is slow to notice: without the store's circuit breaker,
    // every read of a product not in L1 would wait the hard timeout, every
    // expired one the soft timeout, and /health its ping timeout (2 s).
    let (app, proxy) = spawn_behind_proxy(|config| {
        config.db.db_acquire_timeout = Duration::from_secs(3);
        config.cache.loader_soft_timeout = Duration::from_secs(2);
        config.cache.loader_hard_timeout = Duration::from_secs(3);
    })
    .await;
    let (cached, fresh) = read_product(&app, "Cached").await;
    let mut uncached = Vec::new();
    for name in ["Cold 1", "Cold 2", "Cold 3", "Cold 4"] {
        uncached.push(app.create_product_id(name, "tools", 1.0).await);
    }
    tokio::time::sleep(PAST_TTL).await;

    proxy.hang();
    // The first failures open the breaker (each takes the hard timeout).
    let tripping = futures_util::future::join_all(uncached[..3].iter().map(|id| read(&app, *id)));
    for (status, _, _) in tripping.await {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(sample(&scrape(&app).await, "db_circuit_open"), 1);

    let started = Instant::now();
    let refused = app.get(&format!("/products/{}", uncached[3])).await;
    let refused_in = started.elapsed();
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_unavailable(refused, "an uncached read while the store is down").await;

    let started = Instant::now();
    let (status, source, body) = read(&app, cached).await;
    let stale_in = started.elapsed();
    assert_eq!((status, source.as_str()), (StatusCode::OK, "STALE"));
    assert_eq!(body, fresh);

    let started = Instant::now();
    let health = app.get("/health").await;
    let health_in = started.elapsed();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["db"], "down");

    for (what, took) in [
        ("503", refused_in),
        ("STALE", stale_in),
        ("/health", health_in),
    ] {
        assert!(took < Duration::from_millis(500), "{what} took {took:?}");
    }
    // Across several cooldowns no request is made the breaker's probe
    // (which would wait for the hung store).
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(2_500) {
        let started = Instant::now();
        let (status, _, _) = read(&app, uncached[3]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "a read took {took:?}");
    }

    proxy.restore();
    let back = poll_until(
        RECOVERY,
        async || read(&app, uncached[3]).await,
        |(status, _, _)| *status == StatusCode::OK,
    )
    .await;
    let (_, source, _) = back.unwrap_or_else(|(status, _, _)| {
        panic!("the store never came back: {status}");
    });
    assert_eq!(source, "MISS");
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
    assert_eq!(sample(&scrape(&app).await, "db_circuit_open"), 0);
}
