//! One client connection, from its accept to its close: served by hyper (HTTP/1 or HTTP/2, with
//! upgrades), closed when idle too long or when a request's head is late, and shut down
//! gracefully when the stop begins.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::Version;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use lifecycle_core::{ComponentId, Tasks};

use crate::activity::{Activity, Watched};
use crate::request::{Requests, Served};
use crate::server::{RequestContext, Shared};

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
        let service = TowerToHyperService::new(router);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
        let watched = Arc::clone(&activity);
        let requests =
            Arc::new(Requests { shared: Arc::clone(&shared), component, timeout: request_timeout });
        // Everything a request goes through is in `Served`, in the one service hyper calls,
        // rather than in an axum middleware, which clones the router's service and boxes two
        // futures per request (7% of the throughput of a trivial route).
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let busy = watched.begin(request.version());
            request.extensions_mut().insert(context.clone());
            let route =
                (request.method().clone(), request.uri().clone(), request.version() <= Version::HTTP_11);
            // This only builds a `oneshot`: routing and the handler run when it is polled, inside
            // `Served`'s panic catch.
            let response = hyper::service::Service::call(&service, request);
            Served::new(response, &requests, route, busy)
        });
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
            // Biased: the connection first, as it is what wakes this task at every request.
            tokio::select! {
                biased;
                _ = connection.as_mut() => return,
                _ = shared.closing.cancelled() => break,
                _ = tokio::time::sleep_until(wake.into()) => {
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
