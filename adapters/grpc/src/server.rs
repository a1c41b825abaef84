//! The gRPC server component: tonic services served by the HTTP adapter's server, with the
//! `grpc.health.v1` service following the service's phase.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::http::{Request, Response};
use lifecycle_core::{BoxError, Component, ComponentId, ComponentOptions, Context, Phase};
use lifecycle_http::HttpServer;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::call::{Call, Counters, EndsAt};

/// Tonic services on a listener, as a component that drains without failing a call.
///
/// The listener is given, not bound here, as for [`HttpServer`] (bound by the application,
/// socket-activated, or inherited from the previous process through `lifecycle-handoff`'s
/// `Listeners`, so a zero-downtime upgrade hands gRPC clients over too). The server is the HTTP
/// adapter's, serving HTTP/2 with prior knowledge as gRPC clients speak it; it serves the
/// `grpc.health.v1.Health` service besides the ones added. Shutdown, in the order the run calls
/// it:
///
/// 1. **drain** (the service just turned unready): the health service says `NOT_SERVING` for
///    the server (`""`) and for every service added, to `Check` and to every `Watch`, while
///    calls are still served and connections accepted, so clients and balancers move away
///    during the drain delay;
/// 2. **stop**: health watches end with `UNAVAILABLE`; no new connection is accepted (and none
///    queued is reset); each connection gets an HTTP/2 `GOAWAY`, after which its client opens
///    no new call on it; calls in flight finish; at the soft deadline a response stream still
///    open ends with the status `UNAVAILABLE` (in its trailers, a clean end clients retry, not a
///    reset), and handlers see [`RequestContext::cancelled`](lifecycle_http::RequestContext::cancelled);
///    at the hard deadline (just before the stop deadline) what is left is dropped with its
///    connection. The report notes the connections and calls open when the drain began and how
///    each call ended.
///
/// A handler reaches the stop's signals through its request:
/// `request.extensions().get::<RequestContext>()`. A handler that panics answers its call with
/// `INTERNAL`; its connection, the other calls and the service carry on. A call still running
/// at its client's deadline (the `grpc-timeout` header) ends with `DEADLINE_EXCEEDED`: a unary
/// handler is dropped there (cancelling what it awaits), a response stream ends with that status
/// in its trailers.
///
/// The health service says `SERVING` once the whole service is ready, not when this component
/// starts; [`health_reporter`](GrpcServer::health_reporter) lets the application set statuses of
/// its own.
pub struct GrpcServer {
    http: HttpServer,
    health: HealthReporter,
    /// The services added, whose health the server sets.
    services: Vec<&'static str>,
    counters: Arc<Counters>,
    /// Serialises the health updates of the start's task and of the drain, and records the
    /// drain, so a late "ready" cannot undo a `NOT_SERVING`.
    draining: Arc<tokio::sync::Mutex<bool>>,
    /// The counts when the shutdown began (at the drain), for the report's note.
    at_drain: std::sync::Mutex<Option<Snapshot>>,
}

/// What was open, and the counts so far, when the shutdown began.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    connections: u64,
    calls: u64,
    finished: u64,
    unavailable: u64,
    watches: u64,
    dropped: u64,
}

impl GrpcServer {
    /// A server named `name` on `listener`, with the health service and no other yet.
    pub fn new(name: impl Into<ComponentId>, listener: std::net::TcpListener) -> Self {
        let name = name.into();
        let (health, health_service) = tonic_health::server::health_reporter();
        let counters = Arc::<Counters>::default();
        let router = Router::new().fallback(unimplemented);
        let router = route(router, health_service, &name, &counters, EndsAt::Stop);
        Self {
            http: HttpServer::new(name, listener, router),
            health,
            services: Vec::new(),
            counters,
            draining: Arc::default(),
            at_drain: std::sync::Mutex::default(),
        }
    }

    /// Serves `service` (a tonic-generated `FooServer::new(..)`, or any service of its shape).
    #[must_use]
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let (name, counters) = (self.http.name(), Arc::clone(&self.counters));
        self.http =
            self.http.map_router(|router| route(router, service, &name, &counters, EndsAt::SoftDeadline));
        if !self.services.contains(&S::NAME) {
            self.services.push(S::NAME);
        }
        self
    }

    /// How long after the stop begins response streams still open end with `UNAVAILABLE` and
    /// handlers' [`RequestContext::cancelled`](lifecycle_http::RequestContext::cancelled)
    /// resolves (default: half the stop time).
    #[must_use]
    pub fn soft_deadline(mut self, after: Duration) -> Self {
        self.http = self.http.soft_deadline(after);
        self
    }

    /// The most client connections served at once (see [`HttpServer::max_connections`]). One
    /// beyond it is answered in HTTP/1.1 (`503`) and closed, which a gRPC client sees as a
    /// failed connection, before any call of it was taken.
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.http = self.http.max_connections(max);
        self
    }

    /// The component's timeouts and criticality.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.http = self.http.options(options);
        self
    }

    /// The health service's statuses, for the application to set its own (a service whose
    /// dependency is down). The server sets `""` and each added service to `SERVING` once the
    /// service is ready and to `NOT_SERVING` at the drain.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Calls being served now (a response stream counts until it ends).
    pub fn calls_in_flight(&self) -> u64 {
        self.counters.in_flight.load(Ordering::Acquire)
    }

    /// Calls that ended with their handler's status since the start.
    pub fn calls_finished(&self) -> u64 {
        self.counters.finished.load(Ordering::Acquire)
    }

    /// Calls whose handler panicked (answered `INTERNAL`) since the start.
    pub fn calls_panicked(&self) -> u64 {
        self.counters.panicked.load(Ordering::Acquire)
    }

    /// Calls still running at their client's deadline (its `grpc-timeout`), ended with
    /// `DEADLINE_EXCEEDED` and their handler cancelled, since the start.
    pub fn calls_past_deadline(&self) -> u64 {
        self.counters.deadline_exceeded.load(Ordering::Acquire)
    }

    /// `""` and every service added, to `status`.
    async fn set_all(health: &HealthReporter, services: &[&'static str], status: ServingStatus) {
        health.set_service_status("", status).await;
        for service in services {
            health.set_service_status(service, status).await;
        }
    }

    fn snapshot(&self) -> Snapshot {
        let counters = &self.counters;
        Snapshot {
            connections: self.http.connections_open(),
            calls: self.calls_in_flight(),
            finished: counters.finished.load(Ordering::Acquire),
            unavailable: counters.ended_unavailable.load(Ordering::Acquire),
            watches: counters.watches_ended.load(Ordering::Acquire),
            dropped: counters.dropped.load(Ordering::Acquire),
        }
    }

    /// The counts when the shutdown began: at the drain, or now when the drain did not run.
    fn at_drain(&self) -> Snapshot {
        let mut at_drain = self.at_drain.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *at_drain.get_or_insert_with(|| self.snapshot())
    }

    /// `NOT_SERVING` for good.
    async fn not_serving(&self) {
        let mut draining = self.draining.lock().await;
        *draining = true;
        Self::set_all(&self.health, &self.services, ServingStatus::NotServing).await;
    }
}

/// `service` under its gRPC path, with the per-call handling.
fn route<S>(
    router: Router,
    service: S,
    component: &ComponentId,
    counters: &Arc<Counters>,
    ends_at: EndsAt,
) -> Router
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let call = Call::new(service, component.clone(), Arc::clone(counters), ends_at);
    router.route_service(&format!("/{}/{{*method}}", S::NAME), call)
}

/// The answer for a service that is not served: `UNIMPLEMENTED`, as gRPC servers say it.
async fn unimplemented() -> Response<Body> {
    tonic::Status::unimplemented("no such service").into_http()
}

impl Component for GrpcServer {
    fn name(&self) -> ComponentId {
        self.http.name()
    }

    fn options(&self) -> ComponentOptions {
        Component::options(&self.http)
    }

    /// A start takes the listener it was given: it cannot run twice.
    fn restartable(&self) -> bool {
        false
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        // Not serving until the whole service is ready (the reporter starts with `""` serving).
        Self::set_all(&self.health, &self.services, ServingStatus::NotServing).await;
        self.http.start(ctx).await?;
        let (health, services, draining) =
            (self.health.clone(), self.services.clone(), Arc::clone(&self.draining));
        let (lifecycle, token) = (ctx.lifecycle().clone(), ctx.token().clone());
        ctx.tasks().spawn("health serving", async move {
            tokio::select! {
                () = lifecycle.reached(Phase::Ready) => {}
                () = token.cancelled() => return,
            }
            let draining = draining.lock().await;
            if !*draining && lifecycle.phase() == Phase::Ready {
                Self::set_all(&health, &services, ServingStatus::Serving).await;
            }
        });
        Ok(())
    }

    async fn drain(&self, ctx: &Context) -> Result<(), BoxError> {
        self.at_drain();
        self.not_serving().await;
        self.http.drain(ctx).await
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        let at_drain = self.at_drain();
        // Already done at the drain, unless the run skipped it.
        self.not_serving().await;
        let stopped = self.http.stop(ctx).await;
        let now = self.snapshot();
        ctx.note(format!(
            "gRPC: {} connections and {} calls open at the drain; since then {} calls finished, {} streams ended \
             UNAVAILABLE at the soft deadline, {} health watches ended, {} calls dropped without a status (cut at the \
             hard deadline or reset by their client); {} handler panics and {} calls past their client's deadline \
             since the start",
            at_drain.connections,
            at_drain.calls,
            now.finished - at_drain.finished,
            now.unavailable - at_drain.unavailable,
            now.watches - at_drain.watches,
            now.dropped - at_drain.dropped,
            self.calls_panicked(),
            self.calls_past_deadline(),
        ));
        stopped
    }

    async fn reload(&self, ctx: &Context) -> Result<(), BoxError> {
        self.http.reload(ctx).await
    }
}

impl fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcServer")
            .field("http", &self.http)
            .field("services", &self.services)
            .field("calls_in_flight", &self.calls_in_flight())
            .finish_non_exhaustive()
    }
}
