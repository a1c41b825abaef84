//! What every request goes through, in one future around the router's: counted in flight (on
//! the server and on its connection), a panic turned into a 500, the request timeout, and
//! `Connection: close` while draining.
//!
//! A handler that panics answers `500 Internal Server Error`; its connection and the service
//! carry on. Without this, a panic in a handler served over HTTP/1 unwinds through the
//! connection's task (hyper polls the handler inside the connection), which the task set then
//! reports as a failure of the whole server component.
//!
//! One hand-written future rather than `async` blocks around the router's: hyper keeps each
//! request's future in the connection's state, and each `async` layer made it larger and moved
//! it once more (callgrind on `http_steady`: about 650 instructions per request in `memcpy`
//! alone), and the request timeout's timer took room in every request's future, used or not.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Response, StatusCode, Uri, header};
use axum::response::IntoResponse;
use lifecycle_core::{CatchUnwind, ComponentId};
use tokio::time::Sleep;

use crate::activity::Busy;
use crate::server::Shared;

/// What a connection's requests share: one reference count per request.
pub(crate) struct Requests {
    pub(crate) shared: Arc<Shared>,
    pub(crate) component: ComponentId,
    pub(crate) timeout: Option<Duration>,
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
        method: Method,
        uri: Uri,
        http1: bool,
        counted: InFlight,
        _busy: Busy,
    }
}

impl<F> Served<F> {
    /// Counts the request in; `busy` marks it on its connection. Inlined, so that the router's
    /// future is built in place rather than moved in (a `memcpy` of the request each time).
    #[inline(always)]
    pub(crate) fn new(
        response: F,
        requests: &Arc<Requests>,
        (method, uri, http1): (Method, Uri, bool),
        busy: Busy,
    ) -> Self {
        Self {
            response: CatchUnwind::new(response),
            limit: requests.timeout.map(|limit| Box::pin(tokio::time::sleep(limit))),
            method,
            uri,
            http1,
            counted: InFlight::begin(Arc::clone(requests)),
            _busy: busy,
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
                let (method, path) = (&this.method, this.uri.path());
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

/// Counts a request in, and out when its response is ready or it is dropped.
struct InFlight(Arc<Requests>);

impl InFlight {
    fn begin(requests: Arc<Requests>) -> Self {
        requests.shared.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(requests)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let counters = &self.0.shared.counters;
        counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        counters.completed.fetch_add(1, Ordering::AcqRel);
    }
}
