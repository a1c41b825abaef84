//! The `orders` example talks TLS to PostgreSQL (`sslmode=verify-full`, the server's
//! certificate checked against `sslrootcert`) and to Redis (`rediss://`, checked against the
//! authority in `SSL_CERT_FILE`), each a private server of the test's own with a certificate of
//! a test authority; and a demand for TLS that the server cannot meet fails the start at once
//! instead of retrying until the start deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use lifecycle::testing::eventually;
use lifecycle_tests::load::{Clients, Mode, get};
use lifecycle_tests::postgres::PrivatePostgres;
use lifecycle_tests::redis::TlsRedisServer;
use lifecycle_tests::tls::Authority;
use lifecycle_tests::{Orders, orders_command};

const WITHIN: Duration = Duration::from_secs(30);

/// A fresh directory for this test.
fn directory(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `psql` on `port` (plain, as the server also accepts): the single value `query` returns.
fn psql(port: u16, query: &str) -> String {
    let output = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-Atc", query])
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_reaches_postgres_and_redis_over_verified_tls() {
    let dir = directory("orders_tls_stores");
    let authority = Authority::new();
    let leaf = authority.leaf("stores");
    leaf.write_to(&dir);
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, authority.certificate_pem()).unwrap();
    let postgres = PrivatePostgres::start_with_tls(&leaf);
    let redis = TlsRedisServer::start(&dir);
    let port = postgres.url().rsplit_once(':').unwrap().1.split('/').next().unwrap().parse::<u16>().unwrap();
    let database_url = format!("{}?sslmode=verify-full&sslrootcert={}", postgres.url(), ca.display());
    let orders = Orders::start(
        &dir,
        &[
            ("DATABASE_URL", &database_url),
            ("REDIS_URL", &redis.url()),
            ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ],
    )
    .await;

    // Every connection of the service to PostgreSQL is encrypted.
    let count = |ssl: bool| {
        psql(
            port,
            &format!(
                "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE application_name LIKE 'orders_db%' AND ssl = {ssl}"
            ),
        )
    };
    assert_ne!(count(true), "0", "no TLS connection of orders_db in pg_stat_ssl");
    assert_eq!(count(false), "0", "a plain connection of orders_db");

    // Orders are written, processed and cached: the cache, which has no plain port, was reached.
    let clients = Clients::start(orders.address(), Mode::KeepAlive, 2);
    eventually("orders created", WITHIN, || clients.ok() > 200).await;
    let until = Instant::now() + WITHIN;
    while redis.cli(&["--scan", "--pattern", "orders:*"]).trim().is_empty() {
        assert!(Instant::now() < until, "no order cached in the TLS-only Redis");
        let _ = get(orders.address(), "/api/orders/1").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tally = clients.stop().await;
    let (code, stderr) = orders.stop();
    tally.assert_no_failures("orders over TLS to its stores", &stderr);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(count(true), "0", "every connection closed at the stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demand_for_tls_that_the_database_cannot_meet_fails_the_start_at_once() {
    let dir = directory("orders_tls_refused");
    // A server without TLS, and a URL that requires it.
    let postgres = PrivatePostgres::start();
    let database_url = format!("{}?sslmode=require", postgres.url());
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut command = orders_command(&dir, address, &[("DATABASE_URL", &database_url)]);
    let began = Instant::now(); // after the command, which builds the binary if needed
    let output = command.output().unwrap();
    let took = began.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("orders_db") && stderr.contains("TLS"), "{stderr}");
    // The pool's start deadline is 15 s: retrying would have taken it all.
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
