//! `/livez` and `/readyz`, for Kubernetes probes and load balancers.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;

use lifecycle_core::{ComponentStatus, Health, LifecycleHandle, Phase, ScopeStatus};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Where the endpoints live.
#[derive(Clone, Debug)]
pub struct HealthPaths {
    /// Liveness: 200 while the process runs, during the drain too (default `/livez`).
    pub live: String,
    /// Readiness (default `/readyz`): 200 when ready or degraded (an optional component down, a
    /// component restarting by its policy), 503 when unready (not in the ready phase, or a
    /// critical component unhealthy), with a JSON body: the status, the problems by component,
    /// and each component's state, health, restarts, failures, last failure and next restart.
    pub ready: String,
}

impl Default for HealthPaths {
    fn default() -> Self {
        Self { live: "/livez".into(), ready: "/readyz".into() }
    }
}

/// A router with the liveness and readiness endpoints of `handle`'s run; merge it into the app's.
///
/// Readiness runs every component's health check (a database query, a `PING`): at most once
/// per [`READINESS_FRESH_FOR`] while the service is ready, however many probes come (they
/// share the last answer, and one check runs at a time), so a flood of probes cannot take a
/// pool's connections. A phase change (the drain) is answered at once.
pub fn health_router(handle: LifecycleHandle, paths: &HealthPaths) -> Router {
    let state = Arc::new(ReadyState { handle, last: std::sync::Mutex::new(None), checking: Mutex::new(()) });
    Router::new().route(&paths.live, get(live)).route(&paths.ready, get(ready)).with_state(state)
}

/// How long a readiness answer is reused while the service stays ready.
pub const READINESS_FRESH_FOR: Duration = Duration::from_secs(1);

/// The readiness endpoint's state: the run, and its last answer while ready.
struct ReadyState {
    handle: LifecycleHandle,
    last: std::sync::Mutex<Option<(Instant, StatusCode, String)>>,
    /// Held while the checks run, so that concurrent probes wait for one answer.
    checking: Mutex<()>,
}

impl ReadyState {
    /// The last answer, if it is fresh and the service is still ready.
    fn fresh(&self) -> Option<(StatusCode, String)> {
        if self.handle.phase() != Phase::Ready {
            return None;
        }
        let last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.as_ref()
            .filter(|(at, _, _)| at.elapsed() < READINESS_FRESH_FOR)
            .map(|(_, status, body)| (*status, body.clone()))
    }
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(state): State<Arc<ReadyState>>) -> impl IntoResponse {
    let (status, body) = match state.fresh() {
        Some(answer) => answer,
        None => {
            let _checking = state.checking.lock().await;
            match state.fresh() {
                Some(answer) => answer,
                None => {
                    let answer = readiness_answer(&state.handle).await;
                    if state.handle.phase() == Phase::Ready {
                        let mut last = state.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        *last = Some((Instant::now(), answer.0, answer.1.clone()));
                    }
                    answer
                }
            }
        }
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// The readiness status and its JSON body, from a fresh look at the run.
async fn readiness_answer(handle: &LifecycleHandle) -> (StatusCode, String) {
    let readiness = handle.readiness().await;
    let now = Instant::now();
    let problems: Vec<String> = readiness
        .problems
        .iter()
        .map(|p| {
            format!(
                "{{\"component\":{},\"fatal\":{},\"problem\":{}}}",
                json_string(p.component.as_str()),
                p.fatal,
                json_string(&p.what)
            )
        })
        .collect();
    let components: Vec<String> = readiness
        .components
        .iter()
        .map(|status| {
            let state = state_of(status);
            let health = match readiness.health.iter().find(|(name, _)| *name == status.name).map(|(_, h)| h) {
                Some(Health::Healthy) => "healthy".to_owned(),
                Some(Health::Degraded(why)) => format!("degraded: {why}"),
                Some(Health::Unhealthy(why)) => format!("unhealthy: {why}"),
                Some(other) => format!("{other:?}"),
                None => "unknown".to_owned(),
            };
            let last_failure = status.last_failure.as_ref().map_or_else(|| "null".to_owned(), |f| json_string(&f.to_string()));
            let next_restart = status.next_restart.map_or_else(
                || "null".to_owned(),
                |at| at.saturating_duration_since(now).as_millis().to_string(),
            );
            format!(
                "{{\"name\":{},\"critical\":{},\"state\":{},\"health\":{},\"restarts\":{},\"task_restarts\":{},\"failures\":{},\"last_failure\":{last_failure},\"next_restart_in_ms\":{next_restart}}}",
                json_string(status.name.as_str()),
                status.critical,
                json_string(&state),
                json_string(&health),
                status.restarts,
                status.task_restarts,
                status.failures,
            )
        })
        .collect();
    // Scopes open now, nested ones too, each component under its full path.
    let scopes: Vec<String> = open_scopes(handle)
        .iter()
        .map(|scope| {
            let components: Vec<String> = scope
                .components
                .iter()
                .map(|c| {
                    format!(
                        "{{\"name\":{},\"state\":{},\"restarts\":{}}}",
                        json_string(&format!("{}/{}", scope.path, c.name)),
                        json_string(&state_of(c)),
                        c.restarts
                    )
                })
                .collect();
            format!(
                "{{\"path\":{},\"phase\":{},\"components\":[{}]}}",
                json_string(&scope.path),
                json_string(&scope.phase.to_string()),
                components.join(",")
            )
        })
        .collect();
    let body = format!(
        "{{\"ready\":{},\"status\":{},\"phase\":{},\"problems\":[{}],\"components\":[{}],\"scopes\":[{}]}}\n",
        readiness.is_ready(),
        json_string(&readiness.status.to_string()),
        json_string(&readiness.phase.to_string()),
        problems.join(","),
        components.join(","),
        scopes.join(",")
    );
    let status = if readiness.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, body)
}

/// What a component is doing, or how it ended.
fn state_of(status: &ComponentStatus) -> String {
    status.stage.map_or_else(
        || status.outcome.as_ref().map_or_else(|| "pending".to_owned(), ToString::to_string),
        |stage| stage.to_string(),
    )
}

/// Every scope open under `handle`'s run, nested ones after their owner's.
pub(crate) fn open_scopes(handle: &LifecycleHandle) -> Vec<ScopeStatus> {
    let mut all = Vec::new();
    let mut stack = handle.scopes();
    stack.reverse();
    while let Some(scope) = stack.pop() {
        let mut nested = scope.handle.scopes();
        nested.reverse();
        all.push(scope);
        stack.extend(nested);
    }
    all
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
