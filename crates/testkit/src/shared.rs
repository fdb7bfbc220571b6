//! What every test binary shares: the Redis most tests use (each under a
//! key prefix of its own, never flushed), and the logs of the code under
//! test, shown only on request.

use std::sync::Once;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// How to start the shared Redis the tests expect by default.
pub const START_SHARED_REDIS: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 \
     --port 6379 --save \"\" --appendonly no --dir /var/lib/redis \
     --logfile /var/log/redis/ci.log";

/// The shared Redis: `REDIS_URL`, else the local default port.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A raw connection to the shared Redis, which answered `PING`, for
/// arranging and asserting (and for failing early with a clear message
/// rather than later with a confusing timeout).
///
/// # Panics
/// When Redis is not reachable or did not answer within 5 s, naming it and
/// how to start it.
pub async fn shared_redis() -> MultiplexedConnection {
    let url = redis_url();
    let connect = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => panic!(
            "Redis is not reachable at {url} ({error}). These tests need a real Redis; \
             start one with: {START_SHARED_REDIS}  (or point REDIS_URL at one)"
        ),
        Err(_) => panic!(
            "Redis at {url} did not answer within 5 s. These tests need a real Redis; \
             start one with: {START_SHARED_REDIS}  (or point REDIS_URL at one)"
        ),
    }
}

/// A key prefix, `test:<uuid>:`, that no other test (or run) uses.
pub fn unique_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// Sends the logs of the code under test through the test harness's
/// output when `TEST_LOG` is set; `filter` says which (an `EnvFilter`
/// directive such as `tiercache=debug`). The first call in a process
/// decides; later ones do nothing.
pub fn init_test_log(filter: &str) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .init();
        }
    });
}
