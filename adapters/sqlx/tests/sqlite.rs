//! The SQLite pool component: the embedded default, no server needed.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use lifecycle_core::testing::{self, TestRun, builder};
use lifecycle_core::{ComponentOptions, Failure, Outcome};
use lifecycle_sqlx::SqlitePool;
use lifecycle_sqlx::sqlx::{self, Connection};
use support::{stuck_statement, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_created_used_and_released() {
    let dir = std::env::temp_dir().join(unique("lifecycle_sqlite"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("orders.db").display());

    let mut b = builder();
    let db = b.add(SqlitePool::new("orders_db", url.clone()).max_connections(4)).dep();
    let mut run = TestRun::start(b);
    run.ready().await;
    let pool = db.pool().unwrap().clone();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    for n in 0..10 {
        sqlx::query("INSERT INTO orders (item) VALUES (?)")
            .bind(format!("item {n}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    assert!(db.pool().is_err());
    assert_eq!(pool.size(), 0, "every connection closed");

    // Nothing holds the file: another writer gets it at once.
    let mut again = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO orders (item) VALUES ('after')").execute(&mut again).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&mut again).await.unwrap();
    assert_eq!(count, 11);
    again.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unopenable_file_is_an_error_naming_the_component() {
    let mut b = builder();
    b.add(SqlitePool::new("cache_db", "sqlite:///nonexistent-dir/for/sure/cache.db"));
    let report = b.build().unwrap().run().await;
    assert_eq!(report.exit_code, 1);
    let text = report.component("cache_db").unwrap().outcome.to_string();
    assert!(
        text.contains(
            "component `cache_db` could not connect to sqlite:///nonexistent-dir/for/sure/cache.db"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_stuck_at_stop_runs_to_its_end_and_its_connection_is_closed_then() {
    let dir = std::env::temp_dir().join(unique("lifecycle_sqlite_stuck"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("orders.db").display());
    // Another writer holds the database's write lock: the pool's insert waits for it (up to
    // sqlx's busy timeout, 5 s), past the stop timeout.
    let mut blocker = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc")).await.unwrap();
    sqlx::raw_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY); BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();

    let mut b = builder();
    b.shutdown_deadline(Duration::from_secs(3));
    let db = b
        .add(
            SqlitePool::new("orders_db", url.clone())
                .min_connections(2)
                .options(ComponentOptions::new().stop_timeout(Duration::from_millis(300))),
        )
        .dep();
    b.add(stuck_statement("writer", &db, "INSERT INTO orders (id) VALUES (1)", Duration::from_millis(200)));
    let mut run = TestRun::start(b);
    run.ready().await;
    let pool = db.pool().unwrap().clone();
    testing::eventually(
        "the insert waiting for the lock, another connection idle",
        Duration::from_secs(5),
        || pool.size() >= 2 && pool.size() as usize > pool.num_idle(),
    )
    .await;
    let requested = Instant::now();
    let report = run.stop().await;
    assert!(requested.elapsed() < Duration::from_secs(3), "the deadline holds: {:?}", requested.elapsed());
    let entry = report.component("orders_db").unwrap();
    let Outcome::Failed { failure: Failure::Error(error), .. } = &entry.outcome else {
        panic!("the stop gives up on the statement: {report}")
    };
    assert!(error.to_string().ends_with("1 connection(s) still in use"), "{report}");
    assert!(entry.notes.is_empty(), "no server to cancel on: {report}");
    assert_eq!(pool.size(), 1, "the idle connection closed, the stuck one still out");

    // The lock released, the statement runs to its end, and its connection is closed, not returned.
    sqlx::raw_sql("ROLLBACK").execute(&mut blocker).await.unwrap();
    testing::eventually("the stuck connection closed", Duration::from_secs(5), || pool.size() == 0).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&mut blocker).await.unwrap();
    assert_eq!(count, 1, "the insert was done whole");
    blocker.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
