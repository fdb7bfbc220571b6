//! [`SqlStore`]: the one [`Store`] implementation, generic over the
//! database. Every step both databases take alike is written here once:
//! which statement a call runs, what it binds and how the rows come back,
//! including [`ProductRow`], the decoding of a product row. What differs is
//! each database's [`Dialect`] (`postgres.rs`, `sqlite.rs`): its
//! statements, how it opens a write transaction, how it binds a list of
//! ids, its batch insert, and how an update learns the category it
//! replaced.
//!
//! Every statement selects the product columns under the same names, with
//! the price in integer cents as `price_cents`, so that no float ever
//! touches a price and one decoder reads the rows of both databases.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::query::QueryAs;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Row,
    Transaction, Type,
};

use super::{Expected, PageRequest, ProductChange, Store, StoreError, Updated, missed_write, now};
use crate::domain::{NewProduct, Price, Product, ProductPatch};

/// What one database does its own way; the rest is [`SqlStore`]'s.
///
/// The statements take their parameters in the order [`SqlStore`] binds
/// them, documented on each.
pub(crate) trait Dialect: fmt::Debug + Send + Sync + 'static {
    type Db: Database;
    /// What [`Dialect::GET_MANY`] binds for its ids.
    type Ids<'a>: Encode<'a, Self::Db> + Type<Self::Db> + Send + 'a;
    /// The row an update returns; [`Dialect::update`] makes it an [`Updated`].
    type UpdatedRow: for<'r> FromRow<'r, <Self::Db as Database>::Row> + Send + Unpin;

    /// The product with id `1`.
    const GET: &'static str;
    /// The products whose ids are in `1` ([`Dialect::ids`]).
    const GET_MANY: &'static str;
    /// Products of category `1` with an id above `2`, by id, at most `3`.
    const LIST_CATEGORY: &'static str;
    /// Products with an id above `1`, by id, at most `2`.
    const LIST: &'static str;
    /// Inserts name, description, cents, category, in stock, created at;
    /// returns the product.
    const CREATE: &'static str;
    /// Updates product `1` to name, description, cents, category, in stock
    /// `2`–`6`, updated at `7`, if its version is `8` or `8` is null.
    const REPLACE: &'static str;
    /// As [`Dialect::REPLACE`], each of `2`–`6` only when it is not null.
    const PATCH: &'static str;
    /// Deletes product `1` if its version is `2` or `2` is null; returns it.
    const DELETE: &'static str;
    /// The version of product `1`.
    const VERSION: &'static str;
    /// Write-behind: product `1` as it is now (fields as in
    /// [`Dialect::REPLACE`], version `8`), only over an older version.
    const APPLY_PUT: &'static str;
    /// Write-behind: deletes product `1` only if its version is below `2`.
    const APPLY_DELETE: &'static str;

    /// The embedded migrations.
    fn migrator() -> &'static Migrator;

    /// `ids` as [`Dialect::GET_MANY`] binds them.
    fn ids(ids: &[i64]) -> Self::Ids<'_>;

    /// A transaction for writes.
    fn begin_write(
        pool: &Pool<Self::Db>,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;

    /// Inserts `new`; returns how many.
    fn create_many(
        pool: &Pool<Self::Db>,
        new: &[NewProduct],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Runs `update` (a bound [`Dialect::REPLACE`] or [`Dialect::PATCH`] of
    /// product `id`) and pairs the product with the category it replaced.
    fn update<'q>(
        pool: &'q Pool<Self::Db>,
        id: i64,
        update: Update<'q, Self>,
    ) -> impl Future<Output = Result<Updated, StoreError>> + Send + 'q;
}

/// A bound update statement of dialect `D`.
pub(crate) type Update<'q, D> = QueryAs<
    'q,
    <D as Dialect>::Db,
    <D as Dialect>::UpdatedRow,
    <<D as Dialect>::Db as Database>::Arguments,
>;

/// A store on a pool of dialect `D`'s database.
#[derive(Debug, Clone)]
pub(crate) struct SqlStore<D: Dialect> {
    pool: Pool<D::Db>,
}

impl<D: Dialect> SqlStore<D> {
    pub(crate) fn new(pool: Pool<D::Db>) -> Self {
        Self { pool }
    }
}

/// A product row, decoded the same way from either database.
pub(crate) struct ProductRow(pub(crate) Product);

impl<'r, R: Row> FromRow<'r, R> for ProductRow
where
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
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

fn products(rows: Vec<ProductRow>) -> Vec<Product> {
    rows.into_iter().map(|row| row.0).collect()
}

/// The version of product `id`, `None` when there is no such product:
/// what explains a conditional write that matched no row.
pub(crate) async fn current_version<D>(
    pool: &Pool<D::Db>,
    id: i64,
) -> Result<Option<i64>, StoreError>
where
    D: Dialect,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    for<'q> i64: Encode<'q, D::Db>,
    i64: Type<D::Db>,
    (i64,): for<'r> FromRow<'r, <D::Db as Database>::Row>,
{
    Ok(sqlx::query_scalar(D::VERSION)
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

// The bounds say what sqlx must do with the database: run statements on the
// pool and in transactions, migrate, encode what the statements bind and
// decode what they return. PostgreSQL and SQLite both can; sqlx states each
// capability on its own, hence the list.
#[async_trait]
impl<D: Dialect> Store for SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
    <D::Db as Database>::Connection: Migrate,
    ProductRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    (i64,): for<'r> FromRow<'r, <D::Db as Database>::Row>,
    for<'q> i64: Encode<'q, D::Db>,
    for<'q> Option<i64>: Encode<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db>,
    for<'q> Option<&'q str>: Encode<'q, D::Db>,
    for<'q> bool: Encode<'q, D::Db>,
    for<'q> Option<bool>: Encode<'q, D::Db>,
    for<'q> DateTime<Utc>: Encode<'q, D::Db>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, D::Db>,
    i64: Type<D::Db>,
    str: Type<D::Db>,
    bool: Type<D::Db>,
    DateTime<Utc>: Type<D::Db>,
{
    async fn migrate(&self) -> Result<(), StoreError> {
        D::migrator()
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
        let row: Option<ProductRow> = sqlx::query_as(D::GET)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.0))
    }

    async fn get_many(&self, ids: &[i64]) -> Result<Vec<Product>, StoreError> {
        let rows = sqlx::query_as(D::GET_MANY)
            .bind(D::ids(ids))
            .fetch_all(&self.pool)
            .await?;
        Ok(products(rows))
    }

    async fn list(&self, page: &PageRequest) -> Result<Vec<Product>, StoreError> {
        // Two statements rather than `(? IS NULL OR category = ?)`, so each
        // has a plan that uses its index.
        let query = match &page.category {
            Some(category) => sqlx::query_as(D::LIST_CATEGORY).bind(category.as_str()),
            None => sqlx::query_as(D::LIST),
        };
        let rows = query
            .bind(page.after)
            .bind(i64::from(page.limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(products(rows))
    }

    async fn create(&self, new: &NewProduct) -> Result<Product, StoreError> {
        let row: ProductRow = sqlx::query_as(D::CREATE)
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
        D::create_many(&self.pool, new).await
    }

    async fn replace(
        &self,
        id: i64,
        new: &NewProduct,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        let update = sqlx::query_as(D::REPLACE)
            .bind(id)
            .bind(new.name.as_str())
            .bind(new.description.as_str())
            .bind(new.price.cents())
            .bind(new.category.as_str())
            .bind(new.in_stock)
            .bind(now())
            .bind(expected.version());
        D::update(&self.pool, id, update).await
    }

    async fn patch(
        &self,
        id: i64,
        patch: &ProductPatch,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        let update = sqlx::query_as(D::PATCH)
            .bind(id)
            .bind(patch.name.as_ref().map(|n| n.as_str()))
            .bind(patch.description.as_ref().map(|d| d.as_str()))
            .bind(patch.price.map(Price::cents))
            .bind(patch.category.as_ref().map(|c| c.as_str()))
            .bind(patch.in_stock)
            .bind(now())
            .bind(expected.version());
        D::update(&self.pool, id, update).await
    }

    async fn delete(&self, id: i64, expected: Expected) -> Result<Product, StoreError> {
        let row: Option<ProductRow> = sqlx::query_as(D::DELETE)
            .bind(id)
            .bind(expected.version())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(row.0),
            None => Err(missed_write(current_version::<D>(&self.pool, id).await?)),
        }
    }

    async fn apply(&self, changes: &[ProductChange]) -> Result<(), StoreError> {
        let mut tx = D::begin_write(&self.pool).await?;
        for change in changes {
            match change {
                ProductChange::Put(p) => {
                    sqlx::query(D::APPLY_PUT)
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
                    sqlx::query(D::APPLY_DELETE)
                        .bind(*id)
                        .bind(*version)
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
