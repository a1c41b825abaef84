//! A handler that panics answers `500 Internal Server Error`; its connection and the service
//! carry on. Without this, a panic in a handler served over HTTP/1 unwinds through the
//! connection's task (hyper polls the handler inside the connection), which the task set then
//! reports as a failure of the whole server component.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Method, Response, StatusCode};
use lifecycle_core::ComponentId;

use crate::server::Counters;

/// A request's response future, with a panic while polling it turned into a 500.
pub(crate) struct CatchPanic<F> {
    inner: Pin<Box<F>>,
    /// Which request it is, for the one log line a panic gets.
    route: Option<(Method, String)>,
    component: ComponentId,
    counters: Arc<Counters>,
}

impl<F> CatchPanic<F> {
    pub(crate) fn new(
        inner: F,
        method: Method,
        path: String,
        component: ComponentId,
        counters: Arc<Counters>,
    ) -> Self {
        Self { inner: Box::pin(inner), route: Some((method, path)), component, counters }
    }
}

impl<F> Future for CatchPanic<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        // Unwind safety: after a panic the handler's future is dropped, never polled again.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                let panic = lifecycle_core::panic_message(payload.as_ref());
                let (method, path) = self.route.take().unwrap_or((Method::GET, String::new()));
                self.counters.panicked.fetch_add(1, Ordering::AcqRel);
                tracing::error!(component = %self.component, %method, %path, %panic, "request handler panicked; answered 500");
                let mut response = Response::new(Body::from("internal error\n"));
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                Poll::Ready(Ok(response))
            }
        }
    }
}
