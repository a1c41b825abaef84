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
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await.unwrap();
    let database = format!("orders_idempotency_{}", std::process::id());
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {database}"))).execute(&admin).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin).await.unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
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
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {database} WITH (FORCE)")))
        .execute(&admin)
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
