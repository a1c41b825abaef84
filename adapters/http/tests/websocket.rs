//! WebSockets over real sockets with a real client: served as tasks of the server, closed with
//! 1001 (going away) when it stops or, if set, when it drains, waited for by the stop, counted
//! in the report and `/metrics`; a handler that returns closes with 1000; a request that is no
//! handshake gets a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lifecycle_core::testing::{self, TestRun, assert_clean, within};
use lifecycle_core::{Phase, RegistryBuilder};
use lifecycle_http::axum::Router;
use lifecycle_http::axum::response::Response;
use lifecycle_http::axum::routing::get;
use lifecycle_http::websocket::{Message, WebSocket, WebSocketUpgrade};
use lifecycle_http::{HttpServer, RequestContext};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Echoes text until the client or the server ends it.
async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(message) = socket.recv().await {
            if let Message::Text(text) = message {
                if socket.send(Message::Text(text)).await.is_err() {
                    break;
                }
            }
        }
    })
}

/// Sends a tick every 10 ms and never reads: a feed, which ends when the server goes away.
async fn feed(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|socket: WebSocket| async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                () = socket.going_away().cancelled() => break,
                _ = tick.tick() => if socket.send(Message::Text("tick".into())).await.is_err() { break },
            }
        }
    })
}

/// Answers one message, then returns.
async fn once(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        if let Some(message) = socket.recv().await {
            let _ = socket.send(message).await;
        }
    })
}

/// Panics at the first message: a bug in one socket's handler.
async fn buggy(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        if socket.recv().await.is_some() {
            panic!("socket handler bug");
        }
    })
}

fn app() -> Router {
    Router::new()
        .route("/buggy", get(buggy))
        .route("/echo", get(echo))
        .route("/feed", get(feed))
        .route("/once", get(once))
        .route(
            "/going-away",
            get(|ctx: RequestContext| async move {
                ctx.going_away().await;
                "going away"
            }),
        )
}

async fn serve(
    mut builder: RegistryBuilder,
    configure: impl FnOnce(HttpServer) -> HttpServer,
) -> (TestRun, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    builder.add(configure(HttpServer::new("http", listener, app()).with_metrics("/metrics")));
    let mut run = TestRun::start(builder);
    run.ready().await;
    (run, address)
}

async fn connect(address: SocketAddr, path: &str) -> Client {
    let (client, response) = tokio_tungstenite::connect_async(format!("ws://{address}{path}")).await.unwrap();
    assert_eq!(response.status(), 101);
    client
}

/// Reads until the server's close frame: its code, and whether anything else ended the stream
/// first (a reset or an end without a close frame).
async fn close_code(client: &mut Client) -> Result<CloseCode, String> {
    loop {
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => return Ok(frame.code),
            Some(Ok(Message::Close(None))) => return Err("a close frame without a code".into()),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(format!("{error}")),
            None => return Err("the stream ended without a close frame".into()),
        }
    }
}

async fn metric(address: SocketAddr, name: &str) -> f64 {
    let response = reqwest_like_get(address, "/metrics").await;
    let line =
        response.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {response}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `GET path` over HTTP/1.1 with `Connection: close`: the whole response, head and body.
async fn reqwest_like_get(address: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_stop_every_websocket_hears_going_away_and_the_stop_waits_for_them() {
    const CLIENTS: usize = 20;
    let (run, address) = serve(testing::builder(), |server| server).await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let path = if i % 2 == 0 { "/echo" } else { "/feed" };
        clients.push(connect(address, path).await);
    }
    for client in clients.iter_mut().step_by(2) {
        client.send(Message::Text("hello".into())).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::Text("hello".into()));
    }
    assert_eq!(metric(address, "lifecycle_http_websockets_open").await, CLIENTS as f64);

    let stop = tokio::spawn(run.stop());
    for (i, client) in clients.iter_mut().enumerate() {
        let code = within("a close frame", Duration::from_secs(5), close_code(client)).await;
        assert_eq!(code, Ok(CloseCode::Away), "client {i}");
        // The client answers (as tungstenite does) and the connection ends.
        let _ = client.close(None).await;
    }
    let report = within("the stop", Duration::from_secs(10), stop).await.unwrap();
    assert_clean(&report);
    let notes = report.components.iter().find(|c| c.name.as_str() == "http").unwrap().notes.join("; ");
    assert!(notes.contains(&format!("closed {CLIENTS} WebSockets with 1001 (going away), cut 0")), "{notes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_go_away_at_drain_websockets_and_long_responses_end_during_the_drain_delay() {
    let mut builder = testing::builder();
    builder.drain_delay(Duration::from_secs(30));
    let (run, address) = serve(builder, HttpServer::go_away_at_drain).await;
    let mut client = connect(address, "/feed").await;
    let long = tokio::spawn(reqwest_like_get(address, "/going-away"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!long.is_finished());
    let handle = run.handle().clone();
    handle.shutdown().request("test", 0);
    // Well inside the 30 s drain delay, while the service is still draining.
    let code =
        within("a close frame during the drain", Duration::from_secs(5), close_code(&mut client)).await;
    assert_eq!(code, Ok(CloseCode::Away));
    let response = within("the long response to end", Duration::from_secs(5), long).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("going away"), "{response}");
    assert_eq!(handle.phase(), Phase::Draining);
    drop(run); // the drain delay is not waited out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_returns_closes_normally_and_the_server_serves_on() {
    let (run, address) = serve(testing::builder(), |server| server).await;
    let mut client = connect(address, "/once").await;
    client.send(Message::Text("one".into())).await.unwrap();
    assert_eq!(client.next().await.unwrap().unwrap(), Message::Text("one".into()));
    assert_eq!(close_code(&mut client).await, Ok(CloseCode::Normal));
    let mut other = connect(address, "/echo").await;
    other.send(Message::Text("two".into())).await.unwrap();
    assert_eq!(other.next().await.unwrap().unwrap(), Message::Text("two".into()));
    let stop = tokio::spawn(run.stop());
    assert_eq!(close_code(&mut other).await, Ok(CloseCode::Away));
    let _ = other.close(None).await;
    assert_clean(&within("the stop", Duration::from_secs(10), stop).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_no_handshake_gets_a_clear_error() {
    let (run, address) = serve(testing::builder(), |server| server).await;
    let plain = reqwest_like_get(address, "/echo").await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    assert!(plain.contains("`Connection: upgrade` and `Upgrade: websocket`"), "{plain}");

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            b"GET /echo HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-version: 8\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = vec![0; 1024];
    let read = stream.read(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response[..read]);
    assert!(response.starts_with("HTTP/1.1 426"), "{response}");
    assert!(response.to_lowercase().contains("sec-websocket-version: 13"), "{response}");
    assert_clean(&run.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_its_place_under_the_connection_limit() {
    let (run, address) = serve(testing::builder(), |server| server.max_connections(2)).await;
    let mut first = connect(address, "/echo").await;
    let _second = connect(address, "/echo").await;
    // Both upgraded connections still count: a third client is turned away.
    let refused = tokio_tungstenite::connect_async(format!("ws://{address}/echo")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a third WebSocket beyond the limit of 2: {other:?}"),
    }
    first.close(None).await.unwrap();
    let mut third = within("a third client served once one socket closed", Duration::from_secs(5), async {
        loop {
            if let Ok((socket, _)) = tokio_tungstenite::connect_async(format!("ws://{address}/echo")).await {
                return socket;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    third.send(Message::Text("three".into())).await.unwrap();
    assert_eq!(third.next().await.unwrap().unwrap(), Message::Text("three".into()));
    drop(third);
    drop(run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_socket_handler_closes_its_socket_with_1011_and_the_service_carries_on() {
    let (run, address) = serve(testing::builder(), |server| server).await;
    let mut buggy = connect(address, "/buggy").await;
    buggy.send(Message::Text("boom".into())).await.unwrap();
    let code = within("the close frame", Duration::from_secs(5), close_code(&mut buggy)).await;
    assert_eq!(code, Ok(CloseCode::Error));
    // The other sockets and the service carry on.
    let mut other = connect(address, "/echo").await;
    other.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(other.next().await.unwrap().unwrap(), Message::Text("still here".into()));
    assert_eq!(run.handle().phase(), Phase::Ready);
    assert_eq!(metric(address, "lifecycle_http_requests_panicked_total").await, 1.0);
    let stop = tokio::spawn(run.stop());
    assert_eq!(close_code(&mut other).await, Ok(CloseCode::Away));
    let _ = other.close(None).await;
    let report = within("the stop", Duration::from_secs(10), stop).await.unwrap();
    assert_clean(&report);
}
