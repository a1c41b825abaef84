//! `/livez` and `/readyz`, for Kubernetes probes and load balancers.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use lifecycle_core::{Health, LifecycleHandle, Phase};

/// Where the endpoints live.
#[derive(Clone, Debug)]
pub struct HealthPaths {
    /// Liveness: 200 while the process runs, during the drain too (default `/livez`).
    pub live: String,
    /// Readiness: 200 only in the ready phase with every critical component healthy, else 503,
    /// with a JSON body listing each component (default `/readyz`).
    pub ready: String,
}

impl Default for HealthPaths {
    fn default() -> Self {
        Self { live: "/livez".into(), ready: "/readyz".into() }
    }
}

/// A router with the liveness and readiness endpoints of `handle`'s run; merge it into the app's.
pub fn health_router(handle: LifecycleHandle, paths: &HealthPaths) -> Router {
    Router::new().route(&paths.live, get(live)).route(&paths.ready, get(ready)).with_state(handle)
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(handle): State<LifecycleHandle>) -> impl IntoResponse {
    let phase = handle.phase();
    let statuses = handle.components();
    let health = if phase == Phase::Ready { handle.health().await } else { Vec::new() };
    let mut ready = phase == Phase::Ready;
    let mut components = Vec::with_capacity(statuses.len());
    for status in &statuses {
        let state = status.stage.map_or_else(
            || status.outcome.as_ref().map_or_else(|| "pending".to_owned(), ToString::to_string),
            |stage| stage.to_string(),
        );
        let component_health = health.iter().find(|(name, _)| *name == status.name).map(|(_, h)| h);
        let health_text = match component_health {
            Some(Health::Healthy) => "healthy".to_owned(),
            Some(Health::Degraded(why)) => format!("degraded: {why}"),
            Some(Health::Unhealthy(why)) => format!("unhealthy: {why}"),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_owned(),
        };
        if status.critical && !component_health.is_some_and(Health::is_serving) {
            ready = false;
        }
        components.push(format!(
            "{{\"name\":{},\"critical\":{},\"state\":{},\"health\":{}}}",
            json_string(status.name.as_str()),
            status.critical,
            json_string(&state),
            json_string(&health_text)
        ));
    }
    let body = format!(
        "{{\"ready\":{ready},\"phase\":{},\"components\":[{}]}}\n",
        json_string(&phase.to_string()),
        components.join(",")
    );
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
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
