//! What every request goes through and carries: the service hyper calls for each request of a
//! connection, which gives the request its [`RequestContext`] and wraps the router's response in
//! one future ([`Served`]): counted in flight (on the server and on its connection), a panic
//! turned into a 500, the request timeout, and `Connection: close` while draining.
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

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
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

/// What a handler can reach through `Extension<RequestContext>`: the stop's signals and the
/// server's task set. One value per connection, shared by its requests (a request costs one
/// reference count, not a token of its own).
#[derive(Clone, Debug)]
pub struct RequestContext(Arc<ConnectionContext>);

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

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.context.clone());
        let route = (request.method().clone(), request.uri().path_and_query().cloned(), request.version());
        // Routing runs here, in axum's code; the route's own services (the user's layers and
        // the handler) run when the future is polled, inside `Served`'s panic catch. Axum's
        // router is always ready, and `call` needs it by `&mut`: a clone is one reference count.
        let response = tower_service::Service::call(&mut self.router.clone(), request);
        Served::new(response, &self.requests, route)
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
        requests: &Arc<Requests>,
        (method, path, version): (Method, Option<PathAndQuery>, Version),
    ) -> Self {
        Self {
            response: CatchUnwind::new(response),
            limit: requests.timeout.map(|limit| Box::pin(tokio::time::sleep(limit))),
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
        let polled = this.response.poll(cx);
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
