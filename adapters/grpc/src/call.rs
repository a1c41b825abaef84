//! One gRPC call through the server: a handler's panic becomes `INTERNAL` for that call alone;
//! a call still running at its client's deadline (`grpc-timeout`) ends with `DEADLINE_EXCEEDED`,
//! its handler cancelled; and a response stream still open when the stop says so ends with
//! `UNAVAILABLE` in its trailers, a status clients retry, rather than with a reset stream.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use lifecycle_core::{CatchUnwind, ComponentId, panic_message};
use lifecycle_http::RequestContext;
use tonic::Status;
use tonic::body::Body;

/// Call counts, for the report's note.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) in_flight: AtomicU64,
    /// Calls that ended with their handler's own status (success or error).
    pub(crate) finished: AtomicU64,
    /// Response streams ended with `UNAVAILABLE` at the soft deadline.
    pub(crate) ended_unavailable: AtomicU64,
    /// Health watches ended with `UNAVAILABLE` when the stop began.
    pub(crate) watches_ended: AtomicU64,
    /// Calls whose handler panicked (answered `INTERNAL`).
    pub(crate) panicked: AtomicU64,
    /// Calls still running at their client's deadline (ended with `DEADLINE_EXCEEDED`).
    pub(crate) deadline_exceeded: AtomicU64,
    /// Calls dropped before they had a status: reset by their client, or cut with their
    /// connection at the hard deadline.
    pub(crate) dropped: AtomicU64,
}

/// What ends a response stream that is still open during the stop.
#[derive(Clone, Copy, Debug)]
pub(crate) enum EndsAt {
    /// The soft deadline: the application's streams.
    SoftDeadline,
    /// The start of the stop: health watches, which have said `NOT_SERVING` already and would
    /// otherwise hold the stop until the soft deadline.
    Stop,
}

/// A service of the application (or the health service), with the server's per-call handling
/// around it.
#[derive(Clone, Debug)]
pub(crate) struct Call<S> {
    inner: S,
    component: ComponentId,
    counters: Arc<Counters>,
    ends_at: EndsAt,
}

impl<S> Call<S> {
    pub(crate) fn new(inner: S, component: ComponentId, counters: Arc<Counters>, ends_at: EndsAt) -> Self {
        Self { inner, component, counters, ends_at }
    }
}

impl<S> tower_service::Service<Request<axum::body::Body>> for Call<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<CallBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<CallBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<axum::body::Body>) -> Self::Future {
        // The clone that was made ready goes with this call (tower's rule); a fresh clone stays.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let (component, ends_at) = (self.component.clone(), self.ends_at);
        let mut guard = InFlight::begin(&self.counters);
        // The stop's signals, from the HTTP server polling this call (tower's `Oneshot` in the
        // router's route calls this service in its first poll). Put in the request's extensions
        // too, where a tonic handler (which no axum extractor reaches) finds it.
        let context = RequestContext::current();
        if let Some(context) = &context {
            request.extensions_mut().insert(context.clone());
        }
        let uri = request.uri().clone();
        // One too far off to represent is no deadline.
        let deadline = client_deadline(request.headers())
            .and_then(|after| tokio::time::Instant::now().checked_add(after));
        Box::pin(async move {
            // The call inside the future: a panic in it is caught with the handler's.
            let response = CatchUnwind::new(async move { inner.call(request.map(Body::new)).await });
            let response = match deadline {
                None => response.await,
                // Dropping the handler at the deadline cancels whatever it awaits.
                Some(deadline) => match tokio::time::timeout_at(deadline, response).await {
                    Ok(response) => response,
                    Err(_) => {
                        guard.ended = Some(CallEnd::DeadlineExceeded);
                        let answer = deadline_exceeded().into_http();
                        return Ok(answer.map(|body| CallBody::new(body, None, ends_at, None, guard)));
                    }
                },
            };
            let response = match response {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(panic) => {
                    guard.panicked(&component, &uri, &panic);
                    return Ok(internal().map(|body| CallBody::new(body, None, ends_at, None, guard)));
                }
            };
            Ok(response.map(|body| CallBody::new(body, context, ends_at, deadline, guard)))
        })
    }
}

/// The answer to a call whose handler panicked: a trailers-only `INTERNAL`.
fn internal() -> Response<Body> {
    Status::internal("the handler failed").into_http()
}

fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("the call's deadline passed")
}

/// The client's deadline for the call: its `grpc-timeout` header (at most 8 digits and a unit,
/// `H`ours, `M`inutes, `S`econds, `m`illi-, `u`micro- or `n`anoseconds). A malformed one is
/// ignored, as gRPC servers do.
fn client_deadline(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(value * 3600),
        'M' => Duration::from_secs(value * 60),
        'S' => Duration::from_secs(value),
        'm' => Duration::from_millis(value),
        'u' => Duration::from_micros(value),
        'n' => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Counts a call in flight from its request until its response body is done or dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    counters: Arc<Counters>,
    /// How the call ended, once it has.
    ended: Option<CallEnd>,
}

#[derive(Clone, Copy, Debug)]
enum CallEnd {
    Finished,
    Unavailable,
    WatchClosed,
    Panicked,
    DeadlineExceeded,
}

impl InFlight {
    fn begin(counters: &Arc<Counters>) -> Self {
        counters.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { counters: Arc::clone(counters), ended: None }
    }

    fn panicked(&mut self, component: &ComponentId, uri: &Uri, panic: &str) {
        self.ended = Some(CallEnd::Panicked);
        let method = uri.path();
        tracing::error!(component = %component, %method, %panic, "gRPC handler panicked; answered INTERNAL");
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let counter = match self.ended {
            Some(CallEnd::Finished) => &self.counters.finished,
            Some(CallEnd::Unavailable) => &self.counters.ended_unavailable,
            Some(CallEnd::WatchClosed) => &self.counters.watches_ended,
            Some(CallEnd::Panicked) => &self.counters.panicked,
            Some(CallEnd::DeadlineExceeded) => &self.counters.deadline_exceeded,
            None => &self.counters.dropped,
        };
        counter.fetch_add(1, Ordering::AcqRel);
        self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response body that ends with a status of the server's when the stop (or a panic) ends it.
pub(crate) struct CallBody {
    inner: Body,
    context: Option<RequestContext>,
    ends_at: EndsAt,
    /// The stop's signal, made only once the body has had to wait (a unary answer never does).
    wait: Option<Wait>,
    /// The client's deadline, made into a timer only once the body has had to wait.
    deadline: Option<tokio::time::Instant>,
    deadline_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    guard: InFlight,
    /// The body sent its last frame.
    done: bool,
}

impl CallBody {
    fn new(
        inner: Body,
        context: Option<RequestContext>,
        ends_at: EndsAt,
        deadline: Option<tokio::time::Instant>,
        mut guard: InFlight,
    ) -> Self {
        // A trailers-only answer (an error status, or the `INTERNAL` of a panic) has no body to poll.
        if inner.is_end_stream() && guard.ended.is_none() {
            guard.ended = Some(CallEnd::Finished);
        }
        Self { inner, context, ends_at, wait: None, deadline, deadline_timer: None, guard, done: false }
    }

    /// Whether the stop's signal for this stream has come.
    fn stop_says_end(&self) -> bool {
        self.context.as_ref().is_some_and(|context| match self.ends_at {
            EndsAt::SoftDeadline => context.is_cancelled(),
            EndsAt::Stop => context.is_going_away(),
        })
    }

    /// The last frame: trailers with `status`.
    fn end_with(
        &mut self,
        status: &Status,
        ended: CallEnd,
    ) -> Poll<Option<Result<Frame<axum::body::Bytes>, Status>>> {
        self.done = true;
        self.wait = None;
        self.deadline_timer = None;
        self.guard.ended = Some(ended);
        let mut trailers = HeaderMap::new();
        match status.add_header(&mut trailers) {
            Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            // Not reached with the fixed messages used here; the stream is then reset instead.
            Err(status) => Poll::Ready(Some(Err(status))),
        }
    }

    fn end_for_stop(&mut self) -> Poll<Option<Result<Frame<axum::body::Bytes>, Status>>> {
        match self.ends_at {
            EndsAt::SoftDeadline => {
                self.end_with(&Status::unavailable("the server is shutting down"), CallEnd::Unavailable)
            }
            EndsAt::Stop => {
                self.end_with(&Status::unavailable("the server is shutting down"), CallEnd::WatchClosed)
            }
        }
    }
}

impl http_body::Body for CallBody {
    type Data = axum::body::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // Checked first: a stream that always has a message ready would never be ended otherwise.
        if this.stop_says_end() {
            return this.end_for_stop();
        }
        if this.deadline.is_some_and(|deadline| deadline <= tokio::time::Instant::now()) {
            return this.end_with(&deadline_exceeded(), CallEnd::DeadlineExceeded);
        }
        // Unwind safety: after a panic the inner body is never polled again, only dropped.
        let polled = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.inner).poll_frame(cx)));
        match polled {
            Err(payload) => {
                let panic = panic_message(payload.as_ref());
                tracing::error!(%panic, "gRPC response stream panicked; ended with INTERNAL");
                this.end_with(&Status::internal("the handler failed"), CallEnd::Panicked)
            }
            Ok(Poll::Ready(Some(Ok(frame)))) => {
                if frame.is_trailers() {
                    this.done = true;
                    this.guard.ended = Some(CallEnd::Finished);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Ok(Poll::Ready(None)) => {
                this.done = true;
                this.guard.ended = Some(CallEnd::Finished);
                Poll::Ready(None)
            }
            Ok(Poll::Ready(Some(Err(status)))) => {
                this.done = true;
                Poll::Ready(Some(Err(status)))
            }
            Ok(Poll::Pending) => {
                if let Some(deadline) = this.deadline {
                    let timer = this
                        .deadline_timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return this.end_with(&deadline_exceeded(), CallEnd::DeadlineExceeded);
                    }
                }
                let Some(context) = &this.context else { return Poll::Pending };
                let ends_at = this.ends_at;
                let wait = this.wait.get_or_insert_with(|| {
                    let context = context.clone();
                    Box::pin(async move {
                        match ends_at {
                            EndsAt::SoftDeadline => context.cancelled().await,
                            EndsAt::Stop => context.going_away().await,
                        }
                    })
                });
                match wait.as_mut().poll(cx) {
                    Poll::Ready(()) => this.end_for_stop(),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The server's trailers may end the body before the inner one would have.
        if self.done { SizeHint::with_exact(0) } else { SizeHint::default() }
    }
}

impl std::fmt::Debug for CallBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallBody").field("done", &self.done).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("a header value"));
        client_deadline(&headers)
    }

    #[test]
    fn grpc_timeout_is_read_in_each_unit_and_a_malformed_one_is_ignored() {
        assert_eq!(deadline("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(deadline("3M"), Some(Duration::from_secs(180)));
        assert_eq!(deadline("10S"), Some(Duration::from_secs(10)));
        assert_eq!(deadline("250m"), Some(Duration::from_millis(250)));
        assert_eq!(deadline("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(deadline("5n"), Some(Duration::from_nanos(5)));
        for malformed in ["", "S", "100000000S", "10s", "-1S", "1.5S", "10"] {
            assert_eq!(deadline(malformed), None, "{malformed:?}");
        }
        assert_eq!(client_deadline(&HeaderMap::new()), None);
    }
}
