//! SQLite store, the embedded default: integer-cent prices, WAL journal.
//!
//! SQLite serialises writers; WAL lets readers go on meanwhile, and the busy
//! timeout makes a writer wait for the lock instead of failing at once.
//! Batch lookups pass the ids as one JSON array (`json_each`), so every
//! statement stays a constant, parameterised string whatever the batch size.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{FromRow, Row, Sqlite, Transaction};

use super::{
    Expected, PageRequest, PoolSettings, ProductChange, Store, StoreError, Updated, missed_write,
    now,
};
use crate::domain::{NewProduct, Price, Product, ProductPatch};

/// The selected columns, as a macro so that every statement is one `&'static str`.
macro_rules! columns {
    () => {
        "id, name, description, price_cents, category, in_stock, version, created_at, updated_at"
    };
}

/// The embedded store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (with `mode=rwc` in the URL: creates) the database file at `url`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file cannot be opened.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
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
        Ok(Self { pool })
    }

    async fn current_version(&self, id: i64) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT version FROM products WHERE id = ?1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

/// The category of `id` inside an update's transaction (`BEGIN IMMEDIATE`
/// holds the write lock, so it is the one the update replaces); `None`
/// when the row is absent.
async fn category_of(
    tx: &mut Transaction<'static, Sqlite>,
    id: i64,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT category FROM products WHERE id = ?1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// Commits an update that returned `row`, or explains why it matched nothing.
async fn finish_update(
    tx: Transaction<'static, Sqlite>,
    row: Option<SqliteProduct>,
    previous_category: Option<String>,
) -> Result<Updated, StoreError> {
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

/// Row → product; shared by every query through `columns!()`.
struct SqliteProduct(Product);

impl FromRow<'_, SqliteRow> for SqliteProduct {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        let cents: i64 = row.try_get("price_cents")?;
        let price = Price::from_cents(cents).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "price_cents".into(),
            source: format!("price out of range: {cents} cents").into(),
        })?;
        Ok(Self(Product {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            price,
            category: row.try_get("category")?,
            in_stock: row.try_get("in_stock")?,
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        }))
    }
}

fn products(rows: Vec<SqliteProduct>) -> Vec<Product> {
    rows.into_iter().map(|row| row.0).collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(StoreError::Migrate)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn get(&self, id: i64) -> Result<Option<Product>, StoreError> {
        let row: Option<SqliteProduct> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM products WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.0))
    }

    async fn get_many(&self, ids: &[i64]) -> Result<Vec<Product>, StoreError> {
        let ids = serde_json::to_string(ids).expect("a list of integers always serialises");
        let rows = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM products WHERE id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(products(rows))
    }

    async fn list(&self, page: &PageRequest) -> Result<Vec<Product>, StoreError> {
        let rows = match &page.category {
            Some(category) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM products WHERE category = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
                ))
                .bind(category)
                .bind(page.after)
                .bind(i64::from(page.limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM products WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))
                .bind(page.after)
                .bind(i64::from(page.limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(products(rows))
    }

    async fn create(&self, new: &NewProduct) -> Result<Product, StoreError> {
        let row: SqliteProduct = sqlx::query_as(concat!(
            "INSERT INTO products (name, description, price_cents, category, in_stock, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING ",
            columns!()
        ))
        .bind(new.name.as_str())
        .bind(new.description.as_str())
        .bind(new.price.cents())
        .bind(new.category.as_str())
        .bind(new.in_stock)
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    async fn create_many(&self, new: &[NewProduct]) -> Result<u64, StoreError> {
        // One transaction: SQLite then syncs once per batch, not once per row.
        let created_at = now();
        let mut tx = self.pool.begin().await?;
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

    async fn replace(
        &self,
        id: i64,
        new: &NewProduct,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let previous_category = category_of(&mut tx, id).await?;
        let row: Option<SqliteProduct> = sqlx::query_as(concat!(
            "UPDATE products SET name = ?2, description = ?3, price_cents = ?4, category = ?5, \
             in_stock = ?6, updated_at = ?7, version = version + 1 \
             WHERE id = ?1 AND (?8 IS NULL OR version = ?8) RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(new.name.as_str())
        .bind(new.description.as_str())
        .bind(new.price.cents())
        .bind(new.category.as_str())
        .bind(new.in_stock)
        .bind(now())
        .bind(expected.version())
        .fetch_optional(&mut *tx)
        .await?;
        finish_update(tx, row, previous_category).await
    }

    async fn patch(
        &self,
        id: i64,
        patch: &ProductPatch,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let previous_category = category_of(&mut tx, id).await?;
        let row: Option<SqliteProduct> = sqlx::query_as(concat!(
            "UPDATE products SET name = COALESCE(?2, name), \
             description = COALESCE(?3, description), price_cents = COALESCE(?4, price_cents), \
             category = COALESCE(?5, category), in_stock = COALESCE(?6, in_stock), \
             updated_at = ?7, version = version + 1 \
             WHERE id = ?1 AND (?8 IS NULL OR version = ?8) RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(patch.name.as_ref().map(|n| n.as_str()))
        .bind(patch.description.as_ref().map(|d| d.as_str()))
        .bind(patch.price.map(Price::cents))
        .bind(patch.category.as_ref().map(|c| c.as_str()))
        .bind(patch.in_stock)
        .bind(now())
        .bind(expected.version())
        .fetch_optional(&mut *tx)
        .await?;
        finish_update(tx, row, previous_category).await
    }

    async fn delete(&self, id: i64, expected: Expected) -> Result<Product, StoreError> {
        let row: Option<SqliteProduct> = sqlx::query_as(concat!(
            "DELETE FROM products WHERE id = ?1 AND (?2 IS NULL OR version = ?2) RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(expected.version())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(row.0),
            None => Err(missed_write(self.current_version(id).await?)),
        }
    }

    async fn apply(&self, changes: &[ProductChange]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for change in changes {
            match change {
                ProductChange::Put(p) => {
                    sqlx::query(
                        "UPDATE products SET name = ?2, description = ?3, price_cents = ?4, \
                         category = ?5, in_stock = ?6, updated_at = ?7, version = ?8 \
                         WHERE id = ?1 AND version < ?8",
                    )
                    .bind(p.id)
                    .bind(p.name.as_str())
                    .bind(p.description.as_str())
                    .bind(p.price.cents())
                    .bind(p.category.as_str())
                    .bind(p.in_stock)
                    .bind(p.updated_at)
                    .bind(p.version)
                    .execute(&mut *tx)
                    .await?;
                }
                ProductChange::Delete { id, version } => {
                    sqlx::query("DELETE FROM products WHERE id = ?1 AND version < ?2")
                        .bind(id)
                        .bind(version)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM products")
            .fetch_one(&self.pool)
            .await?)
    }
}
