//! A cold start: a listener this process bound (not inherited) listens only once the server
//! starts, so a client that comes while the service starts, or fails to start, is refused at
//! once instead of waiting unanswered in the queue until the process exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use lifecycle_core::testing::{self, TestRun, assert_clean, within};
use lifecycle_core::{BoxError, Component, ComponentId, Context};
use lifecycle_handoff::Listeners;
use lifecycle_http::HttpServer;
use lifecycle_http::axum::{self, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// A database that starts when the test says so, or fails to.
struct Database {
    go: Arc<Notify>,
    fails: bool,
}

impl Component for Database {
    fn name(&self) -> ComponentId {
        ComponentId::from("database")
    }

    async fn start(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.go.notified().await;
        if self.fails { Err("connection refused by the database".into()) } else { Ok(()) }
    }
}

/// A service whose HTTP server, on a listener from `Listeners`, waits for the database.
fn service(listeners: &Listeners, fails: bool) -> (TestRun, SocketAddr, Arc<Notify>) {
    let listener = listeners.tcp("http", "127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.local_addr().unwrap();
    let go = Arc::new(Notify::new());
    let mut builder = testing::builder();
    builder.add(Database { go: Arc::clone(&go), fails });
    let app = Router::new().route("/", get(|| async { "served" }));
    builder.add(HttpServer::new("http", listener, app)).depends_on("database");
    (TestRun::start(builder), address, go)
}

/// Connects and expects a prompt refusal.
async fn assert_refused(address: SocketAddr, when: &str) {
    let connected = within(when, Duration::from_secs(1), tokio::net::TcpStream::connect(address)).await;
    let error = connected.map(|_| ()).expect_err(when);
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "{when}: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_refused_at_once_while_the_service_starts_and_served_once_it_is_up() {
    let listeners = Listeners::new();
    let (mut run, address, go) = service(&listeners, false);
    assert_refused(address, "while the database starts").await;
    go.notify_one();
    run.ready().await;
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK") && response.ends_with("served"), "{response}");
    assert_clean(&run.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_leaves_no_client_waiting_in_the_queue() {
    let listeners = Listeners::new();
    let (run, address, go) = service(&listeners, true);
    assert_refused(address, "while the database starts").await;
    go.notify_one();
    let report = within("the failed start to end the run", Duration::from_secs(10), run.finished()).await;
    assert!(!report.is_success(), "{report}");
    // The socket is still bound (the set keeps it for an upgrade), and still refuses.
    assert_refused(address, "after the failed start").await;
}
