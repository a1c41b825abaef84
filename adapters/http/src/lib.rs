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
//!
//! With the feature `tls` (off by default), `HttpServer::with_tls` serves HTTPS, HTTP/2 and
//! HTTP/1.1 negotiated over ALPN, with rustls and its ring provider. The certificate and key come
//! from PEM files, checked when read (`TlsConfig::from_pem_files`), and are reloaded without a
//! restart: at every reload of the service (`SIGHUP`, `LifecycleHandle::reload`), on
//! `TlsConfig::reload`, or when the files change
//! (`TlsConfig::watch`). A reload that fails keeps the previous certificate, and connections
//! already open keep theirs.

mod accept;
mod activity;
mod backlog;
mod connection;
mod health;
mod metrics;
mod request;
mod server;
#[cfg(feature = "tls")]
mod tls;
pub mod websocket;

pub use axum;
pub use health::{HealthPaths, READINESS_FRESH_FOR, health_router};
pub use prometheus_client;
pub use request::{NotServedByHttpServer, RequestContext};
pub use server::HttpServer;
#[cfg(feature = "tls")]
pub use tls::{TlsConfig, TlsError, TlsFile};
