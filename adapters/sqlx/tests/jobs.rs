//! The job-queue worker against a real PostgreSQL: a shutdown in the middle of 1,000 jobs and a
//! restart run every job exactly once; a job cut short by the stop deadline stays claimable;
//! completed jobs leave the claim's table in the commit that completes them; a failed job keeps
//! its count and error; an installation of the version that kept done jobs in place is upgraded
//! (with instances of both versions running at once) without a job running twice; the claim's
//! plan is an index scan whatever the planner's costs say.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lifecycle_core::testing::{self, TestRun, builder};
use lifecycle_core::{BoxError, CancellationToken, ComponentOptions};
use lifecycle_sqlx::PgPool;
use lifecycle_sqlx::jobs::{Job, JobHandler, JobWorker, enqueue, explain_claim, install, migrate_done_rows};
use lifecycle_sqlx::sqlx::{self, AssertSqlSafe, PgConnection};
use support::{pg_url, unique};

/// Records each run in `runs` inside the job's transaction, after a little work. With
/// `fail_first`, fails each job's first run ("first try fails"), every run of the job whose
/// payload is `always fails` ("this one always fails") and panics in every run of the one whose
/// payload is `panics`; `hopeless_runs` counts the runs of those two.
struct Recorder {
    runs: String,
    work: Duration,
    fail_first: bool,
    hopeless_runs: Arc<AtomicU64>,
}

impl Recorder {
    fn new(runs: &str, work: Duration) -> Self {
        Self { runs: runs.to_owned(), work, fail_first: false, hopeless_runs: Arc::default() }
    }
}

impl JobHandler for Recorder {
    async fn handle(
        &self,
        job: &Job,
        transaction: &mut PgConnection,
        cancel: CancellationToken,
    ) -> Result<(), BoxError> {
        if self.fail_first && job.payload == "always fails" {
            self.hopeless_runs.fetch_add(1, Ordering::AcqRel);
            // Written, then undone with the failure.
            sqlx::query(AssertSqlSafe(format!("INSERT INTO {} (job_id) VALUES ($1)", self.runs)))
                .bind(job.id)
                .execute(transaction)
                .await?;
            return Err("this one always fails".into());
        }
        if self.fail_first && job.payload == "panics" {
            self.hopeless_runs.fetch_add(1, Ordering::AcqRel);
            panic!("job handler bug");
        }
        if self.fail_first && job.attempts == 0 {
            return Err("first try fails".into());
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err("cancelled by the shutdown".into()),
            _ = tokio::time::sleep(self.work) => {}
        }
        sqlx::query(AssertSqlSafe(format!("INSERT INTO {} (job_id) VALUES ($1)", self.runs)))
            .bind(job.id)
            .execute(transaction)
            .await?;
        Ok(())
    }
}

/// The claim of the version before the history, which this test also probes with: the lowest
/// pending job of `queue` that nobody holds, locked until `transaction` ends.
async fn lock_first_pending(transaction: &mut PgConnection, queue: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT id FROM lifecycle_jobs WHERE queue = $1 AND done_at IS NULL AND attempts < 5 \
         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(queue)
    .fetch_optional(transaction)
    .await
    .unwrap()
}

async fn counts(setup: &sqlx::PgPool, runs: &str, queue: &str) -> (i64, i64, i64) {
    let (total, distinct): (i64, i64) =
        sqlx::query_as(AssertSqlSafe(format!("SELECT count(*), count(DISTINCT job_id) FROM {runs}")))
            .fetch_one(setup)
            .await
            .unwrap();
    (total, distinct, history(setup, queue).await)
}

/// Jobs of `queue` in the history (completed by this version).
async fn history(setup: &sqlx::PgPool, queue: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM lifecycle_jobs_done WHERE queue = $1")
        .bind(queue)
        .fetch_one(setup)
        .await
        .unwrap()
}

/// Rows of `queue` in the claim's table, and how many of them are marked done in place.
async fn claim_table(setup: &sqlx::PgPool, queue: &str) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(done_at) FROM lifecycle_jobs WHERE queue = $1")
        .bind(queue)
        .fetch_one(setup)
        .await
        .unwrap()
}

fn registry(queue: &str, runs: &str, work: Duration, stop_timeout: Duration) -> lifecycle_core::Registry {
    worker_registry(&pg_url(), queue, Recorder::new(runs, work), |worker| {
        worker.concurrency(8).options(ComponentOptions::new().stop_timeout(stop_timeout))
    })
}

/// A registry of a pool on `url` and a worker of `queue` with `handler`, polling every 20 ms,
/// with whatever else `configure` sets.
fn worker_registry<H: JobHandler>(
    url: &str,
    queue: &str,
    handler: H,
    configure: impl FnOnce(JobWorker<H>) -> JobWorker<H>,
) -> lifecycle_core::Registry {
    let mut b = builder();
    let db = b.add(PgPool::new(unique("jobs_pool"), url.to_owned()).max_connections(12)).dep();
    b.add(configure(JobWorker::new("worker", db, queue, handler).poll_interval(Duration::from_millis(20))));
    b.build().unwrap()
}

/// Runs `registry` until `done` (asked every 10 ms, for up to `limit`), then stops it: the stop
/// must succeed.
async fn run_until<F, Done>(registry: lifecycle_core::Registry, what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Done,
    Done: std::future::Future<Output = bool>,
{
    let mut run = TestRun::run(registry);
    run.ready().await;
    testing::within(what, limit, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
}

/// A database of the test's own on the test server, for a test that needs the jobs table in a
/// state of its own (an old schema, none at all, statistics it controls). Returns its name and
/// URL; [`drop_database`] removes it.
async fn own_database(prefix: &str) -> (String, String) {
    let name = unique(prefix);
    let admin = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    admin.close().await;
    let url = pg_url();
    let (server, options) = url.split_once('?').map_or((url.as_str(), None), |(s, o)| (s, Some(o)));
    let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
    let url = match options {
        Some(options) => format!("{base}/{name}?{options}"),
        None => format!("{base}/{name}"),
    };
    (name, url)
}

async fn drop_database(name: &str) {
    let admin = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))).execute(&admin).await.unwrap();
    admin.close().await;
}

/// On the server at `url`: the jobs table, a new queue and a table of runs. Returns a pool to
/// look with, the queue and the runs table.
async fn tables(url: &str) -> (sqlx::PgPool, String, String) {
    let setup = sqlx::PgPool::connect(url).await.unwrap();
    install(&setup).await.unwrap();
    let (queue, runs) = (unique("queue"), unique("runs"));
    sqlx::query(AssertSqlSafe(format!("CREATE TABLE {runs} (job_id BIGINT NOT NULL)")))
        .execute(&setup)
        .await
        .unwrap();
    (setup, queue, runs)
}

/// Enqueues `jobs` jobs on `queue` in one transaction.
async fn enqueue_jobs(setup: &sqlx::PgPool, queue: &str, jobs: usize) {
    let mut tx = setup.begin().await.unwrap();
    for n in 0..jobs {
        enqueue(&mut *tx, queue, &format!("job {n}")).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn setup(jobs: usize) -> (sqlx::PgPool, String, String) {
    let (setup, queue, runs) = tables(&pg_url()).await;
    enqueue_jobs(&setup, &queue, jobs).await;
    (setup, queue, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_in_the_middle_and_a_restart_run_every_job_exactly_once() {
    let (setup, queue, runs) = setup(1_000).await;

    let registry = || registry(&queue, &runs, Duration::from_millis(2), Duration::from_secs(5));
    run_until(registry(), "300 jobs run before the shutdown", Duration::from_secs(60), || async {
        counts(&setup, &runs, &queue).await.0 >= 300
    })
    .await;
    let (first_runs, _, first_done) = counts(&setup, &runs, &queue).await;
    assert!(first_done < 1_000, "the shutdown came in the middle ({first_done} done)");
    assert_eq!(first_runs, first_done, "every run committed together with its job's done mark");

    run_until(registry(), "the restarted worker to finish the queue", Duration::from_secs(60), || async {
        counts(&setup, &runs, &queue).await.2 >= 1_000
    })
    .await;
    assert_eq!(
        counts(&setup, &runs, &queue).await,
        (1_000, 1_000, 1_000),
        "each of the 1,000 jobs ran exactly once"
    );
    assert_eq!(claim_table(&setup, &queue).await, (0, 0), "no completed job is left in the claim's table");
    let (first_done, attempts): (bool, i64) = sqlx::query_as(
        "SELECT bool_and(done_at >= created_at), sum(attempts) FROM lifecycle_jobs_done WHERE queue = $1",
    )
    .bind(&queue)
    .fetch_one(&setup)
    .await
    .unwrap();
    assert!(first_done, "each history row has its completion time");
    assert_eq!(attempts, 1_000, "one run each, counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cut_short_by_the_stop_deadline_stays_claimable() {
    let (setup, queue, runs) = setup(1).await;
    // The job takes a minute; the worker's stop allows 600 ms.
    let mut run = TestRun::run(registry(&queue, &runs, Duration::from_secs(60), Duration::from_millis(600)));
    run.ready().await;
    // Claimed: the job's row is locked by someone (a probe that skips locked rows finds none).
    // Any lock on the table would not do: another test's worker, or this worker's move of old
    // done rows, takes one too.
    let claimed = async {
        loop {
            let mut probe = setup.begin().await.unwrap();
            let free = lock_first_pending(&mut probe, &queue).await;
            probe.rollback().await.unwrap();
            if free.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    testing::within("the job to be claimed", Duration::from_secs(10), claimed).await;
    let report = run.stop().await;
    assert!(report.is_success(), "the job saw its cancellation and rolled back in time: {report}");
    let (total, _, done) = counts(&setup, &runs, &queue).await;
    assert_eq!((total, done), (0, 0), "nothing of the job committed");
    let (attempts, last_error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM lifecycle_jobs WHERE queue = $1")
            .bind(&queue)
            .fetch_one(&setup)
            .await
            .unwrap();
    assert_eq!(
        (attempts, last_error),
        (0, None),
        "a shutdown is not the job's failure: it stays claimable as it was"
    );
}

/// A worker with a restart policy, on a PostgreSQL server that stops for longer than its
/// checkouts wait: the slots fail three times in a row, the worker is restarted by its policy
/// (its start failing while the server is down, retried), and every job is done once the server
/// is back, each exactly once. The server is the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_restart_policy_is_restarted_through_a_database_outage() {
    let postgres = lifecycle_tests::postgres::PrivatePostgres::start();
    let url = postgres.url();
    let (setup, queue, runs) = tables(&url).await;

    let mut b = builder();
    let db = b
        .add(
            PgPool::new("outage_pool", url.clone())
                .max_connections(4)
                .acquire_timeout(Duration::from_millis(200)),
        )
        .dep();
    let policy = lifecycle_core::RestartPolicy::on_failure()
        .backoff(Duration::from_millis(100), Duration::from_millis(500))
        .max_restarts(100, Duration::from_secs(60));
    b.add(
        JobWorker::new("worker", db, &queue, Recorder::new(&runs, Duration::from_millis(1)))
            .concurrency(2)
            .poll_interval(Duration::from_millis(20))
            .options(ComponentOptions::new().restart(policy)),
    );
    let mut run = TestRun::start(b);
    run.ready().await;

    setup.close().await;
    postgres.stop_server("fast");
    let handle = run.handle().clone();
    testing::eventually("the worker is restarted by its policy", Duration::from_secs(20), || {
        handle.components().iter().any(|c| c.name.as_str() == "worker" && c.restarts >= 1)
    })
    .await;
    postgres.start_server();

    let setup = sqlx::PgPool::connect(&url).await.unwrap();
    enqueue_jobs(&setup, &queue, 50).await;
    testing::within("every job done", Duration::from_secs(20), async {
        while counts(&setup, &runs, &queue).await.2 < 50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(counts(&setup, &runs, &queue).await, (50, 50, 50), "each job run exactly once");
    assert_eq!(run.handle().phase(), lifecycle_core::Phase::Ready, "the service never stopped");
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    assert!(report.component("worker").unwrap().restarts >= 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_keeps_its_attempts_and_error_and_takes_them_into_the_history() {
    let (setup, queue, runs) = setup(20).await;
    let hopeless = enqueue(&setup, &queue, "always fails").await.unwrap();
    let panicking = enqueue(&setup, &queue, "panics").await.unwrap();
    // One slot: a failure is recorded after its transaction rolled back, so with more slots
    // another one may run the job again before its count went up (and count that failure too).
    let failing = Recorder { fail_first: true, ..Recorder::new(&runs, Duration::ZERO) };
    let hopeless_runs = Arc::clone(&failing.hopeless_runs);
    let registry = worker_registry(&pg_url(), &queue, failing, |w| w.concurrency(1).max_attempts(3));
    run_until(registry, "every job done or out of attempts", Duration::from_secs(30), || async {
        let (out_of_attempts,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM lifecycle_jobs WHERE queue = $1 AND attempts = 3")
                .bind(&queue)
                .fetch_one(&setup)
                .await
                .unwrap();
        history(&setup, &queue).await == 20 && out_of_attempts == 2
    })
    .await;

    assert_eq!(counts(&setup, &runs, &queue).await, (20, 20, 20), "each job succeeded once");
    assert_eq!(hopeless_runs.load(Ordering::Acquire), 6, "three runs each of the two hopeless jobs, no more");
    let done: Vec<(i32, Option<String>, i64)> = sqlx::query_as(
        "SELECT attempts, last_error, count(*) FROM lifecycle_jobs_done WHERE queue = $1 GROUP BY 1, 2",
    )
    .bind(&queue)
    .fetch_all(&setup)
    .await
    .unwrap();
    assert_eq!(
        done,
        vec![(2, Some("first try fails".to_owned()), 20)],
        "two runs each, the failed one's error kept"
    );
    let left: Vec<(i64, i32, Option<String>, bool)> = sqlx::query_as(
        "SELECT id, attempts, last_error, done_at IS NULL FROM lifecycle_jobs WHERE queue = $1 ORDER BY id",
    )
    .bind(&queue)
    .fetch_all(&setup)
    .await
    .unwrap();
    assert_eq!(
        left,
        vec![
            (hopeless, 3, Some("this one always fails".to_owned()), true),
            (panicking, 3, Some("the job handler panicked: job handler bug".to_owned()), true),
        ],
        "only the jobs out of attempts stay in the claim's table, with their count and error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_history_a_completed_job_is_only_deleted() {
    let (setup, queue, runs) = setup(50).await;
    let recorder = Recorder::new(&runs, Duration::from_millis(1));
    let registry = worker_registry(&pg_url(), &queue, recorder, |w| w.keep_history(false));
    run_until(registry, "every job run", Duration::from_secs(30), || async {
        counts(&setup, &runs, &queue).await.0 >= 50
    })
    .await;
    assert_eq!(counts(&setup, &runs, &queue).await, (50, 50, 0), "each job ran once; no history");
    assert_eq!(claim_table(&setup, &queue).await, (0, 0), "no completed job left in the claim's table");
}

/// The schema as the version before the history installed it: the first two statements of
/// today's, which have not changed since (done jobs stayed in `lifecycle_jobs`, marked by
/// `done_at`).
const OLD_SCHEMA: [&str; 2] = [lifecycle_sqlx::jobs::SCHEMA[0], lifecycle_sqlx::jobs::SCHEMA[1]];

/// Installs through every pool at once, as instances starting together do; each must succeed.
async fn installs_at_once(instances: &[sqlx::PgPool]) {
    let installing: Vec<_> = instances
        .iter()
        .map(|pool| {
            let pool = pool.clone();
            tokio::spawn(async move { install(&pool).await })
        })
        .collect();
    for installed in installing {
        installed.await.unwrap().expect("every instance installs");
    }
}

/// A worker of the version before the history, one slot, as it claimed and completed jobs:
/// records each run in `runs` and marks the job done in place, in the same commit, until `stop`.
/// Returns how many jobs it ran.
async fn old_worker(pool: sqlx::PgPool, queue: String, runs: String, stop: CancellationToken) -> u64 {
    let mut ran = 0;
    while !stop.is_cancelled() {
        let mut tx = pool.begin().await.unwrap();
        let Some(id) = lock_first_pending(&mut tx, &queue).await else {
            tx.rollback().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        sqlx::query(AssertSqlSafe(format!("INSERT INTO {runs} (job_id) VALUES ($1)")))
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("UPDATE lifecycle_jobs SET done_at = now(), attempts = attempts + 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        ran += 1;
    }
    ran
}

/// An installation of the version that kept done jobs in place, with 25,000 of them (three
/// batches of the move) and 400 jobs to run: four instances of this version install at once, a
/// worker of the old version keeps running next to this version's worker, and no job runs twice;
/// the worker's start moves its queue's old done rows into the history, and leaves another
/// queue's alone; the rest is moved on demand, by two callers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_installation_is_upgraded_while_old_and_new_workers_run() {
    let (database, url) = own_database("jobs_upgrade").await;
    let setup = sqlx::PgPool::connect(&url).await.unwrap();
    for statement in OLD_SCHEMA {
        sqlx::query(statement).execute(&setup).await.unwrap();
    }
    let (queue, other, runs) = ("orders", "other", "runs");
    sqlx::query("CREATE TABLE runs (job_id BIGINT NOT NULL)").execute(&setup).await.unwrap();
    let history_of_old = "INSERT INTO lifecycle_jobs (queue, payload, done_at, attempts) \
                          SELECT $1, 'old ' || g, now(), 1 FROM generate_series(1, $2) g";
    sqlx::query(history_of_old).bind(queue).bind(25_000).execute(&setup).await.unwrap();
    sqlx::query(history_of_old).bind(other).bind(1_000).execute(&setup).await.unwrap();
    sqlx::query(
        "INSERT INTO lifecycle_jobs (queue, payload) SELECT $1, 'job ' || g FROM generate_series(1, 400) g",
    )
    .bind(queue)
    .execute(&setup)
    .await
    .unwrap();

    let instances: Vec<sqlx::PgPool> = {
        let mut pools = Vec::new();
        for _ in 0..4 {
            pools.push(sqlx::PgPool::connect(&url).await.unwrap());
        }
        pools
    };
    installs_at_once(&instances).await;

    let stop_old = CancellationToken::new();
    let old = tokio::spawn(old_worker(setup.clone(), queue.into(), runs.into(), stop_old.clone()));
    let recorder = Recorder::new(runs, Duration::from_millis(1));
    let mut run = TestRun::run(worker_registry(&url, queue, recorder, |w| w.concurrency(4)));
    run.ready().await;
    testing::within("every job run and the old history moved", Duration::from_secs(60), async {
        loop {
            let ran = counts(&setup, runs, queue).await.0;
            let moved: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM lifecycle_jobs_done WHERE queue = $1 AND payload LIKE 'old %'",
            )
            .bind(queue)
            .fetch_one(&setup)
            .await
            .unwrap();
            if ran >= 400 && moved == 25_000 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop_old.cancel();
    let ran_by_old = old.await.unwrap();
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");

    let (total, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT job_id) FROM runs").fetch_one(&setup).await.unwrap();
    assert_eq!((total, distinct), (400, 400), "each job ran once ({ran_by_old} by the old worker)");
    let (left, left_done) = claim_table(&setup, queue).await;
    assert_eq!(left, left_done, "no job left to run");
    assert!(
        left_done <= i64::try_from(ran_by_old).unwrap(),
        "left in place: only jobs the old worker completed after the move went past them ({left_done} of {ran_by_old})"
    );
    assert_eq!(
        claim_table(&setup, other).await,
        (1_000, 1_000),
        "a queue served by no new worker is left alone"
    );

    // On demand: the rest of this queue, then the other queue by two callers at once.
    migrate_done_rows(&setup, queue).await.unwrap();
    assert_eq!(claim_table(&setup, queue).await, (0, 0), "nothing of the queue left in the claim's table");
    assert_eq!(history(&setup, queue).await, 25_400, "the old history and every job, once each");
    let (a, b) =
        tokio::join!(migrate_done_rows(&instances[0], other), migrate_done_rows(&instances[1], other));
    assert_eq!(a.unwrap() + b.unwrap(), 1_000, "two movers at once move each row once");
    assert_eq!(history(&setup, other).await, 1_000);
    assert_eq!(claim_table(&setup, other).await, (0, 0));

    for pool in instances {
        pool.close().await;
    }
    setup.close().await;
    drop_database(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_instances_install_at_once_on_an_empty_database() {
    let (database, url) = own_database("jobs_install").await;
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(sqlx::PgPool::connect(&url).await.unwrap());
    }
    installs_at_once(&instances).await;
    // Installed: the fast path, again from all at once.
    installs_at_once(&instances).await;
    let id = enqueue(&instances[0], "q", "one").await.unwrap();
    let claimed: Option<i64> = sqlx::query_scalar("SELECT id FROM lifecycle_jobs_claim('q', 5)")
        .fetch_optional(&instances[1])
        .await
        .unwrap();
    assert_eq!(claimed, Some(id), "the claim function is there and finds the job");
    for pool in instances {
        pool.close().await;
    }
    drop_database(&database).await;
}

/// With costs that make index scans look dear, the planner would answer the old claim statement
/// by reading and sorting the whole queue; the claim function's settings leave it an index scan
/// in id order that stops at the first row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_is_an_index_scan_even_when_the_costs_favour_a_sort() {
    let (database, url) = own_database("jobs_plan").await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    install(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO lifecycle_jobs (queue, payload) SELECT 'q', 'job ' || g FROM generate_series(1, 5000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE lifecycle_jobs").execute(&pool).await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL random_page_cost = 100000").execute(&mut *tx).await.unwrap();
    let plain: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id, payload, attempts FROM lifecycle_jobs \
         WHERE queue = $1 AND done_at IS NULL AND attempts < $2 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind("q")
    .bind(5)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert!(plain.iter().any(|line| line.contains("Sort")), "the costs favour a sort: {plain:#?}");

    let claim = explain_claim(&mut tx, "q", 5).await.unwrap();
    let text = claim.join("\n");
    assert!(text.contains("Index Scan"), "{text}");
    for whole in ["Sort", "Seq Scan", "Bitmap"] {
        assert!(!text.contains(whole), "the claim does not read the whole queue ({whole}): {text}");
    }
    assert!(text.contains("rows=1 loops=1"), "it found the first job: {text}");
    tx.rollback().await.unwrap();

    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM lifecycle_jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 5000, "explaining claims nothing");
    pool.close().await;
    drop_database(&database).await;
}
