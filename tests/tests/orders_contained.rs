//! The `orders` example contains its failures: a database error restarts the worker by its
//! policy while the service serves on, instead of stopping it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use lifecycle::testing::{eventually, within};
use lifecycle_sqlx::sqlx::{self, Connection};
use lifecycle_tests::load::{Clients, Mode, get};
use lifecycle_tests::report_row as row;

/// A running `orders` process, its standard error read in the background.
struct Orders {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
    address: SocketAddr,
}

impl Orders {
    async fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut child = lifecycle_tests::orders_command(dir, address, env).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stderr = Some(std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default()));
        let orders = Self { child, stderr, address };
        within("the service turns ready", Duration::from_secs(20), async {
            while get(address, "/readyz").await.is_none_or(|(status, _)| status != 200) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        orders
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit code and standard error.
    fn stop(mut self) -> (Option<i32>, String) {
        lifecycle_tests::kill("TERM", self.child.id());
        let until = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < until, "orders did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        (status.code(), stderr)
    }
}

impl Drop for Orders {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_database_restarts_the_worker_and_the_service_serves_on() {
    let dir = std::env::temp_dir().join(format!("orders_locked_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut orders = Orders::start(&dir, &[]).await;
    let address = orders.address;

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
