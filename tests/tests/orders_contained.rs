//! The `orders` example contains its failures: a database error restarts the worker by its
//! policy while the service serves on, instead of stopping it; on PostgreSQL, killed
//! connections and a server restart cost no request and no order, and readiness never drops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lifecycle::testing::{eventually, within};
use lifecycle_sqlx::sqlx::{self, Connection};
use lifecycle_tests::Orders;
use lifecycle_tests::load::{Clients, Mode, get};
use lifecycle_tests::report_row as row;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_database_restarts_the_worker_and_the_service_serves_on() {
    let dir = std::env::temp_dir().join(format!("orders_locked_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut orders = Orders::start(&dir, &[]).await;
    let address = orders.address();

    // An operator's session holds the write lock for longer than SQLite's busy timeout (5 s).
    let mut operator =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.join("orders.db").display()))
            .await
            .unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut operator).await.unwrap();
    let locked_at = Instant::now();
    while locked_at.elapsed() < Duration::from_secs(7) {
        assert!(orders.running(), "the service must not stop over a locked database");
        let (status, _) = get(address, "/livez").await.expect("the service answers");
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sqlx::raw_sql("COMMIT").execute(&mut operator).await.unwrap();
    drop(operator);

    // The worker is back: orders written now are processed.
    let clients = Clients::start(address, Mode::KeepAlive, 2);
    eventually("some orders are taken", Duration::from_secs(10), || clients.ok() >= 20).await;
    let tally = clients.stop().await;
    let last = *tally.acknowledged.iter().max().unwrap();
    within("the last order is processed", Duration::from_secs(10), async {
        loop {
            if let Some((200, body)) = get(address, &format!("/api/orders/{last}")).await {
                if body.contains("\"processed\"") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(orders.running());

    let (code, stderr) = orders.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let worker = row(&stderr, "worker");
    assert!(worker.starts_with("worker stopped, restarted"), "{stderr}");
    assert!(stderr.contains("database is locked"), "the failure is in the report: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_on_postgres_serves_on_while_its_connections_are_killed_and_the_server_restarts() {
    let postgres = lifecycle_tests::postgres::PrivatePostgres::start();
    let url = postgres.url();
    let dir = std::env::temp_dir();
    let env =
        [("DATABASE_URL", url.as_str()), ("DATABASE_WARM_CONNECTIONS", "2"), ("SHUTDOWN_DEADLINE", "10")];
    let mut orders = Orders::start(&dir, &env).await;
    let address = orders.address();

    // A balancer's view: every /readyz answer counted.
    let polling = Arc::new(AtomicBool::new(true));
    let unready = Arc::new(AtomicU64::new(0));
    let poller = {
        let (polling, unready) = (Arc::clone(&polling), Arc::clone(&unready));
        tokio::spawn(async move {
            while polling.load(Ordering::Acquire) {
                let answer = get(address, "/readyz").await;
                if answer.as_ref().is_none_or(|(status, _)| *status != 200) {
                    eprintln!("/readyz answered {answer:?}");
                    unready.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let clients = Clients::start(address, Mode::KeepAlive, 4);
    let more = |target: u64| {
        let clients = &clients;
        async move { eventually("orders are taken", Duration::from_secs(20), || clients.ok() >= target).await }
    };
    more(100).await;

    // Every connection of the service's pool (the worker's among them) killed at once.
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'orders_db-%'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    drop(admin);
    assert!(!killed.is_empty(), "the service had connections");
    more(clients.ok() + 100).await;

    // The server itself stopped for two seconds, then started again.
    postgres.stop_server("fast");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(orders.running(), "the service must not stop while its database is down");
    postgres.start_server();
    more(clients.ok() + 100).await;

    let tally = clients.stop().await;
    polling.store(false, Ordering::Release);
    poller.await.unwrap();
    tally.assert_no_failures("orders through killed connections and a database restart", "");
    assert_eq!(unready.load(Ordering::Relaxed), 0, "/readyz never said 503");

    // Every acknowledged order processed, each job done once.
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let acknowledged: Vec<i64> = tally.acknowledged.clone();
    within("every order processed", Duration::from_secs(20), async {
        loop {
            let processed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'processed' AND id = ANY($1)")
                    .bind(&acknowledged)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            if processed == acknowledged.len() as i64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let orders_count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&mut admin).await.unwrap();
    assert_eq!(orders_count, acknowledged.len() as i64, "no order written twice");

    // The worker rode the outage out in place (a checkout waits for the server to come back):
    // with a policy, it is restarted only after three database errors in a row.
    let (code, stderr) = orders.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(row(&stderr, "worker").starts_with("worker stopped"), "{stderr}");
    assert!(row(&stderr, "orders_db").starts_with("orders_db stopped"), "{stderr}");
}
