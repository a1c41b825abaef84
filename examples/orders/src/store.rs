//! Orders in PostgreSQL or SQLite: the same SQL, run on whichever pool the configuration chose.

use lifecycle_core::{BoxError, CancellationToken, Dep, Dependency};
use lifecycle_sqlx::jobs::{self, Job, JobHandler};
use lifecycle_sqlx::sqlx::{self, PgConnection, Row};
use lifecycle_sqlx::{PgPool, SqlitePool};
use serde::Serialize;

/// The queue new orders are processed from (PostgreSQL).
pub(crate) const QUEUE: &str = "orders";

#[derive(Clone)]
pub(crate) enum Store {
    Postgres(Dep<PgPool>),
    Sqlite(Dep<SqlitePool>),
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub(crate) struct Order {
    pub(crate) id: i64,
    pub(crate) item: String,
    pub(crate) quantity: i64,
    pub(crate) status: String,
}

/// Runs `$body` with `$pool` bound to the running sqlx pool, whichever database it is.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Postgres(db) => {
                let $pool = db.pool()?;
                $body
            }
            Store::Sqlite(db) => {
                let $pool = db.pool()?;
                $body
            }
        }
    };
}

impl Store {
    /// The pool's component, from its handle: what must start before anything uses the store.
    pub(crate) fn dependency(&self) -> Dependency {
        match self {
            Store::Postgres(db) => db.into(),
            Store::Sqlite(db) => db.into(),
        }
    }

    pub(crate) async fn migrate(&self) -> Result<(), BoxError> {
        let id_column = match self {
            Store::Postgres(_) => "BIGSERIAL PRIMARY KEY",
            Store::Sqlite(_) => "INTEGER PRIMARY KEY AUTOINCREMENT",
        };
        let create = format!(
            "CREATE TABLE IF NOT EXISTS orders (id {id_column}, item TEXT NOT NULL, quantity BIGINT NOT NULL, \
             status TEXT NOT NULL DEFAULT 'new')"
        );
        // On PostgreSQL, DDL takes catalog locks even when it changes nothing: skipped when the
        // table exists, which keeps an upgraded process's start short.
        let exists = match self {
            Store::Postgres(db) => {
                // The simple query protocol: one round trip on a new connection, none to prepare.
                sqlx::raw_sql("SELECT to_regclass('orders') IS NOT NULL")
                    .fetch_one(db.pool()?)
                    .await?
                    .try_get::<bool, _>(0)?
            }
            Store::Sqlite(_) => false,
        };
        if !exists {
            with_pool!(self, |pool| {
                sqlx::query(sqlx::AssertSqlSafe(create)).execute(pool).await?;
            });
        }
        if let Store::Postgres(db) = self {
            jobs::install(db.pool()?).await?;
        }
        Ok(())
    }

    /// Writes the order; on PostgreSQL its processing job commits in the same transaction.
    pub(crate) async fn create(&self, item: &str, quantity: i64) -> Result<i64, BoxError> {
        const INSERT: &str = "INSERT INTO orders (item, quantity) VALUES ($1, $2) RETURNING id";
        match self {
            Store::Postgres(db) => {
                let mut tx = db.pool()?.begin().await?;
                let id: i64 =
                    sqlx::query_scalar(INSERT).bind(item).bind(quantity).fetch_one(&mut *tx).await?;
                jobs::enqueue(&mut *tx, QUEUE, &id.to_string()).await?;
                tx.commit().await?;
                Ok(id)
            }
            Store::Sqlite(db) => {
                Ok(sqlx::query_scalar(INSERT).bind(item).bind(quantity).fetch_one(db.pool()?).await?)
            }
        }
    }

    pub(crate) async fn get(&self, id: i64) -> Result<Option<Order>, BoxError> {
        const SELECT: &str = "SELECT id, item, quantity, status FROM orders WHERE id = $1";
        let row: Option<(i64, String, i64, String)> =
            with_pool!(self, |pool| sqlx::query_as(SELECT).bind(id).fetch_optional(pool).await?);
        Ok(row.map(|(id, item, quantity, status)| Order { id, item, quantity, status }))
    }

    /// SQLite's stand-in for the job queue: processes up to `limit` new orders. Returns how many.
    pub(crate) async fn process_new(&self, limit: i64) -> Result<u64, BoxError> {
        const PROCESS: &str = "UPDATE orders SET status = 'processed' WHERE id IN \
                               (SELECT id FROM orders WHERE status = 'new' ORDER BY id LIMIT $1)";
        Ok(with_pool!(self, |pool| sqlx::query(PROCESS).bind(limit).execute(pool).await?.rows_affected()))
    }
}

/// Processes an order's job (PostgreSQL): inside the job's transaction, so "processed" and
/// "job done" commit together.
pub(crate) struct ProcessOrder;

impl JobHandler for ProcessOrder {
    async fn handle(
        &self,
        job: &Job,
        transaction: &mut PgConnection,
        _cancel: CancellationToken,
    ) -> Result<(), BoxError> {
        let id: i64 = job.payload.parse()?;
        sqlx::query("UPDATE orders SET status = 'processed' WHERE id = $1")
            .bind(id)
            .execute(transaction)
            .await?;
        Ok(())
    }
}
