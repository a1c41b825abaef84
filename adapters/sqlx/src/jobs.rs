//! A PostgreSQL job queue and the worker component that drains it without losing a job.
//!
//! A job is a row of `lifecycle_jobs`. A worker slot claims one in a transaction with
//! `FOR UPDATE SKIP LOCKED`, runs the handler inside that transaction, and completes the job in
//! the same commit. So a job's database effects and its completion are one atomic write: a job
//! interrupted by a shutdown (or a crash) rolls back and is claimed again later, and a job that
//! committed is never run again. At shutdown the worker stops claiming first, lets the jobs in
//! flight finish until just before its stop deadline, then cancels their tokens.
//!
//! # Why the claim stays fast
//!
//! The claim asks for the lowest pending id of a queue. Its speed must not depend on what the
//! planner believes about the table, because those beliefs change under load: when done jobs
//! stayed in `lifecycle_jobs` (marked by `done_at`), an `ANALYZE` taken while the queue was behind
//! could switch the claim from the partial index of pending jobs to a primary-key scan that
//! stepped over every done job, or (with statistics older than the backlog) to a sort of every
//! pending one, and the worker slowed down several times over exactly when it had most to do. Two
//! things rule that out:
//!
//! - A completed job leaves `lifecycle_jobs` in the commit that completes it: it is deleted and,
//!   unless [`JobWorker::keep_history`] turned that off, copied into `lifecycle_jobs_done` with
//!   its `done_at`. So the claim's table holds only jobs still to run (and jobs that used up their
//!   attempts, which stay so a worker with a higher [`JobWorker::max_attempts`] can retry them):
//!   no plan can walk the history, whatever the statistics say.
//! - The claim runs in the function `lifecycle_jobs_claim`, whose settings turn off sequential
//!   scans, bitmap scans and sorts for that one statement: what is left to the planner is an index
//!   scan in id order that stops at the first job it can lock, so it never reads the whole queue.
//!   (The settings are the function's own: the handler's statements, in the same transaction, are
//!   planned as usual.)
//!
//! [`explain_claim`] shows the plan the claim gets. `docs/BENCHMARKS.md` has the claim rate on an
//! empty queue and with a long history, before and after `ANALYZE`, against the design before.
//!
//! # Upgrading from a version that kept done jobs in place
//!
//! [`install`] adds the history table and the claim function to an existing installation; the
//! table and its columns stay as they were (`done_at` included), so an instance of the earlier
//! version running at the same time (a rolling upgrade, a rollback) still works: it claims only
//! rows whose `done_at` is null, as the new claim does, and leaves the jobs it completes in place.
//! Those rows, and the ones already there, are moved into the history in the background by every
//! [`JobWorker`] start, for its own queue, in batches ([`migrate_done_rows`] does it on demand).
//! Until then the claim keeps them out by the same `done_at IS NULL` test as before, so no job
//! runs twice during the move; but while they are there a plan on the primary key may step over
//! them, as it could before.
//!
//! Changes to the public API: [`SCHEMA`] has two more statements (`[&str; 4]`), and done jobs are
//! found in `lifecycle_jobs_done` rather than in `lifecycle_jobs` with a `done_at`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use lifecycle_core::{
    BoxError, CancellationToken, CatchUnwind, Component, ComponentId, ComponentOptions, Context, Dep,
    Dependency,
};
use sqlx::{PgConnection, Postgres, Row};

use crate::PgPool;

/// Creates what the queue needs if it is missing: the table of jobs to run, its index of pending
/// jobs, the table of done jobs, and the claim function. [`install`] runs them (safely when
/// several instances start at once); apply them yourself only under a lock of your own.
pub const SCHEMA: [&str; 4] = [
    // `done_at` stays for the instances of an earlier version that may run alongside (they mark
    // jobs done in place); this version never sets it.
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
    // `attempts` counts every run, the successful one included; `last_error` is the last failed
    // run's. Never read by the claim, so it may grow or be pruned at will.
    "CREATE TABLE IF NOT EXISTS lifecycle_jobs_done (
        id BIGINT PRIMARY KEY,
        queue TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        done_at TIMESTAMPTZ NOT NULL,
        attempts INT NOT NULL,
        last_error TEXT
    )",
    // The function's settings hold while its statement is planned and run, and are undone when it
    // returns. With sorts and whole-table scans off, only an index scan in id order is left (the
    // pending index, or the primary key), and either stops at the first row it locks. Its body
    // must not change under this name: `install` only checks that the function exists.
    "CREATE OR REPLACE FUNCTION lifecycle_jobs_claim(queue TEXT, max_attempts INT)
        RETURNS TABLE (id BIGINT, payload TEXT, attempts INT)
        LANGUAGE sql VOLATILE
        SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off
    AS $$
        SELECT j.id, j.payload, j.attempts FROM lifecycle_jobs j
        WHERE j.queue = $1 AND j.done_at IS NULL AND j.attempts < $2
        ORDER BY j.id LIMIT 1 FOR UPDATE SKIP LOCKED
    $$",
];

/// Claims the lowest pending job of a queue, locked until the transaction ends (see [`SCHEMA`]).
const CLAIM: &str = "SELECT id, payload, attempts FROM lifecycle_jobs_claim($1, $2)";

/// Completes a claimed job, keeping its record: it leaves the claim's table for the history.
const COMPLETE_KEEPING: &str = "WITH done AS (
        DELETE FROM lifecycle_jobs WHERE id = $1
        RETURNING id, queue, payload, created_at, attempts, last_error
    )
    INSERT INTO lifecycle_jobs_done (id, queue, payload, created_at, done_at, attempts, last_error)
    SELECT id, queue, payload, created_at, now(), attempts + 1, last_error FROM done
    ON CONFLICT (id) DO NOTHING";

/// Completes a claimed job, keeping nothing.
const COMPLETE_DROPPING: &str = "DELETE FROM lifecycle_jobs WHERE id = $1";

/// Creates the queue's tables, index and claim function if they are missing ([`SCHEMA`]). Safe
/// when several instances start at once: a transaction-scoped advisory lock serializes them
/// (PostgreSQL's `CREATE TABLE IF NOT EXISTS` alone races on its catalog, and so does
/// `CREATE OR REPLACE FUNCTION`). When everything exists (every start but the first of each
/// version), one catalog read is all it costs: no lock, no DDL.
///
/// It moves no row: done jobs left in `lifecycle_jobs` by an earlier version are moved by the
/// worker's start, in the background ([`migrate_done_rows`]).
pub async fn install<'c, E>(executor: E) -> Result<(), sqlx::Error>
where
    E: sqlx::Acquire<'c, Database = Postgres>,
{
    /// Any constant shared by every instance: "lifecycle" in ASCII. Earlier versions take the
    /// same lock, so an old and a new instance installing at once are serialized too.
    const INSTALL_LOCK: i64 = 0x6c69_6665_6379_636c;
    const INSTALLED: &str = "SELECT to_regclass('lifecycle_jobs') IS NOT NULL \
        AND to_regclass('lifecycle_jobs_pending') IS NOT NULL \
        AND to_regclass('lifecycle_jobs_done') IS NOT NULL \
        AND to_regprocedure('lifecycle_jobs_claim(text, integer)') IS NOT NULL";
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

/// Rows moved per transaction by [`migrate_done_rows`]: small enough that a batch holds its locks
/// (on done rows only, which nothing else wants) for a fraction of a second, large enough that a
/// million rows take a hundred commits.
const MIGRATE_BATCH: i64 = 10_000;

/// Moves the jobs of `queue` that an earlier version marked done in place (`done_at` set, still
/// in `lifecycle_jobs`) into `lifecycle_jobs_done`; returns how many it moved. Safe to run from
/// several instances at once and next to workers of either version: each batch locks the rows it
/// moves with `SKIP LOCKED`, and touches only rows whose completion has committed, which no claim
/// ever takes. [`JobWorker`] runs it at every start, in the background; call it yourself to move
/// the rows before starting, or for a queue no worker of this version serves.
pub async fn migrate_done_rows(pool: &sqlx::PgPool, queue: &str) -> Result<u64, sqlx::Error> {
    // In id order from where the last batch ended, so each batch starts where there is work
    // rather than stepping again over the rows before it.
    const MOVE: &str = "WITH batch AS (
            SELECT id FROM lifecycle_jobs
            WHERE queue = $1 AND done_at IS NOT NULL AND id > $2
            ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED
        ), moved AS (
            DELETE FROM lifecycle_jobs j USING batch WHERE j.id = batch.id
            RETURNING j.id, j.queue, j.payload, j.created_at, j.done_at, j.attempts, j.last_error
        ), kept AS (
            INSERT INTO lifecycle_jobs_done (id, queue, payload, created_at, done_at, attempts, last_error)
            SELECT id, queue, payload, created_at, done_at, attempts, last_error FROM moved
            ON CONFLICT (id) DO NOTHING
        )
        SELECT count(*), max(id) FROM moved";
    let mut moved = 0;
    let mut after = 0_i64;
    loop {
        let mut transaction = pool.begin().await?;
        // This transaction runs nothing else, so its planner settings can be its own: the batch
        // walks the primary key from `after`, never the whole table once per batch.
        sqlx::raw_sql(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off",
        )
        .execute(&mut *transaction)
        .await?;
        let (count, last): (i64, Option<i64>) = sqlx::query_as(MOVE)
            .bind(queue)
            .bind(after)
            .bind(MIGRATE_BATCH)
            .fetch_one(&mut *transaction)
            .await?;
        transaction.commit().await?;
        moved += u64::try_from(count).unwrap_or(0);
        match last {
            Some(last) => after = last,
            None => return Ok(moved),
        }
    }
}

/// The plan of the claim as a worker runs it, one line per row of `EXPLAIN (ANALYZE, BUFFERS)`:
/// the claim function's statement as installed, under the function's own settings, planned as
/// the function plans it (once for any queue: a generic plan, without the values), run for
/// `queue` and `max_attempts`. It runs the claim, so the plan shows the rows it actually stepped
/// over, in a transaction that it rolls back: the job it locked, if any, is free again when it
/// returns. For diagnosis: a `Sort`, `Seq Scan` or `Bitmap` line would mean that the claim reads
/// the whole queue, and `Rows Removed by Filter` counts the rows it stepped over.
pub async fn explain_claim(
    connection: &mut PgConnection,
    queue: &str,
    max_attempts: i32,
) -> Result<Vec<String>, sqlx::Error> {
    /// The name the statement is prepared under, for the length of one call.
    const PREPARED: &str = "lifecycle_jobs_explained_claim";
    // A call cancelled between its PREPARE and its DEALLOCATE left it behind.
    let left: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = $1)")
            .bind(PREPARED)
            .fetch_one(&mut *connection)
            .await?;
    if left {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DEALLOCATE {PREPARED}")))
            .execute(&mut *connection)
            .await?;
    }
    let mut transaction = sqlx::Acquire::begin(&mut *connection).await?;
    let function: Option<(String, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT prosrc, proconfig FROM pg_proc WHERE oid = to_regprocedure('lifecycle_jobs_claim(text, integer)')",
    )
    .fetch_optional(&mut *transaction)
    .await?;
    let Some((body, settings)) = function else {
        return Err(sqlx::Error::Configuration(
            "the function lifecycle_jobs_claim(text, integer) is not installed (see jobs::install)".into(),
        ));
    };
    let generic = ["plan_cache_mode=force_generic_plan".to_owned()];
    for setting in settings.unwrap_or_default().iter().chain(&generic) {
        let (name, value) = setting.split_once('=').unwrap_or((setting.as_str(), ""));
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(name)
            .bind(value)
            .execute(&mut *transaction)
            .await?;
    }
    let prepared =
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE {PREPARED} (text, integer) AS {body}")))
            .execute(&mut *transaction)
            .await;
    let plan = match &prepared {
        Ok(_) => explain_prepared(&mut transaction, PREPARED, queue, max_attempts).await,
        Err(_) => Ok(Vec::new()),
    };
    transaction.rollback().await?;
    // A prepared statement outlives the transaction that prepared it.
    prepared?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DEALLOCATE {PREPARED}"))).execute(&mut *connection).await?;
    plan
}

/// `EXPLAIN (ANALYZE, BUFFERS) EXECUTE prepared(queue, max_attempts)`. `EXECUTE` takes no
/// parameters of the protocol's, so the server writes the values in, quoted.
async fn explain_prepared(
    connection: &mut PgConnection,
    prepared: &str,
    queue: &str,
    max_attempts: i32,
) -> Result<Vec<String>, sqlx::Error> {
    let explain: String =
        sqlx::query_scalar("SELECT format('EXPLAIN (ANALYZE, BUFFERS) EXECUTE %I(%L, %s)', $1, $2, $3)")
            .bind(prepared)
            .bind(queue)
            .bind(max_attempts)
            .fetch_one(&mut *connection)
            .await?;
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(explain)).fetch_all(&mut *connection).await?;
    rows.iter().map(|row| row.try_get::<String, _>(0)).collect()
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

/// Runs jobs. Write through `transaction` what must commit together with the job's completion;
/// return an error (or observe `cancel`) to roll it back and leave the job to a later try. A
/// panic counts as an error (the worker survives it). A failure is counted just after its
/// rollback, so with several slots another one may run the job once more in between.
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
    keep_history: bool,
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
            keep_history: true,
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

    /// Whether a completed job is copied into `lifecycle_jobs_done` (default) or only deleted.
    /// Either way it leaves `lifecycle_jobs` in the commit that completes it; the history is
    /// never read by the claim, so keeping it costs one insert per job and no claim speed.
    #[must_use]
    pub fn keep_history(mut self, keep: bool) -> Self {
        self.keep_history = keep;
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
        // Done jobs an earlier version left in place: correct to leave (the claim skips them) but
        // moved, so that the table the claim reads holds only work to do. In the background: a
        // large history would otherwise hold up the start.
        let (pool, queue, component, claiming) =
            (self.pool.pool()?.clone(), self.queue.clone(), self.name.clone(), ctx.token().clone());
        ctx.tasks().spawn("job_migrate", async move {
            tokio::select! {
                _ = claiming.cancelled() => {}
                moved = migrate_done_rows(&pool, &queue) => match moved {
                    Ok(0) => {}
                    Ok(moved) => tracing::info!(component = %component, queue = %queue, moved, "done jobs moved into lifecycle_jobs_done"),
                    // Nothing is wrong with the queue: the rows stay skipped, and the next start
                    // tries again.
                    Err(error) => tracing::warn!(component = %component, queue = %queue, %error, "could not move done jobs into lifecycle_jobs_done"),
                },
            }
        });
        for _ in 0..self.concurrency {
            let slot = Slot {
                component: self.name.clone(),
                pool: self.pool.pool()?.clone(),
                queue: self.queue.clone(),
                poll_interval: self.poll_interval,
                max_attempts: self.max_attempts,
                keep_history: self.keep_history,
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
    keep_history: bool,
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

    /// One more failed run of job `id`, with its error.
    async fn count_failure(pool: &sqlx::PgPool, id: i64, error: &BoxError) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE lifecycle_jobs SET attempts = attempts + 1, last_error = $2 WHERE id = $1")
            .bind(id)
            .bind(error.to_string())
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Claims and runs one job. `Ok(false)` when the queue is empty.
    async fn run_one(&self) -> Result<bool, sqlx::Error> {
        let mut transaction = self.pool.begin().await?;
        let job: Option<(i64, String, i32)> = sqlx::query_as(CLAIM)
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
        // A panic is a failure like an error: the job is retried by the same rule, and the
        // worker carries on.
        let outcome = CatchUnwind::new(self.handler.handle(&job, &mut transaction, cancel.clone()))
            .await
            .unwrap_or_else(|panic| Err(format!("the job handler panicked: {panic}").into()));
        match outcome {
            Ok(()) => {
                let complete = if self.keep_history { COMPLETE_KEEPING } else { COMPLETE_DROPPING };
                sqlx::query(complete).bind(job.id).execute(&mut *transaction).await?;
                transaction.commit().await?;
            }
            Err(error) => {
                // A connection left unusable (a handler cut in the middle of a query) is closed
                // by the pool; the job's lock goes with it either way.
                let _ = transaction.rollback().await;
                if cancel.is_cancelled() {
                    tracing::info!(component = %self.component, job = job.id, "job cancelled by the shutdown; it stays claimable");
                } else {
                    tracing::warn!(component = %self.component, job = job.id, %error, "job failed");
                    // The job stays in the claim's table, with its count and its error, for the
                    // next try (and they go into the history with it once it succeeds). Counted
                    // after the rollback: another slot may run it once more in between.
                    Self::count_failure(&self.pool, job.id, &error).await?;
                }
            }
        }
        Ok(true)
    }
}
