//! What every request goes through and carries: the service hyper calls for each request of a
//! connection, which wraps the router's response in one future ([`Served`]): counted in flight
//! (on the server and on its connection), a panic turned into a 500, the request timeout,
//! `Connection: close` while draining, and the request's [`RequestContext`] within reach of the
//! handler while it is polled.
//!
//! A handler that panics answers `500 Internal Server Error`; its connection and the service
//! carry on. Without this, a panic in a handler served over HTTP/1 unwinds through the
//! connection's task (hyper polls the handler inside the connection), which the task set then
//! reports as a failure of the whole server component.
//!
//! One hand-written service and future rather than a `service_fn` and `async` blocks around the
//! router's: hyper keeps each request's future in the connection's state, and each layer made it
//! larger and moved it once more (callgrind on `http_steady`: about 650 instructions per request
//! in `memcpy` alone), and the request timeout's timer took room in every request's future, used
//! or not.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use axum::response::IntoResponse;
use axum::routing::future::RouteFuture;
use hyper::body::Incoming;
use lifecycle_core::{CancellationToken, CatchUnwind, ComponentId, Tasks};
use tokio::time::Sleep;

use crate::activity::Activity;
use crate::server::{Place, Shared};
use crate::websocket::Sockets;

/// What a handler can reach of the server it runs in: the stop's signals and the server's task
/// set. One value per connection, shared by its requests (a request costs one reference count,
/// not a token of its own).
///
/// A handler takes it as an extractor (`async fn report(context: RequestContext)`); other code
/// running in a request (a tower layer, a tonic service) calls [`RequestContext::current`]. It
/// is within reach while the server polls the request's future, not in the request's
/// extensions: an extension cost every request an allocation and a map entry, about a point of
/// CPU against plain axum (docs/BENCHMARKS.md). A layer that moves the request's future to
/// another task (spawns it) takes it out of reach there: extract it before.
#[derive(Clone, Debug)]
pub struct RequestContext(Arc<ConnectionContext>);

thread_local! {
    /// The context of the request whose future this thread is polling: set by [`Served::poll`]
    /// around the router's future and put back after, so nested polls see their own.
    static CURRENT: Cell<Option<RequestContext>> = const { Cell::new(None) };
}

#[derive(Debug)]
struct ConnectionContext {
    server: Arc<RequestShared>,
    /// The connection's place under the limit, given back when the last clone of the context
    /// is dropped, unless a WebSocket took it over.
    place: Mutex<Option<Place>>,
}

/// What the requests of every connection of one run share.
#[derive(Debug)]
pub(crate) struct RequestShared {
    /// Cancelled at the soft deadline.
    pub(crate) cancel: CancellationToken,
    /// The task set, the going-away signal and what WebSockets count.
    pub(crate) sockets: Sockets,
}

impl RequestContext {
    /// The context of the request being served on this thread: `Some` in a handler's future (or
    /// a layer's) while `HttpServer` polls it, `None` elsewhere (outside a server, or on a task
    /// the request's future was not polled on).
    pub fn current() -> Option<Self> {
        CURRENT
            .try_with(|current| {
                let context = current.take();
                let copy = context.clone();
                current.set(context);
                copy
            })
            .ok()
            .flatten()
    }

    /// Resolves at the server's soft deadline during shutdown: a long handler should finish
    /// early.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + '_ {
        self.0.server.cancel.cancelled()
    }

    /// Whether the soft deadline has passed.
    pub fn is_cancelled(&self) -> bool {
        self.0.server.cancel.is_cancelled()
    }

    /// A token cancelled at the soft deadline, for an API that takes one. A child: cancelling
    /// it cancels nothing else.
    pub fn cancel_token(&self) -> CancellationToken {
        self.0.server.cancel.child_token()
    }

    /// Resolves when the server stops (or drains, with
    /// [`HttpServer::go_away_at_drain`](crate::HttpServer::go_away_at_drain)): a long-lived
    /// response (server-sent events, a long poll) should end now, cleanly, so its client
    /// reconnects elsewhere. WebSockets are closed with 1001 at the same moment.
    pub fn going_away(&self) -> impl Future<Output = ()> + Send + '_ {
        self.0.server.sockets.going_away.cancelled()
    }

    /// Whether the server has begun to stop (or drain, with `go_away_at_drain`).
    pub fn is_going_away(&self) -> bool {
        self.0.server.sockets.going_away.is_cancelled()
    }

    /// The server's task set: tasks a handler spawns here are waited for at stop.
    pub fn tasks(&self) -> &Tasks {
        &self.0.server.sockets.tasks
    }

    pub(crate) fn sockets(&self) -> &Sockets {
        &self.0.server.sockets
    }

    /// The connection's place under the limit, for whoever keeps its socket open from now on.
    pub(crate) fn take_place(&self) -> Option<Place> {
        self.0.place.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// The context of one connection's requests, holding its place under the limit.
    pub(crate) fn for_connection(server: &Arc<RequestShared>, place: Place) -> Self {
        Self(Arc::new(ConnectionContext { server: Arc::clone(server), place: Mutex::new(Some(place)) }))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = NotServedByHttpServer;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::current().ok_or(NotServedByHttpServer)
    }
}

/// The rejection of a [`RequestContext`] extractor in a request `HttpServer` is not polling: a
/// router served by something else, or a layer that spawned the request's future onto another
/// task. Answers `500 Internal Server Error` and says so.
#[derive(Debug, Clone, Copy)]
pub struct NotServedByHttpServer;

impl std::fmt::Display for NotServedByHttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "no RequestContext: the request is not being polled by lifecycle_http::HttpServer (a router served \
             by something else, or a layer that spawned the request's future onto another task)",
        )
    }
}

impl std::error::Error for NotServedByHttpServer {}

impl IntoResponse for NotServedByHttpServer {
    fn into_response(self) -> Response<Body> {
        tracing::error!("{self}");
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{self}\n")).into_response()
    }
}

/// Puts a request's context within reach of the code its future runs ([`RequestContext::current`])
/// for one poll, and back into the request's future after, even if the poll unwinds.
struct Entered<'a> {
    slot: &'a mut Option<RequestContext>,
    outer: Option<RequestContext>,
}

impl<'a> Entered<'a> {
    fn enter(slot: &'a mut Option<RequestContext>) -> Self {
        // `try_with`: on a thread whose locals are being torn down, the poll goes on without.
        let outer = CURRENT.try_with(|current| current.replace(slot.take())).ok().flatten();
        Self { slot, outer }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|current| *self.slot = current.replace(self.outer.take()));
    }
}

/// What a connection's requests share: one reference count per request.
pub(crate) struct Requests {
    pub(crate) shared: Arc<Shared>,
    pub(crate) component: ComponentId,
    pub(crate) timeout: Option<Duration>,
    pub(crate) activity: Activity,
}

/// The service hyper calls for each request of one connection.
pub(crate) struct RequestService {
    router: Router,
    context: RequestContext,
    requests: Arc<Requests>,
}

impl RequestService {
    pub(crate) fn new(router: Router, context: RequestContext, requests: Arc<Requests>) -> Self {
        Self { router, context, requests }
    }
}

impl hyper::service::Service<Request<Incoming>> for RequestService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Served<RouteFuture<Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let route = (request.method().clone(), request.uri().path_and_query().cloned(), request.version());
        // Routing runs here, in axum's code; the route's own services (the user's layers and
        // the handler) run when the future is polled, inside `Served`'s panic catch. Axum's
        // router is always ready, and `call` needs it by `&mut`: a clone is one reference count.
        let response = tower_service::Service::call(&mut self.router.clone(), request);
        Served::new(response, &self.context, &self.requests, route)
    }
}

pin_project_lite::pin_project! {
    /// A request's response, from the router's future `F`. Counted out, on the server and on its
    /// connection, when dropped: hyper drops it as soon as it is ready.
    pub(crate) struct Served<F> {
        #[pin]
        response: CatchUnwind<F>,
        // Boxed, and only with a request timeout: no timer, and no room for one, without.
        limit: Option<Pin<Box<Sleep>>>,
        // Lent to `CURRENT` while the router's future is polled.
        context: Option<RequestContext>,
        // For the log line of a panic: clones of the request's shared buffers, no allocation.
        // Not the whole `Uri`: it would make every request's future 48 bytes larger.
        method: Method,
        path: Option<PathAndQuery>,
        http1: bool,
        counted: InFlight,
    }
}

impl<F> Served<F> {
    /// Counts the request in, on the server and on its connection. Inlined, so that the
    /// router's future is built in place rather than moved in (a `memcpy` of the request each
    /// time).
    #[inline(always)]
    fn new(
        response: F,
        context: &RequestContext,
        requests: &Arc<Requests>,
        (method, path, version): (Method, Option<PathAndQuery>, Version),
    ) -> Self {
        Self {
            response: CatchUnwind::new(response),
            limit: requests.timeout.map(|limit| Box::pin(tokio::time::sleep(limit))),
            context: Some(context.clone()),
            method,
            path,
            http1: version <= Version::HTTP_11,
            counted: InFlight::begin(Arc::clone(requests), version),
        }
    }
}

impl<F> Future for Served<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    /// Once it is ready, hyper drops it, and with it the handler: at the request timeout, that
    /// cancels whatever the handler awaits.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let requests = &this.counted.0;
        let counters = &requests.shared.counters;
        let polled = {
            let _entered = Entered::enter(this.context);
            this.response.poll(cx)
        };
        let mut response = match polled {
            Poll::Ready(Ok(Ok(response))) => response,
            Poll::Ready(Ok(Err(never))) => match never {},
            Poll::Ready(Err(panic)) => {
                counters.panicked.fetch_add(1, Ordering::AcqRel);
                let (method, path) = (&this.method, this.path.as_ref().map_or("/", PathAndQuery::path));
                tracing::error!(component = %requests.component, %method, %path, %panic, "request handler panicked; answered 500");
                let mut response = Response::new(Body::from("internal error\n"));
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                response
            }
            Poll::Pending => {
                let Some(limit) = this.limit else { return Poll::Pending };
                ready!(limit.as_mut().poll(cx));
                counters.timed_out.fetch_add(1, Ordering::AcqRel);
                (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response()
            }
        };
        // HTTP/2 has no `Connection` header: a GOAWAY does that job at stop. A protocol switch
        // (a WebSocket) keeps its `Connection: upgrade`.
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if *this.http1 && !switching && requests.shared.draining.load(Ordering::Acquire) {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}

/// Counts a request in, on the server and on its connection, and out when its response is ready
/// or it is dropped.
struct InFlight(Arc<Requests>);

impl InFlight {
    fn begin(requests: Arc<Requests>, version: Version) -> Self {
        requests.shared.counters.started.fetch_add(1, Ordering::AcqRel);
        requests.activity.begin(version);
        Self(requests)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.end();
        self.0.shared.counters.completed.fetch_add(1, Ordering::AcqRel);
    }
}
