//! The Redis pool component against a real server: clients counted with `CLIENT LIST`, a
//! connection held at stop reported, and errors that name the component and hide the password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lifecycle_core::testing::{TestRun, builder};
use lifecycle_core::{ComponentOptions, Failure, FnComponent, Outcome, Report};
use lifecycle_redis::RedisPool;
use lifecycle_redis::redis;

fn redis_url() -> String {
    std::env::var("LIFECYCLE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Clients the server has with this name.
async fn server_clients(name: &str) -> usize {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut connection).await.unwrap();
    list.lines().filter(|line| line.split(' ').any(|field| field == format!("name={name}"))).count()
}

/// The server learns of a closed connection a moment after the client closes it.
async fn until_no_clients(name: &str) -> usize {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let count = server_clients(name).await;
        if count == 0 || Instant::now() >= until {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn failure_text(report: &Report, name: &str) -> String {
    match &report.component(name).unwrap().outcome {
        Outcome::Failed { failure: Failure::Error(error), .. } => error.to_string(),
        other => panic!("{name}: expected an error, got {other}\n{report}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_stop_leaves_no_client_on_the_server() {
    let name = unique("cache");
    let mut b = builder();
    let cache = b.add(RedisPool::new(name.clone(), redis_url())).dep();
    let mut run = TestRun::start(b);
    run.ready().await;
    let pool = cache.pool().unwrap();
    let (mut one, mut two) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    let _: () = redis::cmd("SET").arg(format!("{name}:key")).arg("v").query_async(&mut *one).await.unwrap();
    let value: String = redis::cmd("GET").arg(format!("{name}:key")).query_async(&mut *two).await.unwrap();
    assert_eq!(value, "v");
    drop((one, two));
    assert!(server_clients(&name).await >= 2, "connections carry the component's name");
    assert_eq!(run.handle().health().await[0].1, lifecycle_core::Health::Healthy);

    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    assert_eq!(until_no_clients(&name).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_rollback_caused_by_a_later_component_leaves_no_client() {
    let name = unique("cache_rollback");
    let mut b = builder();
    let cache = b.add(RedisPool::new(name.clone(), redis_url())).dep();
    b.add(
        FnComponent::new("warmup")
            .depends_on(&cache)
            .on_start(|_ctx| async { Err::<(), _>(std::io::Error::other("warm-up data missing")) }),
    );
    let report = b.build().unwrap().run().await;
    assert_eq!(report.exit_code, 1, "{report}");
    assert!(matches!(report.component(&name).unwrap().outcome, Outcome::Stopped), "{report}");
    assert_eq!(until_no_clients(&name).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_held_through_the_stop_is_reported() {
    let name = unique("cache_held");
    let mut b = builder();
    let cache = b
        .add(
            RedisPool::new(name.clone(), redis_url())
                .options(ComponentOptions::new().stop_timeout(Duration::from_millis(400))),
        )
        .dep();
    let mut run = TestRun::start(b);
    run.ready().await;
    let held = cache.pool().unwrap().get().await.unwrap();
    let report = run.stop().await;
    let text = failure_text(&report, &name);
    assert!(text.starts_with(&format!("component `{name}` stopped waiting after")), "{text}");
    assert!(text.ends_with("1 connection(s) still in use"), "{text}");
    drop(held);
    assert_eq!(until_no_clients(&name).await, 0, "the held connection closes when it is let go");
}

async fn start_error(url: String, start_timeout: Duration) -> (String, String) {
    let name = unique("cache_error");
    let mut b = builder();
    b.add(RedisPool::new(name.clone(), url).options(ComponentOptions::new().start_timeout(start_timeout)));
    let report = b.build().unwrap().run().await;
    assert_eq!(report.exit_code, 1, "{report}");
    (name.clone(), failure_text(&report, &name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_names_the_component_and_hides_the_password() {
    // The test server has no password, so any password is refused.
    let (name, text) =
        start_error("redis://:Sup3r-s3cret@127.0.0.1:6379".into(), Duration::from_secs(5)).await;
    assert!(
        text.starts_with(&format!(
            "component `{name}` could not connect to redis://:***@127.0.0.1:6379 (1 attempts"
        )),
        "not retried: {text}"
    );
    assert!(!text.contains("Sup3r-s3cret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_retried_until_the_start_deadline() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (name, text) =
        start_error(format!("redis://:Sup3r-s3cret@127.0.0.1:{port}"), Duration::from_millis(800)).await;
    assert!(
        text.starts_with(&format!("component `{name}` could not connect to redis://:***@127.0.0.1:{port} (")),
        "{text}"
    );
    let attempts: u32 = text.split(" (").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(attempts >= 3, "retried with backoff: {text}");
    assert!(!text.contains("Sup3r-s3cret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_fails_at_once_naming_the_component() {
    let began = Instant::now();
    let (name, text) =
        start_error("rediss-nope://:Sup3r-s3cret@127.0.0.1:6379".into(), Duration::from_secs(5)).await;
    assert!(began.elapsed() < Duration::from_secs(1), "not retried");
    assert!(
        text.starts_with(&format!("component `{name}`: invalid URL rediss-nope://:***@127.0.0.1:6379: ")),
        "{text}"
    );
    assert!(!text.contains("Sup3r-s3cret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_cache_down_at_start_comes_up_in_the_background() {
    use lifecycle_core::testing::eventually;
    use lifecycle_core::{ReadinessStatus, RestartPolicy};

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let name = unique("cache_late");
    let mut b = builder();
    let policy = RestartPolicy::on_failure()
        .backoff(Duration::from_millis(100), Duration::from_millis(200))
        .max_restarts(100, Duration::from_secs(60));
    let cache = b
        .add(RedisPool::new(name.clone(), format!("redis://127.0.0.1:{port}")).options(
            ComponentOptions::new().critical(false).start_timeout(Duration::from_millis(300)).restart(policy),
        ))
        .dep();
    b.add(FnComponent::new("api").depends_on(cache.dependency().optional()));
    let mut run = TestRun::start(b);
    run.ready().await;
    assert!(!cache.is_up());
    let readiness = run.handle().readiness().await;
    assert_eq!(readiness.status, ReadinessStatus::Degraded, "{readiness}");

    let _server = lifecycle_tests::redis::RedisServer::start_on(port);
    let handle = run.handle().clone();
    eventually("the cache connects", Duration::from_secs(10), || cache.is_up()).await;
    assert_eq!(handle.readiness().await.status, ReadinessStatus::Ready);
    let mut connection = cache.pool().unwrap().get().await.unwrap();
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut *connection).await.unwrap();
    drop(connection);

    let report = run.stop().await;
    assert_eq!(report.exit_code, 0, "{report}");
    let cache_report = report.component(&name).unwrap();
    assert!(cache_report.restarts >= 1, "{report}");
    assert!(matches!(cache_report.outcome, Outcome::Stopped), "{report}");
    assert!(cache.pool().is_err(), "no pool after the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_certificate_that_does_not_verify_fails_at_once() {
    // A TLS-only server whose certificate comes from an authority this process does not trust.
    let dir = std::env::temp_dir().join(format!("redis_untrusted_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let authority = lifecycle_tests::tls::Authority::new();
    authority.leaf("untrusted").write_to(&dir);
    std::fs::write(dir.join("ca.pem"), authority.certificate_pem()).unwrap();
    let server = lifecycle_tests::redis::TlsRedisServer::start(&dir);
    let began = Instant::now();
    let (name, text) = start_error(server.url(), Duration::from_secs(5)).await;
    assert!(began.elapsed() < Duration::from_secs(1), "not retried: {text}");
    assert!(
        text.starts_with(&format!("component `{name}` could not connect to rediss://127.0.0.1:")),
        "{text}"
    );
    assert!(text.contains("(1 attempts") && text.contains("certificate"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
