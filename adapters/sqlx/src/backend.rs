//! What differs between databases: how a URL becomes connect options, the cheapest check, and
//! what a stop that timed out can still do about the statements its connections run.

use std::future::Future;

use sqlx::Connection;

/// What a stop that timed out did on the server to the work the pool's connections still had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interrupted {
    /// Queries still running that were cancelled.
    pub cancelled: u64,
    /// Connections still open after the cancel and its grace that the server ended.
    pub ended: u64,
}

/// A database the pool component supports. Implemented for `sqlx::Postgres` and `sqlx::Sqlite`
/// (with their features).
pub trait Backend: sqlx::Database {
    /// Name used in logs ("postgres", "sqlite").
    const KIND: &'static str;

    /// Connect options from `url`, for one pool: `component` names its connections where the
    /// server can show it (PostgreSQL's `application_name`), together with a suffix unique to
    /// the pool, so that [`interrupt`](Backend::interrupt) finds them and no one else's.
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

    /// At a stop that timed out, with the pool closed: cancels the queries its connections
    /// (made with `options`) still run, waits for `grace` (true once the pool got every
    /// connection back and closed it), then ends the connections still open. From a connection of
    /// its own, since the pool takes no checkouts any more. `None` when there is no server to ask:
    /// the default, and SQLite's, whose statements run in this process until they end.
    fn interrupt(
        options: &<Self::Connection as Connection>::Options,
        grace: impl Future<Output = bool> + Send,
    ) -> impl Future<Output = Result<Option<Interrupted>, sqlx::Error>> + Send {
        let _ = (options, grace);
        async { Ok(None) }
    }
}

/// The queries of one pool's connections, cancelled. Only client backends: a parallel query's
/// workers carry their leader's `application_name`, and go with it. Idle ones and idle in a
/// transaction are left out: a cancel does nothing to a backend waiting for its client.
#[cfg(feature = "postgres")]
const CANCEL: &str = "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity \
     WHERE application_name = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
     AND state IN ('active', 'fastpath function call')";

/// Every connection of one pool still open, ended (its transaction, if any, rolled back).
#[cfg(feature = "postgres")]
const TERMINATE: &str = "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
     WHERE application_name = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()";

/// How the stop's own connection shows on the server.
#[cfg(feature = "postgres")]
const STOP_CONNECTION: &str = "lifecycle-sqlx pool stop";

/// The most of an `application_name` PostgreSQL keeps (`NAMEDATALEN - 1`); it cuts the rest.
#[cfg(feature = "postgres")]
const NAME_MAX: usize = 63;

/// The `application_name` of one pool: `component-1a2b3c4d`, after the name the URL (or
/// `PGAPPNAME`) set, if any (`billing/component-1a2b3c4d`). Printable ASCII and at most
/// [`NAME_MAX`] bytes, the suffix always whole: the server would otherwise change the name, and
/// the stop would not find the pool's connections by it.
#[cfg(feature = "postgres")]
fn instance_name(set: Option<&str>, component: &str) -> String {
    let suffix = format!("-{:08x}", unique_u32());
    let base = match set {
        Some(set) if !set.is_empty() => format!("{set}/{component}"),
        _ => component.to_owned(),
    };
    let mut name: String = base
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .take(NAME_MAX - suffix.len())
        .collect();
    name.push_str(&suffix);
    name
}

/// A number no other pool of this process, and most likely of no other process, has: a
/// randomly keyed hash of the process, the time and a count.
#[cfg(feature = "postgres")]
fn unique_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    // The low half of a 64-bit hash: as random as the rest of it.
    hasher.finish() as u32
}

#[cfg(feature = "postgres")]
impl Backend for sqlx::Postgres {
    const KIND: &'static str = "postgres";

    fn connect_options(url: &str, component: &str) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
        let options = url.parse::<sqlx::postgres::PgConnectOptions>()?;
        let name = instance_name(options.get_application_name(), component);
        Ok(options.application_name(&name))
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

    /// By `application_name`, which the pool's connections share and no one else's do, rather
    /// than by the process ids the connections had when they were opened: through a pooler in
    /// transaction mode a client's server connection changes, and the name goes with it. A role
    /// may always cancel and end its own connections, and sees their state.
    async fn interrupt(
        options: &sqlx::postgres::PgConnectOptions,
        grace: impl Future<Output = bool> + Send,
    ) -> Result<Option<Interrupted>, sqlx::Error> {
        let Some(name) = options.get_application_name() else { return Ok(None) };
        let mut connection =
            sqlx::PgConnection::connect_with(&options.clone().application_name(STOP_CONNECTION)).await?;
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).bind(name).persistent(false);
        let cancelled = count(CANCEL).fetch_one(&mut connection).await?;
        let ended = if grace.await { 0 } else { count(TERMINATE).fetch_one(&mut connection).await? };
        // Only a goodbye: what it did is done whether or not the server hears it.
        let _ = connection.close().await;
        Ok(Some(Interrupted {
            cancelled: u64::try_from(cancelled).unwrap_or(0),
            ended: u64::try_from(ended).unwrap_or(0),
        }))
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

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;

    #[test]
    fn each_pool_gets_a_name_of_its_own_that_the_server_keeps_whole() {
        let (a, b) = (instance_name(None, "orders_db"), instance_name(None, "orders_db"));
        assert_ne!(a, b);
        let suffix = a.strip_prefix("orders_db-").unwrap_or_default();
        assert!(suffix.len() == 8 && suffix.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");

        assert!(instance_name(Some("billing"), "orders_db").starts_with("billing/orders_db-"));
        assert!(instance_name(Some(""), "orders_db").starts_with("orders_db-"));
        // What PostgreSQL would cut or change: more than 63 bytes, characters outside printable ASCII.
        let long = instance_name(Some("très long"), &"x".repeat(100));
        assert_eq!(long.len(), NAME_MAX);
        assert!(long.starts_with("tr?s long/xxx"), "{long}");
        assert_eq!(long.as_bytes()[NAME_MAX - 9], b'-', "the suffix is whole: {long}");
    }
}
