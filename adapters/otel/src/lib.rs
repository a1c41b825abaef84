//! OpenTelemetry for a lifecycle service: tracer, meter and logger providers exporting over
//! OTLP/gRPC, as one [`Telemetry`] component that starts before and stops after every other
//! one ([`ComponentOptions::stops_last`](lifecycle_core::ComponentOptions::stops_last)), so the
//! spans of every other stop are flushed; its stop shuts the providers down within its stop
//! timeout, and notes how many spans, metric points and log records were exported or dropped.
//! A collector that is down or slow costs at most that timeout, never the exit code.
//!
//! ```no_run
//! use lifecycle_core::RegistryBuilder;
//! use lifecycle_otel::Telemetry;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let telemetry = Telemetry::builder("telemetry", "http://127.0.0.1:4317").service_name("orders").build()?;
//! let subscriber = tracing_subscriber::registry().with(telemetry.layer());
//! tracing::subscriber::set_global_default(subscriber)?;
//! let meter = opentelemetry::metrics::MeterProvider::meter(telemetry.meter_provider(), "orders");
//! # let _ = meter;
//! let mut builder = RegistryBuilder::new();
//! builder.add(telemetry);
//! // ... the service's own components, which need not name it.
//! builder.build()?.run().await.exit();
//! # }
//! ```
//!
//! `opentelemetry`, `opentelemetry_sdk` and `tracing_opentelemetry` are re-exported, so their
//! versions are pinned once.

mod counting;
mod error;
mod telemetry;

pub use counting::TelemetryStats;
pub use error::TelemetryError;
pub use telemetry::{Telemetry, TelemetryBuilder};
pub use {opentelemetry, opentelemetry_sdk, tracing_opentelemetry};
