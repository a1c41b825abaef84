//! An axum/hyper HTTP server as a lifecycle component that drains without dropping a request,
//! and the health endpoints that tell load balancers when to stop sending.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use lifecycle_core::RegistryBuilder;
//! use lifecycle_http::{HealthPaths, HttpServer};
//!
//! # fn main() -> std::io::Result<()> {
//! let mut builder = RegistryBuilder::new();
//! // The listener is bound by the application (or inherited): the server never binds.
//! let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! builder.add(HttpServer::new("http", listener, app).with_health(HealthPaths::default()).with_metrics("/metrics"));
//! # Ok(()) }
//! ```

mod accept;
mod backlog;
mod health;
mod metrics;
mod panic;
mod server;
pub mod websocket;

pub use axum;
pub use health::{HealthPaths, READINESS_FRESH_FOR, health_router};
pub use server::{HttpServer, RequestContext};
