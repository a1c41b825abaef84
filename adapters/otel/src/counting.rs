//! Exporter and processor wrappers that count what was produced, exported and dropped, and
//! that end an export in flight when the stop gives up on it.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lifecycle_core::CancellationToken;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};

/// What the providers produced and what reached the collector, since they were built.
///
/// Counted by the component's own wrappers around the SDK's processors and OTLP exporters:
/// a span or log record is *produced* when it ends (is emitted) and handed to the batch
/// processor, *exported* when the collector answered the export that carried it with success.
/// The difference was dropped: in a failed export, in the processor's queue when it was full,
/// or still queued when the stop gave up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryStats {
    /// Spans that ended (sampled ones, handed to the batch processor).
    pub spans_produced: u64,
    /// Spans the collector accepted.
    pub spans_exported: u64,
    /// Spans in exports that failed (refused, unreachable collector, timed out, given up).
    pub spans_failed: u64,
    /// Metric data points the collector accepted.
    pub metric_points_exported: u64,
    /// Metric data points in exports that failed.
    pub metric_points_failed: u64,
    /// Log records emitted (handed to the batch processor).
    pub log_records_produced: u64,
    /// Log records the collector accepted.
    pub log_records_exported: u64,
    /// Log records in exports that failed.
    pub log_records_failed: u64,
}

impl TelemetryStats {
    /// Spans produced and not exported.
    pub fn spans_dropped(&self) -> u64 {
        self.spans_produced.saturating_sub(self.spans_exported)
    }

    /// Log records produced and not exported.
    pub fn log_records_dropped(&self) -> u64 {
        self.log_records_produced.saturating_sub(self.log_records_exported)
    }

    /// Metric points that did not reach the collector (a collection the stop gave up on before
    /// it was exported is not counted: its points were never made).
    pub fn metric_points_dropped(&self) -> u64 {
        self.metric_points_failed
    }

    /// Whether anything was dropped.
    pub fn dropped_any(&self) -> bool {
        self.spans_dropped() + self.log_records_dropped() + self.metric_points_dropped() > 0
    }
}

/// The counters the wrappers share with the component.
#[derive(Default)]
pub(crate) struct Counters {
    spans_produced: AtomicU64,
    spans_exported: AtomicU64,
    spans_failed: AtomicU64,
    points_exported: AtomicU64,
    points_failed: AtomicU64,
    logs_produced: AtomicU64,
    logs_exported: AtomicU64,
    logs_failed: AtomicU64,
    /// The last export error, as the exporter said it.
    last_error: Mutex<Option<String>>,
    /// Cancelled when the stop gives up: exports in flight or still to come fail at once, so
    /// the processors' threads end and nothing outlives the stop timeout.
    pub(crate) give_up: CancellationToken,
}

impl Counters {
    pub(crate) fn stats(&self) -> TelemetryStats {
        // Relaxed: each counter is read on its own; the stop reads them after the processors'
        // shutdowns returned, which orders their updates before the reads.
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TelemetryStats {
            spans_produced: load(&self.spans_produced),
            spans_exported: load(&self.spans_exported),
            spans_failed: load(&self.spans_failed),
            metric_points_exported: load(&self.points_exported),
            metric_points_failed: load(&self.points_failed),
            log_records_produced: load(&self.logs_produced),
            log_records_exported: load(&self.logs_exported),
            log_records_failed: load(&self.logs_failed),
        }
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Runs one export, unless the stop gave up, and counts its `items` as exported or failed.
    async fn export(
        &self,
        items: u64,
        exported: &AtomicU64,
        failed: &AtomicU64,
        export: impl Future<Output = OTelSdkResult>,
    ) -> OTelSdkResult {
        let result = if self.give_up.is_cancelled() {
            Err(OTelSdkError::InternalFailure("gave up at the stop deadline".to_owned()))
        } else {
            tokio::select! {
                biased;
                result = export => result,
                () = self.give_up.cancelled() => {
                    Err(OTelSdkError::InternalFailure("gave up at the stop deadline".to_owned()))
                }
            }
        };
        match &result {
            Ok(()) => exported.fetch_add(items, Ordering::Relaxed),
            Err(error) => {
                *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
                failed.fetch_add(items, Ordering::Relaxed)
            }
        };
        result
    }
}

/// The counts alone: the last error may quote the endpoint, with its password.
impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counters").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// Counts the spans that end, before the batch processor takes them.
#[derive(Debug)]
pub(crate) struct CountingSpanProcessor<P> {
    pub(crate) inner: P,
    pub(crate) counters: Arc<Counters>,
}

impl<P: SpanProcessor> SpanProcessor for CountingSpanProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.counters.spans_produced.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts the spans of each export by how it ended.
#[derive(Debug)]
pub(crate) struct CountingSpanExporter<E> {
    pub(crate) inner: E,
    pub(crate) counters: Arc<Counters>,
}

impl<E: SpanExporter> SpanExporter for CountingSpanExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let counters = &self.counters;
        let items = batch.len() as u64;
        counters
            .export(items, &counters.spans_exported, &counters.spans_failed, self.inner.export(batch))
            .await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts the log records emitted, before the batch processor takes them.
#[derive(Debug)]
pub(crate) struct CountingLogProcessor<P> {
    pub(crate) inner: P,
    pub(crate) counters: Arc<Counters>,
}

impl<P: LogProcessor> LogProcessor for CountingLogProcessor<P> {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        self.counters.logs_produced.fetch_add(1, Ordering::Relaxed);
        self.inner.emit(data, instrumentation);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts the log records of each export by how it ended.
#[derive(Debug)]
pub(crate) struct CountingLogExporter<E> {
    pub(crate) inner: E,
    pub(crate) counters: Arc<Counters>,
}

impl<E: LogExporter> LogExporter for CountingLogExporter<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let counters = &self.counters;
        let items = batch.iter().count() as u64;
        counters.export(items, &counters.logs_exported, &counters.logs_failed, self.inner.export(batch)).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts the data points of each metrics export by how it ended.
pub(crate) struct CountingMetricExporter<E> {
    pub(crate) inner: E,
    pub(crate) counters: Arc<Counters>,
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let counters = &self.counters;
        let items = data_points(metrics);
        counters
            .export(items, &counters.points_exported, &counters.points_failed, self.inner.export(metrics))
            .await
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

impl<E> fmt::Debug for CountingMetricExporter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingMetricExporter").finish_non_exhaustive()
    }
}

/// The number of data points in one collection: what the collector counts too.
fn data_points(metrics: &ResourceMetrics) -> u64 {
    fn count<T>(data: &MetricData<T>) -> usize {
        match data {
            MetricData::Gauge(gauge) => gauge.data_points().count(),
            MetricData::Sum(sum) => sum.data_points().count(),
            MetricData::Histogram(histogram) => histogram.data_points().count(),
            MetricData::ExponentialHistogram(histogram) => histogram.data_points().count(),
        }
    }
    let points: usize = metrics
        .scope_metrics()
        .flat_map(|scope| scope.metrics())
        .map(|metric| match metric.data() {
            AggregatedMetrics::F64(data) => count(data),
            AggregatedMetrics::U64(data) => count(data),
            AggregatedMetrics::I64(data) => count(data),
        })
        .sum();
    points as u64
}
