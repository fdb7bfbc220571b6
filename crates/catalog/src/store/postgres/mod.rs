//! PostgreSQL, the production database: its [`Dialect`] (`NUMERIC(12,2)`
//! prices, identity ids, `= ANY($1)` batches, `UNNEST` batch inserts) and,
//! in [`listen`], the changes made outside the service.
//!
//! Prices cross the wire as integer cents (`price * 100` cast to bigint, and
//! `cents::numeric / 100` on the way in), so no float ever touches a price.
//!
//! Every connection of the pool identifies itself as [`APPLICATION_NAME`]:
//! the change trigger skips those sessions, because the service invalidates
//! its own writes already.

mod listen;

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{FromRow, Postgres, Row, Transaction};

use super::sql::{Dialect, ProductRow, SqlStore, Update, current_version};
use super::{APPLICATION_NAME, PoolSettings, StoreError, Updated, missed_write, now};
use crate::domain::NewProduct;

pub use listen::{
    CHANNEL, ChangeListener, Invalidation, InvalidationSink, LISTENER_APPLICATION_NAME,
    ListenerStats,
};

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

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// PostgreSQL's [`Dialect`].
#[derive(Debug, Clone)]
pub(crate) struct Pg;

/// Connects a pool to `url`; waits at most `acquire_timeout` for the first
/// connection. An `application_name` in `url` is replaced by
/// [`APPLICATION_NAME`].
///
/// # Errors
/// [`StoreError::Unavailable`] when the server cannot be reached.
pub(crate) async fn connect(
    url: &str,
    settings: &PoolSettings,
) -> Result<SqlStore<Pg>, StoreError> {
    let options = PgConnectOptions::from_str(url)?.application_name(APPLICATION_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(StoreError::from)?;
    Ok(SqlStore::new(pool))
}

/// An `UPDATE … RETURNING columns, old_category` row.
pub(crate) struct UpdatedRow(Updated);

impl FromRow<'_, PgRow> for UpdatedRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self(Updated {
            product: ProductRow::from_row(row)?.0,
            previous_category: row.try_get("old_category")?,
        }))
    }
}

impl Dialect for Pg {
    type Db = Postgres;
    type Ids<'a> = &'a [i64];
    type UpdatedRow = UpdatedRow;

    const GET: &'static str = concat!("SELECT ", columns!(), " FROM products WHERE id = $1");
    const GET_MANY: &'static str =
        concat!("SELECT ", columns!(), " FROM products WHERE id = ANY($1)");
    const LIST_CATEGORY: &'static str = concat!(
        "SELECT ",
        columns!(),
        " FROM products WHERE category = $1 AND id > $2 ORDER BY id LIMIT $3"
    );
    const LIST: &'static str = concat!(
        "SELECT ",
        columns!(),
        " FROM products WHERE id > $1 ORDER BY id LIMIT $2"
    );
    const CREATE: &'static str = concat!(
        "INSERT INTO products (name, description, price, category, in_stock, created_at) \
         VALUES ($1, $2, $3::bigint::numeric / 100, $4, $5, $6) RETURNING ",
        columns!()
    );
    const REPLACE: &'static str = concat!(
        "UPDATE products SET name = $2, description = $3, price = $4::bigint::numeric / 100, \
         category = $5, in_stock = $6, updated_at = $7, version = version + 1 ",
        previous!(),
        "WHERE id = $1 AND old_id = $1 AND ($8::bigint IS NULL OR version = $8) RETURNING ",
        columns!(),
        ", old_category"
    );
    const PATCH: &'static str = concat!(
        "UPDATE products SET name = COALESCE($2, name), \
         description = COALESCE($3, description), \
         price = COALESCE($4::bigint::numeric / 100, price), \
         category = COALESCE($5, category), in_stock = COALESCE($6, in_stock), \
         updated_at = $7, version = version + 1 ",
        previous!(),
        "WHERE id = $1 AND old_id = $1 AND ($8::bigint IS NULL OR version = $8) RETURNING ",
        columns!(),
        ", old_category"
    );
    const DELETE: &'static str = concat!(
        "DELETE FROM products WHERE id = $1 AND ($2::bigint IS NULL OR version = $2) RETURNING ",
        columns!()
    );
    const VERSION: &'static str = "SELECT version FROM products WHERE id = $1";
    const APPLY_PUT: &'static str = "UPDATE products SET name = $2, description = $3, \
         price = $4::bigint::numeric / 100, category = $5, in_stock = $6, \
         updated_at = $7, version = $8 WHERE id = $1 AND version < $8";
    const APPLY_DELETE: &'static str = "DELETE FROM products WHERE id = $1 AND version < $2";

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn ids(ids: &[i64]) -> &[i64] {
        ids
    }

    async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        pool.begin().await
    }

    async fn create_many(pool: &PgPool, new: &[NewProduct]) -> Result<u64, StoreError> {
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
        .execute(pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// One statement: the `FROM` clause locks the row and reads the category
    /// it had.
    async fn update<'q>(
        pool: &'q PgPool,
        id: i64,
        update: Update<'q, Self>,
    ) -> Result<Updated, StoreError> {
        match update.fetch_optional(pool).await? {
            Some(UpdatedRow(updated)) => Ok(updated),
            None => Err(missed_write(current_version::<Self>(pool, id).await?)),
        }
    }
}
