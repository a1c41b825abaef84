//! The `events` example's gRPC API as a real process under load from tonic clients: unary
//! `Count` calls and server-streaming `Follow` calls (20 events each, while events arrive), through
//! a SIGTERM and through 20 upgrades. No unary call a server took fails; every stream either
//! completes or ends with a clean `UNAVAILABLE` (a status, never a transport error); at the
//! SIGTERM, gRPC health says `NOT_SERVING` while a new connection is still served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod events_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::proto::events_client::EventsClient;
use events::proto::{CountRequest, FollowRequest};
use events_support::{Database, start_events_with};
use lifecycle_grpc::tonic_health::pb::HealthCheckRequest;
use lifecycle_grpc::tonic_health::pb::health_check_response::ServingStatus;
use lifecycle_grpc::tonic_health::pb::health_client::HealthClient;
use lifecycle_nats::async_nats;
use lifecycle_tests::grpc::{Failure, classify, is_clean_unavailable};
use lifecycle_tests::nats::{Stream, nats_url, unique};
use lifecycle_tests::{Service, pid_in, upgrade, wait_exited};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

const UNARY_CLIENTS: usize = 4;
const FOLLOWERS: usize = 3;

fn channel(address: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{address}")).unwrap().connect_lazy()
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    unary_ok: AtomicU64,
    /// Calls that never reached a server (safe to send again): a `GOAWAY` race.
    unary_not_processed: AtomicU64,
    streams_completed: AtomicU64,
    streams_unavailable: AtomicU64,
    /// Anything else: what must not happen.
    failures: Mutex<Vec<String>>,
    /// Set when the final SIGTERM is sent: a refused connection is the end, not a failure.
    stopping: AtomicBool,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    /// Whether a call that got `status` should end its client.
    fn failed_call(&self, what: &str, status: &tonic::Status) -> bool {
        match classify(status) {
            Failure::Refused if self.stopping.load(Ordering::SeqCst) => true,
            Failure::NotProcessed => {
                self.unary_not_processed.fetch_add(1, Ordering::Relaxed);
                false
            }
            _ => {
                self.fail(format!("{what}: {status:?}"));
                false
            }
        }
    }
}

/// Unary `Count` calls in a row on one channel until the service is gone.
async fn unary_client(address: SocketAddr, tally: Arc<Tally>) {
    let mut client = EventsClient::new(channel(address));
    loop {
        match client.count(CountRequest {}).await {
            Ok(_) => {
                tally.unary_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                if tally.failed_call("Count", &status) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// `Follow` calls of 20 events in a row on one channel until the service is gone.
async fn follower(address: SocketAddr, tally: Arc<Tally>) {
    let mut client = EventsClient::new(channel(address));
    loop {
        let mut stream = match client.follow(FollowRequest { max: 20 }).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if tally.failed_call("Follow", &status) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let mut received = 0;
        loop {
            match stream.message().await {
                Ok(Some(_)) => received += 1,
                Ok(None) if received == 20 => {
                    tally.streams_completed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(None) => {
                    tally.fail(format!(
                        "a Follow stream ended after {received} of 20 events without a status"
                    ));
                    break;
                }
                Err(status) if is_clean_unavailable(&status) => {
                    tally.streams_unavailable.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(status) => {
                    tally.fail(format!("a Follow stream after {received} events: {status:?}"));
                    break;
                }
            }
        }
    }
}

/// Events published to `stream` every 5 ms (ids `g-0`..) until `stop`.
fn publish_until(stream: &Stream, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let subject = stream.subject("signup");
    let url = nats_url();
    tokio::spawn(async move {
        let context = async_nats::jetstream::new(async_nats::connect(url).await.expect("NATS"));
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("g-{sent}").as_str());
            let ack =
                context.publish_with_headers(subject.clone(), headers, "{}".into()).await.expect("published");
            ack.await.expect("stored");
            sent += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    })
}

/// Events arriving, and the gRPC clients calling, until the service is gone.
struct Load {
    tally: Arc<Tally>,
    clients: JoinSet<()>,
    stop_publishing: Arc<AtomicBool>,
    publisher: tokio::task::JoinHandle<u64>,
}

impl Load {
    fn start(stream: &Stream, address: SocketAddr) -> Self {
        let stop_publishing = Arc::new(AtomicBool::new(false));
        let publisher = publish_until(stream, Arc::clone(&stop_publishing));
        let tally = Arc::new(Tally::default());
        let mut clients = JoinSet::new();
        for _ in 0..UNARY_CLIENTS {
            clients.spawn(unary_client(address, Arc::clone(&tally)));
        }
        for _ in 0..FOLLOWERS {
            clients.spawn(follower(address, Arc::clone(&tally)));
        }
        Self { tally, clients, stop_publishing, publisher }
    }

    /// Once `service` (the first process) has exited with 0 and every client ended: checks
    /// that no call failed. Its standard error and the number of events published.
    async fn finish(mut self, service: Service) -> (String, u64) {
        let (status, stderr, _) = service.wait(Duration::from_secs(20)).expect("the first process exited");
        assert_eq!(status.code(), Some(0), "{stderr}");
        tokio::time::timeout(Duration::from_secs(20), async {
            while self.clients.join_next().await.is_some() {}
        })
        .await
        .expect("every client ends once the service is gone");
        self.stop_publishing.store(true, Ordering::SeqCst);
        let published = self.publisher.await.unwrap();
        assert_no_failure(&self.tally, &stderr);
        (stderr, published)
    }
}

async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < until, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_no_failure(tally: &Tally, stderr: &str) {
    let failures = tally.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures: {:#?}\n{stderr}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(tally.unary_ok.load(Ordering::Relaxed) > 100, "{tally:?}");
    assert!(tally.streams_completed.load(Ordering::Relaxed) > 0, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_grpc_load_fails_no_call_and_says_not_serving_first() {
    let stream = Stream::create(&unique("EVENTS_GRPC")).await;
    let database = Database::create("events_grpc").await;
    // A drain delay: time for a health-checking client to see NOT_SERVING before the stop.
    let events = start_events_with(&stream, &database, None, &[("DRAIN_DELAY", "1")]).await;
    let load = Load::start(&stream, events.grpc);
    let tally = Arc::clone(&load.tally);
    let mut health = HealthClient::new(channel(events.grpc));
    let mut watch =
        health.watch(HealthCheckRequest { service: String::new() }).await.expect("health watch").into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    wait_for("load served", Duration::from_secs(30), || {
        tally.unary_ok.load(Ordering::Relaxed) > 200 && tally.streams_completed.load(Ordering::Relaxed) > 3
    })
    .await;

    tally.stopping.store(true, Ordering::SeqCst);
    events.service.signal("TERM").expect("SIGTERM");
    let not_serving = watch.message().await.expect("a health status").expect("the watch goes on");
    assert_eq!(not_serving.status(), ServingStatus::NotServing);
    // The listener is still open: a client new now is served, and told NOT_SERVING.
    let mut late = HealthClient::new(channel(events.grpc));
    let status = late.check(HealthCheckRequest { service: "events.v1.Events".into() }).await.expect("served");
    assert_eq!(status.into_inner().status(), ServingStatus::NotServing);
    EventsClient::new(channel(events.grpc)).count(CountRequest {}).await.expect("a call on a new connection");

    let (stderr, published) = load.finish(events.service).await;
    assert!(stderr.contains("`grpc`"), "the gRPC server's note in the report:\n{stderr}");
    println!("SIGTERM under gRPC load ({published} events published): {tally:?}");
    stream.delete().await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_upgrades_under_grpc_load_fail_no_call() {
    const UPGRADES: usize = 20;
    let stream = Stream::create(&unique("EVENTS_GRPC_UPGRADE")).await;
    let database = Database::create("events_grpc_upgrade").await;
    let dir = std::env::temp_dir().join(unique("events_grpc_upgrade"));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let pid_file = dir.join("events.pid");
    let events = start_events_with(&stream, &database, Some(&pid_file), &[]).await;
    let load = Load::start(&stream, events.grpc);
    let tally = Arc::clone(&load.tally);
    wait_for("load served", Duration::from_secs(30), || tally.unary_ok.load(Ordering::Relaxed) > 100).await;

    let mut pid = pid_in(&pid_file);
    for round in 1..=UPGRADES {
        pid = upgrade(&pid_file, pid, Duration::from_secs(30)).await;
        // Calls answered by the successor before the next upgrade.
        let before = tally.unary_ok.load(Ordering::Relaxed);
        wait_for(&format!("calls served after upgrade {round}"), Duration::from_secs(30), || {
            tally.unary_ok.load(Ordering::Relaxed) > before + UNARY_CLIENTS as u64
        })
        .await;
    }
    tally.stopping.store(true, Ordering::SeqCst);
    lifecycle_tests::kill("TERM", pid);
    wait_exited(pid, Duration::from_secs(20)).await;
    let (stderr, published) = load.finish(events.service).await;
    assert_eq!(stderr.matches("lifecycle report: handed over to process").count(), UPGRADES, "{stderr}");
    println!("{UPGRADES} upgrades under gRPC load ({published} events published): {tally:?}");
    stream.delete().await;
    database.drop_now().await;
    let _ = std::fs::remove_dir_all(&dir);
}
