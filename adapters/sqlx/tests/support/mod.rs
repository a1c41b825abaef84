//! Shared by the PostgreSQL and SQLite tests: the server's URL, unique names, and counting
//! connections on the server's side. (Registries are built and run with `lifecycle_core::testing`.)

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lifecycle_core::{BoxError, ComponentOptions, Dep, FnComponent};
use lifecycle_sqlx::{Backend, SqlxPool, sqlx};

/// The PostgreSQL the tests use: `LIFECYCLE_TEST_POSTGRES_URL`, or the local server with trust auth.
pub fn pg_url() -> String {
    std::env::var("LIFECYCLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A name no other test (or test process) uses at the same time.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The `application_name` of the connections of the pools registered as `component`, as a
/// `LIKE` pattern: each pool adds a suffix of its own (`component-1a2b3c4d`).
pub fn of_pool(component: &str) -> String {
    format!("{component}-%")
}

/// Connections the server has open for `application_name` (a `LIKE` pattern: `prefix_%`).
#[cfg(feature = "postgres")]
pub async fn server_connections(application_name: &str) -> i64 {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1")
            .bind(application_name)
            .fetch_one(&mut connection)
            .await
            .unwrap();
    connection.close().await.unwrap();
    count
}

/// Waits until the server has no connection left for `application_name` (a backend exits a
/// moment after its client closed the connection), up to 5 s; returns the last count.
#[cfg(feature = "postgres")]
pub async fn until_no_server_connections(application_name: &str) -> i64 {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let count = server_connections(application_name).await;
        if count == 0 || std::time::Instant::now() >= until {
            return count;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A component named `name` that, at start, runs `statement` through `db`'s pool in a task of
/// its own that ignores the shutdown entirely (a query stuck at stop), and waits `stop_timeout`
/// for it when it stops.
pub fn stuck_statement<DB>(
    name: &'static str,
    db: &Dep<SqlxPool<DB>>,
    statement: &'static str,
    stop_timeout: Duration,
) -> FnComponent
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let of = db.clone();
    FnComponent::new(name)
        .depends_on(db)
        .options(ComponentOptions::new().stop_timeout(stop_timeout))
        .on_start(move |ctx| {
            let pool = of.pool().cloned();
            async move {
                let pool = pool?;
                ctx.tasks()
                    .spawn("stuck", async move { sqlx::raw_sql(statement).execute(&pool).await.map(drop) });
                Ok::<(), BoxError>(())
            }
        })
}
