//! What the tests of the `events` example share: a database of their own, and the service
//! started on a stream of theirs with its probes and gRPC API on free ports.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lifecycle_sqlx::sqlx::{self, AssertSqlSafe};
use lifecycle_tests::nats::{Stream, nats_url, postgres_url, unique};
use lifecycle_tests::{Service, free_port, load, workspace_binary};

/// The durable consumer the service reads with.
pub const DURABLE: &str = "recorder";

/// A database of the test's own on the shared server, dropped by [`Database::drop_now`].
pub struct Database {
    name: String,
    admin: sqlx::PgPool,
    pool: sqlx::PgPool,
}

impl Database {
    pub async fn create(prefix: &str) -> Self {
        let name = unique(prefix).to_lowercase();
        let admin = sqlx::PgPool::connect(&postgres_url()).await.expect("PostgreSQL is up");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("database");
        let pool = sqlx::PgPool::connect(&Self::url_of(&name)).await.expect("the new database");
        Self { name, admin, pool }
    }

    fn url_of(name: &str) -> String {
        let base = postgres_url();
        let server = base.rsplit_once('/').map_or(base.as_str(), |(server, _)| server);
        format!("{server}/{name}")
    }

    pub fn url(&self) -> String {
        Self::url_of(&self.name)
    }

    /// Rows in `events`, 0 before the service created the table.
    pub async fn rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&self.pool).await.unwrap_or(0)
    }

    pub async fn distinct_expected_ids(&self) -> i64 {
        sqlx::query_scalar("SELECT count(DISTINCT id) FROM events WHERE id ~ '^m-[0-9]+$'")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    pub async fn drop_now(self) {
        self.pool.close().await;
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", self.name)))
            .execute(&self.admin)
            .await
            .expect("drop database");
    }
}

/// A running `events` process and where it serves.
pub struct Events {
    pub service: Service,
    /// `/livez`, `/readyz`, `/metrics`.
    pub admin: SocketAddr,
    /// The gRPC API.
    pub grpc: SocketAddr,
}

/// Starts `events` on `stream` and `database`, its probes and gRPC API on free ports, and
/// `extra` settings; waits until ready.
pub async fn start_events(
    stream: &Stream,
    database: &Database,
    pid_file: Option<&std::path::Path>,
) -> Events {
    start_events_with(stream, database, pid_file, &[]).await
}

/// [`start_events`] with `extra` settings.
pub async fn start_events_with(
    stream: &Stream,
    database: &Database,
    pid_file: Option<&std::path::Path>,
    extra: &[(&str, &str)],
) -> Events {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (admin_text, grpc_text) = (admin.to_string(), grpc.to_string());
    let subjects = format!("{}.>", stream.name);
    let database_url = database.url();
    let nats = nats_url();
    let mut env = vec![
        ("NATS_URL", nats.as_str()),
        ("STREAM", stream.name.as_str()),
        ("SUBJECTS", subjects.as_str()),
        ("CONSUMER", DURABLE),
        ("DATABASE_URL", database_url.as_str()),
        ("LISTEN_ADDR", admin_text.as_str()),
        ("GRPC_LISTEN_ADDR", grpc_text.as_str()),
        ("CONCURRENCY", "16"),
        ("SHUTDOWN_DEADLINE", "10"),
    ];
    if let Some(path) = pid_file.and_then(|path| path.to_str()) {
        env.push(("PID_FILE", path));
    }
    env.extend_from_slice(extra);
    let binary = workspace_binary("events");
    let service =
        Service::spawn_with_env(binary.to_str().expect("utf-8 path"), &[], &env).expect("events starts");
    let until = Instant::now() + Duration::from_secs(30);
    while load::get(admin, "/readyz").await.is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < until, "events not ready within 30 s:\n{}", service.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Events { service, admin, grpc }
}
