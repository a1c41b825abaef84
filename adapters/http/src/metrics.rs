//! `/metrics` in the Prometheus text format: the run's phase, each component's state and
//! durations, the server's request counters and the service's own metrics, read at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use lifecycle_core::{LifecycleHandle, Phase, ReadinessStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::server::Counters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadinessLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentStateLabel {
    component: String,
    state: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Registers a service's own metrics at each scrape (see `HttpServer::with_metrics_from`).
pub(crate) type MetricsSource = Arc<dyn Fn(&mut Registry) + Send + Sync>;

pub(crate) struct MetricsState {
    pub(crate) handle: LifecycleHandle,
    pub(crate) counters: Arc<Counters>,
    pub(crate) sources: Vec<MetricsSource>,
}

/// Renders the metrics. A fresh registry per scrape: every value is read from its source, so
/// nothing is kept in sync, and nothing is global.
pub(crate) fn render(state: &MetricsState) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("lifecycle");

    let phase = Family::<PhaseLabel, Gauge>::default();
    let current = state.handle.phase();
    for candidate in [Phase::Starting, Phase::Ready, Phase::Draining, Phase::Stopping, Phase::Stopped] {
        phase
            .get_or_create(&PhaseLabel { phase: candidate.to_string() })
            .set(i64::from(candidate == current));
    }
    registry.register("phase", "The service's phase (1 for the current one)", phase);

    let readiness = Family::<ReadinessLabel, Gauge>::default();
    let current = state.handle.readiness_by_stage().status;
    for candidate in [ReadinessStatus::Ready, ReadinessStatus::Degraded, ReadinessStatus::Unready] {
        readiness
            .get_or_create(&ReadinessLabel { status: candidate.to_string() })
            .set(i64::from(candidate == current));
    }
    registry.register(
        "readiness",
        "Ready, degraded (a component restarting or an optional one down) or unready, by stage (1 for the current one)",
        readiness,
    );

    let component_state = Family::<ComponentStateLabel, Gauge>::default();
    let start = Family::<ComponentLabel, FloatGauge>::default();
    let stop = Family::<ComponentLabel, FloatGauge>::default();
    let restarts = Family::<ComponentLabel, Counter>::default();
    let task_restarts = Family::<ComponentLabel, Counter>::default();
    let failures = Family::<ComponentLabel, Counter>::default();
    let next_restart = Family::<ComponentLabel, FloatGauge>::default();
    let now = tokio::time::Instant::now();
    for status in state.handle.components() {
        let state = status.stage.map_or_else(
            || {
                status.outcome.as_ref().map_or_else(
                    || "pending".to_owned(),
                    |o| if o.is_failure() { "failed".into() } else { "stopped".into() },
                )
            },
            |stage| stage.to_string(),
        );
        component_state
            .get_or_create(&ComponentStateLabel { component: status.name.to_string(), state })
            .set(1);
        let label = ComponentLabel { component: status.name.to_string() };
        restarts.get_or_create(&label).inc_by(u64::from(status.restarts));
        task_restarts.get_or_create(&label).inc_by(status.task_restarts);
        failures.get_or_create(&label).inc_by(status.failures);
        if let Some(at) = status.next_restart {
            next_restart.get_or_create(&label).set(at.saturating_duration_since(now).as_secs_f64());
        }
        if let Some(duration) = status.start_duration {
            start.get_or_create(&label).set(duration.as_secs_f64());
        }
        if let Some(duration) = status.stop_duration {
            stop.get_or_create(&label).set(duration.as_secs_f64());
        }
    }
    // Components of the scopes open now, under their full path.
    for scope in crate::health::open_scopes(&state.handle) {
        for status in &scope.components {
            let state = status.stage.map_or_else(|| "pending".to_owned(), |stage| stage.to_string());
            component_state
                .get_or_create(&ComponentStateLabel {
                    component: format!("{}/{}", scope.path, status.name),
                    state,
                })
                .set(1);
        }
    }
    registry.register(
        "component_state",
        "Each component's current state (scopes' under their path)",
        component_state,
    );
    registry.register("component_start_seconds", "How long each component's start took", start);
    registry.register("component_stop_seconds", "How long each component's stop took", stop);
    registry.register("component_restarts", "Restarts of each component by its restart policy", restarts);
    registry.register(
        "component_task_restarts",
        "Restarts of each component's supervised tasks",
        task_restarts,
    );
    registry.register("component_failures", "Failures of each component's hooks and tasks", failures);
    registry.register(
        "component_next_restart_seconds",
        "Time until the next start of each component waiting to restart",
        next_restart,
    );
    let reloads = state.handle.reload_counts();
    let (total, failed) = (Counter::<u64>::default(), Counter::<u64>::default());
    total.inc_by(reloads.total);
    failed.inc_by(reloads.failed);
    registry.register("reloads", "Reloads of the service (SIGHUP, or a reload request)", total);
    registry.register("reloads_failed", "Reloads in which some component's reload failed", failed);

    let http = registry.sub_registry_with_prefix("http");
    let counters = &state.counters;
    let in_flight = AtomicU64::new(counters.in_flight());
    let gauges = [
        ("requests_in_flight", "Requests being served", &in_flight),
        ("connections_open", "Client connections open, WebSockets included", &counters.connections_open),
        ("websockets_open", "WebSockets open", &counters.websockets_open),
        ("shutdown_drained_requests", "Requests finished during the stop", &counters.drained),
        ("shutdown_cancelled_requests", "Requests cancelled at the soft deadline", &counters.cancelled),
        ("shutdown_cut_requests", "Requests cut at the hard deadline", &counters.cut),
    ];
    for (name, help, value) in gauges {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::try_from(value.load(Ordering::Acquire)).unwrap_or(i64::MAX));
        http.register(name, help, gauge);
    }
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut totals = vec![
        ("requests_completed", "Requests answered since the start", &counters.completed),
        ("requests_panicked", "Requests whose handler panicked, answered 500", &counters.panicked),
        ("requests_timed_out", "Requests cut at the request timeout, answered 503", &counters.timed_out),
        (
            "header_timeouts",
            "Connections closed because a request's head took longer than the header-read timeout",
            &counters.header_timeouts,
        ),
        ("connection_limit_reached", "Times the connection limit was reached", &counters.limit_reached),
        (
            "connections_turned_away",
            "Connections answered 503 and closed because the connection limit was reached",
            &counters.turned_away,
        ),
        (
            "websockets_going_away",
            "WebSockets closed with 1001 (going away) because the server stopped",
            &counters.websockets_going_away,
        ),
    ];
    #[cfg(feature = "tls")]
    totals.push((
        "tls_handshakes_failed",
        "TLS handshakes that failed or timed out",
        &counters.tls_handshakes_failed,
    ));
    for (name, help, value) in totals {
        let counter = Counter::<u64>::default();
        counter.inc_by(value.load(Ordering::Acquire));
        http.register(name, help, counter);
    }

    let mut own = Registry::default();
    for source in &state.sources {
        source(&mut own);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &registry)?;
    prometheus_client::encoding::text::encode_registry(&mut text, &own)?;
    prometheus_client::encoding::text::encode_eof(&mut text)?;
    Ok(text)
}

pub(crate) async fn metrics(State(state): State<Arc<MetricsState>>) -> impl IntoResponse {
    match render(&state) {
        Ok(text) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::from("encoding failed\n"),
        ),
    }
}
