//! Claim rate of the PostgreSQL job queue with a long history and a backlog, before and after
//! `ANALYZE`, against an empty queue, for the design before issue 11 and the current one, in the
//! same process (issue 11). Needs PostgreSQL on 127.0.0.1:5432 with trust auth for `postgres`
//! (`scripts/test` sets it up); works in a database of its own, `lifecycle_bench_jobs`, created
//! at the start and dropped at the end.
//!
//! A claim here is one job run by one worker slot: claim the lowest pending job, run a handler
//! that does nothing, complete the job, commit. Each measurement starts on a new connection, as a
//! restarted worker does (a prepared statement keeps its plan for as long as its connection
//! lives), and runs 5 batches of 5,000 claims (a batch stops after 10 s); it reports the median
//! batch's claims per second. Commits do not wait for the disk (`synchronous_commit = off` on the
//! bench's database): what is compared is the claim's own work.
//!
//! Designs:
//! - **old**: the schema and statements of `lifecycle_sqlx::jobs` before issue 11, reproduced
//!   here: done jobs stay in `lifecycle_jobs` (`done_at` set), the claim is a plain statement on
//!   the partial index of pending jobs; run by a loop doing what its worker slot did.
//! - **new**: `lifecycle_sqlx::jobs` as it is: done jobs move to `lifecycle_jobs_done` in the
//!   commit that completes them, the claim is the function `lifecycle_jobs_claim`; run by a
//!   `JobWorker` with one slot, in a registry, as a service runs it.
//! - **new, no history**: the same with `keep_history(false)`: done jobs are only deleted.
//!
//! Scenarios, each on tables created afresh with autovacuum off (so "before `ANALYZE`" stays so),
//! processed jobs built as a queue builds them (in 100 rounds: enqueue, then process the oldest
//! pending jobs, first in first out):
//! - (a) an empty queue: only the pending jobs the measurements take, before `ANALYZE` and after.
//!   After is each design's best case, and the rate the others are compared with.
//! - (b) 1,000,000 processed and 100,000 pending jobs, then `VACUUM` (as autovacuum would have),
//!   no statistics; (c) the same after `ANALYZE`.
//! - (d) 100,000 processed and 100,000 pending (a queue that fell behind), not vacuumed, before
//!   `ANALYZE`; (e) after.
//!
//! Before each measurement from (b) on it prints `EXPLAIN (ANALYZE, BUFFERS)` of the old claim
//! (its generic plan, which the loop runs after its fifth claim) and of the new one
//! (`jobs::explain_claim`); on standard error, each measurement's batches and, for the old
//! design, how many generic and custom plans its claim ran. `--quick`: 1,000 claims a batch, a
//! tenth of the rows (a check that it runs, not a measurement).
//!
//! `cargo run --release -p lifecycle-benches --bin job_claim [-- --quick]`

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lifecycle_core::{BoxError, CancellationToken, Registry, Signals};
use lifecycle_sqlx::jobs::{self, Job, JobHandler, JobWorker};
use lifecycle_sqlx::sqlx::{self, PgConnection, Row};
use tokio::sync::oneshot;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";
const DATABASE: &str = "lifecycle_bench_jobs";
const QUEUE: &str = "bench";
const MAX_ATTEMPTS: i32 = 5;
/// Batches of claims per measurement; the rate is their median.
const BATCHES: usize = 5;
/// A batch stops after this long even if it has not made all its claims.
const BUDGET: Duration = Duration::from_secs(10);

/// The schema before issue 11: the first two statements of today's, which have not changed
/// since (the history table and the claim function came after them).
const OLD_SCHEMA: [&str; 2] = [jobs::SCHEMA[0], jobs::SCHEMA[1]];
/// Its claim and its completion, as its worker slot ran them.
const OLD_CLAIM: &str = "SELECT id, payload, attempts FROM lifecycle_jobs
     WHERE queue = $1 AND done_at IS NULL AND attempts < $2
     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED";
const OLD_COMPLETE: &str = "UPDATE lifecycle_jobs SET done_at = now(), attempts = attempts + 1 WHERE id = $1";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Design {
    Old,
    New,
    NewWithoutHistory,
}

impl Design {
    const ALL: [Design; 3] = [Design::Old, Design::New, Design::NewWithoutHistory];

    fn name(self) -> &'static str {
        match self {
            Design::Old => "old: done rows in place, plain claim",
            Design::New => "new: history table, claim function",
            Design::NewWithoutHistory => "new, keep_history(false)",
        }
    }
}

/// A failed step of the bench: what it was doing, and why.
fn check<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error}"),
    }
}

async fn execute(pool: &sqlx::PgPool, statement: &str) {
    check(statement, sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned())).execute(pool).await);
}

/// Fresh tables of `design` holding `processed` done jobs and `pending` jobs to run, built in
/// rounds as a queue builds them (enqueue a round's jobs, then process the oldest pending ones,
/// first in first out), vacuumed if `vacuum`, without statistics.
async fn fill(pool: &sqlx::PgPool, design: Design, processed: i64, pending: i64, vacuum: bool) {
    execute(
        pool,
        "DROP TABLE IF EXISTS lifecycle_jobs, lifecycle_jobs_done; \
         DROP FUNCTION IF EXISTS lifecycle_jobs_claim(text, integer)",
    )
    .await;
    match design {
        Design::Old => {
            for statement in OLD_SCHEMA {
                execute(pool, statement).await;
            }
        }
        Design::New | Design::NewWithoutHistory => check("jobs::install", jobs::install(pool).await),
    }
    execute(pool, "ALTER TABLE lifecycle_jobs SET (autovacuum_enabled = false)").await;
    if design != Design::Old {
        execute(pool, "ALTER TABLE lifecycle_jobs_done SET (autovacuum_enabled = false)").await;
    }
    let rounds = if processed == 0 { 1 } else { 100 };
    let (per_round, done_per_round) = ((processed + pending) / rounds, processed / rounds);
    // The table is new, so its ids start at 1, and the oldest jobs have the lowest: round r
    // processes ids r * done_per_round + 1 to (r + 1) * done_per_round, all enqueued by then.
    let process = match design {
        Design::Old => "UPDATE lifecycle_jobs SET done_at = now(), attempts = 1 WHERE id > $1 AND id <= $2",
        Design::New | Design::NewWithoutHistory => {
            "WITH moved AS (DELETE FROM lifecycle_jobs WHERE id > $1 AND id <= $2 \
                 RETURNING id, queue, payload, created_at) \
             INSERT INTO lifecycle_jobs_done (id, queue, payload, created_at, done_at, attempts) \
             SELECT id, queue, payload, created_at, now(), 1 FROM moved"
        }
    };
    for round in 0..rounds {
        check(
            "enqueue a round",
            sqlx::query(
                "INSERT INTO lifecycle_jobs (queue, payload) SELECT $1, 'job ' || g FROM generate_series(1, $2) g",
            )
            .bind(QUEUE)
            .bind(per_round)
            .execute(pool)
            .await,
        );
        if done_per_round > 0 {
            let first = round * done_per_round;
            check(
                "process a round",
                sqlx::query(process).bind(first).bind(first + done_per_round).execute(pool).await,
            );
        }
    }
    if vacuum {
        execute(pool, "VACUUM lifecycle_jobs").await;
    }
    // So that no checkpoint the fill made due runs during the measurement.
    execute(pool, "CHECKPOINT").await;
}

/// A measurement: consecutive batches of claims, each `(claims, seconds)`.
type Batches = Vec<(u64, f64)>;

/// Splits a run of claims into `BATCHES` batches of `claims` each; a batch that reaches `BUDGET`
/// ends there.
struct Batcher {
    claims: u64,
    started: Option<Instant>,
    in_batch: u64,
    batches: Batches,
}

impl Batcher {
    fn new(claims: u64) -> Self {
        Self { claims, started: None, in_batch: 0, batches: Vec::new() }
    }

    /// Marks a claim made (the first only starts the clock); true once every batch is done.
    fn claimed(&mut self) -> bool {
        let now = Instant::now();
        let Some(started) = self.started else {
            self.started = Some(now);
            return false;
        };
        self.in_batch += 1;
        let took = now - started;
        if self.in_batch >= self.claims || took >= BUDGET {
            self.batches.push((self.in_batch, took.as_secs_f64()));
            (self.started, self.in_batch) = (Some(now), 0);
        }
        self.batches.len() >= BATCHES
    }
}

/// Claims and completes jobs the old way, one at a time on one connection, as its worker slot
/// did. The connection is new, like a restarted worker's (a prepared statement keeps its plan for
/// as long as its connection lives): `pool` has one.
async fn old_claims(pool: &sqlx::PgPool, claims: u64) -> Batches {
    let mut batcher = Batcher::new(claims);
    loop {
        let mut transaction = check("begin", pool.begin().await);
        let job: Option<(i64, String, i32)> = check(
            "old claim",
            sqlx::query_as(OLD_CLAIM).bind(QUEUE).bind(MAX_ATTEMPTS).fetch_optional(&mut *transaction).await,
        );
        let Some((id, _, _)) = job else {
            panic!("the queue ran dry");
        };
        if batcher.claimed() {
            return batcher.batches;
        }
        check("old completion", sqlx::query(OLD_COMPLETE).bind(id).execute(&mut *transaction).await);
        check("commit", transaction.commit().await);
    }
}

/// The worker's handler: marks each claim, and reports once every batch is done.
struct Counting {
    batcher: Mutex<Batcher>,
    report: Mutex<Option<oneshot::Sender<Batches>>>,
}

impl JobHandler for Counting {
    async fn handle(
        &self,
        _job: &Job,
        _transaction: &mut PgConnection,
        _cancel: CancellationToken,
    ) -> Result<(), BoxError> {
        let mut batcher = self.batcher.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if batcher.claimed() {
            let report = self.report.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some(report) = report {
                let _ = report.send(std::mem::take(&mut batcher.batches));
            }
        }
        Ok(())
    }
}

/// Claims and completes jobs through `JobWorker` with one slot, in a registry of its own.
async fn new_claims(url: &str, claims: u64, keep_history: bool) -> Batches {
    let (report, measured) = oneshot::channel();
    let counting = Counting { batcher: Mutex::new(Batcher::new(claims)), report: Mutex::new(Some(report)) };
    let mut builder = Registry::builder();
    builder.signals(Signals::none());
    let db = builder.add(lifecycle_sqlx::PgPool::new("bench_jobs_db", url).max_connections(2)).dep();
    builder
        .add(JobWorker::new("bench_worker", db, QUEUE, counting).concurrency(1).keep_history(keep_history));
    let registry = check("registry", builder.build());
    let handle = registry.handle();
    let stop = async {
        let result = measured.await;
        handle.shutdown().request("bench", 0);
        result
    };
    let (report, result) = tokio::join!(registry.run(), stop);
    assert!(report.is_success(), "{report}");
    check("the worker's measurement", result)
}

/// How many generic and custom plans the old loop's prepared claim has run on `pool`'s one
/// connection.
async fn old_plans_run(pool: &sqlx::PgPool) -> (i64, i64) {
    check(
        "the loop's plans",
        sqlx::query_as(
            "SELECT coalesce(sum(generic_plans), 0)::bigint, coalesce(sum(custom_plans), 0)::bigint \
             FROM pg_prepared_statements WHERE statement = $1",
        )
        .bind(OLD_CLAIM)
        .fetch_one(pool)
        .await,
    )
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the old claim as a prepared statement's generic plan (the
/// plan the bench's loop runs after its fifth claim, if the server finds it no dearer than the
/// custom ones), in a transaction rolled back.
async fn explain_old(pool: &sqlx::PgPool) -> Vec<String> {
    let mut connection = check("acquire", pool.acquire().await);
    let explain = format!(
        "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
         PREPARE bench_old_claim (text, integer) AS {OLD_CLAIM}; \
         EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_old_claim('{QUEUE}', {MAX_ATTEMPTS}); \
         ROLLBACK; DEALLOCATE bench_old_claim"
    );
    let rows = check(
        "explain the old claim",
        sqlx::raw_sql(sqlx::AssertSqlSafe(explain)).fetch_all(&mut *connection).await,
    );
    rows.iter().map(|row| check("a plan line", row.try_get::<String, _>(0))).collect()
}

async fn explain_new(pool: &sqlx::PgPool) -> Vec<String> {
    let mut connection = check("acquire", pool.acquire().await);
    check("explain the new claim", jobs::explain_claim(&mut connection, QUEUE, MAX_ATTEMPTS).await)
}

/// A pool of one connection to the bench's database.
async fn connect(url: &str) -> sqlx::PgPool {
    check(
        "connect to the bench's database",
        sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await,
    )
}

/// The median rate of a measurement's batches, in claims per second.
fn rate(batches: &Batches) -> f64 {
    lifecycle_benches::median(batches.iter().map(|(claims, seconds)| *claims as f64 / seconds).collect())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let claims: u64 = if quick { 1_000 } else { 5_000 };
    let scale = if quick { 10 } else { 1 };
    // Two measurements on one scenario's tables, each of up to BATCHES * claims, and some over: the
    // least pending jobs a scenario starts with (`--quick`'s tenth would run dry).
    let empty = i64::try_from(claims).unwrap_or(i64::MAX) * 2 * BATCHES as i64 + 1_000;
    // (label, processed, pending, vacuumed, analyze first): a scenario that analyzes measures
    // again on the tables of the one before it. The ratios are against the first row, the empty
    // queue with statistics: each design's best case.
    let scenarios: [(&str, i64, i64, bool, bool); 6] = [
        ("(a) empty queue, after ANALYZE", 0, 0, true, true),
        ("(a) empty queue, before ANALYZE", 0, empty, true, false),
        (
            "(b) 1,000,000 processed + 100,000 pending, vacuumed, before ANALYZE",
            1_000_000 / scale,
            (100_000 / scale).max(empty),
            true,
            false,
        ),
        ("(c) the same, after ANALYZE", 0, 0, true, true),
        (
            "(d) 100,000 processed + 100,000 pending, not vacuumed, before ANALYZE",
            100_000 / scale,
            (100_000 / scale).max(empty),
            false,
            false,
        ),
        ("(e) the same, after ANALYZE", 0, 0, false, true),
    ];
    // Measured in this order: the empty queue's tables are filled for the row before its ANALYZE.
    let order = [1, 0, 2, 3, 4, 5];
    let url = format!("{SERVER}/{DATABASE}");
    let runtime = lifecycle_benches::runtime();
    let (results, plans) = runtime.block_on(async {
        let admin =
            check("connect to the server", sqlx::PgPool::connect(&format!("{SERVER}/postgres")).await);
        execute(&admin, &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).await;
        execute(&admin, &format!("CREATE DATABASE {DATABASE}")).await;
        // A commit that does not wait for its WAL to reach the disk: what is compared is the
        // claim's own work, not this shared machine's disk (the same wait for every design).
        execute(&admin, &format!("ALTER DATABASE {DATABASE} SET synchronous_commit = off")).await;
        let pool = connect(&url).await;
        let mut results = vec![vec![Batches::new(); scenarios.len()]; Design::ALL.len()];
        let mut plans = Vec::new();
        for (d, design) in Design::ALL.into_iter().enumerate() {
            for s in order {
                let (label, processed, pending, vacuum, analyze) = scenarios[s];
                let began = Instant::now();
                if analyze {
                    execute(&pool, "ANALYZE lifecycle_jobs").await;
                    execute(&pool, "CHECKPOINT").await;
                } else {
                    fill(&pool, design, processed, pending, vacuum).await;
                }
                let ready = began.elapsed();
                // The plan before the claims change the table: a claim's plan is made when its
                // statement is first run on a connection, on the tables as they are then.
                let title = format!("{}, {label}", design.name());
                match design {
                    Design::Old if s > 1 => {
                        plans.push((format!("{title}, generic plan"), explain_old(&pool).await))
                    }
                    Design::New if s > 1 => plans.push((title, explain_new(&pool).await)),
                    _ => {}
                }
                let (batches, used) = match design {
                    Design::Old => {
                        let fresh = connect(&url).await;
                        let batches = old_claims(&fresh, claims).await;
                        let (generic, custom) = old_plans_run(&fresh).await;
                        fresh.close().await;
                        (batches, format!("; the claim ran {generic} generic plans, {custom} custom"))
                    }
                    Design::New => (new_claims(&url, claims, true).await, String::new()),
                    Design::NewWithoutHistory => (new_claims(&url, claims, false).await, String::new()),
                };
                let shown: Vec<String> =
                    batches.iter().map(|(n, seconds)| format!("{n} in {seconds:.2} s")).collect();
                eprintln!(
                    "{} | {label} (tables ready in {:.1} s): {:.0} claims/s; batches: {}{used}",
                    design.name(),
                    ready.as_secs_f64(),
                    rate(&batches),
                    shown.join(", ")
                );
                results[d][s] = batches;
            }
        }
        pool.close().await;
        execute(&admin, &format!("DROP DATABASE {DATABASE} WITH (FORCE)")).await;
        admin.close().await;
        (results, plans)
    });

    print!("| scenario |");
    for design in Design::ALL {
        print!(" {} | ratio |", design.name());
    }
    println!();
    println!("|---|{}", "---:|---:|".repeat(Design::ALL.len()));
    for (s, (label, ..)) in scenarios.iter().enumerate() {
        print!("| {label} |");
        for design in &results {
            let (this, best) = (rate(&design[s]), rate(&design[0]));
            print!(" {this:.0}/s | {:.2}x |", this / best);
        }
        println!();
    }
    for (title, plan) in plans {
        println!("\n{title}:\n```\n{}\n```", plan.join("\n"));
    }
}
