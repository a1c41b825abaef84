//! A PostgreSQL job queue and the worker component that drains it without losing a job.
//!
//! A job is a row of `lifecycle_jobs`. A worker slot claims one in a transaction with
//! `FOR UPDATE SKIP LOCKED`, runs the handler inside that transaction, and marks the job done in
//! the same commit. So a job's database effects and its "done" mark are one atomic write: a job
//! interrupted by a shutdown (or a crash) rolls back and is claimed again later, and a job that
//! committed is never run again. At shutdown the worker stops claiming first, lets the jobs in
//! flight finish until just before its stop deadline, then cancels their tokens.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use lifecycle_core::{
    BoxError, CancellationToken, Component, ComponentId, ComponentOptions, Context, Dep, Dependency,
};
use sqlx::{PgConnection, Postgres, Row};

use crate::PgPool;

/// Creates the queue's table and index if they are missing.
pub const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS lifecycle_jobs (
        id BIGSERIAL PRIMARY KEY,
        queue TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        done_at TIMESTAMPTZ,
        attempts INT NOT NULL DEFAULT 0,
        last_error TEXT
    )",
    "CREATE INDEX IF NOT EXISTS lifecycle_jobs_pending ON lifecycle_jobs (queue, id) WHERE done_at IS NULL",
];

/// Creates the queue's table if it is missing. Safe when several instances start at once: a
/// transaction-scoped advisory lock serializes them (PostgreSQL's `CREATE TABLE IF NOT EXISTS`
/// alone races on its catalog). When the table and its index exist (every start but the first,
/// and every upgrade), one catalog read is all it costs: no lock, no DDL.
pub async fn install<'c, E>(executor: E) -> Result<(), sqlx::Error>
where
    E: sqlx::Acquire<'c, Database = Postgres>,
{
    /// Any constant shared by every instance: "lifecycle" in ASCII.
    const INSTALL_LOCK: i64 = 0x6c69_6665_6379_636c;
    const INSTALLED: &str = "SELECT to_regclass('lifecycle_jobs') IS NOT NULL AND to_regclass('lifecycle_jobs_pending') IS NOT NULL";
    let mut connection = executor.acquire().await?;
    // A read outside any transaction, over the simple query protocol: one round trip.
    if sqlx::raw_sql(INSTALLED).fetch_one(&mut *connection).await?.try_get::<bool, _>(0)? {
        return Ok(());
    }
    let mut transaction = sqlx::Acquire::begin(&mut *connection).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(INSTALL_LOCK).execute(&mut *transaction).await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut *transaction).await?;
    }
    transaction.commit().await
}

/// Adds a job to `queue`; returns its id. Pass a transaction to enqueue atomically with the
/// write that caused the job.
pub async fn enqueue<'e, E>(executor: E, queue: &str, payload: &str) -> Result<i64, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query_scalar("INSERT INTO lifecycle_jobs (queue, payload) VALUES ($1, $2) RETURNING id")
        .bind(queue)
        .bind(payload)
        .fetch_one(executor)
        .await
}

/// A claimed job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Job {
    /// Its id.
    pub id: i64,
    /// Its payload, as enqueued.
    pub payload: String,
    /// How many earlier runs failed.
    pub attempts: i32,
}

/// Runs jobs. Write through `transaction` what must commit together with the job being marked
/// done; return an error (or observe `cancel`) to roll it back and leave the job to a later try.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one job.
    fn handle<'a>(
        &'a self,
        job: &'a Job,
        transaction: &'a mut PgConnection,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'a;
}

/// The worker component: `concurrency` slots claiming jobs from one queue.
pub struct JobWorker<H> {
    name: ComponentId,
    pool: Dep<PgPool>,
    queue: String,
    concurrency: usize,
    poll_interval: Duration,
    max_attempts: i32,
    options: ComponentOptions,
    handler: Arc<H>,
    /// Parent of every job's token, one per start: cancelled when the stop runs out of patience.
    jobs: Mutex<CancellationToken>,
}

impl<H: JobHandler> JobWorker<H> {
    /// A worker named `name` for `queue`, with 4 slots, polling every 100 ms when idle.
    pub fn new(
        name: impl Into<ComponentId>,
        pool: Dep<PgPool>,
        queue: impl Into<String>,
        handler: H,
    ) -> Self {
        Self {
            name: name.into(),
            pool,
            queue: queue.into(),
            concurrency: 4,
            poll_interval: Duration::from_millis(100),
            max_attempts: 5,
            options: ComponentOptions::new(),
            handler: Arc::new(handler),
            jobs: Mutex::new(CancellationToken::new()),
        }
    }

    /// How many jobs run at once (default 4).
    #[must_use]
    pub fn concurrency(mut self, slots: usize) -> Self {
        self.concurrency = slots.max(1);
        self
    }

    /// How long an idle slot waits before looking for work again (default 100 ms).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// After this many failed runs a job is left alone (default 5).
    #[must_use]
    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The component's timeouts, criticality and restart policy. With a restart policy (its own
    /// or the registry's default), a slot that meets [`ESCALATE_AFTER`] database errors in a row
    /// fails, and the worker is restarted by the policy (with its backoff, and its budget);
    /// without one, slots keep retrying in place.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Database errors in a row after which a slot of a worker with a restart policy fails.
pub const ESCALATE_AFTER: u32 = 3;

impl<H: JobHandler> Component for JobWorker<H> {
    fn name(&self) -> ComponentId {
        self.name.clone()
    }

    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.pool.dependency()]
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        install(self.pool.pool()?).await?;
        // A fresh parent for this start's jobs: the last stop may have cancelled its own.
        let jobs = {
            let mut current = self.jobs();
            if current.is_cancelled() {
                *current = CancellationToken::new();
            }
            current.clone()
        };
        let escalate_after = ctx.restarts_on_failure().then_some(ESCALATE_AFTER);
        for _ in 0..self.concurrency {
            let slot = Slot {
                component: self.name.clone(),
                pool: self.pool.pool()?.clone(),
                queue: self.queue.clone(),
                poll_interval: self.poll_interval,
                max_attempts: self.max_attempts,
                handler: Arc::clone(&self.handler),
                claiming: ctx.token().clone(),
                jobs: jobs.clone(),
                escalate_after,
            };
            ctx.tasks().spawn("job_slot", slot.run());
        }
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        // Claiming stopped when the token was cancelled; now let the jobs in flight finish.
        let tasks = ctx.tasks();
        tasks.close();
        let deadline = ctx.deadline().unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
        // Half of what is left goes to finishing, then the jobs are told to give up and get the
        // rest to roll back.
        let patience = deadline.saturating_duration_since(Instant::now()) / 2;
        if tokio::time::timeout(patience, tasks.wait()).await.is_ok() {
            return Ok(());
        }
        let running = tasks.len();
        tracing::warn!(component = %self.name, running, "jobs still running at the stop deadline; cancelling them");
        self.jobs().cancel();
        Ok(())
    }
}

impl<H> std::fmt::Debug for JobWorker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobWorker")
            .field("name", &self.name)
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// One claiming loop.
struct Slot<H> {
    component: ComponentId,
    pool: sqlx::PgPool,
    queue: String,
    poll_interval: Duration,
    max_attempts: i32,
    handler: Arc<H>,
    claiming: CancellationToken,
    jobs: CancellationToken,
    /// With a restart policy: fail after this many errors in a row.
    escalate_after: Option<u32>,
}

impl<H: JobHandler> Slot<H> {
    async fn run(self) -> Result<(), sqlx::Error> {
        let mut errors_in_a_row = 0;
        while !self.claiming.is_cancelled() {
            match self.run_one().await {
                Ok(true) => errors_in_a_row = 0,
                Ok(false) => {
                    errors_in_a_row = 0;
                    self.pause(self.poll_interval).await;
                }
                Err(error) => {
                    errors_in_a_row += 1;
                    // Stopping anyway: the error is the closing pool's, not news.
                    if self.claiming.is_cancelled() {
                        break;
                    }
                    if self.escalate_after.is_some_and(|limit| errors_in_a_row >= limit) {
                        // Let it crash: the worker's restart policy takes it from here.
                        return Err(error);
                    }
                    // The database is unreachable or the pool is closing: try again later.
                    tracing::warn!(component = %self.component, queue = %self.queue, %error, "job queue error");
                    self.pause(self.poll_interval * 5).await;
                }
            }
        }
        Ok(())
    }

    async fn pause(&self, pause: Duration) {
        tokio::select! {
            _ = self.claiming.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }

    /// Claims and runs one job. `Ok(false)` when the queue is empty.
    async fn run_one(&self) -> Result<bool, sqlx::Error> {
        let mut transaction = self.pool.begin().await?;
        let job: Option<(i64, String, i32)> = sqlx::query_as(
            "SELECT id, payload, attempts FROM lifecycle_jobs
             WHERE queue = $1 AND done_at IS NULL AND attempts < $2
             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(&self.queue)
        .bind(self.max_attempts)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some((id, payload, attempts)) = job else {
            transaction.rollback().await?;
            return Ok(false);
        };
        let job = Job { id, payload, attempts };
        let cancel = self.jobs.child_token();
        match self.handler.handle(&job, &mut transaction, cancel.clone()).await {
            Ok(()) => {
                sqlx::query(
                    "UPDATE lifecycle_jobs SET done_at = now(), attempts = attempts + 1 WHERE id = $1",
                )
                .bind(job.id)
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
            }
            Err(error) => {
                transaction.rollback().await?;
                if cancel.is_cancelled() {
                    tracing::info!(component = %self.component, job = job.id, "job cancelled by the shutdown; it stays claimable");
                } else {
                    tracing::warn!(component = %self.component, job = job.id, %error, "job failed");
                    sqlx::query(
                        "UPDATE lifecycle_jobs SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
                    )
                    .bind(job.id)
                    .bind(error.to_string())
                    .execute(&self.pool)
                    .await?;
                }
            }
        }
        Ok(true)
    }
}
