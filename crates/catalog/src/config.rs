//! Configuration: every setting is a `catalog` flag that can also come from
//! the environment (or a `.env` file). Values are parsed into typed fields at
//! start, so a bad value is one clear line naming the variable, and nothing
//! reads the environment later.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

use crate::store::PoolSettings;

/// The embedded default store: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://catalog.db?mode=rwc";

fn secret(value: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(value))
}

fn seconds(value: &str) -> Result<Duration, String> {
    positive(value, "seconds").map(Duration::from_secs)
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
    #[arg(long, env = "DB_MAX_CONNECTIONS", value_name = "DB_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// Seconds a query waits for a connection before the store counts as down.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_SECS", value_name = "DB_ACQUIRE_TIMEOUT_SECS", default_value = "5", value_parser = seconds)]
    pub db_acquire_timeout: Duration,
}

impl DbConfig {
    /// A configuration for `url` with default pool settings.
    pub fn new(url: &str) -> Self {
        let defaults = PoolSettings::default();
        Self {
            database_url: SecretString::from(url),
            db_max_connections: defaults.max_connections,
            db_acquire_timeout: defaults.acquire_timeout,
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
    #[arg(long, env = "L1_MAX_ENTRIES", value_name = "L1_MAX_ENTRIES", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub l1_max_entries: u64,

    /// Most bytes the in-process L1 may hold (64 MiB by default).
    #[arg(long, env = "L1_MAX_BYTES", value_name = "L1_MAX_BYTES", default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub l1_max_bytes: u64,

    /// Seconds a product stays in L1.
    #[arg(long, env = "L1_TTL_SECS", value_name = "L1_TTL_SECS", default_value = "300", value_parser = seconds)]
    pub l1_ttl: Duration,

    /// Seconds a product stays in Redis.
    #[arg(long, env = "L2_TTL_SECS", value_name = "L2_TTL_SECS", default_value = "3600", value_parser = seconds)]
    pub l2_ttl: Duration,

    /// Prefix of every Redis key (namespaces several deployments on one Redis).
    #[arg(
        long,
        env = "CACHE_PREFIX",
        value_name = "CACHE_PREFIX",
        default_value = "cache:"
    )]
    pub cache_prefix: String,

    /// Milliseconds one Redis call may take before it counts as a miss.
    #[arg(long, env = "L2_TIMEOUT_MS", value_name = "L2_TIMEOUT_MS", default_value = "100", value_parser = milliseconds)]
    pub l2_timeout: Duration,

    /// How writes reach the cache.
    #[arg(long, env = "CACHE_WRITE_STRATEGY", value_name = "CACHE_WRITE_STRATEGY", value_enum,
          default_value_t = WriteStrategy::Invalidate)]
    pub write_strategy: WriteStrategy,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            l1_max_entries: 10_000,
            l1_max_bytes: 64 * 1024 * 1024,
            l1_ttl: Duration::from_secs(300),
            l2_ttl: Duration::from_secs(3_600),
            cache_prefix: "cache:".to_owned(),
            l2_timeout: Duration::from_millis(100),
            write_strategy: WriteStrategy::Invalidate,
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

    /// Address the HTTP server listens on.
    #[arg(
        long,
        env = "BIND_ADDR",
        value_name = "BIND_ADDR",
        default_value = "127.0.0.1:8000"
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
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", value_name = "REQUEST_TIMEOUT_SECS", default_value = "30", value_parser = seconds)]
    pub request_timeout: Duration,
}

impl ServeConfig {
    /// Defaults for `url`, listening on an ephemeral local port: the shape
    /// tests and embedders start from.
    pub fn new(url: &str) -> Self {
        Self {
            db: DbConfig::new(url),
            cache: CacheConfig::default(),
            bind_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_token: None,
            request_timeout: Duration::from_secs(30),
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
