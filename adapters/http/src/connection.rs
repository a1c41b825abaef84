//! One client connection, from its accept to its close: served by hyper (HTTP/1 or HTTP/2, with
//! upgrades), closed when idle too long or when a request's head is late, and shut down
//! gracefully when the stop begins.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use lifecycle_core::{ComponentId, Tasks};

use crate::activity::{Activity, Watched};
use crate::request::{RequestContext, RequestService, Requests};
use crate::server::Shared;

/// How often a closing HTTP/1 connection with a request in flight looks again.
const BUSY_POLL: Duration = Duration::from_millis(20);

/// Spawns what hyper runs on its own (the streams of an HTTP/2 connection) into the server's
/// task set, instead of on a plain `tokio::spawn` that no stop would wait for.
#[derive(Clone)]
struct TaskSetExecutor(Tasks);

impl<F> hyper::rt::Executor<F> for TaskSetExecutor
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn("http2 stream", future);
    }
}

/// Sets on an accepted connection what it needs before it is served (`TCP_NODELAY`, when on).
pub(crate) fn prepare_accepted(stream: &tokio::net::TcpStream, nodelay: bool, component: &ComponentId) {
    if nodelay && let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(component = %component, %error, "cannot set TCP_NODELAY on a connection");
    }
}

/// The server's settings a connection needs.
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) idle_close_after: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) tcp_nodelay: bool,
}

/// One accepted connection, before it is served.
pub(crate) struct Connection {
    pub(crate) router: Router,
    /// What every request gets in its extensions, with the connection's place under the limit.
    pub(crate) context: RequestContext,
    pub(crate) component: ComponentId,
    pub(crate) shared: Arc<Shared>,
    pub(crate) settings: Settings,
}

impl Connection {
    /// The TLS handshake, bounded like the headers of a request: the stream, or `None` when the
    /// handshake failed (logged and counted) or the stop gave up on it.
    #[cfg(feature = "tls")]
    pub(crate) async fn tls_handshake(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        stream: tokio::net::TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
        let (component, shared, settings) = (&self.component, &self.shared, self.settings);
        let peer = stream.peer_addr().ok();
        // At stop, a connection still in its handshake has sent no request: it gets the time an
        // idle HTTP/1 connection gets, and no more than the soft deadline.
        let stop_gives_up = async {
            shared.closing.cancelled().await;
            tokio::select! {
                () = tokio::time::sleep(settings.idle_close_after) => {}
                () = shared.requests.cancelled() => {}
            }
        };
        tokio::select! {
            handshake = tokio::time::timeout(settings.header_read_timeout, acceptor.accept(stream)) => {
                match handshake {
                    Ok(Ok(stream)) => return Some(stream),
                    Ok(Err(error)) => {
                        tracing::debug!(component = %component, ?peer, %error, "TLS handshake failed");
                    }
                    Err(_) => {
                        let timeout = settings.header_read_timeout;
                        tracing::debug!(component = %component, ?peer, ?timeout, "TLS handshake timed out");
                    }
                }
                shared.counters.tls_handshakes_failed.fetch_add(1, Ordering::AcqRel);
                None
            }
            () = stop_gives_up => {
                tracing::debug!(component = %component, ?peer, "TLS handshake abandoned at stop");
                None
            }
        }
    }

    /// Serves the connection, plain or TLS, until the client closes it, it stays idle too long,
    /// or the stop closes it.
    pub(crate) async fn serve<S>(self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self { router, context, component, shared, settings } = self;
        // HTTP/2 streams run as tasks of the server's set: the stop waits for them.
        let executor = TaskSetExecutor(context.tasks().clone());
        let Settings { idle_close_after, header_read_timeout, idle_timeout, request_timeout, .. } = settings;
        let requests = Arc::new(Requests {
            shared: Arc::clone(&shared),
            component,
            timeout: request_timeout,
            activity: Activity::new(),
        });
        let activity = &requests.activity;
        let io = TokioIo::new(Watched::new(stream, Arc::clone(&requests)));
        // Everything a request goes through is in the one service hyper calls, rather than in
        // an axum middleware, which clones the router's service and boxes two futures per
        // request (7% of the throughput of a trivial route).
        let service = RequestService::new(router, context, Arc::clone(&requests));
        let mut builder = auto::Builder::new(executor);
        // The header-read timeout is `activity`'s, checked below: hyper's own would arm a timer
        // per request, and run it while a keep-alive connection waits (see `activity`).
        builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
        let connection = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        // A head past its timeout ends the connection (dropping it closes the socket), in every
        // phase below; the loops wake for it at least once per timeout.
        let head_late = || {
            let late = activity.head_deadline(header_read_timeout).is_some_and(|at| at <= Instant::now());
            if late {
                shared.counters.header_timeouts.fetch_add(1, Ordering::AcqRel);
            }
            late
        };
        let head_wake = || {
            activity
                .head_deadline(header_read_timeout)
                .unwrap_or_else(|| Instant::now() + header_read_timeout)
        };
        // Serving: closed when idle too long, until the stop begins.
        loop {
            let idle_at = activity.quiet_until(idle_timeout);
            let wake = idle_at.unwrap_or_else(|| Instant::now() + idle_timeout).min(head_wake());
            match serving(connection.as_mut(), &shared, wake).await {
                Woken::Ended => return,
                Woken::Closing => break,
                Woken::Timer => {
                    if head_late() {
                        return;
                    }
                    let idle = activity.quiet_until(idle_timeout).is_some_and(|at| at <= Instant::now());
                    if idle && !activity.is_http2() {
                        connection.as_mut().graceful_shutdown();
                        // Bounded: the rest of a head that came in behind a request (pipelined)
                        // would otherwise be waited for.
                        let _ = tokio::time::timeout(header_read_timeout, connection.as_mut()).await;
                        return;
                    }
                }
            }
        }
        // HTTP/2 gets its GOAWAY at once: the client knows which streams were served.
        // HTTP/1 has no such message, so it waits until quiet (see `idle_close_after`).
        if !activity.is_http2() {
            loop {
                let quiet_until = activity.quiet_until(idle_close_after);
                if quiet_until.is_some_and(|at| at <= Instant::now()) {
                    break;
                }
                let wake = quiet_until.unwrap_or_else(|| Instant::now() + BUSY_POLL).min(head_wake());
                tokio::select! {
                    biased;
                    _ = connection.as_mut() => return,
                    // The soft deadline: no more waiting for anyone.
                    _ = shared.requests.cancelled() => break,
                    _ = tokio::time::sleep_until(wake.into()) => {
                        if head_late() {
                            return;
                        }
                    }
                }
            }
        }
        connection.as_mut().graceful_shutdown();
        // What is left to wait for is a request in flight. A connection without one for the
        // header-read timeout waits for a head that is late (one that came in behind a request,
        // pipelined, is not timed by `activity`): it is closed.
        loop {
            let stalled_at = activity.quiet_until(header_read_timeout);
            if stalled_at.is_some_and(|at| at <= Instant::now()) || head_late() {
                return;
            }
            let wake = stalled_at.unwrap_or_else(|| Instant::now() + header_read_timeout).min(head_wake());
            tokio::select! {
                biased;
                _ = connection.as_mut() => return,
                _ = shared.cut.cancelled() => {
                    shared.cut_connections.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}

/// What ended a wait of [`serving`].
enum Woken {
    /// The connection is done.
    Ended,
    /// The stop began.
    Closing,
    /// The timer fired.
    Timer,
}

/// Serves `connection` until it ends, the stop begins, or `wake` comes, whichever is first.
///
/// The connection is polled first, as it is what wakes the task, at every request. The stop's
/// signal and the timer are polled only to give them this task's waker, on the first poll (and
/// if the waker changed); at the other wake-ups a look at each is an atomic load. A `select!`
/// polled both at every wake-up: the token takes its lock twice and the timer registers its
/// waker again (callgrind: about 190 instructions per request).
async fn serving<C: Future>(mut connection: Pin<&mut C>, shared: &Shared, wake: Instant) -> Woken {
    let closing = shared.closing.cancelled();
    let timer = tokio::time::sleep_until(wake.into());
    tokio::pin!(closing, timer);
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(move |cx| {
        if connection.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Woken::Ended);
        }
        if registered.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
            if shared.closing_begun.load(Ordering::Acquire) {
                return Poll::Ready(Woken::Closing);
            }
            return if timer.is_elapsed() { Poll::Ready(Woken::Timer) } else { Poll::Pending };
        }
        if closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Woken::Closing);
        }
        // With its budget spent, the task's timer would not register (tokio's cooperative
        // scheduling): it is tried again at the next wake-up, which the budget brings soon.
        let registers = tokio::task::coop::has_budget_remaining();
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Woken::Timer);
        }
        if registers {
            registered = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A connection that never ends.
    fn open() -> std::future::Pending<()> {
        std::future::pending()
    }

    async fn within<T>(future: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_secs(5), future).await.ok()
    }

    #[tokio::test]
    async fn a_wait_ends_with_the_connection_the_stop_or_the_timer() {
        let shared = Arc::new(Shared::default());
        let far = Instant::now() + Duration::from_secs(60);

        let ended = std::future::ready(());
        tokio::pin!(ended);
        assert!(matches!(within(serving(ended, &shared, far)).await, Some(Woken::Ended)));

        let connection = open();
        tokio::pin!(connection);
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(matches!(within(serving(connection.as_mut(), &shared, soon)).await, Some(Woken::Timer)));

        // The stop comes after the wait has registered with it: it is seen through the flag.
        let waiting = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let connection = open();
                tokio::pin!(connection);
                matches!(serving(connection, &shared, far).await, Woken::Closing)
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        shared.close_connections();
        assert_eq!(within(waiting).await.map(Result::ok), Some(Some(true)));
    }

    /// A connection that spends its task's whole budget on its first poll (as one that reads a
    /// lot at once would), and waits after that.
    struct SpendsTheBudget {
        spent: bool,
    }

    impl Future for SpendsTheBudget {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
            if !std::mem::replace(&mut self.spent, true) {
                while tokio::task::coop::has_budget_remaining() {
                    let spend = tokio::task::consume_budget();
                    tokio::pin!(spend);
                    if spend.poll(cx).is_pending() {
                        break;
                    }
                }
            }
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_timer_that_could_not_register_for_want_of_budget_still_fires() {
        let shared = Shared::default();
        let connection = SpendsTheBudget { spent: false };
        tokio::pin!(connection);
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(matches!(within(serving(connection, &shared, soon)).await, Some(Woken::Timer)));
    }
}
