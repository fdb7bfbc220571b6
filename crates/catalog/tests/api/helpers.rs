//! Test support: a private database per test (a PostgreSQL database or a
//! SQLite file), the app on an ephemeral port, and a typed HTTP client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use catalog::app::Application;
use catalog::config::ServeConfig;
use catalog::store::ListenerStats;
use catalog::store::{self, PoolSettings, Store};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};
use testkit::{eventually, poll_until, redis_url, shared_redis, unique_prefix};
use tokio_util::sync::CancellationToken;

/// The bearer token every test app accepts.
pub(crate) const TOKEN: &str = "test-token-0123456789";

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PG_START: &str = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// What `TEST_LOG=1` shows of the app under test.
const LOG_FILTER: &str = "info,catalog=debug";

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Postgres,
    Sqlite,
}

/// The PostgreSQL server tests use: `DATABASE_URL` when it names one,
/// else the standard local port.
fn pg_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| url.starts_with("postgres://") || url.starts_with("postgresql://"))
        .unwrap_or_else(|| DEFAULT_PG_URL.to_owned())
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|i| start + i))
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The PostgreSQL server's address, for tests that put a proxy in front of
/// it.
pub(crate) async fn pg_server_addr() -> std::net::SocketAddr {
    let admin_url = pg_admin_url();
    let options = PgConnectOptions::from_str(&admin_url).expect("the PostgreSQL URL parses");
    tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("the host of {admin_url} does not resolve"))
}

/// `url` with its `host:port` replaced by `addr` (user, database and
/// options kept).
fn with_address(url: &str, addr: std::net::SocketAddr) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host_start = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    format!("{}{addr}{}", &url[..host_start], &url[end..])
}

/// A database that exists for one test and is removed when dropped.
#[derive(Debug)]
pub(crate) enum TestDb {
    Postgres { admin_url: String, name: String },
    Sqlite { path: PathBuf },
}

impl TestDb {
    pub(crate) async fn create(backend: Backend) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Postgres => {
                let admin_url = pg_admin_url();
                let mut conn = PgConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|err| {
                        panic!(
                            "PostgreSQL is not reachable at {admin_url} ({err}); start it with: \
                         {PG_START} (or set DATABASE_URL to a PostgreSQL server)"
                        )
                    });
                let name = format!("test_{id}");
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .expect("the test role may create databases");
                Self::Postgres { admin_url, name }
            }
            Backend::Sqlite => Self::Sqlite {
                path: std::env::temp_dir().join(format!("catalog_test_{id}.db")),
            },
        }
    }

    pub(crate) fn url(&self) -> String {
        match self {
            Self::Postgres { admin_url, name } => with_database(admin_url, name),
            Self::Sqlite { path } => format!("sqlite://{}?mode=rwc", path.display()),
        }
    }

    /// The URL of this PostgreSQL database reached through `addr` (a proxy
    /// in front of the server).
    pub(crate) fn url_via(&self, addr: std::net::SocketAddr) -> String {
        assert!(
            matches!(self, Self::Postgres { .. }),
            "only a PostgreSQL database is reached over TCP"
        );
        with_address(&self.url(), addr)
    }

    /// A migrated store on this database.
    pub(crate) async fn store(&self) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = Arc::from(
            store::connect(&self.url(), &PoolSettings::default())
                .await
                .expect("the test database accepts connections"),
        );
        store.migrate().await.expect("migrations apply");
        store
    }

    /// A plain SQL connection to this PostgreSQL database, to check what
    /// the store holds without going through the service (or to sabotage
    /// it).
    pub(crate) async fn sql(&self) -> PgConnection {
        assert!(
            matches!(self, Self::Postgres { .. }),
            "only a PostgreSQL database is checked with SQL"
        );
        PgConnection::connect(&self.url())
            .await
            .expect("the test database accepts connections")
    }

    /// Removes the database now, even while the app still holds connections
    /// (to simulate a store that went away).
    pub(crate) async fn destroy(&self) {
        match self {
            Self::Postgres { admin_url, name } => drop_pg_database(admin_url, name).await,
            Self::Sqlite { path } => remove_sqlite_files(path),
        }
    }
}

async fn drop_pg_database(admin_url: &str, name: &str) {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .expect("PostgreSQL is reachable");
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .await
    .expect("the test database can be dropped");
}

fn remove_sqlite_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match self {
            Self::Sqlite { path } => remove_sqlite_files(path),
            Self::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop may run inside a runtime that is shutting down: use a
                // thread with a runtime of its own.
                let cleanup = std::thread::spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a cleanup runtime starts")
                        .block_on(drop_pg_database(&admin_url, &name));
                });
                let _ = cleanup.join();
            }
        }
    }
}

/// The cache entries stored under `prefix`: every key but the bus's change
/// logs (`…:bus:log`), which each cache with a bus keeps.
pub(crate) async fn cached_keys(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Vec<String> {
    let keys: Vec<String> = redis::AsyncCommands::keys(redis, format!("{prefix}*"))
        .await
        .unwrap();
    keys.into_iter()
        .filter(|key| !key.ends_with(":bus:log"))
        .collect()
}

/// The `X-Cache` header of a product read; empty when absent.
pub(crate) fn x_cache(response: &Response) -> String {
    response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// `GET /products/{id}` on `app`: status, `X-Cache` (empty when absent) and
/// body (`null` when not JSON).
pub(crate) async fn read_product(app: &TestApp, id: i64) -> (StatusCode, String, Value) {
    let response = app.get(&format!("/products/{id}")).await;
    let status = response.status();
    let source = x_cache(&response);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, source, body)
}

/// Whether `app` answers product `id` (as [`read_product`]: status,
/// `X-Cache`, body) as `done` accepts within `limit`; read at least once.
pub(crate) async fn product_eventually(
    app: &TestApp,
    id: i64,
    limit: Duration,
    done: impl Fn(StatusCode, &str, &Value) -> bool,
) -> bool {
    eventually(limit, async || {
        let (status, source, body) = read_product(app, id).await;
        done(status, &source, &body)
    })
    .await
}

/// Points `config` at the test Redis under `prefix`, with a short L2 TTL so
/// that test keys do not linger.
pub(crate) fn use_redis(config: &mut ServeConfig, prefix: &str) {
    config.cache.redis_url = Some(SecretString::from(redis_url()));
    config.cache.cache_prefix = prefix.to_owned();
    config.cache.l2_ttl = std::time::Duration::from_secs(120);
}

/// Two instances on one new database of `backend`, sharing the test Redis
/// under a fresh key prefix (so L2 and the bus); the prefix comes third.
pub(crate) async fn spawn_pair(backend: Backend) -> (TestApp, TestApp, String) {
    shared_redis().await;
    let prefix = unique_prefix();
    let a = TestApp::spawn_with(backend, |c| use_redis(c, &prefix)).await;
    let b = a.spawn_peer(|c| use_redis(c, &prefix)).await;
    (a, b, prefix)
}

/// A running app on its own database.
#[derive(Debug)]
pub(crate) struct TestApp {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) client: reqwest::Client,
    pub(crate) db: Arc<TestDb>,
    /// The PostgreSQL change listener's counters (`None` on SQLite).
    pub(crate) changes: Option<ListenerStats>,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub(crate) async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Spawns with a configuration adjusted by `configure`.
    pub(crate) async fn spawn_with(
        backend: Backend,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let db = Arc::new(TestDb::create(backend).await);
        Self::spawn_on(db, configure).await
    }

    /// Another instance on the same database, configured by `configure`
    /// (e.g. the same Redis prefix, to share L2 and the bus).
    pub(crate) async fn spawn_peer(&self, configure: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::spawn_on(Arc::clone(&self.db), configure).await
    }

    async fn spawn_on(db: Arc<TestDb>, configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let url = db.url();
        Self::spawn_via(db, &url, configure).await
    }

    /// Spawns on `db`, reaching it at `url` (e.g. [`TestDb::url_via`] a
    /// proxy) rather than directly.
    pub(crate) async fn spawn_via(
        db: Arc<TestDb>,
        url: &str,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        testkit::init_test_log(LOG_FILTER);
        let mut config = ServeConfig::new(url);
        config.api_token = Some(SecretString::from(TOKEN));
        configure(&mut config);
        let app = Application::build(config, None)
            .await
            .expect("the app builds");
        let addr = app.local_addr();
        let changes = app.change_listener_stats();
        let stop = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
        Self {
            addr,
            client: reqwest::Client::new(),
            db,
            changes,
            stop,
            server: Some(server),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request carrying the bearer token.
    pub(crate) fn authed(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(TOKEN)
    }

    pub(crate) async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("GET is sent")
    }

    pub(crate) async fn create(&self, body: Value) -> Response {
        self.authed(Method::POST, "/products")
            .json(&body)
            .send()
            .await
            .expect("POST is sent")
    }

    /// Creates a valid product and returns its JSON.
    pub(crate) async fn create_product(&self, name: &str, category: &str, price: f64) -> Value {
        let response = self
            .create(serde_json::json!({
                "name": name, "description": format!("{name} for tests"),
                "price": price, "category": category,
            }))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.expect("a product body")
    }

    /// Creates a valid product and returns its id.
    pub(crate) async fn create_product_id(&self, name: &str, category: &str, price: f64) -> i64 {
        self.create_product(name, category, price).await["id"]
            .as_i64()
            .expect("a product id")
    }

    /// `GET` of `path`, whose answer must be JSON.
    pub(crate) async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("a JSON body")
    }

    /// An authenticated `method` of `path` with `body` as JSON.
    pub(crate) async fn send_json(&self, method: Method, path: &str, body: &Value) -> Response {
        self.authed(method, path)
            .json(body)
            .send()
            .await
            .expect("the request is sent")
    }

    /// An authenticated `DELETE` of `path`.
    pub(crate) async fn delete(&self, path: &str) -> Response {
        self.authed(Method::DELETE, path)
            .send()
            .await
            .expect("DELETE is sent")
    }

    /// Stops the server gracefully and waits for it.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task does not panic")
                .expect("the server stops cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The fields of a product row a write changes, as PostgreSQL holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) cents: i64,
    pub(crate) version: i64,
}

impl Row {
    /// The row an API answer (a product's JSON) says the store must hold.
    pub(crate) fn of(product: &Value) -> Self {
        Self {
            name: product["name"].as_str().expect("a product name").to_owned(),
            cents: (product["price"].as_f64().expect("a numeric price") * 100.0).round() as i64,
            version: product["version"].as_i64().expect("a product version"),
        }
    }
}

/// The rows of `ids` in PostgreSQL (`None`: no such row), read with SQL.
pub(crate) async fn pg_rows(conn: &mut PgConnection, ids: &[i64]) -> HashMap<i64, Option<Row>> {
    let found: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT id, name, (price * 100)::bigint, version FROM products WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .expect("the products table can be read");
    let mut rows: HashMap<i64, Option<Row>> = ids.iter().map(|id| (*id, None)).collect();
    for (id, name, cents, version) in found {
        rows.insert(
            id,
            Some(Row {
                name,
                cents,
                version,
            }),
        );
    }
    rows
}

/// Reads the rows of `expected`'s ids until they are as expected or
/// `within` has passed (read at least once); returns the last reading, for
/// the caller to compare with `expected`.
pub(crate) async fn pg_rows_within(
    conn: &mut PgConnection,
    expected: &HashMap<i64, Option<Row>>,
    within: Duration,
) -> HashMap<i64, Option<Row>> {
    let ids: Vec<i64> = expected.keys().copied().collect();
    poll_until(
        within,
        async || pg_rows(conn, &ids).await,
        |rows| rows == expected,
    )
    .await
    .unwrap_or_else(|last| last)
}

/// The `write_behind` part of `/cache/stats` of the instance at `base`
/// (`http://host:port`).
pub(crate) async fn write_behind_stats(client: &reqwest::Client, base: &str) -> Value {
    let stats: Value = client
        .get(format!("{base}/cache/stats"))
        .send()
        .await
        .expect("GET /cache/stats is sent")
        .json()
        .await
        .expect("the stats are JSON");
    stats["write_behind"].clone()
}

/// Asserts a problem+json response with `status`, and returns its body.
pub(crate) async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("a problem body is JSON");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string(), "{body}");
    assert!(body["type"].is_string(), "{body}");
    assert!(body["detail"].is_string(), "{body}");
    body
}

/// The samples of `app`'s `/metrics` (`name{labels}` → value).
pub(crate) async fn scrape(app: &TestApp) -> HashMap<String, u64> {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    response
        .text()
        .await
        .unwrap()
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap() as u64)
        })
        .collect()
}

/// One series of a [`scrape`], which must be there.
pub(crate) fn sample(samples: &HashMap<String, u64>, series: &str) -> u64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {samples:?}"))
}

/// One series of `app`'s `/metrics` (`name` or `name{labels}`), which must
/// be there.
pub(crate) async fn metric(app: &TestApp, series: &str) -> u64 {
    sample(&scrape(app).await, series)
}

/// `child`'s exit status if it exits within `limit`; else it is killed
/// (and waited for) and the answer is `None`. Polled without blocking the
/// runtime, which may be serving what the child talks to (the app under
/// test, a proxy in front of its store).
pub(crate) async fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let exited = poll_until(
        limit,
        async || child.try_wait().expect("the child can be waited for"),
        Option::is_some,
    )
    .await
    .ok()
    .flatten();
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    exited
}

/// Runs each listed `async fn(Backend)` test against PostgreSQL and SQLite.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
    };
}
pub(crate) use both_stores;

/// The ids on the first page of `category` on `app`, and its `X-Cache`.
pub(crate) async fn category_page(app: &TestApp, category: &str) -> (Vec<i64>, String) {
    let response = app.get(&format!("/products?category={category}")).await;
    let source = response.headers()["x-cache"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let ids = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    (ids, source)
}

#[cfg(test)]
mod tests {
    use super::{with_address, with_database};

    #[test]
    fn database_name_is_replaced_and_options_kept() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t1"), "postgres://u@h/t1");
    }

    #[test]
    fn address_is_replaced_and_the_rest_kept() {
        let addr = "127.0.0.1:4321".parse().unwrap();
        assert_eq!(
            with_address("postgres://u@h:5432/t1?sslmode=disable", addr),
            "postgres://u@127.0.0.1:4321/t1?sslmode=disable"
        );
        assert_eq!(
            with_address("postgres://u:p@ss@h/t1", addr),
            "postgres://u:p@ss@127.0.0.1:4321/t1"
        );
        assert_eq!(
            with_address("postgres://h", addr),
            "postgres://127.0.0.1:4321"
        );
    }
}
