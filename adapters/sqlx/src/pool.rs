//! The pool component: connect and check at start, close at stop: idle connections at once,
//! checked-out ones waited for until the stop timeout, when what they still run is cancelled on
//! the server.

use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, timeout_at};

use lifecycle_core::{
    BoxError, Component, ComponentId, ComponentOptions, Context, Health, ResourceError, Retry, Tasks,
    redact_url, scrub_password,
};
use sqlx::pool::{PoolConnection, PoolOptions};

use crate::{Backend, Interrupted};

/// How long before its deadline a hook gives up, so that its own error (with attempts, last
/// cause, connections still out) reaches the report rather than a bare timeout.
const MARGIN: Duration = Duration::from_millis(100);

/// How long a health check waits for the database's answer: well inside a readiness probe's
/// own timeout (Kubernetes' default is 1 s), so a database that hangs reads as degraded rather
/// than as a probe that timed out.
const PING_WITHIN: Duration = Duration::from_millis(500);

/// The most of a stop's time kept, at its end, for cancelling what the connections still out
/// run: one connection to the server, two queries, and the holders' time to let go. A short
/// stop keeps half of its time for it instead.
const INTERRUPT_WITHIN: Duration = Duration::from_secs(1);

/// How long a pool that a start left behind (cancelled, or an attempt dropped at the retry
/// deadline) may take to close in the background: its checkouts were all dropped with the start.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A sqlx pool as a component. Use the aliases `PgPool` and `SqlitePool`.
///
/// The pool exists from the end of the component's start to its stop; [`pool`](Self::pool)
/// returns it. At start, it connects and runs a check query, retrying transient failures (the
/// server is not up yet) with backoff until just before the start deadline; a start cancelled
/// on the way closes what it opened. At stop, it closes the idle connections at once and waits
/// for the checked-out ones until shortly before the stop deadline. Then, on PostgreSQL, the
/// queries they still run are cancelled on the server, and the connections still open after a
/// short grace are ended there, so that nothing of the pool outlives the process; the report
/// notes how many ("cancelled 1 query still running at the stop timeout") and the stop fails
/// with how many connections were still out. SQLite has no server to ask: a statement still
/// running goes on in its connection's thread until it ends, and the connection is closed when
/// its holder lets go of it (or with the process; a transaction it left open is rolled back).
pub struct SqlxPool<DB: Backend> {
    name: ComponentId,
    url: String,
    max_connections: u32,
    min_connections: u32,
    acquire_timeout: Duration,
    options: ComponentOptions,
    pool: OnceLock<sqlx::Pool<DB>>,
    // `fn() -> DB`: the component holds no `DB` value, so it is `Sync` whatever `DB` is.
    _database: PhantomData<fn() -> DB>,
}

impl<DB: Backend> SqlxPool<DB> {
    /// A pool for `url`, registered as `name`. PostgreSQL shows its connections with the
    /// `application_name` `name-1a2b3c4d`, the suffix unique to each start's pool, after the
    /// `application_name` the URL sets, if any (`billing/name-1a2b3c4d`).
    pub fn new(name: impl Into<ComponentId>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            options: ComponentOptions::new(),
            pool: OnceLock::new(),
            _database: PhantomData,
        }
    }

    /// The most connections the pool opens (default 10).
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Connections the pool keeps open when idle (default 0). They are opened during the start,
    /// in parallel, so a service turns ready with a warm pool: a process that takes over from
    /// another under load (an upgrade) does not make its first requests wait for connections.
    #[must_use]
    pub fn min_connections(mut self, min: u32) -> Self {
        self.min_connections = min;
        self
    }

    /// How long a checkout waits for a free connection (default 5 s).
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The component's timeouts and criticality.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    /// The pool, between the component's start and its stop.
    pub fn pool(&self) -> Result<&sqlx::Pool<DB>, ResourceError> {
        self.pool
            .get()
            .filter(|pool| !pool.is_closed())
            .ok_or_else(|| ResourceError::NotRunning { component: self.name.clone() })
    }

    /// The URL with its password hidden.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    fn scrub(&self, error: &sqlx::Error) -> String {
        scrub_password(&error.to_string(), &self.url)
    }

    /// One attempt: the pool and its check query. Each attempt waits at most a quarter of the
    /// time left, so that several fit before `give_up`. When the pool only says it timed out,
    /// one direct connection finds out why (refused, bad credentials), for the error. A pool
    /// that fails its check is closed; one whose attempt is dropped is closed among `tasks`.
    async fn connect_once(
        &self,
        options: &<DB::Connection as sqlx::Connection>::Options,
        give_up: Instant,
        tasks: &Tasks,
    ) -> Result<Opening<DB>, sqlx::Error> {
        use sqlx::Connection;
        let patience = (give_up.saturating_duration_since(Instant::now()) / 4)
            .clamp(Duration::from_millis(100), self.acquire_timeout.max(Duration::from_millis(100)));
        let opening = Opening::new(
            PoolOptions::<DB>::new()
                .max_connections(self.max_connections)
                .min_connections(self.min_connections)
                .acquire_timeout(self.acquire_timeout)
                .connect_lazy_with(options.clone()),
            tasks.clone(),
        );
        let error = match tokio::time::timeout(patience, DB::ping(&opening.pool)).await {
            Ok(Ok(())) => return Ok(opening),
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => sqlx::Error::PoolTimedOut,
            Ok(Err(error)) => error,
        };
        opening.close().await;
        if let sqlx::Error::PoolTimedOut = error {
            let probe = DB::Connection::connect_with(options).await?;
            probe.close().await?;
        }
        Err(error)
    }

    /// The error of a start whose component was cancelled while it connected.
    fn cancelled(&self) -> BoxError {
        format!("component `{}`: start cancelled while connecting to {}", self.name, self.redacted_url())
            .into()
    }

    /// Notes (and logs) what a stop that timed out did to the work still on the server; returns
    /// whether it cut anything short.
    fn note_interrupt(
        &self,
        ctx: &Context,
        interrupted: Result<Result<Option<Interrupted>, sqlx::Error>, tokio::time::error::Elapsed>,
    ) -> bool {
        match interrupted {
            Ok(Ok(None)) => false,
            Ok(Ok(Some(Interrupted { cancelled, ended }))) => {
                if cancelled > 0 {
                    tracing::warn!(component = %self.name, cancelled, "cancelled queries still running at the stop timeout");
                    ctx.note(format!(
                        "cancelled {} still running at the stop timeout",
                        counted(cancelled, "query", "queries")
                    ));
                }
                if ended > 0 {
                    tracing::warn!(component = %self.name, ended, "ended connections still open on the server after the cancel");
                    ctx.note(format!(
                        "ended {} still open on the server",
                        counted(ended, "connection", "connections")
                    ));
                }
                cancelled + ended > 0
            }
            Ok(Err(error)) => {
                let error = self.scrub(&error);
                tracing::warn!(component = %self.name, %error, "cannot cancel the queries still running at the stop timeout");
                ctx.note(format!("could not cancel the queries still running at the stop timeout: {error}"));
                false
            }
            Err(_) => {
                tracing::warn!(component = %self.name, "no time left to cancel the queries still running at the stop timeout");
                ctx.note("no time left to cancel the queries still running at the stop timeout");
                false
            }
        }
    }
}

/// `1 query`, `2 queries`.
fn counted(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// Connections checked out (or being opened or closed): the ones a stop waits for.
fn in_use<DB: Backend>(pool: &sqlx::Pool<DB>) -> usize {
    (pool.size() as usize).saturating_sub(pool.num_idle())
}

/// Closes `pool` to checkouts and takes its idle connections out, for [`closed`] to close at
/// once: sqlx's own `close` closes them only once every checked-out connection is back, which
/// for a stuck query is never. Taken first, since a closed pool lends none.
fn shut<DB: Backend>(pool: &sqlx::Pool<DB>) -> Vec<PoolConnection<DB>> {
    let idle: Vec<PoolConnection<DB>> = std::iter::from_fn(|| pool.try_acquire()).collect();
    // `close` marks the pool closed when called; its future, which waits, is `closed`'s.
    drop(pool.close());
    idle
}

/// Closes `idle` (each with a goodbye to the server), then waits until every connection of the
/// shut `pool` is back and closed.
async fn closed<DB: Backend>(pool: &sqlx::Pool<DB>, idle: Vec<PoolConnection<DB>>) {
    for connection in idle {
        // A connection that cannot say goodbye is gone already.
        let _ = connection.close().await;
    }
    pool.close().await;
}

/// A pool that a start is opening, closed (not just dropped) unless handed over with
/// [`into_pool`](Opening::into_pool): a start cancelled, or an attempt dropped at the retry
/// deadline, would otherwise leave its connections open for as long as sqlx's own tasks hold
/// the pool.
struct Opening<DB: Backend> {
    pool: sqlx::Pool<DB>,
    /// Where the close of a dropped one runs: the component's tasks, waited for by its stop.
    tasks: Tasks,
    armed: bool,
}

impl<DB: Backend> Opening<DB> {
    fn new(pool: sqlx::Pool<DB>, tasks: Tasks) -> Self {
        Self { pool, tasks, armed: true }
    }

    fn into_pool(mut self) -> sqlx::Pool<DB> {
        self.armed = false;
        self.pool.clone()
    }

    /// Closes the pool now. Dropped on the way, it closes it in the background.
    async fn close(mut self) {
        let idle = shut(&self.pool);
        closed(&self.pool, idle).await;
        self.armed = false;
    }
}

impl<DB: Backend> Drop for Opening<DB> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let idle = shut(&self.pool);
        // Without a runtime (dropped as it shuts down) nothing can wait: the pool is closed to
        // checkouts, and its connections go with it.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let pool = self.pool.clone();
        self.tasks.spawn("close_abandoned_pool", async move {
            let _ = tokio::time::timeout(CLOSE_WITHIN, closed(&pool, idle)).await;
        });
    }
}

impl<DB: Backend> SqlxPool<DB> {
    /// Opens `min_connections` at once (all checked out together, then returned). A failure is
    /// only logged: the pool opens connections on demand anyway.
    async fn warm(&self, pool: &sqlx::Pool<DB>) {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..self.min_connections {
            let pool = pool.clone();
            opening.spawn(async move { pool.acquire().await });
        }
        let mut held = Vec::new();
        while let Some(opened) = opening.join_next().await {
            match opened {
                Ok(Ok(connection)) => held.push(connection),
                Ok(Err(error)) => {
                    tracing::warn!(component = %self.name, error = %self.scrub(&error), "cannot open a warm connection");
                }
                Err(error) => tracing::warn!(component = %self.name, %error, "warming task failed"),
            }
        }
        if !held.is_empty() {
            tracing::debug!(component = %self.name, connections = held.len(), "pool warmed");
        }
    }
}

impl<DB: Backend> Component for SqlxPool<DB> {
    fn name(&self) -> ComponentId {
        self.name.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    /// Not yet: the pool is set once, so a second start would keep the first, closed, pool.
    fn restartable(&self) -> bool {
        false
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let options = DB::connect_options(&self.url, self.name.as_str()).map_err(|error| {
            ResourceError::InvalidUrl {
                component: self.name.clone(),
                url: self.redacted_url(),
                reason: self.scrub(&error),
            }
        })?;
        let give_up = ctx.give_up_at(MARGIN, Duration::from_secs(15));
        let attempt = |attempt| {
            let options = &options;
            async move {
                let result = self.connect_once(options, give_up, ctx.tasks()).await;
                if let Err(error) = &result {
                    tracing::warn!(component = %self.name, url = %self.redacted_url(), error = %self.scrub(error), attempt, "database not reachable");
                }
                result
            }
        };
        // A token cancelled while connecting ends the start at once; the attempt dropped with it
        // closes its pool.
        let retry = Retry::until(give_up);
        let connected = tokio::select! {
            connected = retry.run(attempt, DB::is_transient) => connected,
            () = ctx.cancelled() => return Err(self.cancelled()),
        };
        match connected {
            Ok(opening) => {
                tracing::info!(component = %self.name, url = %self.redacted_url(), kind = DB::KIND, "database pool connected");
                let cancelled = tokio::select! {
                    () = self.warm(&opening.pool) => false,
                    () = ctx.cancelled() => true,
                };
                if cancelled {
                    opening.close().await;
                    return Err(self.cancelled());
                }
                // A second start of the same value (never by a restart policy: the component is
                // not restartable) keeps the first pool; this one is closed, not left to its drop.
                if let Err(pool) = self.pool.set(opening.into_pool()) {
                    Opening::new(pool, ctx.tasks().clone()).close().await;
                }
                Ok(())
            }
            Err(failure) => Err(ResourceError::Connect {
                component: self.name.clone(),
                url: self.redacted_url(),
                attempts: failure.attempts,
                elapsed: failure.elapsed,
                last_error: failure.last_error.map_or_else(
                    || "no answer before the start deadline".to_owned(),
                    |error| self.scrub(&error),
                ),
            }
            .into()),
        }
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        let Some(pool) = self.pool.get() else { return Ok(()) };
        let began = Instant::now();
        let give_up = ctx.give_up_at(MARGIN, Duration::from_secs(10));
        // Closed to checkouts and idle connections closed at once; the checked-out ones are
        // closed (not returned) when their holders drop them.
        let idle = shut(pool);
        let mut closing = std::pin::pin!(closed(pool, idle));
        let interrupt_at = give_up - (give_up.saturating_duration_since(began) / 2).min(INTERRUPT_WITHIN);
        if timeout_at(interrupt_at, closing.as_mut()).await.is_ok() {
            return Ok(());
        }
        let at_interrupt = (in_use(pool), began.elapsed());
        // Closing a connection does not end its query: the server notices that its client left
        // only once the query is done (and so, not when this process exits). So what is still
        // running is cancelled there, its holders are given half of the time left to let go,
        // and what is still open then is ended.
        let options = pool.connect_options();
        // Set once `closing` completed (during the grace), which must not be polled again.
        let mut closed_in_grace = false;
        let grace = async {
            // Timed from its first poll, which comes once the cancel is sent: the time it took
            // to connect and send it is not taken from the holders.
            let grace_until = Instant::now() + give_up.saturating_duration_since(Instant::now()) / 2;
            closed_in_grace = timeout_at(grace_until, closing.as_mut()).await.is_ok();
            closed_in_grace
        };
        let interrupted = timeout_at(give_up, DB::interrupt(&options, grace)).await;
        let cut_short = self.note_interrupt(ctx, interrupted);
        let all_closed = closed_in_grace || timeout_at(give_up, closing).await.is_ok();
        let (out, waited) = match (all_closed, cut_short) {
            (true, false) => return Ok(()),
            // Every connection closed, once what they ran was cut short: as they were then.
            (true, true) => at_interrupt,
            (false, _) => (in_use(pool), began.elapsed()),
        };
        Err(ResourceError::StillInUse { component: self.name.clone(), out, waited }.into())
    }

    /// Healthy when a query goes through. A database that does not answer makes the pool
    /// degraded, not unhealthy: the pool reconnects by itself once the server is back, and
    /// taking every instance out of its balancer at once (they share the database) would turn a
    /// database blip into an outage. Unhealthy when the pool is not running.
    async fn health(&self) -> Health {
        match self.pool() {
            // Bounded: a checkout waits up to the acquire timeout for a server that does not
            // answer, longer than a health check may take.
            Ok(pool) => match tokio::time::timeout(PING_WITHIN, DB::ping(pool)).await {
                Ok(Ok(())) => Health::Healthy,
                Ok(Err(error)) => Health::Degraded(format!("database unreachable: {}", self.scrub(&error))),
                Err(_) => Health::Degraded(format!("database did not answer within {PING_WITHIN:?}")),
            },
            Err(error) => Health::Unhealthy(error.to_string()),
        }
    }
}

impl<DB: Backend> fmt::Debug for SqlxPool<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxPool")
            .field("name", &self.name)
            .field("kind", &DB::KIND)
            .field("url", &self.redacted_url())
            .field("size", &self.pool.get().map(sqlx::Pool::size))
            .finish()
    }
}
