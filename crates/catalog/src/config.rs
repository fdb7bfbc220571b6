//! Configuration: every setting is a `catalog` flag that can also come from
//! the environment (or a `.env` file). Values are parsed into typed fields at
//! start, so a bad value is one clear line naming the variable, and nothing
//! reads the environment later.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

use crate::http::ConnectionLimits;
use crate::store::PoolSettings;

/// The embedded default store: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://catalog.db?mode=rwc";
/// Default of `BIND_ADDR` (and so of the URL `catalog stats` asks).
pub const DEFAULT_BIND_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8000));
/// Default of `REQUEST_TIMEOUT_SECS`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `CACHE_WRITE_STRATEGY`.
pub const DEFAULT_WRITE_STRATEGY: WriteStrategy = WriteStrategy::Invalidate;
/// Default of `FAIL_SAFE_SECS`: an hour of stale answers while the store is
/// down (tiercache's own default is off).
pub const DEFAULT_FAIL_SAFE: Duration = Duration::from_secs(3_600);
/// Default of `LOADER_SOFT_TIMEOUT_MS`.
pub const DEFAULT_LOADER_SOFT_TIMEOUT: Duration = Duration::from_millis(250);
/// Default of `LOADER_HARD_TIMEOUT_MS`.
pub const DEFAULT_LOADER_HARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `WRITE_BEHIND_INTERVAL_MS`.
pub const DEFAULT_WRITE_BEHIND_INTERVAL: Duration = Duration::from_millis(100);
/// Default of `EAGER_REFRESH`.
pub const DEFAULT_EAGER_REFRESH: f64 = 0.8;
/// Default of `CACHE_CLIENT_TRACKING`.
pub const DEFAULT_CLIENT_TRACKING: bool = true;
/// Default of `HTTP_HEADER_TIMEOUT_SECS`.
pub const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `HTTP_IDLE_TIMEOUT_SECS`.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `HTTP_MAX_CONNECTIONS`.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: u32 = 10_000;

fn secret(value: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(value))
}

fn seconds(value: &str) -> Result<Duration, String> {
    positive(value, "seconds").map(Duration::from_secs)
}

/// A default duration as the whole seconds its flag takes (and `--help`
/// shows), so that the flag's default and the constant cannot differ.
fn in_seconds(default: Duration) -> String {
    default.as_secs().to_string()
}

/// A default duration as the whole milliseconds its flag takes.
fn in_millis(default: Duration) -> String {
    default.as_millis().to_string()
}

/// Where the products live.
#[derive(Debug, Clone, Args)]
pub struct DbConfig {
    /// Store URL: `postgres://…` for PostgreSQL, `sqlite://FILE?mode=rwc`
    /// for the embedded store.
    #[arg(
        long,
        env = "DATABASE_URL", value_name = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        value_parser = secret,
        hide_env_values = true
    )]
    pub database_url: SecretString,

    /// Most open database connections.
    #[arg(long, env = "DB_MAX_CONNECTIONS", value_name = "DB_MAX_CONNECTIONS", default_value_t = PoolSettings::DEFAULT.max_connections,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// Seconds a query waits for a connection before the store counts as down.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_SECS", value_name = "DB_ACQUIRE_TIMEOUT_SECS",
          default_value = in_seconds(PoolSettings::DEFAULT.acquire_timeout), value_parser = seconds)]
    pub db_acquire_timeout: Duration,

    /// Batch queries that single-product reads may run at once; reads
    /// arriving while these are busy wait and go out together in the next
    /// one (see `store::BatchedReads`).
    #[arg(long, env = "DB_READ_LANES", value_name = "DB_READ_LANES", default_value_t = DEFAULT_READ_LANES,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_read_lanes: u32,
}

/// Two lanes: batches large enough to spare the database most per-query
/// work under load (measured in `bench/load.sh`), and one slow query never
/// holds up every read.
pub const DEFAULT_READ_LANES: u32 = 2;

impl DbConfig {
    /// A configuration for `url` with default pool settings.
    pub fn new(url: &str) -> Self {
        Self {
            database_url: SecretString::from(url),
            db_max_connections: PoolSettings::DEFAULT.max_connections,
            db_acquire_timeout: PoolSettings::DEFAULT.acquire_timeout,
            db_read_lanes: DEFAULT_READ_LANES,
        }
    }

    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_acquire_timeout,
        }
    }
}

fn milliseconds(value: &str) -> Result<Duration, String> {
    positive(value, "milliseconds").map(Duration::from_millis)
}

/// A whole number of `unit`, at least 1.
fn positive(value: &str, unit: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(0) => Err(format!("must be at least 1 ({unit})")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{value:?} is not a whole number of {unit}")),
    }
}

/// How writes reach the cache (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WriteStrategy {
    /// Write the store, then drop the key from L2 and L1.
    Invalidate,
    /// Write the store, then put the new version in L2 and L1 (the other
    /// instances drop their old copy).
    WriteThrough,
    /// Put updates and deletes in the cache and a durable Redis queue at
    /// once; a background flusher writes them to the store in batches.
    WriteBehind,
}

/// `WRITE_BEHIND_REPLICA_WAIT_MS` when set: whether a write-behind write
/// waits for a Redis replica, and how long (unset, the field is `None` and
/// tiercache picks by topology).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaWait {
    /// Acknowledge once the primary has the change (`0`).
    Off,
    /// Wait at most this long for a replica (`N` ms, N ≥ 1).
    Within(Duration),
}

impl ReplicaWait {
    /// What `TieredCacheBuilder::write_behind_replica_wait` takes.
    pub fn timeout(self) -> Option<Duration> {
        match self {
            Self::Off => None,
            Self::Within(timeout) => Some(timeout),
        }
    }
}

/// `0` (off) or a whole number of milliseconds.
fn replica_wait(value: &str) -> Result<ReplicaWait, String> {
    match value.parse::<u64>() {
        Ok(0) => Ok(ReplicaWait::Off),
        Ok(ms) => Ok(ReplicaWait::Within(Duration::from_millis(ms))),
        Err(_) => Err(format!("{value:?} is not a whole number of milliseconds")),
    }
}

/// The product cache: L1 bounds and TTLs, and Redis for L2.
#[derive(Debug, Clone, Args)]
pub struct CacheConfig {
    /// Redis for the shared L2: `redis://host:port[/db]`. Unset: L1 only.
    #[arg(
        long,
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        value_parser = secret,
        hide_env_values = true
    )]
    pub redis_url: Option<SecretString>,

    /// Most products kept in the in-process L1.
    #[arg(long, env = "L1_MAX_ENTRIES", value_name = "L1_MAX_ENTRIES", default_value_t = tiercache::defaults::L1_MAX_ENTRIES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub l1_max_entries: u64,

    /// Most bytes the in-process L1 may hold (64 MiB by default).
    #[arg(long, env = "L1_MAX_BYTES", value_name = "L1_MAX_BYTES", default_value_t = tiercache::defaults::L1_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub l1_max_bytes: u64,

    /// Seconds a product stays in L1.
    #[arg(long, env = "L1_TTL_SECS", value_name = "L1_TTL_SECS",
          default_value = in_seconds(tiercache::defaults::L1_TTL), value_parser = seconds)]
    pub l1_ttl: Duration,

    /// Seconds a product stays in Redis.
    #[arg(long, env = "L2_TTL_SECS", value_name = "L2_TTL_SECS",
          default_value = in_seconds(tiercache::defaults::L2_TTL), value_parser = seconds)]
    pub l2_ttl: Duration,

    /// Prefix of every Redis key (namespaces several deployments on one Redis).
    #[arg(
        long,
        env = "CACHE_PREFIX",
        value_name = "CACHE_PREFIX",
        default_value = tiercache::defaults::KEY_PREFIX
    )]
    pub cache_prefix: String,

    /// Milliseconds one Redis call may take before it counts as a miss.
    #[arg(long, env = "L2_TIMEOUT_MS", value_name = "L2_TIMEOUT_MS",
          default_value = in_millis(tiercache::defaults::L2_TIMEOUT), value_parser = milliseconds)]
    pub l2_timeout: Duration,

    /// How writes reach the cache.
    #[arg(long, env = "CACHE_WRITE_STRATEGY", value_name = "CACHE_WRITE_STRATEGY", value_enum,
          default_value_t = DEFAULT_WRITE_STRATEGY)]
    pub write_strategy: WriteStrategy,

    /// Seconds an expired L1 product is kept as a fail-safe answer
    /// (`X-Cache: STALE`) for when the store fails or is slow. 0: off.
    #[arg(long, env = "FAIL_SAFE_SECS", value_name = "FAIL_SAFE_SECS", default_value = in_seconds(DEFAULT_FAIL_SAFE), value_parser = seconds_or_zero)]
    pub fail_safe: Duration,

    /// Milliseconds a store read may take before a stale product is
    /// answered instead (the read goes on and refreshes the cache).
    #[arg(long, env = "LOADER_SOFT_TIMEOUT_MS", value_name = "LOADER_SOFT_TIMEOUT_MS",
          default_value = in_millis(DEFAULT_LOADER_SOFT_TIMEOUT), value_parser = milliseconds)]
    pub loader_soft_timeout: Duration,

    /// Milliseconds after which a store read is abandoned (stale answer if
    /// there is one, else 503).
    #[arg(long, env = "LOADER_HARD_TIMEOUT_MS", value_name = "LOADER_HARD_TIMEOUT_MS",
          default_value = in_millis(DEFAULT_LOADER_HARD_TIMEOUT), value_parser = milliseconds)]
    pub loader_hard_timeout: Duration,

    /// Milliseconds between write-behind flushes when the queue is idle
    /// (a write wakes the flusher at once).
    #[arg(long, env = "WRITE_BEHIND_INTERVAL_MS", value_name = "WRITE_BEHIND_INTERVAL_MS",
          default_value = in_millis(DEFAULT_WRITE_BEHIND_INTERVAL), value_parser = milliseconds)]
    pub write_behind_interval: Duration,

    /// Milliseconds a write-behind write waits for a Redis replica to
    /// confirm its queued change before it is acknowledged, so that a
    /// failover of the primary that took it does not lose it (a write no
    /// replica confirms in time is acknowledged anyway and counted as
    /// unreplicated). 0: no wait. Unset: tiercache's default, 100 ms on a
    /// cluster and no wait on a single server.
    #[arg(long, env = "WRITE_BEHIND_REPLICA_WAIT_MS", value_name = "WRITE_BEHIND_REPLICA_WAIT_MS",
          value_parser = replica_wait)]
    pub write_behind_replica_wait: Option<ReplicaWait>,

    /// Fraction of the L1 TTL after which a hit reloads the product in the
    /// background (0 < f < 1); 0: off.
    #[arg(long, env = "EAGER_REFRESH", value_name = "EAGER_REFRESH", default_value_t = DEFAULT_EAGER_REFRESH,
          value_parser = fraction)]
    pub eager_refresh: f64,

    /// Whether each instance asks Redis to report every change of the
    /// cache's keys (client tracking), so that products changed in Redis by
    /// anything else leave every L1 (on a cluster, every primary is tracked).
    #[arg(long, env = "CACHE_CLIENT_TRACKING", value_name = "CACHE_CLIENT_TRACKING",
          default_value_t = DEFAULT_CLIENT_TRACKING, action = clap::ArgAction::Set)]
    pub client_tracking: bool,
}

fn seconds_or_zero(value: &str) -> Result<Duration, String> {
    value
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{value:?} is not a whole number of seconds"))
}

/// 0 (off) or a fraction strictly between 0 and 1.
fn fraction(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(f) if f == 0.0 || (f > 0.0 && f < 1.0) => Ok(f),
        _ => Err(format!("{value:?} is not 0 or a number between 0 and 1")),
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            l1_max_entries: tiercache::defaults::L1_MAX_ENTRIES,
            l1_max_bytes: tiercache::defaults::L1_MAX_BYTES,
            l1_ttl: tiercache::defaults::L1_TTL,
            l2_ttl: tiercache::defaults::L2_TTL,
            cache_prefix: tiercache::defaults::KEY_PREFIX.to_owned(),
            l2_timeout: tiercache::defaults::L2_TIMEOUT,
            write_strategy: DEFAULT_WRITE_STRATEGY,
            fail_safe: DEFAULT_FAIL_SAFE,
            loader_soft_timeout: DEFAULT_LOADER_SOFT_TIMEOUT,
            loader_hard_timeout: DEFAULT_LOADER_HARD_TIMEOUT,
            eager_refresh: DEFAULT_EAGER_REFRESH,
            write_behind_interval: DEFAULT_WRITE_BEHIND_INTERVAL,
            write_behind_replica_wait: None,
            client_tracking: DEFAULT_CLIENT_TRACKING,
        }
    }
}

/// What bounds the HTTP connections (see `http::connection`).
#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Seconds a client has to send a complete request head, from opening
    /// the connection or from the head's first byte on a kept-alive one.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", value_name = "HTTP_HEADER_TIMEOUT_SECS",
          default_value = in_seconds(DEFAULT_HTTP_HEADER_TIMEOUT), value_parser = seconds)]
    pub http_header_timeout: Duration,

    /// Seconds a kept-alive connection may wait for its next request.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECS", value_name = "HTTP_IDLE_TIMEOUT_SECS",
          default_value = in_seconds(DEFAULT_HTTP_IDLE_TIMEOUT), value_parser = seconds)]
    pub http_idle_timeout: Duration,

    /// Most HTTP connections open at once; more wait to be accepted. Keep
    /// it under the process's file limit (`ulimit -n`) minus the database
    /// and Redis connections.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", value_name = "HTTP_MAX_CONNECTIONS",
          default_value_t = DEFAULT_HTTP_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            http_header_timeout: DEFAULT_HTTP_HEADER_TIMEOUT,
            http_idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
            http_max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
        }
    }
}

impl HttpConfig {
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
            max_connections: usize::try_from(self.http_max_connections).unwrap_or(usize::MAX),
        }
    }
}

/// Settings of `catalog serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub db: DbConfig,

    #[command(flatten)]
    pub cache: CacheConfig,

    #[command(flatten)]
    pub http: HttpConfig,

    /// Address the HTTP server listens on.
    #[arg(
        long,
        env = "BIND_ADDR",
        value_name = "BIND_ADDR",
        default_value_t = DEFAULT_BIND_ADDR
    )]
    pub bind_addr: SocketAddr,

    /// Bearer token for writes and cache administration. Unset: a random
    /// token is generated at start and logged once.
    #[arg(
        long,
        env = "CATALOG_API_TOKEN",
        value_name = "CATALOG_API_TOKEN",
        value_parser = secret,
        hide_env_values = true
    )]
    pub api_token: Option<SecretString>,

    /// Seconds one request may take; also bounds how long shutdown waits
    /// for in-flight requests.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", value_name = "REQUEST_TIMEOUT_SECS",
          default_value = in_seconds(DEFAULT_REQUEST_TIMEOUT), value_parser = seconds)]
    pub request_timeout: Duration,
}

impl ServeConfig {
    /// Defaults for `url`, listening on an ephemeral local port: the shape
    /// tests and embedders start from.
    pub fn new(url: &str) -> Self {
        Self {
            db: DbConfig::new(url),
            cache: CacheConfig::default(),
            http: HttpConfig::default(),
            bind_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_token: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Args;

    use super::{CacheConfig, ReplicaWait, replica_wait};

    #[test]
    fn replica_wait_is_off_at_zero_and_a_timeout_above() {
        assert_eq!(replica_wait("0"), Ok(ReplicaWait::Off));
        assert_eq!(
            replica_wait("250"),
            Ok(ReplicaWait::Within(Duration::from_millis(250)))
        );
        assert_eq!(ReplicaWait::Off.timeout(), None);
        assert!(replica_wait("-1").is_err());
        assert!(replica_wait("soon").is_err());
    }

    /// The flag's help states tiercache's default, which no constant of
    /// ours carries: it must follow the library's.
    #[test]
    fn replica_wait_help_states_the_library_default() {
        let command = CacheConfig::augment_args(clap::Command::new("serve"));
        let help = command
            .get_arguments()
            .find(|arg| arg.get_id() == "write_behind_replica_wait")
            .and_then(|arg| arg.get_help())
            .expect("the flag has a help text")
            .to_string();

        let default = tiercache::defaults::WRITE_BEHIND_REPLICA_WAIT.as_millis();
        assert!(help.contains(&format!("{default} ms on a")), "{help}");
    }
}
