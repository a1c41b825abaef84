//! One request can never take the service down: a handler that panics, hit 1,000 times over one
//! HTTP/1.1 keep-alive connection and 1,000 times over one HTTP/2 connection while other
//! clients load another route over both protocols. Every panic answers 500 on a connection that
//! carries on, no other request fails, and `/metrics` counts 2,000 panics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use lifecycle::testing::{self, TestRun, assert_clean, eventually, within};
use lifecycle_http::HttpServer;
use lifecycle_http::axum::Router;
use lifecycle_http::axum::http::StatusCode;
use lifecycle_http::axum::routing::{get, post};
use lifecycle_tests::load::{Clients, Mode, connect, get as get_once};

const PANICS: usize = 1_000;
const CLIENTS: usize = 8;

async fn boom() -> &'static str {
    panic!("handler bug")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_panics_per_protocol_under_load_fail_no_other_request() {
    // 2,000 backtraces of the same bug would bury the test's own output; other panics still show.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"handler bug") {
            default_hook(info);
        }
    }));
    let created = Arc::new(AtomicU64::new(0));
    let app = Router::new().route("/boom", get(boom)).route(
        "/api/orders",
        post(move || {
            let id = created.fetch_add(1, Ordering::AcqRel) + 1;
            async move { (StatusCode::CREATED, format!("{{\"id\":{id}}}")) }
        }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let mut builder = testing::builder();
    builder.add(HttpServer::new("http", listener, app).with_metrics("/metrics"));
    let mut run = TestRun::start(builder);
    run.ready().await;

    let keep_alive = Clients::start(address, Mode::KeepAlive, CLIENTS);
    let http2 = Clients::start(address, Mode::Http2, CLIENTS);
    eventually("load on both protocols", Duration::from_secs(10), || {
        keep_alive.ok() > 100 && http2.ok() > 100
    })
    .await;
    for mode in [Mode::KeepAlive, Mode::Http2] {
        // One connection for all of them: each panic leaves it serving.
        let mut sender = connect(address, mode).await.unwrap();
        for i in 0..PANICS {
            let mut request = hyper::Request::get("http://test/boom");
            if mode != Mode::Http2 {
                request = request.header("host", "test");
            }
            let (status, body) = within(
                "a 500",
                Duration::from_secs(5),
                sender.send(request.body(Full::new(Bytes::new())).unwrap()),
            )
            .await
            .unwrap_or_else(|error| panic!("{mode:?} panic {i}: {error}"));
            assert_eq!((status, body.as_str()), (500, "internal error\n"), "{mode:?} panic {i}");
        }
    }
    let (before_h1, before_h2) = (keep_alive.ok(), http2.ok());
    eventually("the load goes on after the panics", Duration::from_secs(10), || {
        keep_alive.ok() > before_h1 + 100 && http2.ok() > before_h2 + 100
    })
    .await;
    let tallies = [keep_alive.stop().await, http2.stop().await];
    for (tally, mode) in tallies.iter().zip(["HTTP/1.1 keep-alive", "HTTP/2"]) {
        tally.assert_no_failures(mode, "");
    }
    let (status, metrics) = get_once(address, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|l| l == format!("lifecycle_http_requests_panicked_total {}", 2 * PANICS)),
        "{metrics}"
    );
    let report = run.stop().await;
    assert_clean(&report);
    eprintln!(
        "{} panics answered 500 while {} other requests were served, 0 failed",
        2 * PANICS,
        tallies.iter().map(|t| t.ok).sum::<u64>()
    );
}
