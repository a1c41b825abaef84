//! A real OTLP/gRPC receiver for the tests: the three collector services on 127.0.0.1:0,
//! counting what they receive, optionally answering late.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// One span as received: its name and its string attributes.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    pub attributes: HashMap<String, String>,
}

#[derive(Default, Debug)]
pub struct Received {
    pub spans: Vec<ReceivedSpan>,
    pub metric_points: u64,
    pub log_records: u64,
    /// Export requests that arrived, answered or not yet.
    pub requests: u64,
}

#[derive(Clone)]
struct State {
    received: Arc<Mutex<Received>>,
    delay: Duration,
}

impl State {
    async fn arrive(&self) {
        self.received.lock().unwrap().requests += 1;
        tokio::time::sleep(self.delay).await;
    }
}

#[tonic::async_trait]
impl TraceService for State {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.arrive().await;
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .map(|span| ReceivedSpan {
                name: span.name,
                attributes: span
                    .attributes
                    .into_iter()
                    .filter_map(|kv| match kv.value.and_then(|v| v.value) {
                        Some(Value::StringValue(text)) => Some((kv.key, text)),
                        _ => None,
                    })
                    .collect(),
            });
        self.received.lock().unwrap().spans.extend(spans);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for State {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.arrive().await;
        let points: usize = request
            .into_inner()
            .resource_metrics
            .into_iter()
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .map(|metric| match metric.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            })
            .sum();
        self.received.lock().unwrap().metric_points += points as u64;
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl LogsService for State {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.arrive().await;
        let records: usize = request
            .into_inner()
            .resource_logs
            .into_iter()
            .flat_map(|r| r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.received.lock().unwrap().log_records += records as u64;
        Ok(Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

/// A running receiver; dropped, it stops serving.
pub struct Receiver {
    pub address: SocketAddr,
    received: Arc<Mutex<Received>>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// A receiver that answers every export at once.
    pub async fn start() -> Self {
        Self::answering_after(Duration::ZERO).await
    }

    /// A receiver that takes each export and answers it only after `delay`.
    pub async fn answering_after(delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let state = State { received: Arc::clone(&received), delay };
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(state.clone()))
                .add_service(MetricsServiceServer::new(state.clone()))
                .add_service(LogsServiceServer::new(state))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self { address, received, server }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn with<T>(&self, read: impl FnOnce(&Received) -> T) -> T {
        read(&self.received.lock().unwrap())
    }

    pub fn spans_named(&self, name: &str) -> Vec<ReceivedSpan> {
        self.with(|r| r.spans.iter().filter(|s| s.name == name).cloned().collect())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An endpoint where nothing listens: a port bound, then released.
pub fn unreachable_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

/// The numbers in a note such as `exported 3 spans, 1 metric points, 2 log records; ...`:
/// the count written just before `what`, the first time it appears after `after`.
pub fn count_in(note: &str, after: &str, what: &str) -> u64 {
    let rest = &note[note.find(after).unwrap_or_else(|| panic!("no `{after}` in {note:?}"))..];
    let at = rest.find(what).unwrap_or_else(|| panic!("no `{what}` after `{after}` in {note:?}"));
    rest[..at].trim_end().rsplit(' ').next().unwrap().parse().unwrap()
}
