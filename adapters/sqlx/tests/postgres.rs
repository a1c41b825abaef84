//! The PostgreSQL pool component against a real server: connections counted on the server,
//! acknowledged writes kept, stuck queries reported, and errors that name the component and hide
//! the password.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifecycle_core::testing::{self, TestRun, builder};
use lifecycle_core::{
    BoxError, Component, ComponentOptions, Context, Dep, Dependency, Failure, FnComponent, Outcome, Stage,
};
use lifecycle_sqlx::PgPool;
use lifecycle_sqlx::sqlx::{self, AssertSqlSafe, Connection};
use support::{of_pool, pg_url, server_connections, stuck_statement, unique, until_no_server_connections};

fn failure_text(report: &lifecycle_core::Report, name: &str) -> String {
    match &report.component(name).unwrap().outcome {
        Outcome::Failed { failure: Failure::Error(error), .. } => error.to_string(),
        other => panic!("{name}: expected an error, got {other}\n{report}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_stop_leaves_no_connection_on_the_server() {
    let name = unique("pool_stop");
    let mut b = builder();
    let db = b.add(PgPool::new(name.clone(), pg_url()).min_connections(3)).dep();
    let mut run = TestRun::start(b);
    run.ready().await;
    // Use several connections at once, so the pool really holds some.
    let pool = db.pool().unwrap();
    let (a, b2, c) = tokio::join!(pool.acquire(), pool.acquire(), pool.acquire());
    drop((a.unwrap(), b2.unwrap(), c.unwrap()));
    assert!(
        server_connections(&of_pool(&name)).await >= 3,
        "the server sees the pool under the component's name"
    );
    assert_eq!(run.handle().health().await[0].1, lifecycle_core::Health::Healthy);

    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    assert!(report.component(&name).unwrap().notes.is_empty(), "nothing cut short: {report}");
    assert_eq!(until_no_server_connections(&of_pool(&name)).await, 0);
    assert!(db.pool().is_err(), "the pool is gone after the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_rollback_caused_by_a_later_component_leaves_no_connection() {
    let name = unique("pool_rollback");
    let mut b = builder();
    let db = b.add(PgPool::new(name.clone(), pg_url()).min_connections(2)).dep();
    b.add(
        FnComponent::new("migrations")
            .depends_on(&db)
            .on_start(|_ctx| async { Err::<(), _>(std::io::Error::other("migration 0042 failed")) }),
    );
    let report = b.build().unwrap().run().await;
    assert_eq!(report.exit_code, 1, "{report}");
    assert!(matches!(report.component(&name).unwrap().outcome, Outcome::Stopped), "{report}");
    assert_eq!(until_no_server_connections(&of_pool(&name)).await, 0);
}

/// Inserts orders, each an order row and a line row in one transaction, from 200 concurrent
/// tasks until told to stop; records which inserts were acknowledged.
struct Inserter {
    db: Dep<PgPool>,
    table: String,
    acknowledged: Arc<Mutex<Vec<i64>>>,
}

impl Component for Inserter {
    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.db.dependency()]
    }

    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().stop_timeout(Duration::from_secs(10))
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        for writer in 0..200_i64 {
            let (pool, token, table, acked) = (
                self.db.pool()?.clone(),
                ctx.token().clone(),
                self.table.clone(),
                Arc::clone(&self.acknowledged),
            );
            ctx.tasks().spawn("writer", async move {
                let mut n = 0_i64;
                // Stop starting new inserts when told; the one in flight completes.
                while !token.is_cancelled() {
                    let id = writer * 1_000_000 + n;
                    n += 1;
                    let mut tx = pool.begin().await?;
                    sqlx::query(AssertSqlSafe(format!("INSERT INTO {table}_orders (id) VALUES ($1)")))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tokio::task::yield_now().await;
                    sqlx::query(AssertSqlSafe(format!("INSERT INTO {table}_lines (order_id) VALUES ($1)")))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    acked.lock().unwrap().push(id);
                }
                Ok::<(), sqlx::Error>(())
            });
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_insert_survives_a_shutdown_and_none_is_half_written() {
    let name = unique("pool_inserts");
    let table = unique("t");
    let setup = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE TABLE {table}_orders (id BIGINT PRIMARY KEY)")))
        .execute(&setup)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE TABLE {table}_lines (order_id BIGINT NOT NULL)")))
        .execute(&setup)
        .await
        .unwrap();

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut b = builder();
    let db = b.add(PgPool::new(name.clone(), pg_url()).max_connections(20)).dep();
    b.add(Inserter { db, table: table.clone(), acknowledged: Arc::clone(&acknowledged) });
    let mut run = TestRun::start(b);
    run.ready().await;
    // Shut down while the 200 writers are busy.
    testing::eventually("500 acknowledged inserts", Duration::from_secs(30), || {
        acknowledged.lock().unwrap().len() >= 500
    })
    .await;
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");

    let acked = acknowledged.lock().unwrap().clone();
    let stored: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!("SELECT id FROM {table}_orders")))
        .fetch_all(&setup)
        .await
        .unwrap();
    let stored: std::collections::HashSet<i64> = stored.into_iter().collect();
    assert!(acked.iter().all(|id| stored.contains(id)), "every acknowledged insert is in the table");
    assert_eq!(stored.len(), acked.len(), "nothing was written that the caller was not told about");
    let half_written: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {table}_orders o WHERE NOT EXISTS (SELECT 1 FROM {table}_lines l WHERE l.order_id = o.id)"
    )))
    .fetch_one(&setup)
    .await
    .unwrap();
    assert_eq!(half_written, 0);
    assert_eq!(until_no_server_connections(&of_pool(&name)).await, 0);
    for suffix in ["orders", "lines"] {
        sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}_{suffix}"))).execute(&setup).await.unwrap();
    }
}

/// What the server has of the connections named by `pattern`: all of them, and those running
/// a `pg_sleep`.
async fn on_the_server(admin: &mut sqlx::PgConnection, pattern: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state = 'active' AND query LIKE '%pg_sleep%') \
         FROM pg_stat_activity WHERE application_name LIKE $1",
    )
    .bind(pattern)
    .fetch_one(admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_stuck_at_stop_is_cancelled_on_the_server_within_the_stop_timeout() {
    const REPORTING_STOP: Duration = Duration::from_millis(300);
    const POOL_STOP: Duration = Duration::from_millis(500);
    let name = unique("pool_stuck");
    let pattern = of_pool(&name);
    let mut b = builder();
    b.shutdown_deadline(Duration::from_secs(3));
    let db = b
        .add(
            // One connection for the stuck query, and idle ones.
            PgPool::new(name.clone(), pg_url())
                .min_connections(2)
                .options(ComponentOptions::new().stop_timeout(POOL_STOP)),
        )
        .dep();
    b.add(stuck_statement("reporting", &db, "SELECT pg_sleep(60)", REPORTING_STOP));
    let mut run = TestRun::start(b);
    run.ready().await;
    let mut admin = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
    testing::within("the stuck query and idle connections on the server", Duration::from_secs(10), async {
        while !matches!(on_the_server(&mut admin, &pattern).await, (2.., 1)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // The server's view every 10 ms through the stop, from a connection of its own, until
    // nothing of the pool is left.
    let watcher = {
        let pattern = pattern.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                let now = on_the_server(&mut admin, &pattern).await;
                seen.push((Instant::now(), now));
                if now.0 == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            admin.close().await.unwrap();
            seen
        })
    };
    let requested = Instant::now();
    let report = run.stop().await;
    assert!(
        requested.elapsed() < Duration::from_secs(3),
        "the global deadline holds: {:?}",
        requested.elapsed()
    );
    assert!(
        matches!(
            report.component("reporting").unwrap().outcome,
            Outcome::Failed { stage: Stage::WaitingForTasks, failure: Failure::TimedOut(_) }
        ),
        "{report}"
    );
    let text = failure_text(&report, &name);
    assert!(text.starts_with(&format!("component `{name}` stopped waiting after")), "{text}");
    assert!(text.ends_with("1 connection(s) still in use"), "{text}");
    assert_eq!(
        report.component(&name).unwrap().notes,
        ["cancelled 1 query still running at the stop timeout"],
        "{report}"
    );

    let seen = watcher.await.unwrap();
    let gone = seen.iter().find(|(_, now)| now.0 == 0).map(|(at, _)| *at);
    // Leave the server as we found it, whatever the checks below say.
    let mut admin = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1")
        .bind(&pattern)
        .execute(&mut admin)
        .await
        .unwrap();
    let gone = gone.unwrap_or_else(|| panic!("the pool's connections stayed on the server: {seen:?}"));
    // The pool's stop begins once the reporting component gave up on its task.
    let margin = Duration::from_millis(300);
    assert!(
        gone - requested < REPORTING_STOP + POOL_STOP + margin,
        "nothing of the pool on the server within its stop timeout: gone after {:?}",
        gone - requested
    );
    assert!(
        seen.iter().any(|(_, now)| *now == (1, 1)),
        "the idle connections closed at once, before the stuck query was cancelled: {seen:?}"
    );
}

/// A TCP proxy to the test server that passes its first `passed` connections through and holds
/// the later ones (accepted, never answered): a server slow to open connections. Records, for
/// each connection passed through, whether its client said goodbye (PostgreSQL's Terminate
/// message: `X` and a length of 4) before it closed, rather than just going away.
struct SlowProxy {
    url: String,
    goodbyes: Arc<Mutex<Vec<bool>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    async fn start(passed: usize) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server: sqlx::postgres::PgConnectOptions = pg_url().parse().unwrap();
        let upstream = format!("{}:{}", server.get_host(), server.get_port());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let here = listener.local_addr().unwrap().to_string();
        // In the clear, so that the Terminate message can be seen.
        let url = pg_url().replacen(&upstream, &here, 1);
        assert_ne!(url, pg_url(), "the test URL names the server as {upstream}");
        let url = format!("{url}{}sslmode=disable", if url.contains('?') { '&' } else { '?' });
        let goodbyes = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&goodbyes);
        let accepting = tokio::spawn(async move {
            let (mut held, mut passing) = (Vec::new(), tokio::task::JoinSet::new());
            for accepted in 0.. {
                let (client, _) = listener.accept().await.unwrap();
                if accepted >= passed {
                    held.push(client);
                    continue;
                }
                let (upstream, recorded) = (upstream.clone(), Arc::clone(&recorded));
                passing.spawn(async move {
                    let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let ((mut from_client, mut to_client), (mut from_server, mut to_server)) =
                        (client.into_split(), server.into_split());
                    let up = async {
                        let (mut buffer, mut last) = ([0_u8; 8192], Vec::new());
                        while let Ok(read @ 1..) = from_client.read(&mut buffer).await {
                            last.extend_from_slice(&buffer[..read]);
                            last.drain(..last.len().saturating_sub(5));
                            if to_server.write_all(&buffer[..read]).await.is_err() {
                                break;
                            }
                        }
                        let _ = to_server.shutdown().await;
                        recorded.lock().unwrap().push(last == [b'X', 0, 0, 0, 4]);
                    };
                    let down = tokio::io::copy(&mut from_server, &mut to_client);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self { url, goodbyes, accepting }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_cancelled_while_the_pool_opens_connections_closes_them() {
    let name = unique("pool_cancelled_start");
    let proxy = SlowProxy::start(2).await;
    let mut b = builder();
    b.add(
        PgPool::new(name.clone(), proxy.url.clone())
            .min_connections(4)
            .max_connections(4)
            .options(ComponentOptions::new().start_timeout(Duration::from_secs(20))),
    );
    let run = TestRun::start(b);
    // Two connections open on the server, two held up by the proxy: the start is still warming
    // the pool when the shutdown is requested.
    testing::within("two connections of the pool on the server", Duration::from_secs(10), async {
        while server_connections(&of_pool(&name)).await < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let report = run.stop().await;
    assert!(matches!(report.component(&name).unwrap().outcome, Outcome::StartCancelled), "{report}");
    assert_eq!(until_no_server_connections(&of_pool(&name)).await, 0);
    testing::eventually("both connections ended", Duration::from_secs(5), || {
        proxy.goodbyes.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(*proxy.goodbyes.lock().unwrap(), [true, true], "closed with a goodbye, not dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_name_in_the_url_stays_in_front_of_the_pools_own() {
    let name = unique("pool_named");
    let separator = if pg_url().contains('?') { '&' } else { '?' };
    let mut b = builder();
    b.add(PgPool::new(name.clone(), format!("{}{separator}application_name=billing", pg_url())));
    let mut run = TestRun::start(b);
    run.ready().await;
    assert_eq!(server_connections(&format!("billing/{}", of_pool(&name))).await, 1);
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    assert_eq!(until_no_server_connections(&format!("billing/{}", of_pool(&name))).await, 0);
}

async fn start_error(url: String, start_timeout: Duration) -> (String, String) {
    let name = unique("pool_error");
    let mut b = builder();
    b.add(PgPool::new(name.clone(), url).options(ComponentOptions::new().start_timeout(start_timeout)));
    let report = b.build().unwrap().run().await;
    assert_eq!(report.exit_code, 1, "{report}");
    let text = failure_text(&report, &name);
    (name, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_login_names_the_component_and_hides_the_password() {
    // The test server trusts every local login it knows, so an unknown role is the rejected login.
    let (name, text) = start_error(
        "postgres://no_such_role:Sup3r-s3cret@127.0.0.1:5432/test".into(),
        Duration::from_secs(5),
    )
    .await;
    assert!(text.starts_with(&format!("component `{name}` could not connect to postgres://no_such_role:***@127.0.0.1:5432/test (1 attempts")), "not retried: {text}");
    assert!(text.contains("no_such_role"), "{text}");
    assert!(!text.contains("Sup3r-s3cret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_retried_until_the_start_deadline() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let began = Instant::now();
    let (name, text) =
        start_error(format!("postgres://app:Sup3r-s3cret@127.0.0.1:{port}/test"), Duration::from_millis(800))
            .await;
    assert!(began.elapsed() < Duration::from_secs(3));
    assert!(
        text.starts_with(&format!(
            "component `{name}` could not connect to postgres://app:***@127.0.0.1:{port}/test ("
        )),
        "{text}"
    );
    let attempts: u32 = text.split(" (").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(attempts >= 3, "retried with backoff: {text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(!text.contains("Sup3r-s3cret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_fails_at_once_naming_the_component() {
    let began = Instant::now();
    let (name, text) =
        start_error("postgres://app:Sup3r-s3cret@127.0.0.1:notaport/test".into(), Duration::from_secs(5))
            .await;
    assert!(began.elapsed() < Duration::from_secs(1), "not retried");
    assert!(
        text.starts_with(&format!(
            "component `{name}`: invalid URL postgres://app:***@127.0.0.1:notaport/test: "
        )),
        "{text}"
    );
    assert!(!text.contains("Sup3r-s3cret"), "{text}");
}

/// Opens a scope with a pool of its own, uses it, closes it: `count` times from each of
/// `openers` tasks at once, while the owner's service runs.
struct Tenants {
    prefix: String,
    openers: usize,
    count: usize,
    done: Arc<Mutex<Vec<Result<(), String>>>>,
}

impl lifecycle_core::Component for Tenants {
    async fn start(&self, ctx: &lifecycle_core::Context) -> Result<(), lifecycle_core::BoxError> {
        for opener in 0..self.openers {
            let (ctx2, prefix, count, done) =
                (ctx.clone(), self.prefix.clone(), self.count, Arc::clone(&self.done));
            ctx.tasks().spawn(format!("opener {opener}"), async move {
                for n in 0..count {
                    let name = format!("{prefix}_{opener}_{n}");
                    let mut scope = ctx2.scope(&name);
                    let pool = scope.add(PgPool::new(name.clone(), pg_url()).max_connections(2)).dep();
                    let outcome = async {
                        let scope = scope.start().await.map_err(|e| e.to_string())?;
                        let one: i32 = sqlx::query_scalar("SELECT 1")
                            .fetch_one(pool.pool().map_err(|e| e.to_string())?)
                            .await
                            .map_err(|e| e.to_string())?;
                        assert_eq!(one, 1);
                        let report = scope.stop().await;
                        if report.is_success() { Ok(()) } else { Err(report.to_string()) }
                    }
                    .await;
                    done.lock().unwrap().push(outcome);
                }
            });
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_scopes_each_with_a_pool_leave_no_connection_behind() {
    let prefix = unique("scope_pool");
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut b = builder();
    b.add(Tenants { prefix: prefix.clone(), openers: 8, count: 125, done: Arc::clone(&done) });
    let mut run = TestRun::start(b);
    run.ready().await;
    testing::eventually("1,000 scopes opened and closed", Duration::from_secs(120), || {
        done.lock().unwrap().len() == 1_000
    })
    .await;
    let failures: Vec<String> = done.lock().unwrap().iter().filter_map(|r| r.clone().err()).collect();
    assert!(failures.is_empty(), "{} scopes failed, first: {:?}", failures.len(), failures.first());
    assert!(run.handle().scopes().is_empty(), "every scope closed");
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    assert_eq!(
        until_no_server_connections(&format!("{prefix}_%")).await,
        0,
        "no connection left by any scope's pool"
    );
}
