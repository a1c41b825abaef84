//! The component: the three providers, built at once with their OTLP exporters, handed out to
//! the service and to its `tracing` subscriber, and flushed then shut down at its stop, last.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lifecycle_core::{
    BoxError, Component, ComponentId, ComponentOptions, Context, Health, redact_url, scrub_password,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{BatchLogProcessor, SdkLoggerProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tokio::time::Instant;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::counting::{
    Counters, CountingLogExporter, CountingLogProcessor, CountingMetricExporter, CountingSpanExporter,
    CountingSpanProcessor,
};
use crate::{TelemetryError, TelemetryStats};

/// How long before its deadline the stop gives up on the collector, so that its own note and
/// error reach the report rather than the registry's timeout.
const MARGIN: Duration = Duration::from_millis(150);

/// Targets whose events are never turned into log records: the exporter's own stack logs while
/// it exports, and exporting those lines would export more of them.
const OWN_TARGETS: [&str; 6] = ["opentelemetry", "tonic", "h2", "hyper", "tower", "lifecycle_otel::export"];

/// Settings of a [`Telemetry`] component; [`build`](TelemetryBuilder::build) makes the providers.
#[derive(Clone)]
#[must_use = "a builder does nothing until it is built"]
pub struct TelemetryBuilder {
    name: ComponentId,
    endpoint: String,
    service_name: String,
    export_timeout: Duration,
    metrics_interval: Duration,
    options: ComponentOptions,
}

impl TelemetryBuilder {
    /// The `service.name` resource attribute (default: the component's name).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// The limit of one export request (default 5 s). The stop cuts an export in flight short
    /// at its own deadline anyway.
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = timeout;
        self
    }

    /// How often metrics are collected and exported (default 60 s); the stop collects once more.
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = interval;
        self
    }

    /// The component's options. The defaults: [`stops_last`](ComponentOptions::stops_last), so
    /// every other component (and its spans) has ended before the providers flush; not
    /// critical, since telemetry that cannot be delivered must not fail the service; a stop
    /// timeout of 5 s.
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    /// Builds the providers and their OTLP/gRPC exporters. The channel connects lazily: a
    /// collector that is down is not an error here, its exports fail and are counted. Needs a
    /// tokio runtime (the channel's worker runs on it).
    pub fn build(self) -> Result<Telemetry, TelemetryError> {
        let counters = Arc::new(Counters::default());
        let resource = Resource::builder().with_service_name(self.service_name.clone()).build();
        let failed = |signal: &'static str| {
            let this = &self;
            move |error: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter {
                component: this.name.clone(),
                signal,
                endpoint: redact_url(&this.endpoint),
                reason: scrub_password(&error.to_string(), &this.endpoint),
            }
        };

        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(self.endpoint.clone())
            .with_timeout(self.export_timeout)
            .build()
            .map_err(failed("traces"))?;
        let spans = CountingSpanExporter { inner: spans, counters: Arc::clone(&counters) };
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(CountingSpanProcessor {
                inner: BatchSpanProcessor::builder(spans).build(),
                counters: Arc::clone(&counters),
            })
            .build();

        let points = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(self.endpoint.clone())
            .with_timeout(self.export_timeout)
            .build()
            .map_err(failed("metrics"))?;
        let points = CountingMetricExporter { inner: points, counters: Arc::clone(&counters) };
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(PeriodicReader::builder(points).with_interval(self.metrics_interval).build())
            .build();

        let records = opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(self.endpoint.clone())
            .with_timeout(self.export_timeout)
            .build()
            .map_err(failed("logs"))?;
        let records = CountingLogExporter { inner: records, counters: Arc::clone(&counters) };
        let logger_provider = SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_log_processor(CountingLogProcessor {
                inner: BatchLogProcessor::builder(records).build(),
                counters: Arc::clone(&counters),
            })
            .build();

        Ok(Telemetry {
            name: self.name,
            endpoint: self.endpoint,
            options: self.options,
            tracer_provider,
            meter_provider,
            logger_provider,
            counters,
        })
    }
}

impl fmt::Debug for TelemetryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryBuilder")
            .field("name", &self.name)
            .field("endpoint", &redact_url(&self.endpoint))
            .field("service_name", &self.service_name)
            .field("export_timeout", &self.export_timeout)
            .field("metrics_interval", &self.metrics_interval)
            .field("options", &self.options)
            .finish()
    }
}

/// Tracer, meter and logger providers exporting over OTLP/gRPC, as one component that stops
/// after every other one: its stop flushes what they produced and shuts the providers down
/// within its stop timeout, and notes in the report how much was exported or dropped.
///
/// The providers are built with the component (before the run, so that the run's own spans
/// are exported too) and handed to the service: [`layer`](Telemetry::layer) for its `tracing`
/// subscriber, [`meter_provider`](Telemetry::meter_provider) for its instruments. No global
/// provider is installed.
pub struct Telemetry {
    name: ComponentId,
    endpoint: String,
    options: ComponentOptions,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    logger_provider: SdkLoggerProvider,
    counters: Arc<Counters>,
}

impl Telemetry {
    /// Settings for a component named `name` exporting to the OTLP/gRPC collector at
    /// `endpoint` (`http://127.0.0.1:4317`).
    pub fn builder(name: impl Into<ComponentId>, endpoint: impl Into<String>) -> TelemetryBuilder {
        let name = name.into();
        TelemetryBuilder {
            service_name: name.to_string(),
            name,
            endpoint: endpoint.into(),
            export_timeout: Duration::from_secs(5),
            metrics_interval: Duration::from_secs(60),
            options: ComponentOptions::new()
                .stops_last(true)
                .critical(false)
                .stop_timeout(Duration::from_secs(5)),
        }
    }

    /// A `tracing` layer that turns spans into OpenTelemetry spans (the lifecycle's own hook
    /// spans, `lifecycle` with `component` and `hook`, among them) and events into log records.
    /// Add it to the subscriber before the registry runs.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        let tracer = self.tracer_provider.tracer("lifecycle-otel");
        let spans = tracing_opentelemetry::layer().with_tracer(tracer);
        let records =
            opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(&self.logger_provider)
                .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                    !OWN_TARGETS.iter().any(|own| metadata.target().starts_with(own))
                }));
        spans.and_then(records)
    }

    /// The tracer provider, for spans made without `tracing`.
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }

    /// The meter provider: the service makes its instruments from it.
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.meter_provider
    }

    /// The logger provider, for log records made without `tracing`.
    pub fn logger_provider(&self) -> &SdkLoggerProvider {
        &self.logger_provider
    }

    /// What was produced, exported and dropped so far.
    pub fn stats(&self) -> TelemetryStats {
        self.counters.stats()
    }

    /// The endpoint with its password hidden.
    pub fn redacted_endpoint(&self) -> String {
        redact_url(&self.endpoint)
    }

    /// Shuts the three providers down at once, each flushing what it holds, until `until`;
    /// then ends every export still in flight. Whether they all finished by then.
    async fn shut_down(&self, ctx: &Context, until: Instant) -> bool {
        let (done, mut finished) = tokio::sync::mpsc::channel(3);
        let left = until.saturating_duration_since(Instant::now());
        let shutdowns: [(&'static str, Shutdown); 3] = [
            ("traces", {
                let provider = self.tracer_provider.clone();
                Box::new(move || log_shutdown("traces", provider.shutdown_with_timeout(left)))
            }),
            ("metrics", {
                let provider = self.meter_provider.clone();
                Box::new(move || log_shutdown("metrics", provider.shutdown_with_timeout(left)))
            }),
            ("logs", {
                let provider = self.logger_provider.clone();
                Box::new(move || log_shutdown("logs", provider.shutdown_with_timeout(left)))
            }),
        ];
        for (signal, shutdown) in shutdowns {
            let done = done.clone();
            // The SDK's shutdowns block (they wait on their processors' threads).
            ctx.tasks().spawn_blocking(format!("shutdown {signal}"), move || {
                shutdown();
                let _ = done.try_send(());
            });
        }
        drop(done);
        let all = async { while finished.recv().await.is_some() {} };
        if tokio::time::timeout_at(until, all).await.is_ok() {
            return true;
        }
        // Fail what is in flight or still queued: the processors' threads then finish their
        // shutdown at once, and the tasks above with them, within the stop timeout.
        self.counters.give_up.cancel();
        false
    }

    /// The report's line: what reached the collector, and what did not and why.
    fn summary(&self, in_time: bool) -> String {
        let stats = self.stats();
        let exported = format!(
            "{} spans, {} metric points, {} log records",
            stats.spans_exported, stats.metric_points_exported, stats.log_records_exported
        );
        if !stats.dropped_any() {
            return format!("exported {exported}; none dropped");
        }
        let dropped = format!(
            "{} spans, {} metric points, {} log records dropped",
            stats.spans_dropped(),
            stats.metric_points_dropped(),
            stats.log_records_dropped()
        );
        let error = self.counters.last_error().map(|e| scrub_password(&e, &self.endpoint));
        let nothing_exported =
            stats.spans_exported + stats.metric_points_exported + stats.log_records_exported == 0;
        let unreachable = error.as_deref().is_some_and(|e| e.contains("Unavailable"));
        let endpoint = self.redacted_endpoint();
        let why = error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
        if !in_time {
            format!(
                "collector at {endpoint} too slow: gave up at the stop deadline; {dropped}, exported {exported}{why}"
            )
        } else if unreachable && nothing_exported {
            format!("collector unreachable at {endpoint}: {dropped}{why}")
        } else {
            format!("exported {exported}; {dropped}{why}")
        }
    }
}

/// One provider's blocking shutdown.
type Shutdown = Box<dyn FnOnce() + Send>;

/// The target of the component's own lines: never turned into log records (see [`OWN_TARGETS`]).
fn log_shutdown(signal: &'static str, result: opentelemetry_sdk::error::OTelSdkResult) {
    if let Err(error) = result {
        tracing::debug!(target: "lifecycle_otel::export", signal, %error, "provider shutdown did not complete");
    }
}

impl Component for Telemetry {
    fn name(&self) -> ComponentId {
        self.name.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    /// Providers shut down cannot export again, and they were built before the run.
    fn restartable(&self) -> bool {
        false
    }

    async fn start(&self, _ctx: &Context) -> Result<(), BoxError> {
        tracing::info!(component = %self.name, endpoint = %self.redacted_endpoint(), "exporting telemetry over OTLP/gRPC");
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        let until = ctx.give_up_at(MARGIN, Duration::from_secs(5));
        let in_time = self.shut_down(ctx, until).await;
        let summary = self.summary(in_time);
        // Not an error: telemetry that could not be delivered is reported, it does not fail
        // the service (the note says what was lost).
        if self.stats().dropped_any() {
            tracing::warn!(component = %self.name, %summary, "telemetry lost at the stop");
        }
        ctx.note(summary);
        Ok(())
    }

    async fn health(&self) -> Health {
        let stats = self.stats();
        match self.counters.last_error() {
            Some(error) if stats.spans_failed + stats.log_records_failed + stats.metric_points_failed > 0 => {
                Health::Degraded(format!(
                    "exports to {} failing: {}",
                    self.redacted_endpoint(),
                    scrub_password(&error, &self.endpoint)
                ))
            }
            _ => Health::Healthy,
        }
    }
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("name", &self.name)
            .field("endpoint", &self.redacted_endpoint())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
