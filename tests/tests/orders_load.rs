//! The `orders` example as a real process on PostgreSQL and Redis, under load from clients that
//! count every failure by kind, sent SIGTERM in the middle. A balancer task polls `/readyz` and
//! stops sending new requests once it answers 503, as a load balancer or Kubernetes would.
//! Asserts: zero failed requests, every acknowledged order in the database, `/readyz` 503 before
//! the listener closed, exit code 0, every component stopped. With keep-alive clients,
//! `Connection: close` clients, and HTTP/2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use lifecycle::testing::{eventually, within};
use lifecycle_etcd::{Change, InstanceWatcher};
use lifecycle_sqlx::sqlx::{self, AssertSqlSafe};
use lifecycle_tests::etcd::Etcd;
use lifecycle_tests::load::{Mode, Tally, client, connect, post};
use lifecycle_tests::{kill, pid_in, upgrade, wait_exited};

const CLIENTS: usize = 16;
/// How long the test waits for something the service or the clients do (each step of a stop is
/// bounded by the service's 10 s shutdown deadline).
const WITHIN: Duration = Duration::from_secs(30);

fn pg_admin_url() -> String {
    std::env::var("LIFECYCLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
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
    let mut child = lifecycle_tests::orders_command(dir, address, env)
        // Tests run side by side on one PostgreSQL (100 connections): a small warm pool each.
        .env("DATABASE_WARM_CONNECTIONS", "2")
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

async fn run(mode: Mode, discovery: Discovery) {
    // Its own database, so tests run in parallel.
    let database = format!("orders_load_{}_{mode:?}_{discovery:?}", std::process::id()).to_lowercase();
    let admin = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin).await.unwrap();
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let address = free_address();
    let etcd = match discovery {
        Discovery::Readiness => None,
        Discovery::Etcd => Some(Etcd::start().await),
    };
    let etcd_url = etcd.as_ref().map(Etcd::url).unwrap_or_default();
    let mut env = vec![
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", "redis://127.0.0.1:6379/9"),
        ("DRAIN_DELAY", "1"),
        ("SHUTDOWN_DEADLINE", "10"),
    ];
    if etcd.is_some() {
        env.push(("ETCD_ENDPOINTS", etcd_url.as_str()));
    }
    let mut watcher = match &etcd {
        Some(etcd) => Some(InstanceWatcher::new(&[etcd.url()], "/services/orders").await.unwrap()),
        None => None,
    };
    let (mut child, stderr) = spawn_orders(address, &env, &std::env::temp_dir()).await;
    if let Some(watcher) = &mut watcher {
        within("the instance's key in etcd", WITHIN, async {
            while !watcher.instances().contains_key(&format!("/services/orders/{address}")) {
                watcher.next_changes().await.unwrap().expect("the watch goes on");
            }
        })
        .await;
    }

    let sending = Arc::new(AtomicBool::new(true));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(address, mode, Arc::clone(&sending), Arc::clone(&tally), n)))
        .collect();
    // The balancer: stops sending once /readyz says 503, or, with etcd, once the instance's key
    // is deleted (as a client that watches the prefix would).
    let balancer = {
        let sending = Arc::clone(&sending);
        tokio::spawn(async move {
            match watcher {
                Some(mut watcher) => {
                    let key = format!("/services/orders/{address}");
                    while watcher.instances().contains_key(&key) {
                        watcher.next_changes().await.unwrap().expect("the watch goes on");
                    }
                }
                None => {
                    while readyz(address).await == Some(200) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            sending.store(false, Ordering::Release);
            Instant::now()
        })
    };
    // SIGTERM in the middle of real load, not before it began.
    eventually("over 100 acknowledged orders", WITHIN, || tally.lock().unwrap().ok > 100).await;
    let signalled = Instant::now();
    kill("TERM", child.id());
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
    let unready_at = within("the balancer to stop sending", WITHIN, balancer).await.unwrap();
    within("the clients' last requests", WITHIN, async {
        for client in clients {
            client.await.unwrap();
        }
    })
    .await;
    let closed_at = within("the listener to close", WITHIN, listener_closed).await.unwrap();
    let status = within("the service to exit", WITHIN, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .unwrap()
        .unwrap();
    let stderr = stderr.join().unwrap();

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    tally.assert_no_failures(&format!("{mode:?}"), &stderr);
    assert!(unready_at < closed_at, "{discovery:?} told clients to stop before the listener closed");
    assert!(unready_at > signalled);
    assert_eq!(status.code(), Some(0), "{stderr}");
    let mut components = vec!["orders_db", "migrations", "cache", "worker", "http"];
    if etcd.is_some() {
        components.push("registration");
    }
    for component in components {
        assert!(
            stderr
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{component} ")) && l.contains(" stopped ")),
            "{component} stopped:\n{stderr}"
        );
    }
    assert_stored_and_drop(&admin, &database, &tally).await;
    eprintln!("{mode:?} / {discovery:?}: {} orders acknowledged, 0 failed", tally.ok);
}

/// Checks every acknowledged order is in `database`, then drops it.
async fn assert_stored_and_drop(admin: &sqlx::PgPool, database: &str, tally: &Tally) {
    let db = sqlx::PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{database}")).await.unwrap();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders").fetch_all(&db).await.unwrap();
    let stored: std::collections::HashSet<i64> = stored.into_iter().collect();
    assert!(tally.acknowledged.iter().all(|id| stored.contains(id)), "every 2xx POST is in the database");
    db.close().await;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {database} WITH (FORCE)")))
        .execute(admin)
        .await
        .unwrap();
}

/// How clients learn that the instance is going away.
#[derive(Clone, Copy, Debug)]
enum Discovery {
    /// A balancer polling `/readyz`.
    Readiness,
    /// A client watching the service's prefix in etcd.
    Etcd,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_keep_alive_load_fails_no_request() {
    run(Mode::KeepAlive, Discovery::Readiness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_connection_close_load_fails_no_request() {
    run(Mode::ConnectionClose, Discovery::Readiness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_http2_load_fails_no_request() {
    run(Mode::Http2, Discovery::Readiness).await;
}

/// The etcd key is deleted before the first refused connection, and clients that follow the
/// prefix lose no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_etcd_discovery_deregisters_before_refusing() {
    run(Mode::KeepAlive, Discovery::Etcd).await;
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
    kill("TERM", child.id());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(dir.join("orders.db").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 7's upgrade case: `orders` registered in etcd, under keep-alive load, upgraded three
/// times with SIGUSR2. Each successor writes the same key with its own lease before it is ready,
/// so the retiring process's revoke deletes nothing: a client following the prefix never sees
/// the instance disappear, and no request fails. At the final SIGTERM the key is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_under_load_keep_the_etcd_key_and_fail_no_request() {
    let database = format!("orders_upgrade_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin).await.unwrap();
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let dir = std::env::temp_dir().join(format!("orders_upgrade_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("orders.pid");
    let etcd = Etcd::start().await;
    let address = free_address();
    let key = format!("/services/orders/{address}");
    let (mut first, stderr) = spawn_orders(
        address,
        &[
            ("DATABASE_URL", &database_url),
            ("ETCD_ENDPOINTS", &etcd.url()),
            ("PID_FILE", pid_file.to_str().unwrap()),
        ],
        &dir,
    )
    .await;
    let mut watcher = InstanceWatcher::new(&[etcd.url()], "/services/orders").await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !watcher.instances().contains_key(&key) {
        assert!(Instant::now() < until, "registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
        watcher = InstanceWatcher::new(&[etcd.url()], "/services/orders").await.unwrap();
    }
    // What the follower saw under the prefix, in etcd's order, and when.
    let seen = Arc::new(Mutex::new(Vec::<(Instant, Change)>::new()));
    let following = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok(Some(changes)) = watcher.next_changes().await {
                seen.lock().unwrap().extend(changes.into_iter().map(|change| (Instant::now(), change)));
            }
        })
    };
    let deletes = || -> Vec<Instant> {
        let seen = seen.lock().unwrap();
        seen.iter().filter(|(_, change)| matches!(change, Change::Delete { .. })).map(|(at, _)| *at).collect()
    };

    let clients = lifecycle_tests::load::Clients::start(address, Mode::KeepAlive, CLIENTS);
    eventually("over 100 acknowledged orders", WITHIN, || clients.ok() > 100).await;
    let mut pid = pid_in(&pid_file);
    for _ in 0..3 {
        pid = upgrade(&pid_file, pid, Duration::from_secs(20)).await;
        // The load goes on against the successor before the next upgrade: more successes than
        // the requests that were still in flight to its predecessor.
        let before = clients.ok();
        eventually(&format!("orders acknowledged by process {pid}"), WITHIN, || {
            clients.ok() > before + CLIENTS as u64
        })
        .await;
    }
    let tally = clients.stop().await;
    // etcd delivers changes in order: once the follower has seen a key written now, it has seen
    // every delete the retired processes caused.
    let barrier = "/services/orders/test-barrier";
    let mut writer = etcd_client::Client::connect([etcd.url()], None).await.unwrap();
    writer.put(barrier, "", None).await.unwrap();
    eventually("the follower to see the barrier key", WITHIN, || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(_, change)| matches!(change, Change::Put { key, .. } if key == barrier))
    })
    .await;
    assert!(deletes().is_empty(), "the key never disappeared during the upgrades");
    let stopped = Instant::now();
    kill("TERM", pid);
    let until = Instant::now() + Duration::from_secs(20);
    eventually("the key deleted at the final stop", Duration::from_secs(20), || !deletes().is_empty()).await;
    assert!(deletes()[0] > stopped);
    following.abort();
    wait_exited(pid, until.saturating_duration_since(Instant::now())).await;
    let _ = first.wait();
    let stderr = stderr.join().unwrap();
    tally.assert_no_failures("upgrades with etcd", &stderr);
    assert_eq!(stderr.matches("lifecycle report: handed over to process").count(), 3, "{stderr}");
    assert_stored_and_drop(&admin, &database, &tally).await;
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!("3 upgrades with etcd: {} orders acknowledged, 0 failed, key never deleted", tally.ok);
}
