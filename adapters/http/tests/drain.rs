//! The HTTP server's drain over real sockets: requests in flight finish, draining responses say
//! `Connection: close`, readiness drops first, tokens are cancelled at the soft deadline, what
//! ignores them is cut at the hard deadline, and handler tasks are waited for. And a handler that
//! panics answers 500 over every protocol, while its connection and the service carry on. And the
//! limits: connections beyond the limit turned away, a slow head cut at the header-read timeout
//! (counted from its first byte, so an idle keep-alive connection lasts until the idle timeout).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use lifecycle_core::testing::{self, TestRun, builder, within};
use lifecycle_core::{ComponentOptions, Phase, RegistryBuilder, Report, Stage};
use lifecycle_http::axum::{self, Router};
use lifecycle_http::prometheus_client::metrics::counter::Counter;
use lifecycle_http::{HealthPaths, HttpServer, RequestContext};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

struct Served {
    server: lifecycle_core::Dep<HttpServer>,
    run: TestRun,
    address: SocketAddr,
}

async fn serve(
    builder: RegistryBuilder,
    app: Router,
    stop_timeout: Duration,
    soft: Option<Duration>,
) -> Served {
    serve_with(builder, app, |server| {
        let server = server.options(ComponentOptions::new().stop_timeout(stop_timeout));
        match soft {
            Some(soft) => server.soft_deadline(soft),
            None => server,
        }
    })
    .await
}

/// Serves `app` with the server as `configure` sets it up.
async fn serve_with(
    mut builder: RegistryBuilder,
    app: Router,
    configure: impl FnOnce(HttpServer) -> HttpServer,
) -> Served {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = configure(
        HttpServer::new("http", listener, app).with_health(HealthPaths::default()).with_metrics("/metrics"),
    );
    let server = builder.add(server).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    Served { server, run, address }
}

/// One HTTP/1.1 keep-alive connection.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    closed: JoinHandle<()>,
}

impl Client {
    async fn connect(address: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        let closed = tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { sender, closed }
    }

    /// Status, `Connection` header and body, or the error.
    async fn get(&mut self, path: &str) -> Result<(u16, Option<String>, String), hyper::Error> {
        self.send(path, false).await
    }

    /// [`get`](Client::get), asking the server to close the connection after it when `close`.
    async fn send(&mut self, path: &str, close: bool) -> Result<(u16, Option<String>, String), hyper::Error> {
        self.sender.ready().await?;
        let mut request = hyper::Request::get(path).header("host", "test");
        if close {
            request = request.header("connection", "close");
        }
        let request = request.body(Empty::new()).unwrap();
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let connection = response.headers().get("connection").map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, connection, String::from_utf8_lossy(&body).into_owned()))
    }
}

async fn get_once(address: SocketAddr, path: &str) -> (u16, Option<String>, String) {
    Client::connect(address).await.get(path).await.unwrap()
}

/// The value of the sample `name` (with `label`, if given) in a scrape of `text`.
fn sample(scrape: &prometheus_parse::Scrape, text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {name} {label:?} in:\n{text}"))
}

fn note(report: &Report) -> String {
    report.component("http").unwrap().notes.join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_during_the_shutdown() {
    let started = Arc::new(Notify::new());
    let notify = Arc::clone(&started);
    let app = Router::new().route(
        "/slow",
        get(move || {
            let notify = Arc::clone(&notify);
            async move {
                notify.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }
        }),
    );
    let served = serve(builder(), app, Duration::from_secs(5), None).await;
    let address = served.address;
    let request = tokio::spawn(async move { get_once(address, "/slow").await });
    started.notified().await;
    served.run.handle().shutdown().request("test over", 0);
    let (status, _, body) = request.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "done"));
    let report = served.run.finished().await;
    assert!(report.is_success(), "{report}");
    assert!(
        note(&report).starts_with("drained 1 requests, cancelled 0 at the soft deadline, cut 0 requests"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_responses_say_connection_close_and_readiness_is_503() {
    let mut b = builder();
    b.drain_delay(Duration::from_millis(800));
    let app = Router::new().route("/", get(|| async { "hello" }));
    let served = serve(b, app, Duration::from_secs(5), None).await;

    let mut client = Client::connect(served.address).await;
    let (status, connection, _) = client.get("/").await.unwrap();
    assert_eq!((status, connection), (200, None), "keep-alive while ready");
    let (status, _, body) = get_once(served.address, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with(
            "{\"ready\":true,\"status\":\"ready\",\"phase\":\"ready\",\"problems\":[],\"components\":[{\"name\":\"http\""
        ),
        "{body}"
    );

    served.run.handle().shutdown().request("test over", 0);
    served.run.handle().reached(Phase::Draining).await;
    let (status, _, body) = get_once(served.address, "/readyz").await;
    assert_eq!(status, 503, "unready first, while still serving: {body}");
    assert!(body.starts_with("{\"ready\":false,\"status\":\"unready\",\"phase\":\"draining\""), "{body}");
    let (status, _, _) = get_once(served.address, "/livez").await;
    assert_eq!(status, 200, "still live while draining");

    let (status, connection, body) = client.get("/").await.unwrap();
    assert_eq!((status, connection.as_deref(), body.as_str()), (200, Some("close"), "hello"));
    tokio::time::timeout(Duration::from_secs(2), client.closed)
        .await
        .expect("the server closed the connection")
        .unwrap();

    let report = served.run.finished().await;
    assert!(report.is_success(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_deadline_cancels_request_tokens() {
    let entered = Arc::new(Notify::new());
    let notify = Arc::clone(&entered);
    let app = Router::new().route(
        "/report",
        get(move |request: RequestContext| {
            let notify = Arc::clone(&notify);
            async move {
                notify.notify_one();
                request.cancelled().await;
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "partial report, cut short by the shutdown")
            }
        }),
    );
    let served = serve(builder(), app, Duration::from_secs(5), Some(Duration::from_millis(200))).await;
    let address = served.address;
    let request = tokio::spawn(async move { get_once(address, "/report").await });
    entered.notified().await;
    let began = Instant::now();
    served.run.handle().shutdown().request("test over", 0);
    let (status, _, body) = request.await.unwrap();
    assert_eq!((status, body.as_str()), (503, "partial report, cut short by the shutdown"));
    let report = served.run.finished().await;
    assert!(began.elapsed() < Duration::from_secs(2));
    assert!(
        note(&report).starts_with("drained 1 requests, cancelled 1 at the soft deadline, cut 0 requests"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hard_deadline_cuts_a_request_that_ignores_its_token() {
    let entered = Arc::new(Notify::new());
    let notify = Arc::clone(&entered);
    let app = Router::new().route(
        "/forever",
        get(move || {
            let notify = Arc::clone(&notify);
            async move {
                notify.notify_one();
                std::future::pending::<&str>().await
            }
        }),
    );
    let served = serve(builder(), app, Duration::from_millis(800), Some(Duration::from_millis(200))).await;
    let address = served.address;
    let request = tokio::spawn(async move { Client::connect(address).await.get("/forever").await });
    entered.notified().await;
    let began = Instant::now();
    let report = served.run.stop().await;
    assert!(began.elapsed() < Duration::from_secs(2), "{:?}", began.elapsed());
    assert!(request.await.unwrap().is_err(), "the client sees its connection closed");
    assert!(report.is_success(), "cutting at the hard deadline is the plan, not a failure: {report}");
    assert!(
        note(&report).contains(
            "cancelled 1 at the soft deadline, cut 1 requests and 1 connections at the hard deadline"
        ),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_spawned_by_handlers_are_waited_for() {
    let finished = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&finished);
    let app = Router::new().route(
        "/order",
        axum::routing::post(move |request: RequestContext| {
            let flag = Arc::clone(&flag);
            async move {
                request.tasks().spawn("send_confirmation", async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    flag.store(true, Ordering::SeqCst);
                });
                "accepted"
            }
        }),
    );
    let served = serve(builder(), app, Duration::from_secs(5), None).await;
    let mut client = Client::connect(served.address).await;
    client.sender.ready().await.unwrap();
    let request = hyper::Request::post("/order").header("host", "test").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(client.sender.send_request(request).await.unwrap().status(), 200);
    let report = served.run.stop().await;
    assert!(report.is_success(), "{report}");
    assert!(finished.load(Ordering::SeqCst), "the stop waited for the handler's task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_response_is_cut_at_the_hard_deadline() {
    use tokio::io::AsyncWriteExt;
    // 64 MiB: far more than the socket buffers hold, so the server's write blocks.
    let app = Router::new().route("/export", get(|| async { vec![b'x'; 64 << 20] }));
    let served = serve(builder(), app, Duration::from_millis(800), Some(Duration::from_millis(200))).await;
    let mut stream = tokio::net::TcpStream::connect(served.address).await.unwrap();
    stream.write_all(b"GET /export HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
    // Never read. Once the handler has answered, the server is stuck writing the body.
    testing::eventually("the handler's answer", Duration::from_secs(10), || served.server.completed() > 0)
        .await;
    let began = Instant::now();
    let report = served.run.stop().await;
    assert!(began.elapsed() < Duration::from_secs(2), "the stop ends at its deadline: {:?}", began.elapsed());
    assert!(note(&report).ends_with("cut 0 requests and 1 connections at the hard deadline"), "{report}");
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let served = serve(builder(), app, Duration::from_secs(5), None).await;
    let (status, _, _) = get_once(served.address, "/").await;
    assert_eq!(status, 200);
    let (status, _, text) = get_once(served.address, "/metrics").await;
    assert_eq!(status, 200, "{text}");

    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| sample(&scrape, &text, name, label);
    assert_eq!(value("lifecycle_phase", Some(("phase", "ready"))), 1.0);
    assert_eq!(value("lifecycle_phase", Some(("phase", "draining"))), 0.0);
    assert_eq!(value("lifecycle_component_state", Some(("state", "running"))), 1.0);
    assert!(value("lifecycle_component_start_seconds", Some(("component", "http"))) >= 0.0);
    assert!(value("lifecycle_http_requests_completed_total", None) >= 1.0);
    assert_eq!(value("lifecycle_http_requests_in_flight", None), 1.0, "the scrape itself");
    let documented = scrape.docs.keys().filter(|name| name.starts_with("lifecycle_")).count();
    assert!(documented >= 8, "every metric has HELP text: {:?}", scrape.docs.keys());

    assert!(served.run.stop().await.is_success());
}

/// At stop, a keep-alive connection that is not quiet yet stays open: a request sent during the
/// grace period is answered (with `Connection: close`) instead of meeting a closed socket, and a
/// connection left quiet is closed once the grace period has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_stop_a_keep_alive_connection_is_closed_only_once_quiet() {
    let app = Router::new().route("/", get(|| async { "ok" }));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let mut builder = builder();
    builder.add(HttpServer::new("http", listener, app).idle_close_after(Duration::from_millis(300)));
    let mut run = TestRun::start(builder);
    run.ready().await;

    let mut busy = Client::connect(address).await;
    let mut quiet = Client::connect(address).await;
    assert_eq!(busy.get("/").await.unwrap().0, 200);
    assert_eq!(quiet.get("/").await.unwrap().0, 200);
    let answered = Instant::now();
    run.handle().shutdown().request("test", 0);
    // The server's stop began: its grace period runs (300 ms from each connection's last answer).
    testing::eventually("the http server's stop to begin", Duration::from_secs(5), || {
        run.handle().components().iter().any(|c| {
            c.name.as_str() == "http" && matches!(c.stage, Some(Stage::Stopping | Stage::WaitingForTasks))
        })
    })
    .await;
    // Within the grace period, the connection still answers; its response closes it.
    let (status, connection, _) = busy.get("/").await.unwrap();
    assert_eq!((status, connection.as_deref()), (200, Some("close")));
    // The quiet one is closed by the server after the grace period, not before.
    quiet.closed.await.unwrap();
    // (The server's clock started when it finished the response, a moment before `answered`.)
    assert!(answered.elapsed() >= Duration::from_millis(250), "closed after {:?}", answered.elapsed());
    let report = run.finished().await;
    assert_eq!(report.exit_code, 0, "{report}");
}

/// A feed whose task fails when told to; it restarts after an hour.
struct Feed(Arc<Notify>);

impl lifecycle_core::Component for Feed {
    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().restart(
            lifecycle_core::RestartPolicy::on_failure()
                .backoff(Duration::from_secs(3600), Duration::from_secs(3600))
                .jitter(0.0),
        )
    }

    async fn start(&self, ctx: &lifecycle_core::Context) -> Result<(), lifecycle_core::BoxError> {
        let fail = Arc::clone(&self.0);
        let token = ctx.token().clone();
        ctx.tasks().spawn("consume", async move {
            tokio::select! {
                () = token.cancelled() => Ok(()),
                () = fail.notified() => Err(std::io::Error::other("broker connection lost")),
            }
        });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics_say_degraded_while_a_component_waits_to_restart() {
    let fail = Arc::new(Notify::new());
    let mut b = builder();
    b.add(Feed(Arc::clone(&fail)));
    let app = Router::new().route("/", get(|| async { "hello" }));
    let served = serve(b, app, Duration::from_secs(5), None).await;
    fail.notify_one();
    let handle = served.run.handle().clone();
    testing::eventually("the feed waits to restart", Duration::from_secs(5), || {
        handle.components().iter().any(|c| c.name.as_str() == "feed" && c.next_restart.is_some())
    })
    .await;

    let (status, _, body) = get_once(served.address, "/readyz").await;
    assert_eq!(status, 200, "degraded is still ready: {body}");
    assert!(body.starts_with("{\"ready\":true,\"status\":\"degraded\",\"phase\":\"ready\",\"problems\":[{\"component\":\"feed\",\"fatal\":false,\"problem\":\"restarting (restart 1, next in "), "{body}");
    assert!(body.contains("\"restarts\":1,\"task_restarts\":0,\"failures\":1,\"last_failure\":\"task `consume` failed: broker connection lost (running)\",\"next_restart_in_ms\":"), "{body}");
    let (status, _, _) = get_once(served.address, "/").await;
    assert_eq!(status, 200, "the service serves");

    let (_, _, text) = get_once(served.address, "/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: (&str, &str)| sample(&scrape, &text, name, Some(label));
    assert_eq!(value("lifecycle_readiness", ("status", "degraded")), 1.0);
    assert_eq!(value("lifecycle_component_restarts_total", ("component", "feed")), 1.0);
    assert_eq!(value("lifecycle_component_failures_total", ("component", "feed")), 1.0);
    assert!(value("lifecycle_component_next_restart_seconds", ("component", "feed")) > 3000.0);
    assert_eq!(value("lifecycle_component_state", ("state", "restarting")), 1.0);

    let report = served.run.stop().await;
    assert_eq!(report.component("feed").unwrap().restarts, 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics_list_the_components_of_open_scopes_under_their_path() {
    let mut b = builder();
    // Its start returns once the scope is ready, so the service is ready with the scope open.
    b.add(lifecycle_core::FnComponent::new("tenants").on_start(|ctx| {
        let ctx = ctx.clone();
        async move {
            let mut scope = ctx.scope("acme");
            scope.add(lifecycle_core::FnComponent::new("pool"));
            // Kept open until the owner stops.
            drop(scope.start().await?); // still open: dropping the handle leaves it running
            Ok::<(), lifecycle_core::BoxError>(())
        }
    }));
    let app = Router::new().route("/", get(|| async { "hello" }));
    let served = serve(b, app, Duration::from_secs(5), None).await;
    let (status, _, body) = get_once(served.address, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.ends_with(
            "\"scopes\":[{\"path\":\"tenants/acme\",\"phase\":\"ready\",\"components\":[{\"name\":\"tenants/acme/pool\",\"state\":\"running\",\"restarts\":0}]}]}\n"
        ),
        "{body}"
    );
    let (_, _, text) = get_once(served.address, "/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(
        sample(&scrape, &text, "lifecycle_component_state", Some(("component", "tenants/acme/pool"))),
        1.0
    );
    assert!(served.run.stop().await.is_success());
}

/// A handler with a bug.
async fn boom() -> &'static str {
    panic!("handler bug")
}

/// An app with a route whose handler panics.
fn panicking_app() -> Router {
    Router::new().route("/", get(|| async { "hello" })).route("/boom", get(boom))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_over_every_protocol_and_the_service_carries_on() {
    let served = serve(builder(), panicking_app(), Duration::from_secs(5), None).await;

    // HTTP/1.1 keep-alive: the same connection serves the next request.
    let mut client = Client::connect(served.address).await;
    let (status, _, body) = client.get("/boom").await.unwrap();
    assert_eq!((status, body.as_str()), (500, "internal error\n"));
    let (status, _, body) = client.get("/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"), "the keep-alive connection carries on");

    // HTTP/1.1 with `Connection: close`.
    let (status, connection, _) = Client::connect(served.address).await.send("/boom", true).await.unwrap();
    assert_eq!((status, connection.as_deref()), (500, Some("close")));

    // HTTP/2 (prior knowledge): the stream answers 500, the connection serves the next one.
    let (mut sender, driving) = http2_client(served.address).await;
    for (path, expected) in [("/boom", 500), ("/", 200)] {
        let request = hyper::Request::get(format!("http://test{path}")).body(Empty::<Bytes>::new()).unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status().as_u16(), expected, "{path} over HTTP/2");
    }
    drop(sender);
    let _ = driving.await;

    assert_eq!(served.run.handle().phase(), Phase::Ready, "the service carries on");
    let (_, _, text) = get_once(served.address, "/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(sample(&scrape, &text, "lifecycle_http_requests_panicked_total", None), 3.0);
    let report = served.run.stop().await;
    assert!(report.is_success(), "a handler's panic is not the server's failure:\n{report}");
    assert!(report.components[0].failures.is_empty(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_reach_their_request_context_over_every_protocol_and_a_spawning_layer_is_told_why_not() {
    let app = Router::new()
        .route(
            "/context",
            get(|context: RequestContext| async move { format!("going away: {}", context.is_going_away()) }),
        )
        // Still within reach after the handler's future returned pending and was polled again.
        .route(
            "/later",
            get(|| async {
                tokio::task::yield_now().await;
                format!("reached: {}", RequestContext::current().is_some())
            }),
        )
        .route(
            "/spawned",
            get(|context: RequestContext| async move { format!("{}", context.is_cancelled()) }),
        )
        // A layer that moves the request's future onto a task of its own (as no layer should).
        .route_layer(axum::middleware::from_fn(
            |request: axum::extract::Request, next: axum::middleware::Next| async move {
                if request.uri().path() == "/spawned" {
                    tokio::spawn(next.run(request)).await.unwrap()
                } else {
                    next.run(request).await
                }
            },
        ));
    let served = serve(builder(), app, Duration::from_secs(5), None).await;
    assert!(RequestContext::current().is_none(), "outside a request, no context");

    let mut client = Client::connect(served.address).await;
    assert_eq!(client.get("/context").await.unwrap().2, "going away: false");
    assert_eq!(client.get("/later").await.unwrap().2, "reached: true");
    let (status, _, body) = client.get("/spawned").await.unwrap();
    assert_eq!(status, 500);
    assert!(body.contains("no RequestContext") && body.contains("another task"), "{body}");

    let (mut sender, driving) = http2_client(served.address).await;
    for (path, expected) in [("/context", "going away: false"), ("/later", "reached: true")] {
        let request = hyper::Request::get(format!("http://test{path}")).body(Empty::<Bytes>::new()).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, expected, "{path} over HTTP/2");
    }
    drop(sender);
    let _ = driving.await;
    let report = served.run.stop().await;
    assert!(report.is_success(), "{report}");
}

/// An HTTP/2 connection (prior knowledge) to `address`, and the task driving it.
async fn http2_client(
    address: SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<Empty<Bytes>>, JoinHandle<hyper::Result<()>>) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    (sender, tokio::spawn(connection))
}

/// Reads from `stream` until the server closes it; how long that took, at most `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let began = Instant::now();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(limit, async { while stream.read(&mut buffer).await.is_ok_and(|read| read > 0) {} })
        .await
        .ok()
        .map(|()| began.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_its_headers_slowly_is_cut_and_cannot_hold_the_stop() {
    use tokio::io::AsyncWriteExt;
    let app = Router::new().route("/", get(|| async { "hello" }));
    let served = serve_with(builder(), app, |server| {
        server
            .header_read_timeout(Duration::from_millis(300))
            .options(ComponentOptions::new().stop_timeout(Duration::from_secs(20)))
    })
    .await;
    // Half a request, then nothing: the server hangs up after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(served.address).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n").await.unwrap();
    let closed = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(closed.is_some_and(|after| after < Duration::from_secs(2)), "closed after {closed:?}");

    // Another one in the middle of its headers when the stop begins: the stop does not wait for it.
    let mut slow = tokio::net::TcpStream::connect(served.address).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let began = Instant::now();
    let report = served.run.stop().await;
    assert!(began.elapsed() < Duration::from_secs(3), "the stop took {:?} (deadline 20 s)", began.elapsed());
    assert!(report.is_success(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_turned_away_with_503_and_served_once_one_closes() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let served = serve_with(builder(), app, |server| server.max_connections(2)).await;
    let mut first = Client::connect(served.address).await;
    let mut second = Client::connect(served.address).await;
    assert_eq!(first.get("/").await.unwrap().0, 200);
    assert_eq!(second.get("/").await.unwrap().0, 200);
    // Beyond the limit: told so at once, cleanly (an answer, then the connection closed).
    for _ in 0..5 {
        let mut third = Client::connect(served.address).await;
        let (status, connection, body) =
            within("the 503", Duration::from_secs(2), third.get("/")).await.unwrap();
        assert_eq!(
            (status, connection.as_deref(), body.as_str()),
            (503, Some("close"), "too many connections\r\n")
        );
    }
    drop(first);
    let served_again = within("a free slot", Duration::from_secs(5), async {
        loop {
            let mut client = Client::connect(served.address).await;
            match client.get("/").await {
                Ok((200, _, _)) => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    served_again.await;
    drop(second);
    // With both places free again (each client closes its connection in its own time).
    let text = within("/metrics served", Duration::from_secs(5), async {
        loop {
            match get_once(served.address, "/metrics").await {
                (200, _, text) => return text,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(sample(&scrape, &text, "lifecycle_http_connections_turned_away_total", None) >= 5.0);
    assert!(served.run.stop().await.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let app = Router::new().route("/", get(|| async { "hello" }));
    let served = serve_with(builder(), app, |server| server.idle_timeout(Duration::from_millis(300))).await;
    let mut stream = tokio::net::TcpStream::connect(served.address).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
    let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|after| after >= Duration::from_millis(250) && after < Duration::from_secs(2)),
        "closed after {closed:?}"
    );
    assert!(served.run.stop().await.is_success());
}

/// Counts its health checks.
struct Checked(Arc<std::sync::atomic::AtomicU64>);

impl lifecycle_core::Component for Checked {
    async fn health(&self) -> lifecycle_core::Health {
        self.0.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await; // a database round trip
        lifecycle_core::Health::Healthy
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_readiness_probes_runs_the_health_checks_once_a_second_at_most() {
    let checks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut b = builder();
    b.add(Checked(Arc::clone(&checks)));
    // Long enough to ask during the drain, before the stop closes the listener.
    b.drain_delay(Duration::from_millis(800));
    let app = Router::new().route("/", get(|| async { "hello" }));
    let served = serve(b, app, Duration::from_secs(5), None).await;
    let probes: Vec<_> = (0..100).map(|_| tokio::spawn(get_once(served.address, "/readyz"))).collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap().0, 200);
    }
    let ran = checks.load(Ordering::SeqCst);
    assert!((1..=2).contains(&ran), "100 probes ran the checks {ran} times");
    // The drain is answered at once, not from the last answer.
    served.run.handle().shutdown().request("test over", 0);
    served.run.handle().reached(Phase::Draining).await;
    assert_eq!(get_once(served.address, "/readyz").await.0, 503);
    assert!(served.run.finished().await.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_can_live_on_their_own_port_with_the_services_own_metrics() {
    let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (public_address, admin_address) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let mut b = builder();
    b.add(HttpServer::new("http", public, Router::new().route("/", get(|| async { "hello" }))));
    // A second server with nothing but the probes and the metrics.
    // With the service's own metrics, read at each scrape.
    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&scrapes);
    b.add(
        HttpServer::new("admin", admin, Router::new())
            .with_health(HealthPaths::default())
            .with_metrics("/metrics")
            .with_metrics_from(move |registry| {
                let total = Counter::<u64>::default();
                total.inc_by(counted.fetch_add(1, Ordering::AcqRel) + 1);
                registry.register("orders_scrapes", "Scrapes so far", total);
            }),
    );
    let mut run = TestRun::start(b);
    run.ready().await;
    assert_eq!(get_once(public_address, "/").await.0, 200);
    assert_eq!(get_once(public_address, "/readyz").await.0, 404, "not on the public port");
    assert_eq!(get_once(admin_address, "/readyz").await.0, 200);
    assert_eq!(get_once(admin_address, "/metrics").await.0, 200);
    let (status, _, text) = get_once(admin_address, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(sample(&scrape, &text, "orders_scrapes_total", None), 2.0, "set afresh at each scrape");
    assert_eq!(sample(&scrape, &text, "lifecycle_phase", Some(("phase", "ready"))), 1.0);
    assert_eq!(text.matches("# EOF").count(), 1, "one document:\n{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(run.stop().await.is_success());
}

/// Sets its flag when dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_request_timeout_answers_503_and_its_handler_is_cancelled() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancelled);
    let app = Router::new().route("/", get(|| async { "hello" })).route(
        "/stuck",
        get(move || {
            let guard = Dropped(Arc::clone(&flag));
            async move {
                std::future::pending::<()>().await;
                drop(guard);
                "never"
            }
        }),
    );
    let served =
        serve_with(builder(), app, |server| server.request_timeout(Duration::from_millis(200))).await;
    let mut client = Client::connect(served.address).await;
    let began = Instant::now();
    let (status, _, body) = client.get("/stuck").await.unwrap();
    assert_eq!((status, body.as_str()), (503, "request timed out\n"));
    assert!(began.elapsed() < Duration::from_secs(2), "{:?}", began.elapsed());
    assert!(cancelled.load(Ordering::Acquire), "the handler was dropped");
    let (status, _, body) = client.get("/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"), "the connection carries on");
    let (_, _, text) = get_once(served.address, "/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(sample(&scrape, &text, "lifecycle_http_requests_timed_out_total", None), 1.0);
    testing::assert_clean(&served.run.stop().await);
}

/// A server with these timeouts, and a connection to it that sent one whole request.
async fn one_request_in(header_read: Duration, idle: Duration) -> (Served, tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let app = Router::new().route("/", get(|| async { "hello" }));
    let served =
        serve_with(builder(), app, |server| server.header_read_timeout(header_read).idle_timeout(idle)).await;
    let mut stream = tokio::net::TcpStream::connect(served.address).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
    (served, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_outlives_the_header_read_timeout_until_the_idle_timeout() {
    let (served, mut stream) = one_request_in(Duration::from_millis(300), Duration::from_millis(1500)).await;
    let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|after| after >= Duration::from_millis(1400) && after < Duration::from_secs(3)),
        "closed after {closed:?}: the header-read timeout applies to a request's head, not to the wait between requests"
    );
    assert!(served.run.stop().await.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_head_on_a_keep_alive_connection_has_the_header_read_timeout_from_its_first_byte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (served, mut stream) = one_request_in(Duration::from_millis(400), Duration::from_secs(30)).await;
    let mut answer = [0u8; 1024];
    let read = stream.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer[..read]));
    // Idle for longer than the header-read timeout: still open (the idle timeout is 30 s).
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Then half of the next head, and nothing more: cut 400 ms after its first byte.
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed
            .is_some_and(|after| after >= Duration::from_millis(350) && after < Duration::from_millis(1500)),
        "closed after {closed:?}"
    );
    let (_, _, text) = get_once(served.address, "/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(sample(&scrape, &text, "lifecycle_http_header_timeouts_total", None), 1.0);
    assert!(served.run.stop().await.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_may_wait_past_the_header_read_timeout_before_its_first_call() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let served =
        serve_with(builder(), app, |server| server.header_read_timeout(Duration::from_millis(300))).await;
    // The preface and settings go out now; the first request only after the header-read timeout.
    let (mut sender, driving) = http2_client(served.address).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let request = hyper::Request::get("http://test/").body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.expect("the connection is still open");
    assert_eq!(response.status().as_u16(), 200);
    drop(sender);
    let _ = driving.await;
    let (_, _, text) = get_once(served.address, "/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(sample(&scrape, &text, "lifecycle_http_header_timeouts_total", None), 0.0);
    assert!(served.run.stop().await.is_success());
}
