//! Secrets stay out of what other local users can read: a database URL given with
//! `--database-url` is not in the arguments of the process an upgrade starts (it gets it in its
//! environment), nor printed anywhere; `DATABASE_URL_FILE` reads it from a file instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use lifecycle::testing::within;
use lifecycle_sqlx::sqlx::{self, AssertSqlSafe};
use lifecycle_tests::load::get;
use lifecycle_tests::{kill, orders_command, pid_in, upgrade, wait_exited};

const SECRET: &str = "hunter2-not-for-ps";

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A database of its own on the shared PostgreSQL server, and its URL with a password (trust
/// authentication: the password is not checked, only carried).
async fn database(name: &str) -> (String, sqlx::PgPool) {
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await.unwrap();
    let database = format!("{name}_{}", std::process::id());
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {database}"))).execute(&admin).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin).await.unwrap();
    (format!("postgres://postgres:{SECRET}@127.0.0.1:5432/{database}"), admin)
}

async fn drop_database(admin: &sqlx::PgPool, url: &str) {
    let database = url.rsplit('/').next().unwrap();
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {database} WITH (FORCE)")))
        .execute(admin)
        .await
        .unwrap();
}

async fn ready(address: SocketAddr) {
    within("orders ready", Duration::from_secs(20), async {
        while get(address, "/readyz").await.is_none_or(|(status, _)| status != 200) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_given_as_a_flag_is_not_in_the_successors_arguments_nor_printed() {
    let dir = std::env::temp_dir().join(format!("orders_secrets_flag_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("orders.pid");
    let address = free_address();
    let (url, admin) = database("orders_secrets_flag").await;
    let mut child = orders_command(
        &dir,
        address,
        &[("PID_FILE", pid_file.to_str().unwrap()), ("DATABASE_WARM_CONNECTIONS", "1")],
    )
    .args(["--database-url", &url])
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    ready(address).await;
    let first = pid_in(&pid_file);
    let successor = upgrade(&pid_file, first, Duration::from_secs(30)).await;
    ready(address).await;
    let arguments = std::fs::read(format!("/proc/{successor}/cmdline")).unwrap();
    let arguments = String::from_utf8_lossy(&arguments).replace('\0', " ");
    assert!(!arguments.contains(SECRET), "in the successor's arguments: {arguments}");
    assert!(!arguments.contains("--database-url"), "{arguments}");
    // Readable by its own user only, where the successor found the URL it connected with.
    let environment = String::from_utf8_lossy(&std::fs::read(format!("/proc/{successor}/environ")).unwrap())
        .replace('\0', "\n");
    assert!(environment.lines().any(|l| l == format!("DATABASE_URL={url}")));
    kill("TERM", successor);
    wait_exited(successor, Duration::from_secs(20)).await;
    let _ = child.wait();
    let stderr = stderr.join().unwrap();
    assert!(!stderr.contains(SECRET), "printed:\n{stderr}");
    assert!(stderr.contains("a secret on the command line can be read by every local user"), "{stderr}");
    drop_database(&admin, &url).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_url_can_come_from_a_file() {
    let dir = std::env::temp_dir().join(format!("orders_secrets_file_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("database-url");
    let (url, admin) = database("orders_secrets_file").await;
    std::fs::write(&file, format!("{url}\n")).unwrap();
    let address = free_address();
    let mut child = orders_command(
        &dir,
        address,
        &[("DATABASE_URL_FILE", file.to_str().unwrap()), ("DATABASE_WARM_CONNECTIONS", "1")],
    )
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    ready(address).await;
    kill("TERM", child.id());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains(SECRET), "printed:\n{stderr}");
    assert!(!stderr.contains("sqlite"), "PostgreSQL from the file, not the SQLite default:\n{stderr}");
    drop_database(&admin, &url).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
