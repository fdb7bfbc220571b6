//! The released binary as a user runs it: configuration errors, the
//! generated token, seeding, graceful shutdown on SIGTERM / SIGINT, and
//! `catalog stats` against a running instance.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::helpers::{Backend, TestApp, TestDb, redis, redis_url, test_prefix};

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
        "REQUEST_TIMEOUT_SECS",
        "REDIS_URL",
        "CACHE_PREFIX",
        "L1_MAX_ENTRIES",
        "L1_MAX_BYTES",
        "L1_TTL_SECS",
        "L2_TTL_SECS",
        "L2_TIMEOUT_MS",
        "CACHE_WRITE_STRATEGY",
    ] {
        command.env_remove(var);
    }
    command
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until the server answers `/health`.
fn wait_until_healthy(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("catalog exited early with {status}");
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "catalog did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, name: &str) {
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
        ("REQUEST_TIMEOUT_SECS", "soon"),
        ("LOG_FORMAT", "xml"),
        ("L1_MAX_ENTRIES", "0"),
        ("L1_TTL_SECS", "-5"),
        ("CACHE_WRITE_STRATEGY", "sometimes"),
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
        wait_until_healthy(port, &mut child);
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

    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let store = db.store().await;
    assert_eq!(store.count().await.unwrap(), 2500);
}

#[tokio::test]
async fn warm_fills_redis_from_the_store() {
    let db = TestDb::create(Backend::Sqlite).await;
    let prefix = test_prefix();
    let mut redis = redis().await;
    let seed = catalog()
        .args(["seed", "120"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );

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
    let keys_after_some: Vec<String> = redis.keys(format!("{prefix}*")).await.unwrap();
    let all = warm(&["--all"]);
    let keys_after_all: Vec<String> = redis.keys(format!("{prefix}*")).await.unwrap();
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

    assert!(
        some.status.success(),
        "{}",
        String::from_utf8_lossy(&some.stderr)
    );
    assert_eq!(keys_after_some.len(), 2, "{keys_after_some:?}");
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
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
    let id = app.create_product("Counted", "tools", 2.0).await["id"]
        .as_i64()
        .unwrap();
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
    let stats: serde_json::Value = app.get("/cache/stats").await.json().await.unwrap();

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
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
