//! Persistence: the [`Store`] trait and the one implementation that serves
//! both databases alike (PostgreSQL for production, SQLite as the embedded
//! default): `sql.rs` is what they share, `postgres.rs` and `sqlite.rs`
//! what each does its own way. Decorators (`batched`, `breaker`,
//! `instrumented`) wrap it.
//!
//! Invariants kept on both databases:
//! - `version` starts at 1 and each update increments it atomically in the
//!   same statement that changes the row (`UPDATE … RETURNING`);
//! - batch lookups are one query and pages are keyset pages ordered by id;
//! - all SQL is parameterised, and no `sqlx::Error` escapes: it is mapped to
//!   a [`StoreError`] a caller can act on.
//!
//! PostgreSQL also announces changes made outside the service (trigger in
//! `migrations/postgres/0002_products_notify.sql`), which its
//! [`ChangeListener`] turns into [`Invalidation`]s for the service to apply;
//! SQLite has no equivalent.

mod batched;
pub mod breaker;
mod decorator;
mod instrumented;
mod postgres;
mod sql;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};

use crate::domain::{NewProduct, Product, ProductPatch};

pub use batched::BatchedReads;
pub use breaker::GuardedStore;
pub use decorator::{Op, StoreMetrics};
pub use instrumented::InstrumentedStore;
pub use postgres::{
    CHANNEL, ChangeListener, Invalidation, InvalidationSink, LISTENER_APPLICATION_NAME,
    ListenerStats,
};

/// The `application_name` of the store's connections; the change trigger
/// does not notify for sessions with this name (the service invalidates its
/// own writes).
pub const APPLICATION_NAME: &str = "catalog";

/// Connection-pool settings shared by both stores.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long a query waits for a connection (including connecting) before
    /// the store counts as unavailable.
    pub acquire_timeout: Duration,
}

impl PoolSettings {
    /// The defaults of `DB_MAX_CONNECTIONS` and `DB_ACQUIRE_TIMEOUT_SECS`.
    pub const DEFAULT: Self = Self {
        max_connections: 16,
        acquire_timeout: Duration::from_secs(5),
    };
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which revision a conditional write applies to (from `If-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Unconditional: any revision.
    Any,
    /// Only if the stored `version` equals this one.
    Version(i64),
}

impl Expected {
    fn version(self) -> Option<i64> {
        match self {
            Self::Any => None,
            Self::Version(v) => Some(v),
        }
    }
}

/// One keyset page request: products with `id > after`, ordered by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub category: Option<String>,
    /// Exclusive lower bound on the id; 0 starts at the beginning.
    pub after: i64,
    pub limit: u32,
}

/// A product as an update left it, with the category it had before: a move
/// between categories changes both categories' pages.
#[derive(Debug, Clone)]
pub struct Updated {
    pub product: Product,
    pub previous_category: String,
}

/// One write-behind change to apply (see [`Store::apply`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ProductChange {
    /// The product as it is now (its `version` included).
    Put(Product),
    /// The product was deleted; `version` is one more than the deleted one.
    Delete { id: i64, version: i64 },
}

/// What a caller can act on when the store fails.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("product not found")]
    NotFound,
    /// A conditional write named a version that is no longer current.
    #[error("product version does not match")]
    VersionConflict,
    /// The database cannot be reached (connect, pool or I/O failure): retry later.
    #[error("store unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Not tried: the store failed repeatedly just now and its circuit
    /// breaker is open (see [`GuardedStore`]). Retry later.
    #[error("store down (circuit breaker open)")]
    Down,
    /// Anything else: a bug or a broken schema, never the caller's fault.
    #[error("store query failed")]
    Query(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether the store could not be used at all (retry later), as
    /// opposed to it answering.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Down)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::RowNotFound => Self::NotFound,
            // A protocol error means the server or something in between
            // (a proxy or balancer that accepts and closes) did not speak
            // PostgreSQL: seen as "unexpected response from SSLRequest"
            // when the peer hangs up at connect. Retry later, like I/O.
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err),
            other => Self::Query(other),
        }
    }
}

/// The catalog's persistence contract.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Applies the embedded migrations (idempotent).
    async fn migrate(&self) -> Result<(), StoreError>;
    /// A cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Closes the pool, waiting for checked-out connections to come back.
    async fn close(&self);
    async fn get(&self, id: i64) -> Result<Option<Product>, StoreError>;
    /// The products among `ids` that exist, in one query, in no particular order.
    async fn get_many(&self, ids: &[i64]) -> Result<Vec<Product>, StoreError>;
    /// Up to `limit` products after `after`, ordered by id.
    async fn list(&self, page: &PageRequest) -> Result<Vec<Product>, StoreError>;
    async fn create(&self, new: &NewProduct) -> Result<Product, StoreError>;
    /// Inserts many products in one transaction; returns how many.
    async fn create_many(&self, new: &[NewProduct]) -> Result<u64, StoreError>;
    /// Replaces every field; [`StoreError::NotFound`] or
    /// [`StoreError::VersionConflict`] when the row is absent or newer.
    async fn replace(
        &self,
        id: i64,
        new: &NewProduct,
        expected: Expected,
    ) -> Result<Updated, StoreError>;
    /// Changes the fields present in `patch`; errors as [`Store::replace`].
    async fn patch(
        &self,
        id: i64,
        patch: &ProductPatch,
        expected: Expected,
    ) -> Result<Updated, StoreError>;
    /// Deletes the row and returns it as it was; errors as [`Store::replace`].
    async fn delete(&self, id: i64, expected: Expected) -> Result<Product, StoreError>;
    /// Applies write-behind changes in one transaction, each only over an
    /// older version (`version < $new`), so that replays and late batches
    /// change nothing; a change whose row is gone is skipped.
    async fn apply(&self, changes: &[ProductChange]) -> Result<(), StoreError>;
    async fn count(&self) -> Result<i64, StoreError>;
}

/// Opens the store `url` names: `postgres://`/`postgresql://` → PostgreSQL,
/// `sqlite:` → SQLite.
///
/// # Errors
/// An unsupported scheme is [`StoreError::Query`] with a configuration error;
/// an unreachable database is [`StoreError::Unavailable`].
pub async fn connect(url: &str, pool: &PoolSettings) -> Result<Box<dyn Store>, StoreError> {
    if is_postgres_url(url) {
        Ok(Box::new(postgres::connect(url, pool).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Box::new(sqlite::connect(url, pool).await?))
    } else {
        Err(StoreError::Query(sqlx::Error::Configuration(
            "DATABASE_URL must start with postgres://, postgresql:// or sqlite:".into(),
        )))
    }
}

/// Whether `url` names a PostgreSQL database (and so has change
/// notifications to listen to).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Now, at the microsecond precision both databases keep, so a timestamp a
/// write returns equals the one a later read returns.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Resolves a write that matched no row: the row is gone, or its version moved.
fn missed_write(current_version: Option<i64>) -> StoreError {
    match current_version {
        None => StoreError::NotFound,
        Some(_) => StoreError::VersionConflict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable_and_the_rest_are_query_errors() {
        assert!(matches!(
            StoreError::from(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::RowNotFound),
            StoreError::NotFound
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::Protocol("x".into())),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::ColumnNotFound("x".into())),
            StoreError::Query(_)
        ));
    }

    #[test]
    fn now_has_microsecond_precision() {
        assert_eq!(now().timestamp_subsec_nanos() % 1_000, 0);
    }
}
