//! The job-queue worker against a real PostgreSQL: a shutdown in the middle of 1,000 jobs and a
//! restart run every job exactly once; a job cut short by the stop deadline stays claimable.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use lifecycle_core::testing::{self, TestRun, builder};
use lifecycle_core::{BoxError, CancellationToken, ComponentOptions};
use lifecycle_sqlx::PgPool;
use lifecycle_sqlx::jobs::{Job, JobHandler, JobWorker, enqueue, install};
use lifecycle_sqlx::sqlx::{self, AssertSqlSafe, PgConnection};
use support::{pg_url, unique};

/// Records each run in `runs` inside the job's transaction, after a little work.
struct Recorder {
    runs: String,
    work: Duration,
}

impl JobHandler for Recorder {
    async fn handle(
        &self,
        job: &Job,
        transaction: &mut PgConnection,
        cancel: CancellationToken,
    ) -> Result<(), BoxError> {
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

async fn counts(setup: &sqlx::PgPool, runs: &str, queue: &str) -> (i64, i64, i64) {
    let (total, distinct): (i64, i64) =
        sqlx::query_as(AssertSqlSafe(format!("SELECT count(*), count(DISTINCT job_id) FROM {runs}")))
            .fetch_one(setup)
            .await
            .unwrap();
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lifecycle_jobs WHERE queue = $1 AND done_at IS NOT NULL")
            .bind(queue)
            .fetch_one(setup)
            .await
            .unwrap();
    (total, distinct, done)
}

fn registry(queue: &str, runs: &str, work: Duration, stop_timeout: Duration) -> lifecycle_core::Registry {
    let mut b = builder();
    let db = b.add(PgPool::new(unique("jobs_pool"), pg_url()).max_connections(12)).dep();
    b.add(
        JobWorker::new("worker", db, queue, Recorder { runs: runs.into(), work })
            .concurrency(8)
            .poll_interval(Duration::from_millis(20))
            .options(ComponentOptions::new().stop_timeout(stop_timeout)),
    );
    b.build().unwrap()
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

    let mut run = TestRun::run(registry(&queue, &runs, Duration::from_millis(2), Duration::from_secs(5)));
    run.ready().await;
    testing::within("300 jobs run before the shutdown", Duration::from_secs(60), async {
        while counts(&setup, &runs, &queue).await.0 < 300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    let (first_runs, _, first_done) = counts(&setup, &runs, &queue).await;
    assert!(first_done < 1_000, "the shutdown came in the middle ({first_done} done)");
    assert_eq!(first_runs, first_done, "every run committed together with its job's done mark");

    let mut run = TestRun::run(registry(&queue, &runs, Duration::from_millis(2), Duration::from_secs(5)));
    run.ready().await;
    testing::within("the restarted worker to finish the queue", Duration::from_secs(60), async {
        while counts(&setup, &runs, &queue).await.2 < 1_000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    assert_eq!(
        counts(&setup, &runs, &queue).await,
        (1_000, 1_000, 1_000),
        "each of the 1,000 jobs ran exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cut_short_by_the_stop_deadline_stays_claimable() {
    let (setup, queue, runs) = setup(1).await;
    // The job takes a minute; the worker's stop allows 600 ms.
    let mut run = TestRun::run(registry(&queue, &runs, Duration::from_secs(60), Duration::from_millis(600)));
    run.ready().await;
    let claimed = async {
        loop {
            let locked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'lifecycle_jobs' AND l.mode = 'RowShareLock'",
            )
            .fetch_one(&setup)
            .await
            .unwrap();
            if locked > 0 {
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
        JobWorker::new("worker", db, &queue, Recorder { runs: runs.clone(), work: Duration::from_millis(1) })
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
