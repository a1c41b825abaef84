//! A small gRPC service for the tests, written by hand (no protoc): `test.Echo` with a unary
//! `Echo` and a server-streaming `Ticks`, its messages as prost structs, and a client for it.
//! What the handlers do is chosen by the request, so one service serves every test.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use lifecycle_grpc::tonic::body::Body;
use lifecycle_grpc::tonic::codegen::{BoxFuture, BoxStream, Service, http};
use lifecycle_grpc::tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use lifecycle_grpc::tonic::transport::{Channel, Endpoint};
use lifecycle_grpc::tonic::{Request, Response, Status, Streaming};
use tokio::sync::Notify;
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Echoed back; `panic` makes the handler panic, `forever` makes it wait forever, deaf to
    /// every cancellation.
    #[prost(string, tag = "1")]
    pub text: String,
    /// How long the handler works before it answers.
    #[prost(uint64, tag = "2")]
    pub delay_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
    /// Which server answered.
    #[prost(string, tag = "2")]
    pub server: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TicksRequest {
    #[prost(uint32, tag = "1")]
    pub count: u32,
    #[prost(uint64, tag = "2")]
    pub interval_ms: u64,
    /// The stream panics when it reaches this tick (0: never).
    #[prost(uint32, tag = "3")]
    pub panic_at: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Tick {
    #[prost(uint32, tag = "1")]
    pub n: u32,
}

/// What the handlers saw, for the tests to wait on.
#[derive(Debug, Default)]
pub struct Seen {
    /// Notified when an `Echo` handler begins.
    pub echo_entered: Notify,
    pub echoes: AtomicU64,
    /// Ticks streams begun.
    pub streams: AtomicU64,
}

/// The `test.Echo` service.
#[derive(Clone, Debug)]
pub struct EchoServer {
    name: Arc<str>,
    seen: Arc<Seen>,
}

impl EchoServer {
    pub fn new(name: &str) -> (Self, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        (Self { name: name.into(), seen: Arc::clone(&seen) }, seen)
    }
}

impl NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

struct EchoMethod(EchoServer);

impl UnaryService<EchoRequest> for EchoMethod {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move {
            server.seen.echo_entered.notify_one();
            let request_context = request.extensions().get::<lifecycle_grpc::RequestContext>().cloned();
            let EchoRequest { text, delay_ms } = request.into_inner();
            match text.as_str() {
                "panic" => panic!("handler bug"),
                "forever" => std::future::pending::<()>().await,
                // Whether the server's signals reach the handler through the request.
                "context" => {
                    let reached = request_context.is_some_and(|context| !context.is_going_away());
                    let text = if reached { "context reached" } else { "no context" }.to_owned();
                    return Ok(Response::new(EchoReply { text, server: server.name.to_string() }));
                }
                _ => {}
            }
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            server.seen.echoes.fetch_add(1, Ordering::AcqRel);
            Ok(Response::new(EchoReply { text, server: server.name.to_string() }))
        })
    }
}

struct TicksMethod(EchoServer);

impl ServerStreamingService<TicksRequest> for TicksMethod {
    type Response = Tick;
    type ResponseStream = BoxStream<Tick>;
    type Future = BoxFuture<Response<BoxStream<Tick>>, Status>;

    fn call(&mut self, request: Request<TicksRequest>) -> Self::Future {
        let seen = Arc::clone(&self.0.seen);
        Box::pin(async move {
            seen.streams.fetch_add(1, Ordering::AcqRel);
            let TicksRequest { count, interval_ms, panic_at } = request.into_inner();
            let interval = Duration::from_millis(interval_ms);
            let ticks = futures_util::stream::unfold(1, move |n| async move {
                if n > count {
                    return None;
                }
                if n > 1 {
                    tokio::time::sleep(interval).await;
                }
                // After the pause, in which the ticks before were sent.
                assert!(n != panic_at, "stream bug at tick {n}");
                Some((Ok(Tick { n }), n + 1))
            });
            Ok(Response::new(ticks.boxed() as BoxStream<Tick>))
        })
    }
}

impl Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                "/test.Echo/Echo" => {
                    Grpc::new(ProstCodec::default()).unary(EchoMethod(server), request).await
                }
                "/test.Echo/Ticks" => {
                    Grpc::new(ProstCodec::default()).server_streaming(TicksMethod(server), request).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A client of `test.Echo` over one channel (one connection, made again when it closes).
#[derive(Clone, Debug)]
pub struct EchoClient {
    grpc: lifecycle_grpc::tonic::client::Grpc<Channel>,
}

impl EchoClient {
    pub fn channel(address: SocketAddr) -> Channel {
        Endpoint::from_shared(format!("http://{address}")).unwrap().connect_lazy()
    }

    pub fn new(channel: Channel) -> Self {
        Self { grpc: lifecycle_grpc::tonic::client::Grpc::new(channel) }
    }

    pub fn to(address: SocketAddr) -> Self {
        Self::new(Self::channel(address))
    }

    pub async fn echo(&mut self, text: &str, delay_ms: u64) -> Result<EchoReply, Status> {
        self.grpc.ready().await.map_err(|error| Status::from_error(error.into()))?;
        let path = http::uri::PathAndQuery::from_static("/test.Echo/Echo");
        let request = Request::new(EchoRequest { text: text.to_owned(), delay_ms });
        Ok(self.grpc.unary(request, path, ProstCodec::default()).await?.into_inner())
    }

    /// `count` ticks `interval_ms` apart, with a deadline the server is told (`grpc-timeout`).
    /// The channel enforces it only until the response's headers, so the stream's end is the
    /// server's.
    pub async fn ticks_within(
        &mut self,
        count: u32,
        interval_ms: u64,
        deadline: Duration,
    ) -> Result<Streaming<Tick>, Status> {
        self.grpc.ready().await.map_err(|error| Status::from_error(error.into()))?;
        let path = http::uri::PathAndQuery::from_static("/test.Echo/Ticks");
        let mut request = Request::new(TicksRequest { count, interval_ms, panic_at: 0 });
        request.set_timeout(deadline);
        Ok(self.grpc.server_streaming(request, path, ProstCodec::default()).await?.into_inner())
    }

    /// `Echo` sent by a bare HTTP/2 client with `grpc-timeout: <grpc_timeout>`: unlike a tonic
    /// channel, which also enforces the deadline it sends (and so races the server's), it waits
    /// for the server's answer. Returns the `grpc-status` the server answered with.
    pub async fn echo_raw(address: SocketAddr, text: &str, grpc_timeout: &str) -> Option<String> {
        use http_body_util::{BodyExt, Full};
        use prost::Message as _;

        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let message = EchoRequest { text: text.to_owned(), delay_ms: 0 }.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&message);
        let request = http::Request::post(format!("http://{address}/test.Echo/Echo"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", grpc_timeout)
            .body(Full::new(hyper::body::Bytes::from(frame)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let in_headers = parts.headers.get("grpc-status").map(|value| value.to_str().unwrap().to_owned());
        let trailers = body.collect().await.unwrap().trailers().cloned();
        in_headers.or_else(|| trailers?.get("grpc-status").map(|value| value.to_str().unwrap().to_owned()))
    }

    pub async fn ticks(
        &mut self,
        count: u32,
        interval_ms: u64,
        panic_at: u32,
    ) -> Result<Streaming<Tick>, Status> {
        self.grpc.ready().await.map_err(|error| Status::from_error(error.into()))?;
        let path = http::uri::PathAndQuery::from_static("/test.Echo/Ticks");
        let request = Request::new(TicksRequest { count, interval_ms, panic_at });
        Ok(self.grpc.server_streaming(request, path, ProstCodec::default()).await?.into_inner())
    }
}
