//! WebSockets served as tasks of the HTTP server: the stop waits for them, each hears "going
//! away" (close code 1001) when the server stops (or drains, if set), and the report counts them.
//!
//! axum's own `WebSocketUpgrade` runs each socket on a plain `tokio::spawn`, which no stop waits
//! for, so its sockets are cut without a close frame when the process exits. This extractor runs
//! the socket in the server's task set, and keeps the socket itself: the handler talks through
//! [`WebSocket::recv`] and [`WebSocket::send`], so the server can always close it properly,
//! whatever the handler is doing at the time.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use lifecycle_core::{CancellationToken, CatchUnwind, Tasks};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

pub use tokio_tungstenite::tungstenite::Message;

use crate::request::RequestContext;
use crate::server::Counters;

/// How long the server waits for a client to answer its close frame before it lets go.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Messages buffered each way between the socket and its handler.
const BUFFERED: usize = 32;

/// What the server gives each WebSocket: where it runs, when to say goodbye, what to count.
#[derive(Clone, Debug)]
pub(crate) struct Sockets {
    pub(crate) tasks: Tasks,
    /// Cancelled when the server stops (or drains, if set): each socket is closed with 1001.
    pub(crate) going_away: CancellationToken,
    /// Cancelled at the hard deadline: what is left is dropped.
    pub(crate) cut: CancellationToken,
    pub(crate) counters: Arc<Counters>,
}

/// An extractor for a WebSocket handshake (HTTP/1.1 `Upgrade: websocket`) on a router served by
/// [`HttpServer`](crate::HttpServer); answer with [`on_upgrade`](WebSocketUpgrade::on_upgrade).
///
/// ```no_run
/// use lifecycle_http::axum::{Router, response::Response, routing::get};
/// use lifecycle_http::websocket::{Message, WebSocket, WebSocketUpgrade};
///
/// async fn echo(upgrade: WebSocketUpgrade) -> Response {
///     upgrade.on_upgrade(|mut socket: WebSocket| async move {
///         // `None` once the client closed, or the server went away (close 1001 sent).
///         while let Some(message) = socket.recv().await {
///             if let Message::Text(text) = message {
///                 if socket.send(Message::Text(text)).await.is_err() {
///                     break;
///                 }
///             }
///         }
///     })
/// }
///
/// let app: Router = Router::new().route("/echo", get(echo));
/// ```
#[derive(Debug)]
pub struct WebSocketUpgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
    /// The request's context: the server's task set and signals, and the connection's place
    /// under its connection limit, which the socket keeps while it lives.
    context: RequestContext,
}

/// Why a request is no WebSocket handshake this server can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebSocketRejection {
    /// The method is not `GET`.
    NotGet,
    /// `Connection` does not list `upgrade`, or `Upgrade` is not `websocket`.
    NotAnUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing.
    NoKey,
    /// The connection cannot be upgraded: HTTP/2 (WebSockets over HTTP/2 are not supported), or
    /// the request is not polled by [`HttpServer`](crate::HttpServer) (a router served by
    /// something else, or a layer that spawned the request's future onto another task).
    NotUpgradable,
}

impl std::fmt::Display for WebSocketRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotGet => "a WebSocket handshake is a GET request",
            Self::NotAnUpgrade => "a WebSocket handshake needs `Connection: upgrade` and `Upgrade: websocket`",
            Self::UnsupportedVersion => "`Sec-WebSocket-Version` must be 13",
            Self::NoKey => "`Sec-WebSocket-Key` is missing",
            Self::NotUpgradable => {
                "this connection cannot be upgraded to a WebSocket: use HTTP/1.1, on a router served by lifecycle_http::HttpServer"
            }
        })
    }
}

impl std::error::Error for WebSocketRejection {}

impl IntoResponse for WebSocketRejection {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedVersion | Self::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            Self::NotAnUpgrade | Self::NoKey => StatusCode::BAD_REQUEST,
        };
        let mut response = (status, self.to_string()).into_response();
        if self == Self::UnsupportedVersion {
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

/// Whether header `name` lists `token` (comma-separated, any case).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.split(',').any(|item| item.trim().eq_ignore_ascii_case(token)))
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = WebSocketRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(WebSocketRejection::NotGet);
        }
        let headers = &parts.headers;
        if !lists(headers, header::CONNECTION, "upgrade") || !lists(headers, header::UPGRADE, "websocket") {
            return Err(WebSocketRejection::NotAnUpgrade);
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|version| version != "13") {
            return Err(WebSocketRejection::UnsupportedVersion);
        }
        let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or(WebSocketRejection::NoKey)?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| WebSocketRejection::NoKey)?;
        let context = RequestContext::current().ok_or(WebSocketRejection::NotUpgradable)?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(WebSocketRejection::NotUpgradable)?;
        Ok(Self { on_upgrade, accept, context })
    }
}

impl WebSocketUpgrade {
    /// Answers the handshake (101 Switching Protocols) and serves the socket with `handler`, as
    /// a task of the server: the stop waits for it (up to the soft deadline), and closes the
    /// socket with 1001 (going away) first. When `handler` returns, the socket is closed with
    /// 1000 (normal).
    pub fn on_upgrade<F, Fut>(self, handler: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self { on_upgrade, accept, context } = self;
        let place = context.take_place();
        let sockets = context.sockets().clone();
        drop(context);
        sockets.tasks.clone().spawn("websocket", async move {
            sockets.serve(on_upgrade, handler).await;
            drop(place);
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        response
    }
}

/// A WebSocket as its handler sees it. The server owns the connection: it answers pings,
/// forwards messages both ways, and closes it.
#[derive(Debug)]
pub struct WebSocket {
    inbox: mpsc::Receiver<Message>,
    outbox: mpsc::Sender<Message>,
    going_away: CancellationToken,
}

/// The socket is closed: the client closed it, the connection broke, or the server went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketClosed;

impl std::fmt::Display for SocketClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the WebSocket is closed")
    }
}

impl std::error::Error for SocketClosed {}

impl WebSocket {
    /// The next message from the client (text, binary, ping or pong); `None` once the socket
    /// closed: by the client, by a broken connection, or by the server going away.
    pub async fn recv(&mut self) -> Option<Message> {
        self.inbox.recv().await
    }

    /// Sends `message` to the client; fails once the socket closed. A close message closes it
    /// with that frame.
    pub async fn send(&self, message: Message) -> Result<(), SocketClosed> {
        self.outbox.send(message).await.map_err(|_| SocketClosed)
    }

    /// Cancelled when the server says goodbye (close 1001): a handler waiting on something else
    /// (a feed) ends with it.
    pub fn going_away(&self) -> &CancellationToken {
        &self.going_away
    }
}

/// How the server's side of the conversation ended.
enum Ending {
    /// The client closed, or the connection broke: nothing more to say.
    Over,
    /// The handler is done (or sent its own close): close normally.
    HandlerDone(Option<CloseFrame>),
    /// The server stops: close with 1001.
    GoingAway,
}

/// Counts a socket open while it lives.
struct Open(Arc<Counters>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.websockets_open.fetch_sub(1, Ordering::AcqRel);
    }
}

type Stream = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

impl Sockets {
    async fn serve<F, Fut>(self, on_upgrade: OnUpgrade, handler: F)
    where
        F: FnOnce(WebSocket) -> Fut,
        Fut: Future<Output = ()>,
    {
        let upgraded = tokio::select! {
            upgraded = on_upgrade => match upgraded {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "WebSocket upgrade failed");
                    return;
                }
            },
            () = self.cut.cancelled() => return,
        };
        let stream = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        self.counters.websockets_open.fetch_add(1, Ordering::AcqRel);
        let _open = Open(Arc::clone(&self.counters));
        let (to_handler, inbox) = mpsc::channel(BUFFERED);
        let (outbox, from_handler) = mpsc::channel(BUFFERED);
        let socket = WebSocket { inbox, outbox, going_away: self.going_away.clone() };
        // A handler's panic is its socket's, not the server's: logged, counted, and the socket
        // closed with 1011 (internal error), like a request's 500.
        let panicked = AtomicBool::new(false);
        let handler = async {
            if let Err(panic) = CatchUnwind::new(async move { handler(socket).await }).await {
                self.counters.panicked.fetch_add(1, Ordering::AcqRel);
                tracing::error!(%panic, "WebSocket handler panicked; closing it with 1011");
                panicked.store(true, Ordering::Release);
            }
        };
        tokio::select! {
            _ = async { tokio::join!(handler, self.pump(stream, to_handler, from_handler, &panicked)) } => {}
            () = self.cut.cancelled() => {
                self.counters.websockets_cut.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Carries messages between the connection and the handler until one side ends, then
    /// closes the connection properly.
    async fn pump(
        &self,
        mut stream: Stream,
        to_handler: mpsc::Sender<Message>,
        mut from_handler: mpsc::Receiver<Message>,
        panicked: &AtomicBool,
    ) {
        let ending = loop {
            tokio::select! {
                biased;
                () = self.going_away.cancelled() => break Ending::GoingAway,
                outgoing = from_handler.recv() => match outgoing {
                    Some(Message::Close(frame)) => break Ending::HandlerDone(frame),
                    Some(message) => {
                        if stream.send(message).await.is_err() {
                            break Ending::Over;
                        }
                    }
                    None => break Ending::HandlerDone(None),
                },
                incoming = stream.next() => match incoming {
                    // The reply to the client's close goes out as the stream is read on.
                    Some(Ok(Message::Close(_))) => {
                        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, stream.next()).await;
                        break Ending::Over;
                    }
                    Some(Ok(message)) => {
                        // A handler that stopped reading does not hold up the goodbye.
                        tokio::select! {
                            _ = to_handler.send(message) => {}
                            () = self.going_away.cancelled() => break Ending::GoingAway,
                        }
                    }
                    Some(Err(_)) | None => break Ending::Over,
                },
            }
        };
        // The handler learns that the socket is closed: its `recv` returns `None`, `send` fails.
        drop(to_handler);
        from_handler.close();
        let frame = match ending {
            Ending::Over => return,
            Ending::HandlerDone(_) if panicked.load(Ordering::Acquire) => {
                CloseFrame { code: CloseCode::Error, reason: "internal error".into() }
            }
            Ending::HandlerDone(frame) => {
                frame.unwrap_or(CloseFrame { code: CloseCode::Normal, reason: "".into() })
            }
            Ending::GoingAway => CloseFrame { code: CloseCode::Away, reason: "server going away".into() },
        };
        let going_away = frame.code == CloseCode::Away;
        if stream.close(Some(frame)).await.is_ok() && going_away {
            self.counters.websockets_going_away.fetch_add(1, Ordering::AcqRel);
        }
        // The client answers with its own close; one that does not is let go.
        let _ =
            tokio::time::timeout(CLOSE_REPLY_WAIT, async { while let Some(Ok(_)) = stream.next().await {} })
                .await;
    }
}
