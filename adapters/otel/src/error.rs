//! The error of building the providers, naming the component.

use lifecycle_core::ComponentId;

/// The providers could not be built: the endpoint does not parse, or no tokio runtime is there
/// for the gRPC channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// One of the OTLP exporters could not be built.
    #[error("component `{component}`: cannot build the OTLP {signal} exporter for {endpoint}: {reason}")]
    Exporter {
        /// The component.
        component: ComponentId,
        /// `traces`, `metrics` or `logs`.
        signal: &'static str,
        /// The collector's endpoint, password hidden.
        endpoint: String,
        /// What the exporter said, password hidden.
        reason: String,
    },
}
