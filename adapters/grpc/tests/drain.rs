//! The gRPC server's drain over real sockets with a tonic client: unary load fails no call, open
//! streams end with a clean `UNAVAILABLE` at the soft deadline, health says `NOT_SERVING` while
//! the listener still accepts, a panicking handler costs its call alone, the hard deadline cuts
//! a handler deaf to cancellation, and a successor on the same socket takes the clients over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lifecycle_core::testing::{self, TestRun, builder, within};
use lifecycle_core::{ComponentOptions, Phase, RegistryBuilder, Report};
use lifecycle_grpc::GrpcServer;
use lifecycle_grpc::tonic_health::pb::HealthCheckRequest;
use lifecycle_grpc::tonic_health::pb::health_check_response::ServingStatus;
use lifecycle_grpc::tonic_health::pb::health_client::HealthClient;
use lifecycle_tests::grpc::{Failure, classify, is_clean_unavailable};
use support::{EchoClient, EchoServer, Seen};

struct Served {
    server: lifecycle_core::Dep<GrpcServer>,
    run: TestRun,
    address: SocketAddr,
    seen: Arc<Seen>,
}

/// Serves `test.Echo` as `configure` sets the server up.
async fn serve(builder: RegistryBuilder, configure: impl FnOnce(GrpcServer) -> GrpcServer) -> Served {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    serve_on(builder, listener, "first", configure).await
}

async fn serve_on(
    mut builder: RegistryBuilder,
    listener: std::net::TcpListener,
    name: &str,
    configure: impl FnOnce(GrpcServer) -> GrpcServer,
) -> Served {
    let address = listener.local_addr().unwrap();
    let (echo, seen) = EchoServer::new(name);
    let server = builder.add(configure(GrpcServer::new("grpc", listener).add_service(echo))).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    Served { server, run, address, seen }
}

fn stop_timeout(timeout: Duration) -> ComponentOptions {
    ComponentOptions::new().stop_timeout(timeout)
}

fn notes(report: &Report) -> String {
    report.component("grpc").unwrap().notes.join("; ")
}

/// What unary clients saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// Answered after the shutdown was requested.
    ok_after_shutdown: u64,
    refused: u64,
    not_processed: u64,
    failed: Vec<String>,
    /// Which server answered, by name.
    servers: std::collections::BTreeMap<String, u64>,
}

/// Unary clients, each on its own connection, sending until told to stop.
struct Load {
    sending: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(address: SocketAddr, clients: usize, delay_ms: u64) -> Self {
        let sending = Arc::new(AtomicBool::new(true));
        let shutdown = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let clients = (0..clients)
            .map(|_| {
                let (sending, shutdown, tally) =
                    (Arc::clone(&sending), Arc::clone(&shutdown), Arc::clone(&tally));
                tokio::spawn(async move {
                    let mut client = EchoClient::to(address);
                    while sending.load(Ordering::Acquire) {
                        let answer = client.echo("hello", delay_ms).await;
                        let refused = {
                            let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
                            match answer {
                                Ok(reply) => {
                                    assert_eq!(reply.text, "hello");
                                    tally.ok += 1;
                                    if shutdown.load(Ordering::Acquire) {
                                        tally.ok_after_shutdown += 1;
                                    }
                                    *tally.servers.entry(reply.server).or_default() += 1;
                                }
                                Err(status) => match classify(&status) {
                                    Failure::Refused => tally.refused += 1,
                                    Failure::NotProcessed => tally.not_processed += 1,
                                    Failure::Failed => tally.failed.push(format!("{status:?}")),
                                },
                            }
                            tally.refused > 0
                        };
                        if refused {
                            // A refusing port refuses at once: pause rather than spin.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
            })
            .collect();
        Self { sending, shutdown, tally, clients }
    }

    fn ok(&self) -> u64 {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner).ok
    }

    async fn stop(self) -> Tally {
        self.sending.store(false, Ordering::Release);
        for client in self.clients {
            within("a client to finish", Duration::from_secs(10), client).await.unwrap();
        }
        Arc::into_inner(self.tally).unwrap().into_inner().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_load_from_several_clients_through_the_shutdown_fails_no_call() {
    let mut b = builder();
    b.drain_delay(Duration::from_millis(300));
    let served = serve(b, |server| server.options(stop_timeout(Duration::from_secs(10)))).await;
    let load = Load::start(served.address, 6, 2);
    testing::eventually("load under way", Duration::from_secs(10), || load.ok() > 200).await;

    load.shutdown.store(true, Ordering::Release);
    served.run.handle().shutdown().request("test over", 0);
    let report = served.run.finished().await;
    // The listener is closed: each client ends refused.
    testing::eventually("every client refused", Duration::from_secs(10), || {
        load.tally.lock().unwrap_or_else(PoisonError::into_inner).refused >= 6
    })
    .await;
    let tally = load.stop().await;

    assert!(tally.failed.is_empty(), "calls a server took and did not answer: {tally:?}");
    assert!(tally.ok > 200, "{tally:?}");
    assert!(tally.ok_after_shutdown > 0, "calls are served during the drain: {tally:?}");
    testing::assert_clean(&report);
    let notes = notes(&report);
    assert!(notes.contains("0 streams ended UNAVAILABLE at the soft deadline"), "{report}");
    assert!(notes.contains("0 calls dropped without a status"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_open_at_the_stop_complete_or_end_with_a_clean_unavailable_at_the_soft_deadline() {
    let served = serve(builder(), |server| {
        server.soft_deadline(Duration::from_millis(400)).options(stop_timeout(Duration::from_secs(10)))
    })
    .await;
    let mut client = EchoClient::to(served.address);
    // Two long streams (a tick every 50 ms for a minute), two that end within the soft deadline.
    let mut streams = Vec::new();
    for (count, interval) in [(1_200, 50), (1_200, 50), (4, 50), (4, 50)] {
        let mut stream = client.ticks(count, interval, 0).await.unwrap();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.n, 1);
        streams.push(tokio::spawn(async move {
            let mut last = first.n;
            loop {
                match stream.message().await {
                    Ok(Some(tick)) => {
                        assert_eq!(tick.n, last + 1, "in order, none lost");
                        last = tick.n;
                    }
                    Ok(None) => return (count, last, None),
                    Err(status) => return (count, last, Some(status)),
                }
            }
        }));
    }
    let began = Instant::now();
    let report = served.run.stop().await;
    let stopped_after = began.elapsed();
    let mut ended_unavailable = 0;
    for stream in streams {
        let (count, last, status) = stream.await.unwrap();
        match status {
            None => assert_eq!(last, count, "a stream that ended OK sent every tick"),
            Some(status) => {
                assert!(is_clean_unavailable(&status), "not a clean UNAVAILABLE: {status:?}");
                assert!(last < count);
                ended_unavailable += 1;
            }
        }
    }
    assert_eq!(ended_unavailable, 2, "the two long streams, cut at the soft deadline");
    assert!(
        stopped_after >= Duration::from_millis(350) && stopped_after < Duration::from_secs(3),
        "the stop waited for the soft deadline, not the hard one: {stopped_after:?}"
    );
    testing::assert_clean(&report);
    assert!(notes(&report).contains("2 streams ended UNAVAILABLE at the soft deadline"), "{report}");
    assert!(notes(&report).contains("0 calls dropped without a status"), "{report}");
}

async fn check(address: SocketAddr, service: &str) -> Result<i32, lifecycle_grpc::tonic::Status> {
    let mut health = HealthClient::new(EchoClient::channel(address));
    let request = HealthCheckRequest { service: service.to_owned() };
    Ok(health.check(request).await?.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_not_serving_while_the_listener_still_accepts_then_watches_end() {
    let mut b = builder();
    b.drain_delay(Duration::from_millis(1_000));
    let served = serve(b, |server| server.options(stop_timeout(Duration::from_secs(10)))).await;
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    let mut health = HealthClient::new(EchoClient::channel(served.address));
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    // SERVING once the service is ready: the watch sees it (after NOT_SERVING if it came first).
    within("SERVING on the watch", Duration::from_secs(5), async {
        while watch.message().await.unwrap().unwrap().status != serving {}
    })
    .await;
    for service in ["", "test.Echo"] {
        assert_eq!(check(served.address, service).await.unwrap(), serving, "{service:?} once ready");
    }

    served.run.handle().shutdown().request("test over", 0);
    let status = within("NOT_SERVING on the watch", Duration::from_secs(5), watch.message()).await;
    assert_eq!(status.unwrap().unwrap().status, not_serving);
    // Said before the listener closes: a new connection is still accepted, and told so.
    for service in ["", "test.Echo"] {
        assert_eq!(check(served.address, service).await.unwrap(), not_serving, "{service:?} while draining");
    }
    assert_eq!(served.run.handle().phase(), Phase::Draining, "still draining");
    assert_eq!(EchoClient::to(served.address).echo("late", 0).await.unwrap().text, "late", "still served");

    // The stop ends the watch at once, cleanly, rather than at the soft deadline.
    let ended = within("the watch to end", Duration::from_secs(3), watch.message()).await;
    let status = ended.expect_err("the watch ends with a status");
    assert!(is_clean_unavailable(&status), "{status:?}");
    let report = served.run.finished().await;
    testing::assert_clean(&report);
    assert!(notes(&report).contains("1 health watches ended"), "{report}");
    let refused = check(served.address, "").await.unwrap_err();
    assert_eq!(classify(&refused), Failure::Refused, "closed after the stop: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_internal_and_the_server_carries_on() {
    let served = serve(builder(), |server| server.options(stop_timeout(Duration::from_secs(5)))).await;
    let mut client = EchoClient::to(served.address);
    let status = client.echo("panic", 0).await.unwrap_err();
    assert_eq!(status.code(), lifecycle_grpc::tonic::Code::Internal, "{status:?}");
    assert_eq!(client.echo("after", 0).await.unwrap().text, "after", "the same connection carries on");
    assert_eq!(
        client.echo("context", 0).await.unwrap().text,
        "context reached",
        "RequestContext in the request"
    );

    // A stream that panics after two ticks: the ticks sent stay sent, then INTERNAL.
    let mut stream = client.ticks(5, 1, 3).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().n, 1);
    assert_eq!(stream.message().await.unwrap().unwrap().n, 2);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), lifecycle_grpc::tonic::Code::Internal, "{status:?}");
    assert_eq!(client.echo("still", 0).await.unwrap().text, "still");

    assert_eq!(served.server.calls_panicked(), 2);
    assert_eq!(served.run.handle().phase(), Phase::Ready, "the service carries on");
    let report = served.run.stop().await;
    testing::assert_clean(&report);
    assert!(report.component("grpc").unwrap().failures.is_empty(), "{report}");
    assert!(notes(&report).contains("2 handler panics and 0 calls past"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_clients_deadline_ends_with_deadline_exceeded_and_its_handler_is_dropped() {
    let served = serve(builder(), |server| server.options(stop_timeout(Duration::from_secs(5)))).await;
    let began = Instant::now();
    let status = within(
        "the server's answer",
        Duration::from_secs(5),
        EchoClient::echo_raw(served.address, "forever", "200m"),
    )
    .await;
    assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
    assert!(began.elapsed() < Duration::from_secs(2), "answered at the deadline: {:?}", began.elapsed());
    testing::eventually("the handler dropped", Duration::from_secs(2), || {
        served.server.calls_in_flight() == 0
    })
    .await;
    assert_eq!(EchoClient::echo_raw(served.address, "in time", "5S").await.as_deref(), Some("0"));
    let mut client = EchoClient::to(served.address);

    // A stream still sending at its deadline: the ticks sent stay sent, then the status.
    let mut stream = client.ticks_within(1000, 20, Duration::from_millis(300)).await.unwrap();
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream completed after {received} ticks"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), lifecycle_grpc::tonic::Code::DeadlineExceeded, "{status:?}");
    assert!((1..1000).contains(&received), "{received} ticks before the deadline");

    assert_eq!(served.server.calls_past_deadline(), 2);
    assert_eq!(served.run.handle().phase(), Phase::Ready, "the service carries on");
    let report = served.run.stop().await;
    testing::assert_clean(&report);
    assert!(notes(&report).contains("0 handler panics and 2 calls past their client's deadline"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hard_deadline_cuts_a_handler_that_ignores_cancellation() {
    let served = serve(builder(), |server| {
        server.soft_deadline(Duration::from_millis(200)).options(stop_timeout(Duration::from_millis(800)))
    })
    .await;
    let mut client = EchoClient::to(served.address);
    let call = tokio::spawn(async move { client.echo("forever", 0).await });
    served.seen.echo_entered.notified().await;
    let began = Instant::now();
    let report = served.run.stop().await;
    assert!(began.elapsed() < Duration::from_secs(2), "the stop ends at its deadline: {:?}", began.elapsed());
    let status = within("the call to end", Duration::from_secs(2), call).await.unwrap().unwrap_err();
    assert_ne!(status.code(), lifecycle_grpc::tonic::Code::Ok);
    assert!(report.is_success(), "cutting at the hard deadline is the plan, not a failure: {report}");
    let notes = notes(&report);
    assert!(notes.contains("cut 1 requests and 1 connections at the hard deadline"), "{report}");
    assert!(notes.contains("1 connections and 1 calls open at the drain"), "{report}");
    assert!(notes.contains("1 calls dropped without a status"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_not_served_is_unimplemented() {
    let served = serve(builder(), |server| server).await;
    let mut health = HealthClient::new(EchoClient::channel(served.address));
    let status = health.check(HealthCheckRequest { service: "no.Such".to_owned() }).await.unwrap_err();
    assert_eq!(status.code(), lifecycle_grpc::tonic::Code::NotFound, "unknown to the health service");
    // A path no service serves.
    let channel = EchoClient::channel(served.address);
    let mut grpc = lifecycle_grpc::tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = lifecycle_grpc::tonic::codegen::http::uri::PathAndQuery::from_static("/no.Such/Method");
    let request = lifecycle_grpc::tonic::Request::new(support::Tick { n: 1 });
    let answer: Result<lifecycle_grpc::tonic::Response<support::Tick>, _> =
        grpc.unary(request, path, tonic_prost::ProstCodec::default()).await;
    assert_eq!(answer.unwrap_err().code(), lifecycle_grpc::tonic::Code::Unimplemented);
    testing::assert_clean(&served.run.stop().await);
}

/// The in-process equivalent of an upgrade: a successor serves on the same listening socket (a
/// duplicate of its descriptor, as an exec'd successor inherits it), and this server is handed
/// over while clients send. Not one call fails and none is refused: the successor accepts what
/// this one no longer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_on_the_same_socket_takes_the_clients_over_without_a_failed_call() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let inherited = listener.try_clone().unwrap();
    let first = serve_on(builder(), listener, "first", |server| {
        server.options(stop_timeout(Duration::from_secs(10)))
    })
    .await;
    let load = Load::start(first.address, 6, 2);
    testing::eventually("load under way", Duration::from_secs(10), || load.ok() > 200).await;

    let successor = serve_on(builder(), inherited, "successor", |server| {
        server.options(stop_timeout(Duration::from_secs(10)))
    })
    .await;
    load.shutdown.store(true, Ordering::Release);
    first.run.handle().shutdown().hand_over(std::process::id());
    let report = first.run.finished().await;
    testing::assert_clean(&report);
    let answered_by_successor = || {
        load.tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .servers
            .get("successor")
            .copied()
            .unwrap_or(0)
    };
    let before = answered_by_successor();
    testing::eventually("the successor serving", Duration::from_secs(10), || {
        answered_by_successor() > before + 200
    })
    .await;
    let tally = load.stop().await;
    assert!(tally.failed.is_empty(), "calls a server took and did not answer: {tally:?}");
    assert_eq!(tally.refused, 0, "no connection refused: {tally:?}");
    assert!(tally.servers.get("first").is_some_and(|&n| n > 200), "{tally:?}");
    testing::assert_clean(&successor.run.stop().await);
    // Both ran on the socket; the first's calls during the hand-over all answered.
    assert!(
        first.seen.echoes.load(Ordering::Acquire) > 0 && successor.seen.echoes.load(Ordering::Acquire) > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_not_serving_until_the_whole_service_is_ready() {
    let warmed = Arc::new(tokio::sync::Notify::new());
    let mut b = builder();
    let release = Arc::clone(&warmed);
    // Another component still starting: the service is not ready, though the server accepts.
    b.add(lifecycle_core::FnComponent::new("warmup").on_start(move |_ctx| {
        let release = Arc::clone(&release);
        async move {
            release.notified().await;
            Ok::<(), lifecycle_core::BoxError>(())
        }
    }));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (echo, _) = EchoServer::new("first");
    b.add(GrpcServer::new("grpc", listener).add_service(echo));
    let mut run = TestRun::start(b);
    let not_serving = ServingStatus::NotServing as i32;
    let answer = within("an answer while starting", Duration::from_secs(5), async {
        loop {
            match check(address, "test.Echo").await {
                Ok(status) => return status,
                // The server's start may not have begun yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(answer, not_serving, "not serving while another component starts");
    assert_eq!(check(address, "").await.unwrap(), not_serving);
    warmed.notify_one();
    run.ready().await;
    let serving = ServingStatus::Serving as i32;
    let mut health = HealthClient::new(EchoClient::channel(address));
    let mut watch =
        health.watch(HealthCheckRequest { service: "test.Echo".to_owned() }).await.unwrap().into_inner();
    within("SERVING once ready", Duration::from_secs(5), async {
        while watch.message().await.unwrap().unwrap().status != serving {}
    })
    .await;
    testing::assert_clean(&run.stop().await);
}
