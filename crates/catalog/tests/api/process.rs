//! The released binary as a user runs it: configuration errors, the
//! generated token, seeding, graceful shutdown on SIGTERM / SIGINT, and
//! `catalog stats` against a running instance; and write-behind across a
//! crash (`kill -9`), a graceful stop and a missing Redis. The helpers that
//! start and stop a `catalog serve` child also serve `cluster.rs`.

use std::collections::HashMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use testkit::{eventually, free_port, redis_url, shared_redis, unique_prefix};

use crate::helpers::{
    Backend, Row, TOKEN, TestApp, TestDb, cached_keys, pg_rows, pg_rows_within, pg_server_addr,
    wait_exit, write_behind_stats,
};
use crate::proxy::Proxy;

fn catalog() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_catalog"));
    // The child must not pick up a developer's settings.
    for var in [
        "DATABASE_URL",
        "BIND_ADDR",
        "CATALOG_API_TOKEN",
        "RUST_LOG",
        "LOG_FORMAT",
        "DB_MAX_CONNECTIONS",
        "DB_ACQUIRE_TIMEOUT_SECS",
        "DB_READ_LANES",
        "REQUEST_TIMEOUT_SECS",
        "REDIS_URL",
        "CACHE_PREFIX",
        "L1_MAX_ENTRIES",
        "L1_MAX_BYTES",
        "L1_TTL_SECS",
        "L2_TTL_SECS",
        "L2_TIMEOUT_MS",
        "CACHE_WRITE_STRATEGY",
        "WRITE_BEHIND_INTERVAL_MS",
        "WRITE_BEHIND_REPLICA_WAIT_MS",
    ] {
        command.env_remove(var);
    }
    command
}

/// Waits (for at most 30 s) until the `catalog serve` child on `port`
/// answers `GET /health` with 200 (its store is reachable). Polled without
/// blocking the runtime, which may run the proxy the child reaches its
/// store through.
pub(crate) async fn wait_until_healthy(port: u16, child: &mut Child) {
    const LIMIT: Duration = Duration::from_secs(30);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/health");
    let healthy = eventually(LIMIT, async || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("catalog exited early with {status}");
        }
        let answer = client.get(&url).send().await;
        answer.is_ok_and(|response| response.status() == reqwest::StatusCode::OK)
    })
    .await;
    assert!(
        healthy,
        "catalog did not answer GET /health with 200 within {LIMIT:?}"
    );
}

/// Asserts that a command succeeded, showing its stderr if not.
fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(crate) fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_bad_setting_exits_non_zero_naming_the_variable() {
    for (var, value) in [
        ("BIND_ADDR", "not-an-address"),
        ("DB_MAX_CONNECTIONS", "0"),
        ("DB_READ_LANES", "0"),
        ("REQUEST_TIMEOUT_SECS", "soon"),
        ("LOG_FORMAT", "xml"),
        ("L1_MAX_ENTRIES", "0"),
        ("L1_TTL_SECS", "-5"),
        ("CACHE_WRITE_STRATEGY", "sometimes"),
        ("WRITE_BEHIND_REPLICA_WAIT_MS", "-1"),
    ] {
        let output = catalog().arg("serve").env(var, value).output().unwrap();

        assert!(!output.status.success(), "{var}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(var), "{var}: {stderr}");
    }
}

#[tokio::test]
async fn an_unreachable_store_exits_non_zero_with_a_clear_error() {
    let port = free_port();
    let output = catalog()
        .args(["serve", "--db-acquire-timeout", "1"])
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/none"),
        )
        .output()
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

#[tokio::test]
async fn serve_seeds_logs_the_generated_token_once_and_stops_gracefully() {
    for signal_name in ["TERM", "INT"] {
        let db = TestDb::create(Backend::Sqlite).await;
        let port = free_port();
        let mut child = catalog()
            .args(["serve", "--seed", "50"])
            .env("DATABASE_URL", db.url())
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until_healthy(port, &mut child).await;
        let page: serde_json::Value =
            reqwest::get(format!("http://127.0.0.1:{port}/products?limit=100"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();

        signal(&child, signal_name);
        let output = child.wait_with_output().unwrap();

        assert!(
            output.status.success(),
            "exit after SIG{signal_name}: {:?}",
            output.status
        );
        assert_eq!(page["items"].as_array().unwrap().len(), 50);
        let logs = String::from_utf8_lossy(&output.stdout);
        let token_lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("bearer token for writes in this run"))
            .collect();
        assert_eq!(token_lines.len(), 1, "{logs}");
        assert!(logs.contains("catalog stopped"), "{logs}");
    }
}

#[tokio::test]
async fn seed_and_migrate_commands_work_on_a_fresh_database() {
    let db = TestDb::create(Backend::Postgres).await;

    let migrate = catalog()
        .arg("migrate")
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    let seed = catalog()
        .args(["seed", "2500"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();

    assert_success(&migrate);
    assert_success(&seed);
    let store = db.store().await;
    assert_eq!(store.count().await.unwrap(), 2500);
}

#[tokio::test]
async fn warm_fills_redis_from_the_store() {
    let db = TestDb::create(Backend::Sqlite).await;
    let prefix = unique_prefix();
    let mut redis = shared_redis().await;
    let seed = catalog()
        .args(["seed", "120"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert_success(&seed);

    let warm = |args: &[&str]| {
        catalog()
            .arg("warm")
            .args(args)
            .env("DATABASE_URL", db.url())
            .env("REDIS_URL", redis_url())
            .env("CACHE_PREFIX", &prefix)
            .env("L2_TTL_SECS", "120")
            .output()
            .unwrap()
    };
    let some = warm(&["--ids", "3,5,999999"]);
    let keys_after_some = cached_keys(&mut redis, &prefix).await;
    let all = warm(&["--all"]);
    let keys_after_all = cached_keys(&mut redis, &prefix).await;
    let without_redis = catalog()
        .args(["warm", "--all"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    let no_scope = catalog()
        .arg("warm")
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", redis_url())
        .output()
        .unwrap();

    assert_success(&some);
    assert_eq!(keys_after_some.len(), 2, "{keys_after_some:?}");
    assert_success(&all);
    assert_eq!(keys_after_all.len(), 120);
    let stored: String = redis.get(format!("{prefix}product:3")).await.unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["id"], 3);
    assert!(!without_redis.status.success());
    assert!(String::from_utf8_lossy(&without_redis.stderr).contains("REDIS_URL"));
    assert!(!no_scope.status.success());
}

#[tokio::test]
async fn stats_prints_a_running_instance_figures() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let id = app.create_product_id("Counted", "tools", 2.0).await;
    for _ in 0..3 {
        assert_eq!(app.get(&format!("/products/{id}")).await.status(), 200);
    }
    let url = app.url("");

    // The child calls back into this test's runtime: wait for it off the
    // runtime's thread.
    let output = tokio::task::spawn_blocking(move || {
        catalog().args(["stats", "--url", &url]).output().unwrap()
    })
    .await
    .unwrap();
    let stats: serde_json::Value = app.get_json("/cache/stats").await;

    assert_success(&output);
    let table = String::from_utf8_lossy(&output.stdout);
    let row = |label: &str| -> String {
        let line = table
            .lines()
            .find(|line| line.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row in:\n{table}"));
        line[label.len()..].trim().to_owned()
    };
    assert_eq!(row("requests"), "3");
    assert_eq!(stats["total_requests"], 3);
    assert_eq!(row("hit rate"), "66.7 %");
    assert_eq!(row("L1 hits"), stats["levels"]["l1"]["hits"].to_string());
    assert_eq!(row("L1 hits"), "2");
    assert_eq!(
        row("L1 misses"),
        stats["levels"]["l1"]["misses"].to_string()
    );
    assert_eq!(row("L1 entries"), "1");
    assert_eq!(row("L1 bytes"), stats["levels"]["l1"]["bytes"].to_string());
    assert_eq!(row("L2 state"), "disabled");
    assert_eq!(row("write-behind pending"), "0");
    let widths: Vec<usize> = table.lines().map(str::len).collect();
    assert!(widths.iter().all(|w| *w == widths[0]), "{table}");
}

#[tokio::test]
async fn stats_against_an_unreachable_url_fails_in_one_line() {
    let port = free_port();

    let output = catalog()
        .args(["stats", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

/// `catalog serve` with `CACHE_WRITE_STRATEGY=write-behind` on
/// `database_url`, on the Redis (or cluster) at `redis_url` under `prefix`,
/// on `port`; its logs are shown only with `TEST_LOG=1`.
pub(crate) fn write_behind_server(
    database_url: &str,
    redis_url: &str,
    prefix: &str,
    port: u16,
) -> Child {
    let logs = || {
        if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        }
    };
    catalog()
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env("CACHE_PREFIX", prefix)
        .env("L2_TTL_SECS", "120")
        .env("CACHE_WRITE_STRATEGY", "write-behind")
        .env("CATALOG_API_TOKEN", TOKEN)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        // A cut store fails a flush in a second rather than five.
        .env("DB_ACQUIRE_TIMEOUT_SECS", "1")
        .stdout(logs())
        .stderr(logs())
        .spawn()
        .unwrap()
}

/// `child`'s exit and output, if it exits within `limit` (else it is
/// killed).
pub(crate) async fn exit_within(mut child: Child, limit: Duration) -> Option<Output> {
    wait_exit(&mut child, limit).await?;
    Some(child.wait_with_output().unwrap())
}

/// Creates a product on the instance at `base`; returns its JSON.
pub(crate) async fn create(client: &reqwest::Client, base: &str, name: &str) -> Value {
    let response = client
        .post(format!("{base}/products"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": name, "price": 1.0, "category": "tools"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    response.json().await.unwrap()
}

/// Sets product `id`'s price to `cents` on the instance at `base`; returns
/// the acknowledged product.
async fn patch_price(client: &reqwest::Client, base: &str, id: i64, cents: u32) -> Value {
    let response = client
        .patch(format!("{base}/products/{id}"))
        .bearer_auth(TOKEN)
        .json(&json!({"price": f64::from(cents) / 100.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK, "PATCH {id}");
    response.json().await.unwrap()
}

/// A `catalog serve` child in write-behind mode whose store (a fresh
/// PostgreSQL database, reached through a proxy) was cut after its
/// products were created.
struct CutOffInstance {
    db: TestDb,
    prefix: String,
    proxy: Proxy,
    child: Child,
    client: reqwest::Client,
    base: String,
    ids: Vec<i64>,
}

impl CutOffInstance {
    /// Starts the instance (it migrates through the proxy), creates the
    /// products, then cuts the proxy: from then on every flush fails and
    /// every acknowledged write stays queued.
    async fn start(products: usize) -> Self {
        shared_redis().await;
        let db = TestDb::create(Backend::Postgres).await;
        let prefix = unique_prefix();
        let proxy = Proxy::start(pg_server_addr().await).await;
        let port = free_port();
        let mut child = write_behind_server(&db.url_via(proxy.addr()), &redis_url(), &prefix, port);
        wait_until_healthy(port, &mut child).await;
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut ids = Vec::new();
        for i in 0..products {
            let created = create(&client, &base, &format!("Queued {i}")).await;
            ids.push(created["id"].as_i64().unwrap());
        }
        proxy.cut();
        Self {
            db,
            prefix,
            proxy,
            child,
            client,
            base,
            ids,
        }
    }

    /// `writes` PATCHes round-robin over the products; returns the rows
    /// the acknowledged writes must leave (the last per product), the
    /// instance's queue length after them, and the rows PostgreSQL holds
    /// then (still the created ones: nothing could be flushed).
    async fn patch(
        &self,
        writes: usize,
    ) -> (HashMap<i64, Option<Row>>, u64, HashMap<i64, Option<Row>>) {
        let mut expected = HashMap::new();
        for n in 0..writes {
            let id = self.ids[n % self.ids.len()];
            let cents = 200 + u32::try_from(n).unwrap();
            let answer = patch_price(&self.client, &self.base, id, cents).await;
            expected.insert(id, Some(Row::of(&answer)));
        }
        let pending = write_behind_stats(&self.client, &self.base).await["pending"]
            .as_u64()
            .unwrap();
        let mut sql = self.db.sql().await;
        let held = pg_rows(&mut sql, &self.ids).await;
        (expected, pending, held)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_write_behind_writes_survive_kill_9_and_restart() {
    let mut first = CutOffInstance::start(10).await;
    let (expected, pending, before_crash) = first.patch(50).await;

    // `Child::kill` is SIGKILL: no drain, no goodbye.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let port = free_port();
    let mut second = write_behind_server(&first.db.url(), &redis_url(), &first.prefix, port);
    wait_until_healthy(port, &mut second).await;
    let mut sql = first.db.sql().await;
    let rows = pg_rows_within(&mut sql, &expected, Duration::from_secs(10)).await;
    signal(&second, "TERM");
    let stopped = exit_within(second, Duration::from_secs(30)).await;

    assert!(pending > 0, "the writes were flushed before the crash");
    assert!(
        before_crash.values().flatten().all(|row| row.version == 1),
        "{before_crash:?}"
    );
    assert!(expected.values().flatten().all(|row| row.version == 6));
    assert_eq!(rows, expected, "acknowledged writes missing after kill -9");
    let stopped = stopped.expect("the second instance stops on SIGTERM");
    assert!(stopped.status.success(), "{:?}", stopped.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_write_behind_queue_before_exiting() {
    let instance = CutOffInstance::start(5).await;
    let (expected, pending, before_signal) = instance.patch(20).await;

    instance.proxy.restore();
    signal(&instance.child, "TERM");
    let CutOffInstance { db, child, .. } = instance;
    let stopped = exit_within(child, Duration::from_secs(30)).await;
    let mut sql = db.sql().await;
    let rows = pg_rows_within(&mut sql, &expected, Duration::ZERO).await;

    assert!(pending > 0, "the writes were flushed before the signal");
    assert!(
        before_signal.values().flatten().all(|row| row.version == 1),
        "{before_signal:?}"
    );
    let stopped = stopped.expect("catalog stops within 30 s of SIGTERM");
    assert!(stopped.status.success(), "{:?}", stopped.status);
    assert!(expected.values().flatten().all(|row| row.version == 5));
    assert_eq!(rows, expected, "the queue was not drained before exit");
}

#[tokio::test]
async fn write_behind_without_redis_is_refused_at_start() {
    let db = TestDb::create(Backend::Sqlite).await;
    let child = catalog()
        .arg("serve")
        .env("DATABASE_URL", db.url())
        .env("CACHE_WRITE_STRATEGY", "write-behind")
        .env("BIND_ADDR", format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let output = exit_within(child, Duration::from_secs(30)).await;

    let output = output.expect("catalog kept running without REDIS_URL");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
}
