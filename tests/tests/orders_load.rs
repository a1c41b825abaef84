//! The `orders` example as a real process on PostgreSQL and Redis, under load from clients that
//! count every failure by kind, sent SIGTERM in the middle. A balancer task polls `/readyz` and
//! stops sending new requests once it answers 503, as a load balancer or Kubernetes would.
//! Asserts: zero failed requests, every acknowledged order in the database, `/readyz` 503 before
//! the listener closed, exit code 0, every component stopped. With keep-alive clients,
//! `Connection: close` clients, and HTTP/2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use lifecycle_sqlx::sqlx::{self, AssertSqlSafe};
use lifecycle_tests::load::{Mode, Sender, Tally, classify, connect, post};

const CLIENTS: usize = 16;

fn pg_admin_url() -> String {
    std::env::var("LIFECYCLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Builds the example once per test process (cargo released its lock before running tests).
fn orders_binary() -> std::path::PathBuf {
    static BUILT: OnceLock<std::path::PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "orders"])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .status()
                .unwrap();
            assert!(status.success(), "cargo build -p orders failed");
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/orders")).to_path_buf()
        })
        .clone()
}

/// One client: a connection (or one per request), sending `POST /api/orders` then `GET` of it,
/// until the balancer says stop.
async fn client(
    address: SocketAddr,
    mode: Mode,
    sending: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    n: usize,
) {
    let mut sender: Option<Box<dyn Sender>> = None;
    let mut i = 0;
    while sending.load(Ordering::Acquire) {
        i += 1;
        if sender.as_ref().is_none_or(|s| s.is_closed()) || mode == Mode::ConnectionClose {
            match connect(address, mode).await {
                Ok(new) => sender = Some(new),
                Err(error) => {
                    *tally.lock().unwrap().failures.entry(classify(error.as_ref())).or_default() += 1;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let body = format!("{{\"item\":\"client {n} order {i}\",\"quantity\":1}}");
        match s.send(post(body, mode).unwrap()).await {
            Ok((201, text)) => {
                let id: i64 = text.trim_start_matches("{\"id\":").trim_end_matches('}').parse().unwrap();
                let mut t = tally.lock().unwrap();
                t.ok += 1;
                t.acknowledged.push(id);
            }
            Ok((status, _)) if status >= 500 => {
                *tally.lock().unwrap().failures.entry("5xx").or_default() += 1
            }
            Ok((status, text)) => panic!("unexpected {status}: {text}"),
            Err(error) => {
                *tally.lock().unwrap().failures.entry(classify(error.as_ref())).or_default() += 1;
                sender = None;
            }
        }
    }
}

/// `GET /readyz` status on a fresh connection, or `None` when refused.
async fn readyz(address: SocketAddr) -> Option<u16> {
    let mut sender = connect(address, Mode::ConnectionClose).await.ok()?;
    let request =
        hyper::Request::get("/readyz").header("host", "orders").body(Full::new(Bytes::new())).unwrap();
    sender.send(request).await.ok().map(|(status, _)| status)
}

/// Starts the example with `env` in `dir`, its standard error collected, and waits until
/// `/readyz` answers 200.
async fn spawn_orders(
    address: SocketAddr,
    env: &[(&str, &str)],
    dir: &std::path::Path,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut child = Command::new(orders_binary())
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .envs(env.iter().copied())
        .env("LISTEN_ADDR", address.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let until = Instant::now() + Duration::from_secs(20);
    while readyz(address).await != Some(200) {
        assert!(Instant::now() < until, "the service became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, stderr)
}

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn run(mode: Mode) {
    // Its own database, so tests run in parallel.
    let database = format!("orders_load_{}_{:?}", std::process::id(), mode).to_lowercase();
    let admin = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin).await.unwrap();
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let address = free_address();
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", "redis://127.0.0.1:6379/9"),
        ("DRAIN_DELAY", "1"),
        ("SHUTDOWN_DEADLINE", "10"),
    ];
    let (mut child, stderr) = spawn_orders(address, &env, &std::env::temp_dir()).await;

    let sending = Arc::new(AtomicBool::new(true));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(address, mode, Arc::clone(&sending), Arc::clone(&tally), n)))
        .collect();
    // The balancer: stops sending once /readyz says 503.
    let balancer = {
        let sending = Arc::clone(&sending);
        tokio::spawn(async move {
            loop {
                if readyz(address).await != Some(200) {
                    sending.store(false, Ordering::Release);
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let signalled = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    // A probe for when the listener closes: the first refused connection.
    let listener_closed = tokio::spawn(async move {
        loop {
            if let Err(error) = tokio::net::TcpStream::connect(address).await {
                if error.kind() == std::io::ErrorKind::ConnectionRefused {
                    return Instant::now();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let unready_at = balancer.await.unwrap();
    for client in clients {
        client.await.unwrap();
    }
    let closed_at = listener_closed.await.unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    let stderr = stderr.join().unwrap();

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert!(tally.ok > 100, "real load: {tally:?}");
    assert!(
        tally.failures.is_empty(),
        "{mode:?}: failed requests by kind {:?} (ok {})\n{stderr}",
        tally.failures,
        tally.ok
    );
    assert!(unready_at < closed_at, "/readyz turned 503 before the listener closed");
    assert!(unready_at > signalled);
    assert_eq!(status.code(), Some(0), "{stderr}");
    for component in ["orders_db", "migrations", "cache", "worker", "http"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{component} ")) && l.contains(" stopped ")),
            "{component} stopped:\n{stderr}"
        );
    }
    let db = sqlx::PgPool::connect(&database_url).await.unwrap();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders").fetch_all(&db).await.unwrap();
    let stored: std::collections::HashSet<i64> = stored.into_iter().collect();
    assert!(tally.acknowledged.iter().all(|id| stored.contains(id)), "every 2xx POST is in the database");
    db.close().await;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {database} WITH (FORCE)")))
        .execute(&admin)
        .await
        .unwrap();
    eprintln!("{mode:?}: {} orders acknowledged, 0 failed", tally.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_keep_alive_load_fails_no_request() {
    run(Mode::KeepAlive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_connection_close_load_fails_no_request() {
    run(Mode::ConnectionClose).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_http2_load_fails_no_request() {
    run(Mode::Http2).await;
}

/// The README's main command: no configuration, SQLite in the working directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_sqlite_setup_serves_processes_and_stops() {
    let dir = std::env::temp_dir().join(format!("orders_sqlite_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let address = free_address();
    let (mut child, stderr) = spawn_orders(address, &[], &dir).await;
    let until = Instant::now() + Duration::from_secs(20);
    let mut sender = connect(address, Mode::KeepAlive).await.unwrap();
    let (status, created) = sender
        .send(post("{\"item\":\"tea\",\"quantity\":2}".into(), Mode::KeepAlive).unwrap())
        .await
        .unwrap();
    assert_eq!((status, created.as_str()), (201, "{\"id\":1}"));
    let processed = loop {
        let request = hyper::Request::get("/api/orders/1")
            .header("host", "orders")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, order) = sender.send(request).await.unwrap();
        assert_eq!(status, 200, "{order}");
        if order.contains("\"status\":\"processed\"") || Instant::now() > until {
            break order;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(processed, "{\"id\":1,\"item\":\"tea\",\"quantity\":2,\"status\":\"processed\"}");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(dir.join("orders.db").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
