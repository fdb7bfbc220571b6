//! PostgreSQL store: `NUMERIC(12,2)` prices, identity ids, `= ANY($1)` batches.
//!
//! Prices cross the wire as integer cents (`price * 100` cast to bigint, and
//! `cents::numeric / 100` on the way in), so no float ever touches a price.
//!
//! Every connection of the pool identifies itself as
//! [`APPLICATION_NAME`](super::APPLICATION_NAME): the change trigger skips
//! those sessions, because the service invalidates its own writes already.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{FromRow, Row};

use super::{
    APPLICATION_NAME, Expected, PageRequest, PoolSettings, ProductChange, Store, StoreError,
    Updated, missed_write, now,
};
use crate::domain::{NewProduct, Price, Product, ProductPatch};

/// The selected columns, as a macro so that every statement is one `&'static str`.
macro_rules! columns {
    () => {
        "id, name, description, (price * 100)::bigint AS price_cents, category, in_stock, \
         version, created_at, updated_at"
    };
}

/// The row as it was before an `UPDATE`, for [`Updated::previous_category`]:
/// locked first, so that the category read is the one the update replaced.
macro_rules! previous {
    () => {
        "FROM (SELECT id AS old_id, category AS old_category FROM products \
         WHERE id = $1 FOR UPDATE) AS old "
    };
}

/// An `UPDATE … RETURNING columns, old_category` row.
fn updated(row: &PgRow) -> Result<Updated, StoreError> {
    Ok(Updated {
        product: PgProduct::from_row(row)?.0,
        previous_category: row.try_get("old_category")?,
    })
}

/// The production store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects a pool to `url`; waits at most `acquire_timeout` for the first
    /// connection. An `application_name` in `url` is replaced by
    /// [`APPLICATION_NAME`](super::APPLICATION_NAME).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name(APPLICATION_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(StoreError::from)?;
        Ok(Self { pool })
    }

    async fn current_version(&self, id: i64) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT version FROM products WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

/// Row → product; shared by every query through `columns!()`.
struct PgProduct(Product);

impl FromRow<'_, PgRow> for PgProduct {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let cents: i64 = row.try_get("price_cents")?;
        let price = Price::from_cents(cents).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "price".into(),
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

fn products(rows: Vec<PgProduct>) -> Vec<Product> {
    rows.into_iter().map(|row| row.0).collect()
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/postgres")
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
        let row: Option<PgProduct> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM products WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.0))
    }

    async fn get_many(&self, ids: &[i64]) -> Result<Vec<Product>, StoreError> {
        let rows = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM products WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(products(rows))
    }

    async fn list(&self, page: &PageRequest) -> Result<Vec<Product>, StoreError> {
        // Two statements rather than `($1 IS NULL OR category = $1)`, so each
        // has a plan that uses its index.
        let rows = match &page.category {
            Some(category) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM products WHERE category = $1 AND id > $2 \
                     ORDER BY id LIMIT $3"
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
                    " FROM products WHERE id > $1 ORDER BY id LIMIT $2"
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
        let row: PgProduct = sqlx::query_as(concat!(
            "INSERT INTO products (name, description, price, category, in_stock, created_at) \
             VALUES ($1, $2, $3::bigint::numeric / 100, $4, $5, $6) RETURNING ",
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
        let names: Vec<&str> = new.iter().map(|p| p.name.as_str()).collect();
        let descriptions: Vec<&str> = new.iter().map(|p| p.description.as_str()).collect();
        let prices: Vec<i64> = new.iter().map(|p| p.price.cents()).collect();
        let categories: Vec<&str> = new.iter().map(|p| p.category.as_str()).collect();
        let in_stock: Vec<bool> = new.iter().map(|p| p.in_stock).collect();
        let result = sqlx::query(
            "INSERT INTO products (name, description, price, category, in_stock, created_at) \
             SELECT name, description, cents::numeric / 100, category, in_stock, $6 \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bool[]) \
                  AS input(name, description, cents, category, in_stock)",
        )
        .bind(&names)
        .bind(&descriptions)
        .bind(&prices)
        .bind(&categories)
        .bind(&in_stock)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn replace(
        &self,
        id: i64,
        new: &NewProduct,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE products SET name = $2, description = $3, price = $4::bigint::numeric / 100, \
             category = $5, in_stock = $6, updated_at = $7, version = version + 1 ",
            previous!(),
            "WHERE id = $1 AND old_id = $1 AND ($8::bigint IS NULL OR version = $8) RETURNING ",
            columns!(),
            ", old_category"
        ))
        .bind(id)
        .bind(new.name.as_str())
        .bind(new.description.as_str())
        .bind(new.price.cents())
        .bind(new.category.as_str())
        .bind(new.in_stock)
        .bind(now())
        .bind(expected.version())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => updated(&row),
            None => Err(missed_write(self.current_version(id).await?)),
        }
    }

    async fn patch(
        &self,
        id: i64,
        patch: &ProductPatch,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE products SET name = COALESCE($2, name), \
             description = COALESCE($3, description), \
             price = COALESCE($4::bigint::numeric / 100, price), \
             category = COALESCE($5, category), in_stock = COALESCE($6, in_stock), \
             updated_at = $7, version = version + 1 ",
            previous!(),
            "WHERE id = $1 AND old_id = $1 AND ($8::bigint IS NULL OR version = $8) RETURNING ",
            columns!(),
            ", old_category"
        ))
        .bind(id)
        .bind(patch.name.as_ref().map(|n| n.as_str()))
        .bind(patch.description.as_ref().map(|d| d.as_str()))
        .bind(patch.price.map(Price::cents))
        .bind(patch.category.as_ref().map(|c| c.as_str()))
        .bind(patch.in_stock)
        .bind(now())
        .bind(expected.version())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => updated(&row),
            None => Err(missed_write(self.current_version(id).await?)),
        }
    }

    async fn delete(&self, id: i64, expected: Expected) -> Result<Product, StoreError> {
        let row: Option<PgProduct> = sqlx::query_as(concat!(
            "DELETE FROM products WHERE id = $1 AND ($2::bigint IS NULL OR version = $2) RETURNING ",
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
        let mut tx = self.pool.begin().await?;
        for change in changes {
            match change {
                ProductChange::Put(p) => {
                    sqlx::query(
                        "UPDATE products SET name = $2, description = $3, \
                         price = $4::bigint::numeric / 100, category = $5, in_stock = $6, \
                         updated_at = $7, version = $8 WHERE id = $1 AND version < $8",
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
                    sqlx::query("DELETE FROM products WHERE id = $1 AND version < $2")
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
