//! The HTTP server component: serves an axum router on a listener it is given, and drains.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use lifecycle_core::{BoxError, CancellationToken, Component, ComponentId, ComponentOptions, Context, Tasks};

use crate::accept::{AcceptErrors, REFUSALS_AT_ONCE, turn_away};
use crate::backlog;
use crate::connection::{Connection, Settings, prepare_accepted};
use crate::metrics::{MetricsSource, MetricsState, metrics};
use crate::request::{RequestContext, RequestShared};
#[cfg(feature = "tls")]
use crate::tls::TlsConfig;
use crate::websocket::Sockets;
use crate::{HealthPaths, health_router};

/// How long before the stop deadline the server cuts what is left, so its note reaches the report.
const MARGIN: Duration = Duration::from_millis(100);

/// Default for [`HttpServer::idle_close_after`].
const IDLE_CLOSE_AFTER: Duration = Duration::from_millis(500);

/// Default for [`HttpServer::header_read_timeout`].
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Default for [`HttpServer::idle_timeout`].
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Descriptors kept for everything but client connections (pools, files, the listener).
const DESCRIPTORS_KEPT: usize = 256;

/// Request counts, for the report's note and for `/metrics`.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    /// Requests begun; with `completed`, what is in flight (one count per request each way
    /// rather than a count in flight that goes up and down).
    pub(crate) started: AtomicU64,
    /// Requests answered (or dropped unanswered).
    pub(crate) completed: AtomicU64,
    pub(crate) drained: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) cut: AtomicU64,
    /// Requests whose handler panicked (answered 500).
    pub(crate) panicked: AtomicU64,
    /// Requests cut at the request timeout (answered 503).
    pub(crate) timed_out: AtomicU64,
    /// Connections closed because a request's head took longer than the header-read timeout.
    pub(crate) header_timeouts: AtomicU64,
    pub(crate) websockets_open: AtomicU64,
    /// Client connections open (WebSockets included).
    pub(crate) connections_open: AtomicU64,
    /// Times the connection limit was reached.
    pub(crate) limit_reached: AtomicU64,
    /// Connections answered 503 and closed because the limit was reached.
    pub(crate) turned_away: AtomicU64,
    /// WebSockets closed with 1001 because the server stopped.
    pub(crate) websockets_going_away: AtomicU64,
    /// WebSockets dropped at the hard deadline.
    pub(crate) websockets_cut: AtomicU64,
    /// TLS handshakes that failed or timed out (not those the stop gave up on).
    #[cfg(feature = "tls")]
    pub(crate) tls_handshakes_failed: AtomicU64,
}

impl Counters {
    /// Requests being served now.
    pub(crate) fn in_flight(&self) -> u64 {
        // Completed first: a request counted there was counted as started before.
        let completed = self.completed.load(Ordering::Acquire);
        self.started.load(Ordering::Acquire).saturating_sub(completed)
    }
}

/// State shared by the middleware, the connections and the stop.
#[derive(Default)]
pub(crate) struct Shared {
    /// Set by the drain hook: HTTP/1 responses then carry `Connection: close`.
    pub(crate) draining: AtomicBool,
    pub(crate) counters: Arc<Counters>,
    /// Parent of every request's token.
    pub(crate) requests: CancellationToken,
    /// Cancelled at stop: each connection shuts down gracefully (HTTP/2 GOAWAY, HTTP/1 close
    /// after the response in flight).
    pub(crate) closing: CancellationToken,
    /// Set just before `closing` is cancelled (by [`Shared::close_connections`]): each
    /// connection reads it when it wakes, where polling the token would take its lock twice.
    pub(crate) closing_begun: AtomicBool,
    /// Cancelled at stop, or at drain with `go_away_at_drain`: long-lived responses end, and
    /// WebSockets are closed with 1001.
    pub(crate) going_away: CancellationToken,
    /// Cancelled at the hard deadline: connections still open are dropped.
    pub(crate) cut: CancellationToken,
    pub(crate) cut_connections: AtomicU64,
}

impl Shared {
    /// Tells every connection to shut down gracefully.
    pub(crate) fn close_connections(&self) {
        self.closing_begun.store(true, Ordering::Release);
        self.closing.cancel();
    }
}

/// A connection's place under [`HttpServer::max_connections`], counted open until dropped. The
/// connection's [`RequestContext`] holds it; an upgrade (a WebSocket) takes it over, since the
/// socket stays open after the HTTP connection is done.
#[derive(Debug)]
pub(crate) struct Place {
    _permit: tokio::sync::OwnedSemaphorePermit,
    counters: Arc<Counters>,
}

impl Place {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, counters: &Arc<Counters>) -> Self {
        counters.connections_open.fetch_add(1, Ordering::AcqRel);
        Self { _permit: permit, counters: Arc::clone(counters) }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.counters.connections_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The default connection limit: the descriptor limit (`ulimit -n`, read from `/proc`) less
/// what the rest of the process needs; 1,024 less that when the limit cannot be read.
fn default_max_connections() -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        })
        .unwrap_or(1_024);
    limit.saturating_sub(DESCRIPTORS_KEPT).max(64)
}

/// An axum router served on a listener, as a component.
///
/// The listener is given, not bound here: bound by the application, by socket activation, or
/// inherited during an upgrade. One that is bound but not listening yet (as
/// `lifecycle_handoff::Listeners` binds them) starts listening when the server starts, so a
/// client that comes while the service starts, or fails to start, is refused at once instead of
/// waiting unanswered. Shutdown, in the order the run calls it:
///
/// 1. **drain** (the service just turned unready): keep serving and accepting, and answer
///    HTTP/1.1 requests with `Connection: close`, so clients move to another instance while the
///    drain delay passes;
/// 2. **stop**: stop accepting without resetting a connection the kernel already accepted (new
///    connection attempts are ignored, so their clients are refused when they try again or
///    find a successor; those already queued are served for 100 ms more, then the socket
///    closes; after a hand-over the successor takes the queue), shut each connection down gracefully (HTTP/2 `GOAWAY` at once;
///    HTTP/1 closes after its next response, or once quiet for [`HttpServer::idle_close_after`]),
///    let requests finish; at the soft deadline cancel each
///    request's [`RequestContext::cancelled`] signal; at the hard deadline (just before the stop
///    deadline) drop what is left. The report notes how many requests were drained, cancelled
///    and cut.
pub struct HttpServer {
    name: ComponentId,
    listener: Mutex<Option<std::net::TcpListener>>,
    router: Mutex<Option<Router>>,
    soft_deadline: Option<Duration>,
    idle_close_after: Duration,
    go_away_at_drain: bool,
    request_timeout: Option<Duration>,
    tcp_nodelay: bool,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    health: Option<HealthPaths>,
    metrics: Option<String>,
    metrics_sources: Vec<MetricsSource>,
    options: ComponentOptions,
    #[cfg(feature = "tls")]
    tls: Option<TlsConfig>,
    shared: Arc<Shared>,
}

impl HttpServer {
    /// A server named `name` for `router` on `listener`.
    pub fn new(name: impl Into<ComponentId>, listener: std::net::TcpListener, router: Router) -> Self {
        Self {
            name: name.into(),
            listener: Mutex::new(Some(listener)),
            router: Mutex::new(Some(router)),
            soft_deadline: None,
            idle_close_after: IDLE_CLOSE_AFTER,
            go_away_at_drain: false,
            request_timeout: None,
            tcp_nodelay: true,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: default_max_connections(),
            health: None,
            metrics: None,
            metrics_sources: Vec::new(),
            options: ComponentOptions::new(),
            #[cfg(feature = "tls")]
            tls: None,
            shared: Arc::default(),
        }
    }

    /// How long after the stop begins request tokens are cancelled (default: half the stop time).
    #[must_use]
    pub fn soft_deadline(mut self, after: Duration) -> Self {
        self.soft_deadline = Some(after);
        self
    }

    /// How long an HTTP/1 connection must have been idle before the stop closes it (default
    /// 500 ms; never later than the soft deadline).
    ///
    /// A keep-alive client may have its next request on the wire at the moment a server closes
    /// a connection it thinks idle; the client then sees the connection end without a response.
    /// So at stop a busy connection is left to close itself after its next response (which
    /// carries `Connection: close`), and only a connection quiet for this long is closed.
    #[must_use]
    pub fn idle_close_after(mut self, idle: Duration) -> Self {
        self.idle_close_after = idle;
        self
    }

    /// Tells long-lived connections to go away (WebSockets closed with 1001, and
    /// [`RequestContext::going_away`] resolved) when the drain begins rather than when the stop
    /// does. With a load balancer in front, clients then reconnect through it to another
    /// instance during the drain delay; without one (the default), they stay until the stop,
    /// since they would only find this instance again.
    #[must_use]
    pub fn go_away_at_drain(mut self) -> Self {
        self.go_away_at_drain = true;
        self
    }

    /// The longest a handler may take (default: no limit). A request still running at the limit
    /// is answered `503 Service Unavailable` ("request timed out") and its handler dropped, which
    /// cancels what it awaits; `/metrics` counts them (`requests_timed_out_total`). A stuck
    /// dependency then costs its callers a bounded wait, not a connection each until the stop.
    #[must_use]
    pub fn request_timeout(mut self, limit: Duration) -> Self {
        self.request_timeout = Some(limit);
        self
    }

    /// Whether accepted connections get `TCP_NODELAY` (default on, as tonic's and nginx's
    /// servers do): a response, or a stream's message, written in pieces then goes out at once
    /// instead of waiting for the client to acknowledge the piece before it (up to its
    /// delayed-ACK time, 40 ms on Linux).
    #[must_use]
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }

    /// How long an HTTP/1 client may take to send a request's headers, counted from their first
    /// byte (default 5 s); a slower one is disconnected, and counted in `/metrics`
    /// (`lifecycle_http_header_timeouts_total`). Without a bound, one client sending its headers
    /// a byte at a time holds a connection open, and every graceful stop waits for it until its
    /// deadline. The wait between two requests of a keep-alive connection is the
    /// [`idle_timeout`](HttpServer::idle_timeout)'s, not this one's. Headers that arrive while
    /// the request before them is still being answered (pipelining) are bounded by the idle
    /// timeout while serving, and by this one once the stop has begun.
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long an HTTP/1 keep-alive connection may stay idle before the server closes it
    /// (default 60 s), so idle sockets do not pile up.
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// The most client connections served at once (default: the process's descriptor limit
    /// less 256 kept for everything else), so the process never runs out of descriptors (which
    /// would starve its database pool and its health endpoints too). Beyond it, a new
    /// connection is turned away at once: answered `503 Service Unavailable` with
    /// `Retry-After: 1` and closed (over TLS, closed), a few at a time; beyond those, it waits
    /// in the listen queue until one closes. An open WebSocket keeps its connection's place. 0
    /// fails the start, naming the setting.
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Also serves `/livez` and `/readyz` (see [`health_router`]) for this run. To keep the
    /// probes and the metrics off the public port, give them a server of their own on another
    /// listener: `HttpServer::new("admin", admin_listener, Router::new()).with_health(..)
    /// .with_metrics("/metrics")`.
    #[must_use]
    pub fn with_health(mut self, paths: HealthPaths) -> Self {
        self.health = Some(paths);
        self
    }

    /// Also serves the run's and the server's metrics in the Prometheus text format at `path`
    /// (usually `/metrics`).
    #[must_use]
    pub fn with_metrics(mut self, path: impl Into<String>) -> Self {
        self.metrics = Some(path.into());
        self
    }

    /// Adds the service's own metrics to what [`with_metrics`](HttpServer::with_metrics)
    /// serves: at every scrape `source` registers them in a fresh registry (no prefix; the
    /// built-in ones are `lifecycle_*`), so set each from where it is counted rather than
    /// keeping it in sync. A consumer's counters, for instance:
    ///
    /// ```
    /// use lifecycle_http::prometheus_client::metrics::counter::Counter;
    /// use lifecycle_http::{HttpServer, axum::Router};
    ///
    /// # fn acked_so_far() -> u64 { 7 }
    /// # let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let server = HttpServer::new("admin", listener, Router::new())
    ///     .with_metrics("/metrics")
    ///     .with_metrics_from(|registry| {
    ///         let acked = Counter::<u64>::default();
    ///         acked.inc_by(acked_so_far());
    ///         registry.register("orders_acked", "Messages handled and acked", acked);
    ///     });
    /// ```
    #[must_use]
    pub fn with_metrics_from(
        mut self,
        source: impl Fn(&mut prometheus_client::registry::Registry) + Send + Sync + 'static,
    ) -> Self {
        self.metrics_sources.push(Arc::new(source));
        self
    }

    /// Serves HTTPS instead of plain HTTP (feature `tls`): HTTP/2 and HTTP/1.1 over TLS, with
    /// `config`'s certificate, which it reloads without a restart (see [`TlsConfig`]), at
    /// every reload of the service among others: its reload hook reads the files again, and
    /// fails (keeping the certificate it had) when they do not load.
    ///
    /// Each connection's handshake runs in the connection's own task, so a slow client holds up
    /// no other, and is bounded by [`header_read_timeout`](HttpServer::header_read_timeout); one
    /// that fails is logged at debug level and counted (`/metrics`:
    /// `lifecycle_http_tls_handshakes_failed_total`), never a failure of the server. At stop, a
    /// handshake still under way gets as long as an idle connection
    /// ([`idle_close_after`](HttpServer::idle_close_after)); the connections it completes are
    /// served and drained like any other.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn with_tls(mut self, config: TlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// The component's timeouts and criticality.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    /// Changes the router before the start: for a server built around routes of its own (the
    /// gRPC adapter adds each service here).
    #[must_use]
    pub fn map_router(self, change: impl FnOnce(Router) -> Router) -> Self {
        {
            let mut router = self.router.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(current) = router.take() {
                *router = Some(change(current));
            }
        }
        self
    }

    /// Client connections open now (WebSockets included).
    pub fn connections_open(&self) -> u64 {
        self.shared.counters.connections_open.load(Ordering::Acquire)
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> u64 {
        self.shared.counters.in_flight()
    }

    /// Requests answered since the start.
    pub fn completed(&self) -> u64 {
        self.shared.counters.completed.load(Ordering::Acquire)
    }

    /// What the requests of this run can reach, shared by every connection's context.
    fn request_shared(&self, tasks: &Tasks) -> Arc<RequestShared> {
        let shared = &self.shared;
        Arc::new(RequestShared {
            cancel: shared.requests.clone(),
            sockets: Sockets {
                tasks: tasks.clone(),
                going_away: shared.going_away.clone(),
                cut: shared.cut.clone(),
                counters: Arc::clone(&shared.counters),
            },
        })
    }

    /// Every setting that cannot work, named, with why.
    fn unworkable_settings(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_connections == 0 {
            problems.push("`max_connections` is 0: no client could ever be served".to_owned());
        }
        for (setting, value) in
            [("header_read_timeout", self.header_read_timeout), ("idle_timeout", self.idle_timeout)]
        {
            if value.is_zero() {
                problems.push(format!("`{setting}` is 0: every connection would be closed at once"));
            }
        }
        if self.request_timeout.is_some_and(|limit| limit.is_zero()) {
            problems.push("`request_timeout` is 0: every request would time out".to_owned());
        }
        if let (Some(soft), Some(stop)) = (self.soft_deadline, self.options.stop_timeout) {
            if soft >= stop {
                problems.push(format!(
                    "`soft_deadline` ({soft:?}) is not shorter than the stop timeout ({stop:?}): requests would be cut \
                     without ever being told to finish"
                ));
            }
        }
        problems
    }

    fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
        slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

impl Component for HttpServer {
    fn name(&self) -> ComponentId {
        self.name.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    /// A start takes the listener (and the router) it was given: it cannot run twice.
    fn restartable(&self) -> bool {
        false
    }

    /// Reads the TLS certificate and key again, when it serves HTTPS.
    async fn reload(&self, _ctx: &Context) -> Result<(), BoxError> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            tls.reload()?;
        }
        Ok(())
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let unworkable = self.unworkable_settings();
        if !unworkable.is_empty() {
            return Err(format!("component `{}`: {}", self.name, unworkable.join("; ")).into());
        }
        let listener = Self::take(&self.listener)
            .ok_or_else(|| format!("component `{}` was already started: its listener is gone", self.name))?;
        backlog::listen(&listener)?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut router = Self::take(&self.router).unwrap_or_default();
        if let Some(paths) = &self.health {
            router = router.merge(health_router(ctx.lifecycle().clone(), paths));
        }
        if let Some(path) = &self.metrics {
            let state = MetricsState {
                handle: ctx.lifecycle().clone(),
                counters: Arc::clone(&self.shared.counters),
                sources: self.metrics_sources.clone(),
            };
            router = router.merge(Router::new().route(path, get(metrics)).with_state(Arc::new(state)));
        }
        // Turns each handler into its route once, here, as `axum::serve` does: a router served
        // as it was built does that at every request (an allocation and a clone of the handler).
        let router: Router = router.with_state(());
        let (shared, tasks, token, name) =
            (Arc::clone(&self.shared), ctx.tasks().clone(), ctx.token().clone(), self.name.clone());
        let shutdown = ctx.shutdown().clone();
        let settings = Settings {
            idle_close_after: self.idle_close_after,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            tcp_nodelay: self.tcp_nodelay,
        };
        let request_shared = self.request_shared(ctx.tasks());
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        let max_connections = self.max_connections;
        tracing::info!(component = %name, %address, max_connections, "HTTP server listening");
        #[cfg(feature = "tls")]
        let tls = self.tls.as_ref().map(|config| {
            if let Some(interval) = config.watch_interval() {
                ctx.tasks().spawn("tls watch", config.clone().watch_files(interval, ctx.token().clone()));
            }
            config.acceptor()
        });
        // Over TLS, a plain-text 503 would be garbage to the client: it is closed politely only.
        #[cfg(feature = "tls")]
        let plain_http = tls.is_none();
        #[cfg(not(feature = "tls"))]
        let plain_http = true;
        ctx.tasks().spawn("accept", async move {
            // Said once each time the limit is reached, not for every connection that waits.
            let mut at_limit = false;
            // Once the stop began: when the socket closes.
            let mut closes_at = None;
            let mut accept_errors = AcceptErrors::default();
            let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS_AT_ONCE));
            loop {
                // A free slot first. At the limit, new connections are turned away (a 503, then
                // closed) while a few descriptors are kept for that, and wait in the queue beyond.
                let slot = match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        at_limit = false;
                        slot
                    }
                    Err(_) => {
                        if !std::mem::replace(&mut at_limit, true) {
                            shared.counters.limit_reached.fetch_add(1, Ordering::AcqRel);
                            tracing::warn!(component = %name, max_connections, "connection limit reached; new connections are turned away until one closes");
                        }
                        tokio::select! {
                            _ = token.cancelled() => break,
                            slot = Arc::clone(&slots).acquire_owned() => match slot {
                                Ok(slot) => slot,
                                Err(_) => break,
                            },
                            accepted = listener.accept(), if refusals.available_permits() > 0 => {
                                match (accepted, Arc::clone(&refusals).try_acquire_owned()) {
                                    (Ok((stream, _)), Ok(refusal)) => {
                                        shared.counters.turned_away.fetch_add(1, Ordering::AcqRel);
                                        tasks.spawn("turn away", turn_away(stream, refusal, plain_http));
                                    }
                                    (Err(error), _) => tokio::time::sleep(accept_errors.failed(&name, &error)).await,
                                    (Ok(_), Err(_)) => {}
                                }
                                continue;
                            }
                        }
                    }
                };
                let accepted = match closes_at {
                    None => tokio::select! {
                        _ = token.cancelled() => {
                            // The stop begins here, before the stop hook runs: WebSockets hear
                            // "going away" before the router (and the state their handlers
                            // feed on) is dropped with this loop.
                            shared.going_away.cancel();
                            // After a hand-over the successor accepts on this very socket: what
                            // is queued is its to take, and the socket must stay open to it.
                            if shutdown.has_successor() {
                                break;
                            }
                            // The stop begins: new connections are turned away, and those the
                            // kernel already accepted are served before the socket closes (a
                            // connection left in the queue would be reset after its request
                            // was sent).
                            if let Err(error) = backlog::turn_away_new_connections(&listener) {
                                tracing::warn!(component = %name, %error, "cannot turn new connections away; some queued ones may be reset at close");
                            }
                            closes_at = Some(tokio::time::Instant::now() + backlog::HANDSHAKE_GRACE);
                            continue;
                        }
                        accepted = listener.accept() => accepted,
                    },
                    Some(at) => tokio::select! {
                        () = tokio::time::sleep_until(at) => break,
                        accepted = listener.accept() => accepted,
                    },
                };
                let (stream, _) = match accepted {
                    Ok(accepted) => {
                        accept_errors.succeeded(&name);
                        prepare_accepted(&accepted.0, settings.tcp_nodelay, &name);
                        accepted
                    }
                    Err(error) => {
                        tokio::time::sleep(accept_errors.failed(&name, &error)).await;
                        continue;
                    }
                };
                // Given back when the connection ends, or kept by the WebSocket it turns into.
                let place = Place::new(slot, &shared.counters);
                let connection = Connection {
                    router: router.clone(),
                    context: RequestContext::for_connection(&request_shared, place),
                    component: name.clone(),
                    shared: Arc::clone(&shared),
                    settings,
                };
                #[cfg(feature = "tls")]
                let tls = tls.clone();
                tasks.spawn("connection", async move {
                    #[cfg(feature = "tls")]
                    if let Some(acceptor) = tls {
                        if let Some(stream) = connection.tls_handshake(&acceptor, stream).await {
                            connection.serve(stream).await;
                        }
                        return;
                    }
                    connection.serve(stream).await;
                });
            }
        });
        Ok(())
    }

    async fn drain(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.shared.draining.store(true, Ordering::Release);
        if self.go_away_at_drain {
            self.shared.going_away.cancel();
        }
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        let began = tokio::time::Instant::now();
        let completed_before = self.completed();
        let shared = &self.shared;
        shared.draining.store(true, Ordering::Release);
        shared.going_away.cancel();
        shared.close_connections();
        let tasks = ctx.tasks();
        tasks.close();
        let hard = ctx.give_up_at(MARGIN, Duration::from_secs(10));
        let soft = match self.soft_deadline {
            Some(after) => (began + after).min(hard),
            None => began + hard.saturating_duration_since(began) / 2,
        };
        let counters = &shared.counters;
        if tokio::time::timeout_at(soft, tasks.wait()).await.is_err() {
            counters.cancelled.store(self.in_flight(), Ordering::Release);
            shared.requests.cancel();
            if tokio::time::timeout_at(hard, tasks.wait()).await.is_err() {
                counters.cut.store(self.in_flight(), Ordering::Release);
                shared.cut.cancel();
                // Dropped connections end their requests at once.
                let _ = tokio::time::timeout(MARGIN / 2, tasks.wait()).await;
            }
        }
        let (cancelled, cut) =
            (counters.cancelled.load(Ordering::Acquire), counters.cut.load(Ordering::Acquire));
        let drained = (self.completed() - completed_before).saturating_sub(cut);
        counters.drained.store(drained, Ordering::Release);
        ctx.note(format!(
            "drained {drained} requests, cancelled {cancelled} at the soft deadline, cut {cut} requests and {} \
             connections at the hard deadline",
            shared.cut_connections.load(Ordering::Acquire)
        ));
        let (going_away, sockets_cut) = (
            counters.websockets_going_away.load(Ordering::Acquire),
            counters.websockets_cut.load(Ordering::Acquire),
        );
        if going_away + sockets_cut > 0 {
            ctx.note(format!("closed {going_away} WebSockets with 1001 (going away), cut {sockets_cut} at the hard deadline"));
        }
        Ok(())
    }
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("name", &self.name)
            .field("in_flight", &self.in_flight())
            .field("completed", &self.completed())
            .field("draining", &self.shared.draining.load(Ordering::Acquire))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn accepted(nodelay: bool) -> bool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let _client = tokio::net::TcpStream::connect(address).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        prepare_accepted(&stream, nodelay, &ComponentId::from("http"));
        stream.nodelay().expect("TCP_NODELAY readable")
    }

    #[tokio::test]
    async fn accepted_connections_get_tcp_nodelay_unless_it_is_turned_off() {
        assert!(accepted(true).await);
        assert!(!accepted(false).await, "the kernel's default is kept");
    }
}
