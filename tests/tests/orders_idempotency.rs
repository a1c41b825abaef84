//! Retries that do not duplicate: `POST /api/orders` with an `Idempotency-Key` writes one order
//! however often (and however concurrently) the same request is sent again, on SQLite and on
//! PostgreSQL; a bad key is a clear 400.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use lifecycle_sqlx::sqlx::{self, AssertSqlSafe};
use lifecycle_tests::Orders;
use lifecycle_tests::load::{Mode, connect};

/// `POST /api/orders` with `key` (if any): status and body.
async fn post(address: SocketAddr, item: &str, key: Option<&str>) -> (u16, String) {
    let mut request = hyper::Request::post("/api/orders")
        .header("host", "orders")
        .header("content-type", "application/json")
        .header("connection", "close");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let body = format!("{{\"item\":\"{item}\",\"quantity\":1}}");
    let mut sender = connect(address, Mode::ConnectionClose).await.unwrap();
    sender.send(request.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap()
}

/// A database of the test's own on the shared server, named after `prefix` and this process:
/// a connection to the server, its name and its URL.
async fn own_database(prefix: &str) -> (sqlx::PgPool, String, String) {
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await.unwrap();
    let database = format!("{prefix}_{}", std::process::id());
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {database}"))).execute(&admin).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin).await.unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    (admin, database, url)
}

async fn drop_database(admin: &sqlx::PgPool, database: &str) {
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {database} WITH (FORCE)")))
        .execute(admin)
        .await
        .unwrap();
}

async fn a_key_writes_one_order(address: SocketAddr) {
    let first = post(address, "tea", Some("order-7f3a")).await;
    assert_eq!(first.0, 201, "{}", first.1);
    // Sent again, one after the other and eight at once: the same order.
    assert_eq!(post(address, "tea", Some("order-7f3a")).await, first);
    let again: Vec<_> =
        (0..8).map(|_| tokio::spawn(async move { post(address, "tea", Some("order-7f3a")).await })).collect();
    for answer in again {
        assert_eq!(answer.await.unwrap(), first);
    }
    // Another key, or none: new orders.
    let other = post(address, "tea", Some("order-8b21")).await;
    assert_eq!(other.0, 201);
    assert_ne!(other, first);
    let (unkeyed_a, unkeyed_b) = (post(address, "tea", None).await, post(address, "tea", None).await);
    assert_ne!(unkeyed_a, unkeyed_b, "without a key, each request is an order");
    // A key that cannot be one.
    for bad in ["", &"k".repeat(256), "has space"] {
        let (status, body) = post(address, "tea", Some(bad)).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(body.contains("`Idempotency-Key` must be 1 to 255 visible ASCII characters"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_writes_one_order_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("orders_idempotency_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let orders = Orders::start(&dir, &[]).await;
    a_key_writes_one_order(orders.address()).await;
    let (code, stderr) = tokio::task::spawn_blocking(move || orders.stop()).await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_writes_one_order_on_postgres() {
    let (admin, database, url) = own_database("orders_idempotency").await;
    let dir = std::env::temp_dir().join(format!("orders_idempotency_pg_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let orders = Orders::start(&dir, &[("DATABASE_URL", &url), ("DATABASE_WARM_CONNECTIONS", "1")]).await;
    a_key_writes_one_order(orders.address()).await;
    let (code, stderr) = tokio::task::spawn_blocking(move || orders.stop()).await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    // In the database: each keyed order once, four orders in all (two keys, two without).
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&db).await.unwrap();
    assert_eq!(rows, 4);
    db.close().await;
    drop_database(&admin, &database).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sends `key`'s order until it is acknowledged (201), as a careful client does: a refused or
/// reset connection, a timeout or a 503 is retried with the same key. Returns the answer's body
/// and how many attempts it took.
async fn post_until_acknowledged(address: SocketAddr, key: &str) -> (String, u32) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let body = format!("{{\"item\":\"{key}\",\"quantity\":1}}");
        let request = hyper::Request::post("/api/orders")
            .header("host", "orders")
            .header("content-type", "application/json")
            .header("connection", "close")
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let mut sender = connect(address, Mode::ConnectionClose).await.ok()?;
            sender.send(request).await.ok()
        })
        .await
        .ok()
        .flatten();
        match answer {
            Some((201, body)) => return (body, attempts),
            Some((503, _)) | None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Some((status, body)) => panic!("{key}: unexpected {status}: {body}"),
        }
        assert!(attempts < 1_000, "{key}: never acknowledged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_retry_every_post_through_a_kill_9_leave_no_duplicate() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    const CLIENTS: usize = 8;
    let (admin, database, url) = own_database("orders_kill9").await;
    let dir = std::env::temp_dir().join(format!("orders_kill9_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = [("DATABASE_URL", url.as_str()), ("DATABASE_WARM_CONNECTIONS", "2")];
    let orders = Orders::start(&dir, &env).await;
    let address = orders.address();

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String, u32)>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
            tokio::spawn(async move {
                for order in 0.. {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let key = format!("c{client}-{order}");
                    let (body, attempts) = post_until_acknowledged(address, &key).await;
                    acknowledged.lock().unwrap().push((key, body, attempts));
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    // No drain, no stop: requests in flight die with the process, some after their commit.
    tokio::task::spawn_blocking(move || orders.kill()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let orders = Orders::start_on(&dir, address, &env).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Release);
    for client in clients {
        client.await.unwrap();
    }
    let (code, stderr) = tokio::task::spawn_blocking(move || orders.stop()).await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");

    // Every acknowledged key is in the database once, with the id its answer gave; nothing else is.
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    let retried = acknowledged.iter().filter(|(_, _, attempts)| *attempts > 1).count();
    assert!(retried > 0, "the kill interrupted no request: nothing was tested");
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT request_id FROM orders GROUP BY request_id HAVING count(*) > 1) d",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(duplicates, 0, "a retried request was written twice");
    let rows: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, request_id FROM orders").fetch_all(&db).await.unwrap();
    assert_eq!(rows.len(), acknowledged.len(), "one order per acknowledged key, and no other");
    let by_key: std::collections::HashMap<String, i64> =
        // Stored as `key:<Idempotency-Key>`, apart from the request ids of unkeyed orders.
        rows.into_iter().filter_map(|(id, key)| Some((key?.strip_prefix("key:")?.to_owned(), id))).collect();
    for (key, body, _) in &acknowledged {
        let id = by_key.get(key).unwrap_or_else(|| panic!("{key} acknowledged but not stored"));
        assert!(body.contains(&format!("\"id\":{id}")), "{key}: answered {body}, stored as {id}");
    }
    eprintln!(
        "{} orders acknowledged across a kill -9, {retried} of them after a retry, 0 duplicates",
        acknowledged.len()
    );
    db.close().await;
    drop_database(&admin, &database).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
