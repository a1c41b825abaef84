//! The SQLite pool component: the embedded default, no server needed.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lifecycle_core::testing::{TestRun, builder};
use lifecycle_sqlx::SqlitePool;
use lifecycle_sqlx::sqlx::{self, Connection};
use support::unique;

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
