//! A deadpool-redis pool as a lifecycle component: checked with `PING` at start (with backoff
//! until the start deadline), every connection named after the component with `CLIENT SETNAME`,
//! and closed at stop with the connections in use waited for.
//!
//! `deadpool_redis` (and through it `redis`) is re-exported, so its version is pinned once.
//!
//! ```
//! use lifecycle_core::RegistryBuilder;
//! use lifecycle_redis::RedisPool;
//!
//! let mut builder = RegistryBuilder::new();
//! let cache = builder.add(RedisPool::new("cache", "redis://127.0.0.1:6379").max_size(16)).dep();
//! // Components holding `cache` get connections with `cache.pool()?.get().await?`.
//! # let _ = cache;
//! ```

use std::fmt;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use deadpool_redis::{Config, Pool, PoolError, Runtime};
use lifecycle_core::{
    BoxError, Component, ComponentId, ComponentOptions, Context, Health, ResourceError, Retry, redact_url,
    scrub_password,
};

pub use deadpool_redis;
pub use deadpool_redis::redis;

/// How long before its deadline a hook gives up, so that its own error reaches the report.
const MARGIN: Duration = Duration::from_millis(100);

/// A deadpool-redis pool as a component.
pub struct RedisPool {
    name: ComponentId,
    url: String,
    max_size: usize,
    options: ComponentOptions,
    /// The pool of the current start; a restart puts a new one in.
    pool: RwLock<Option<Pool>>,
}

impl RedisPool {
    /// A pool for `url`, registered as `name`; every connection carries the name (`CLIENT SETNAME`).
    pub fn new(name: impl Into<ComponentId>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            max_size: 16,
            options: ComponentOptions::new(),
            pool: RwLock::new(None),
        }
    }

    /// The most connections the pool opens (default 16).
    #[must_use]
    pub fn max_size(mut self, max: usize) -> Self {
        self.max_size = max;
        self
    }

    /// The component's timeouts and criticality.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    /// The pool, between the component's start and its stop (a cheap handle: clones share
    /// the connections). After a restart, the new start's pool.
    pub fn pool(&self) -> Result<Pool, ResourceError> {
        self.slot()
            .as_ref()
            .filter(|pool| !pool.is_closed())
            .cloned()
            .ok_or_else(|| ResourceError::NotRunning { component: self.name.clone() })
    }

    /// The pool slot; a poisoned lock still holds a valid `Option`.
    fn slot(&self) -> std::sync::RwLockReadGuard<'_, Option<Pool>> {
        self.pool.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `pool` in the slot (or empties it), returning what was there.
    fn replace(&self, pool: Option<Pool>) -> Option<Pool> {
        std::mem::replace(&mut *self.pool.write().unwrap_or_else(PoisonError::into_inner), pool)
    }

    /// The URL with its password hidden.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    fn build(&self) -> Result<Pool, ResourceError> {
        let invalid = |reason: String| ResourceError::InvalidUrl {
            component: self.name.clone(),
            url: self.redacted_url(),
            reason: scrub_password(&reason, &self.url),
        };
        // Parse first: the pool builder accepts anything and fails only at the first connection.
        redis::Client::open(self.url.as_str()).map_err(|error| invalid(error.to_string()))?;
        let name = self.name.to_string();
        Config::from_url(self.url.clone())
            .builder()
            .map_err(|error| invalid(error.to_string()))?
            .max_size(self.max_size)
            .runtime(Runtime::Tokio1)
            .post_create(deadpool_redis::Hook::async_fn(move |connection, _| {
                let name = name.clone();
                Box::pin(async move {
                    redis::cmd("CLIENT")
                        .arg("SETNAME")
                        .arg(&name)
                        .query_async::<()>(connection)
                        .await
                        .map_err(deadpool_redis::HookError::Backend)
                })
            }))
            .build()
            .map_err(|error| invalid(error.to_string()))
    }

    async fn ping(pool: &Pool) -> Result<(), PoolError> {
        let mut connection = pool.get().await?;
        redis::cmd("PING").query_async::<()>(&mut connection).await.map_err(PoolError::Backend)
    }

    fn scrub(&self, error: &PoolError) -> String {
        scrub_password(&error.to_string(), &self.url)
    }
}

/// Whether retrying can help: the server is not reachable yet, rather than refusing us. A TLS
/// handshake that fails (a certificate that does not verify, a reply that is not TLS) surfaces
/// as an I/O error of kind `InvalidData`, and no retry changes it. (A server without TLS behind
/// `rediss://` usually answers the handshake with nothing at all: that is a timeout, retried
/// like any server that does not answer yet.)
fn is_transient(error: &PoolError) -> bool {
    match error {
        PoolError::Backend(error) => {
            let tls_refused = io_error_kind(error) == Some(std::io::ErrorKind::InvalidData);
            !tls_refused && (error.is_io_error() || error.is_connection_refusal() || error.is_timeout())
        }
        PoolError::PostCreateHook(_) => false,
        _ => true,
    }
}

/// The kind of the I/O error behind `error`, if it is one. The redis crate keeps it shared
/// (`Arc<dyn Error>`) as the error's source.
fn io_error_kind(error: &redis::RedisError) -> Option<std::io::ErrorKind> {
    let source = std::error::Error::source(error)?;
    let shared = source.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>();
    source
        .downcast_ref::<std::io::Error>()
        .or_else(|| shared.and_then(|inner| inner.downcast_ref::<std::io::Error>()))
        .map(std::io::Error::kind)
}

impl Component for RedisPool {
    fn name(&self) -> ComponentId {
        self.name.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let pool = self.build()?;
        let attempt = |attempt| {
            let pool = &pool;
            async move {
                let result = Self::ping(pool).await;
                if let Err(error) = &result {
                    tracing::warn!(component = %self.name, url = %self.redacted_url(), error = %self.scrub(error), attempt, "Redis not reachable");
                }
                result
            }
        };
        let retry = Retry::until(ctx.give_up_at(MARGIN, Duration::from_secs(15)));
        match retry.run(attempt, is_transient).await {
            Ok(()) => {
                tracing::info!(component = %self.name, url = %self.redacted_url(), "Redis pool connected");
                // A restart's stop already took the last pool out; one left is closed anyway.
                if let Some(previous) = self.replace(Some(pool)) {
                    previous.close();
                }
                Ok(())
            }
            Err(failure) => {
                pool.close();
                Err(ResourceError::Connect {
                    component: self.name.clone(),
                    url: self.redacted_url(),
                    attempts: failure.attempts,
                    elapsed: failure.elapsed,
                    last_error: failure.last_error.map_or_else(
                        || "no answer before the start deadline".to_owned(),
                        |error| self.scrub(&error),
                    ),
                }
                .into())
            }
        }
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        let Some(pool) = self.replace(None) else { return Ok(()) };
        let began = Instant::now();
        // `close` drops idle connections and refuses new checkouts; a connection in use is
        // dropped (not returned) when its holder lets go. deadpool has no "all returned"
        // notification, so the size is watched.
        pool.close();
        let give_up = ctx.give_up_at(MARGIN, Duration::from_secs(10));
        while pool.status().size > 0 {
            if Instant::now() >= give_up {
                return Err(ResourceError::StillInUse {
                    component: self.name.clone(),
                    out: pool.status().size,
                    waited: began.elapsed(),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Healthy when a `PING` is answered within 500 ms (well inside a readiness probe's own
    /// timeout). A server that is down or frozen makes the pool degraded, not unhealthy: the
    /// pool reconnects by itself once it is back. Unhealthy when the pool is not running.
    async fn health(&self) -> Health {
        const PING_WITHIN: Duration = Duration::from_millis(500);
        match self.pool() {
            Ok(pool) => match tokio::time::timeout(PING_WITHIN, Self::ping(&pool)).await {
                Ok(Ok(())) => Health::Healthy,
                Ok(Err(error)) => Health::Degraded(format!("Redis unreachable: {}", self.scrub(&error))),
                Err(_) => Health::Degraded(format!("Redis did not answer within {PING_WITHIN:?}")),
            },
            Err(error) => Health::Unhealthy(error.to_string()),
        }
    }
}

impl fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPool")
            .field("name", &self.name)
            .field("url", &self.redacted_url())
            .field("status", &self.slot().as_ref().map(Pool::status))
            .finish()
    }
}
