//! What differs between databases: how a URL becomes connect options, and the cheapest check.

use std::future::Future;

use sqlx::Connection;

/// A database the pool component supports. Implemented for `sqlx::Postgres` and `sqlx::Sqlite`
/// (with their features).
pub trait Backend: sqlx::Database {
    /// Name used in logs ("postgres", "sqlite").
    const KIND: &'static str;

    /// Connect options from `url`; `component` names the connections where the server can show it
    /// (PostgreSQL's `application_name`).
    fn connect_options(
        url: &str,
        component: &str,
    ) -> Result<<Self::Connection as Connection>::Options, sqlx::Error>;

    /// One round trip that proves a connection runs queries: the simple query protocol, so a
    /// new connection does not first prepare the statement (one more round trip, which under
    /// load is most of a successor's wait during an upgrade).
    fn ping(pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_;

    /// Whether retrying after `error` can help (the server is not up yet) or not (bad
    /// credentials; a TLS connection the server cannot make, or whose certificate does not
    /// verify, which no retry changes).
    fn is_transient(error: &sqlx::Error) -> bool {
        matches!(error, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_))
    }
}

#[cfg(feature = "postgres")]
impl Backend for sqlx::Postgres {
    const KIND: &'static str = "postgres";

    fn connect_options(url: &str, component: &str) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
        Ok(url.parse::<sqlx::postgres::PgConnectOptions>()?.application_name(component))
    }

    async fn ping(pool: &sqlx::Pool<Self>) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("SELECT 1").execute(pool).await.map(drop)
    }

    fn is_transient(error: &sqlx::Error) -> bool {
        match error {
            // 57P03 cannot_connect_now: the server is starting up or shutting down.
            sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
            other => matches!(other, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut),
        }
    }
}

#[cfg(feature = "sqlite")]
impl Backend for sqlx::Sqlite {
    const KIND: &'static str = "sqlite";

    fn connect_options(
        url: &str,
        _component: &str,
    ) -> Result<sqlx::sqlite::SqliteConnectOptions, sqlx::Error> {
        Ok(url.parse::<sqlx::sqlite::SqliteConnectOptions>()?.create_if_missing(true))
    }

    async fn ping(pool: &sqlx::Pool<Self>) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("SELECT 1").execute(pool).await.map(drop)
    }
}
