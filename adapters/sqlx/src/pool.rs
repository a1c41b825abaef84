//! The pool component: connect and check at start, close and wait for every connection at stop.

use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use lifecycle_core::{
    BoxError, Component, ComponentId, ComponentOptions, Context, Health, ResourceError, Retry, redact_url,
    scrub_password,
};
use sqlx::pool::PoolOptions;

use crate::Backend;

/// How long before its deadline a hook gives up, so that its own error (with attempts, last
/// cause, connections still out) reaches the report rather than a bare timeout.
const MARGIN: Duration = Duration::from_millis(100);

/// How long a health check waits for the database's answer: well inside a readiness probe's
/// own timeout (Kubernetes' default is 1 s), so a database that hangs reads as degraded rather
/// than as a probe that timed out.
const PING_WITHIN: Duration = Duration::from_millis(500);

/// A sqlx pool as a component. Use the aliases `PgPool` and `SqlitePool`.
///
/// The pool exists from the end of the component's start to its stop; [`pool`](Self::pool)
/// returns it. At start, it connects and runs a check query, retrying transient failures (the
/// server is not up yet) with backoff until just before the start deadline. At stop, it closes
/// the pool and waits for checked-out connections until just before the stop deadline, then
/// reports how many were still out.
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
    /// A pool for `url`, registered as `name` (PostgreSQL shows the name as `application_name`).
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
    /// one direct connection finds out why (refused, bad credentials), for the error.
    async fn connect_once(
        &self,
        options: &<DB::Connection as sqlx::Connection>::Options,
        give_up: Instant,
    ) -> Result<sqlx::Pool<DB>, sqlx::Error> {
        use sqlx::Connection;
        let patience = (give_up.saturating_duration_since(Instant::now()) / 4)
            .clamp(Duration::from_millis(100), self.acquire_timeout.max(Duration::from_millis(100)));
        let pool = PoolOptions::<DB>::new()
            .max_connections(self.max_connections)
            .min_connections(self.min_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_lazy_with(options.clone());
        let checked = match tokio::time::timeout(patience, DB::ping(&pool)).await {
            Ok(Ok(())) => return Ok(pool),
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => Err(sqlx::Error::PoolTimedOut),
            Ok(Err(error)) => Err(error),
        };
        pool.close().await;
        if let Err(sqlx::Error::PoolTimedOut) = checked {
            let probe = DB::Connection::connect_with(options).await?;
            probe.close().await?;
        }
        checked
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
                let result = self.connect_once(options, give_up).await;
                if let Err(error) = &result {
                    tracing::warn!(component = %self.name, url = %self.redacted_url(), error = %self.scrub(error), attempt, "database not reachable");
                }
                result
            }
        };
        match Retry::until(give_up).run(attempt, DB::is_transient).await {
            Ok(pool) => {
                tracing::info!(component = %self.name, url = %self.redacted_url(), kind = DB::KIND, "database pool connected");
                self.warm(&pool).await;
                // A second start of the same value would leave the first pool to its drop.
                let _ = self.pool.set(pool);
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
        // `close` refuses new checkouts at once, closes idle connections, then waits for the
        // checked-out ones, which are closed (not returned) when their holders drop them.
        match tokio::time::timeout_at(ctx.give_up_at(MARGIN, Duration::from_secs(10)), pool.close()).await {
            Ok(()) => Ok(()),
            Err(_) => {
                let out = (pool.size() as usize).saturating_sub(pool.num_idle());
                Err(ResourceError::StillInUse { component: self.name.clone(), out, waited: began.elapsed() }
                    .into())
            }
        }
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
