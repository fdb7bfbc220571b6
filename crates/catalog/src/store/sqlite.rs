//! SQLite, the embedded default database: its [`Dialect`] (integer-cent
//! prices, WAL journal, `json_each` batches).
//!
//! SQLite serialises writers; WAL lets readers go on meanwhile, and the busy
//! timeout makes a writer wait for the lock instead of failing at once.
//! Batch lookups pass the ids as one JSON array (`json_each`), so every
//! statement stays a constant, parameterised string whatever the batch size.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::sql::{Dialect, ProductRow, SqlStore, Update};
use super::{PoolSettings, StoreError, Updated, missed_write, now};
use crate::domain::NewProduct;

/// The selected columns, as a macro so that every statement is one `&'static str`.
macro_rules! columns {
    () => {
        "id, name, description, price_cents, category, in_stock, version, created_at, updated_at"
    };
}

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// SQLite's [`Dialect`].
#[derive(Debug, Clone)]
pub(crate) struct Lite;

/// Opens (with `mode=rwc` in the URL: creates) the database file at `url`.
///
/// # Errors
/// [`StoreError::Unavailable`] when the file cannot be opened.
pub(crate) async fn connect(
    url: &str,
    settings: &PoolSettings,
) -> Result<SqlStore<Lite>, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await?;
    Ok(SqlStore::new(pool))
}

impl Dialect for Lite {
    type Db = Sqlite;
    type Ids<'a> = String;
    type UpdatedRow = ProductRow;

    const GET: &'static str = concat!("SELECT ", columns!(), " FROM products WHERE id = ?1");
    const GET_MANY: &'static str = concat!(
        "SELECT ",
        columns!(),
        " FROM products WHERE id IN (SELECT value FROM json_each(?1))"
    );
    const LIST_CATEGORY: &'static str = concat!(
        "SELECT ",
        columns!(),
        " FROM products WHERE category = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
    );
    const LIST: &'static str = concat!(
        "SELECT ",
        columns!(),
        " FROM products WHERE id > ?1 ORDER BY id LIMIT ?2"
    );
    const CREATE: &'static str = concat!(
        "INSERT INTO products (name, description, price_cents, category, in_stock, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING ",
        columns!()
    );
    const REPLACE: &'static str = concat!(
        "UPDATE products SET name = ?2, description = ?3, price_cents = ?4, category = ?5, \
         in_stock = ?6, updated_at = ?7, version = version + 1 \
         WHERE id = ?1 AND (?8 IS NULL OR version = ?8) RETURNING ",
        columns!()
    );
    const PATCH: &'static str = concat!(
        "UPDATE products SET name = COALESCE(?2, name), \
         description = COALESCE(?3, description), price_cents = COALESCE(?4, price_cents), \
         category = COALESCE(?5, category), in_stock = COALESCE(?6, in_stock), \
         updated_at = ?7, version = version + 1 \
         WHERE id = ?1 AND (?8 IS NULL OR version = ?8) RETURNING ",
        columns!()
    );
    const DELETE: &'static str = concat!(
        "DELETE FROM products WHERE id = ?1 AND (?2 IS NULL OR version = ?2) RETURNING ",
        columns!()
    );
    const VERSION: &'static str = "SELECT version FROM products WHERE id = ?1";
    const APPLY_PUT: &'static str = "UPDATE products SET name = ?2, description = ?3, \
         price_cents = ?4, category = ?5, in_stock = ?6, updated_at = ?7, version = ?8 \
         WHERE id = ?1 AND version < ?8";
    const APPLY_DELETE: &'static str = "DELETE FROM products WHERE id = ?1 AND version < ?2";

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn ids(ids: &[i64]) -> String {
        serde_json::to_string(ids).expect("a list of integers always serialises")
    }

    /// `BEGIN IMMEDIATE`: takes the write lock at once, so that what the
    /// transaction reads is what it changes.
    async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn create_many(pool: &SqlitePool, new: &[NewProduct]) -> Result<u64, StoreError> {
        // One transaction: SQLite then syncs once per batch, not once per row.
        let created_at = now();
        let mut tx = pool.begin().await?;
        for product in new {
            sqlx::query(
                "INSERT INTO products \
                 (name, description, price_cents, category, in_stock, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(product.name.as_str())
            .bind(product.description.as_str())
            .bind(product.price.cents())
            .bind(product.category.as_str())
            .bind(product.in_stock)
            .bind(created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(new.len() as u64)
    }

    /// Reads the category inside the update's write transaction, which
    /// holds the lock: it is the one the update replaces.
    async fn update<'q>(
        pool: &'q SqlitePool,
        id: i64,
        update: Update<'q, Self>,
    ) -> Result<Updated, StoreError> {
        let mut tx = Self::begin_write(pool).await?;
        let previous_category: Option<String> =
            sqlx::query_scalar("SELECT category FROM products WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let row = update.fetch_optional(&mut *tx).await?;
        match (row, previous_category) {
            (Some(row), Some(previous_category)) => {
                tx.commit().await?;
                Ok(Updated {
                    product: row.0,
                    previous_category,
                })
            }
            // Absent, or present at another version (the lock makes the
            // category read and the update see the same row).
            (_, previous) => Err(missed_write(previous.map(|_| 0))),
        }
    }
}
