//! A handler that panics answers `500 Internal Server Error`; its connection and the service
//! carry on. Without this, a panic in a handler served over HTTP/1 unwinds through the
//! connection's task (hyper polls the handler inside the connection), which the task set then
//! reports as a failure of the whole server component.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Method, Response, StatusCode, Uri};
use lifecycle_core::{CatchUnwind, ComponentId};

use crate::server::Counters;

/// Awaits a request's response, turning a panic while polling it into a 500 (logged once, with
/// the route, and counted). The route is kept as the request's own method and URI (clones of
/// shared buffers), so a request that does not panic pays no allocation for it.
pub(crate) async fn catch_panic<F>(
    response: F,
    method: Method,
    uri: Uri,
    component: &ComponentId,
    counters: &Counters,
) -> Result<Response<Body>, Infallible>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    match CatchUnwind::new(response).await {
        Ok(response) => response,
        Err(panic) => {
            counters.panicked.fetch_add(1, Ordering::AcqRel);
            let path = uri.path();
            tracing::error!(component = %component, %method, %path, %panic, "request handler panicked; answered 500");
            let mut response = Response::new(Body::from("internal error\n"));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            Ok(response)
        }
    }
}
