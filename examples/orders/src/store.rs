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
             status TEXT NOT NULL DEFAULT 'new', request_id TEXT)"
        );
        const REQUEST_INDEX: &str =
            "CREATE UNIQUE INDEX IF NOT EXISTS orders_request_id ON orders (request_id)";
        match self {
            Store::Postgres(db) => {
                // DDL takes catalog locks even when it changes nothing: skipped when the last
                // step is in place, which keeps an upgraded process's start short. The simple
                // query protocol: one round trip on a new connection, none to prepare.
                let done = sqlx::raw_sql("SELECT to_regclass('orders_request_id') IS NOT NULL")
                    .fetch_one(db.pool()?)
                    .await?
                    .try_get::<bool, _>(0)?;
                if !done {
                    let pool = db.pool()?;
                    sqlx::query(sqlx::AssertSqlSafe(create)).execute(pool).await?;
                    // A table from before request ids gets the column.
                    sqlx::query("ALTER TABLE orders ADD COLUMN IF NOT EXISTS request_id TEXT")
                        .execute(pool)
                        .await?;
                    sqlx::query(REQUEST_INDEX).execute(pool).await?;
                }
                jobs::install(db.pool()?).await?;
            }
            Store::Sqlite(db) => {
                let pool = db.pool()?;
                sqlx::query(sqlx::AssertSqlSafe(create)).execute(pool).await?;
                let has_column: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pragma_table_info('orders') WHERE name = 'request_id'",
                )
                .fetch_one(pool)
                .await?;
                if has_column == 0 {
                    sqlx::query("ALTER TABLE orders ADD COLUMN request_id TEXT").execute(pool).await?;
                }
                sqlx::query(REQUEST_INDEX).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Writes the order; on PostgreSQL its processing job commits in the same transaction. A
    /// lost connection or a database that restarts is retried for a few seconds, under one
    /// request id: an attempt whose commit went through before its connection died is found,
    /// not written twice. With the client's idempotency key, the request id is that key's: a
    /// retried request (after a timeout, a reset, a restart of this service) finds the order
    /// its first attempt wrote, in the same unique index, and gets its id.
    pub(crate) async fn create(
        &self,
        item: &str,
        quantity: i64,
        idempotency_key: Option<&str>,
    ) -> Result<i64, BoxError> {
        // Prefixed: a client's key can never equal a generated id.
        let request = idempotency_key.map_or_else(request_id, |key| format!("key:{key}"));
        retrying(|| self.create_once(item, quantity, &request)).await
    }

    async fn create_once(&self, item: &str, quantity: i64, request: &str) -> Result<i64, BoxError> {
        const INSERT: &str = "INSERT INTO orders (item, quantity, request_id) VALUES ($1, $2, $3) \
                              ON CONFLICT (request_id) DO NOTHING RETURNING id";
        const EARLIER: &str = "SELECT id FROM orders WHERE request_id = $1";
        match self {
            Store::Postgres(db) => {
                let mut tx = db.pool()?.begin().await?;
                let inserted: Option<i64> = sqlx::query_scalar(INSERT)
                    .bind(item)
                    .bind(quantity)
                    .bind(request)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(id) = inserted else {
                    // An earlier attempt committed: its job was enqueued with it.
                    return Ok(sqlx::query_scalar(EARLIER).bind(request).fetch_one(&mut *tx).await?);
                };
                jobs::enqueue(&mut *tx, QUEUE, &id.to_string()).await?;
                tx.commit().await?;
                Ok(id)
            }
            Store::Sqlite(db) => {
                // Without a conflict target: SQLite checks a target against the connection's
                // schema when it compiles the statement, and a pooled connection opened before
                // the migration added the index would refuse it.
                const INSERT_SQLITE: &str = "INSERT OR IGNORE INTO orders (item, quantity, request_id) \
                                             VALUES ($1, $2, $3) RETURNING id";
                let pool = db.pool()?;
                let inserted: Option<i64> = sqlx::query_scalar(INSERT_SQLITE)
                    .bind(item)
                    .bind(quantity)
                    .bind(request)
                    .fetch_optional(pool)
                    .await?;
                match inserted {
                    Some(id) => Ok(id),
                    None => Ok(sqlx::query_scalar(EARLIER).bind(request).fetch_one(pool).await?),
                }
            }
        }
    }

    /// Reads an order, retrying a lost connection as `create` does.
    pub(crate) async fn get(&self, id: i64) -> Result<Option<Order>, BoxError> {
        retrying(|| self.get_once(id)).await
    }

    async fn get_once(&self, id: i64) -> Result<Option<Order>, BoxError> {
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

/// A request's id, unique enough that two requests never share one: what makes a retried write
/// find its earlier attempt instead of writing twice.
fn request_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    // Each `RandomState` has fresh random keys.
    let (a, b) = (RandomState::new().hash_one(std::process::id()), RandomState::new().hash_one(0u8));
    format!("{a:016x}{b:016x}")
}

/// Runs `attempt` again while it fails because the connection was lost or the database is
/// restarting, with a growing pause, for up to about four seconds.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BoxError>>,
{
    let mut pause = std::time::Duration::from_millis(50);
    let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(4);
    loop {
        match attempt().await {
            Err(error) if is_transient(&error) && tokio::time::Instant::now() + pause < give_up => {
                tracing::warn!(%error, "database unreachable; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

/// Whether an error says the connection or the server went away, rather than the request
/// being wrong: worth another attempt.
fn is_transient(error: &BoxError) -> bool {
    match error.downcast_ref::<sqlx::Error>() {
        Some(
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolClosed,
        ) => true,
        // 57P01-57P03: the server is shutting down, crashed or not accepting yet; class 08:
        // connection exceptions.
        Some(sqlx::Error::Database(db)) => {
            db.code().is_some_and(|code| code.starts_with("57P0") || code.starts_with("08"))
        }
        _ => false,
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
