//! A collector that is down or slow costs the stop at most its timeout, never the exit code,
//! and the report says how much was dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use lifecycle_core::{ComponentOptions, FnComponent, Signals, testing};
use lifecycle_otel::Telemetry;
use lifecycle_otel::opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _};
use lifecycle_otel::opentelemetry::metrics::MeterProvider as _;
use lifecycle_otel::opentelemetry::trace::{Tracer as _, TracerProvider as _};
use support::{Receiver, count_in, unreachable_endpoint};

const SPANS: u64 = 20;
const RECORDS: u64 = 5;
const STOP_TIMEOUT: Duration = Duration::from_millis(1500);

/// Makes `SPANS` spans, one counter point and `RECORDS` log records through the providers.
fn produce(telemetry: &Telemetry) {
    let tracer = telemetry.tracer_provider().tracer("test");
    for i in 0..SPANS {
        tracer.in_span(format!("request {i}"), |_| {});
    }
    telemetry.meter_provider().meter("test").u64_counter("requests").build().add(SPANS, &[]);
    let logger = telemetry.logger_provider().logger("test");
    for i in 0..RECORDS {
        let mut record = logger.create_log_record();
        record.set_body(format!("request {i} served").into());
        logger.emit(record);
    }
}

/// Runs the telemetry component beside another one, shuts down, and returns the report and
/// how long the stop of the telemetry component took.
async fn run_and_stop(telemetry: Telemetry) -> (lifecycle_core::Report, Duration) {
    let mut builder = testing::builder();
    builder.signals(Signals::none()).shutdown_deadline(Duration::from_secs(20));
    builder.add(telemetry);
    builder.add(FnComponent::new("api"));
    let mut run = testing::TestRun::start(builder);
    run.ready().await;
    let report = run.stop().await;
    let stop = report.component("telemetry").unwrap().stop_duration.unwrap();
    (report, stop)
}

fn telemetry(endpoint: &str) -> Telemetry {
    Telemetry::builder("telemetry", endpoint)
        .options(ComponentOptions::new().stops_last(true).critical(false).stop_timeout(STOP_TIMEOUT))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_collector_is_noted_with_what_was_dropped_and_fails_nothing() {
    let telemetry = telemetry(&unreachable_endpoint());
    produce(&telemetry);
    let began = Instant::now();
    let (report, stop) = run_and_stop(telemetry).await;

    assert!(report.is_success(), "{report}");
    assert_eq!(report.exit_code, 0, "{report}");
    assert!(stop <= STOP_TIMEOUT, "stop took {stop:?}: {report}");
    assert!(began.elapsed() < STOP_TIMEOUT + Duration::from_secs(3), "{report}");
    let note = report.component("telemetry").unwrap().notes.join("\n");
    assert!(note.starts_with("collector unreachable at http://127.0.0.1:"), "{note}");
    assert_eq!(count_in(&note, "unreachable", "spans"), SPANS, "{note}");
    assert_eq!(count_in(&note, "unreachable", "metric points"), 1, "{note}");
    assert_eq!(count_in(&note, "unreachable", "log records"), RECORDS, "{note}");
    assert!(note.contains("dropped"), "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_collector_is_given_up_at_the_stop_timeout() {
    // It takes every export and answers a minute later; the export timeout is longer than the
    // stop timeout, so only the stop's own deadline can end the wait.
    let receiver = Receiver::answering_after(Duration::from_secs(60)).await;
    let telemetry = Telemetry::builder("telemetry", receiver.endpoint())
        .export_timeout(Duration::from_secs(30))
        .options(ComponentOptions::new().stops_last(true).critical(false).stop_timeout(STOP_TIMEOUT))
        .build()
        .unwrap();
    produce(&telemetry);
    let (report, stop) = run_and_stop(telemetry).await;

    assert!(report.is_success(), "{report}");
    assert_eq!(report.exit_code, 0);
    assert!(stop <= STOP_TIMEOUT, "stop took {stop:?}, more than its timeout: {report}");
    assert!(stop >= STOP_TIMEOUT / 2, "stop took {stop:?}: it did not wait for the collector");
    assert!(receiver.with(|r| r.requests) >= 1, "the exports reached the receiver");
    assert!(receiver.with(|r| r.spans.len()) == 0, "nothing was answered");
    let note = report.component("telemetry").unwrap().notes.join("\n");
    assert!(note.contains("too slow: gave up at the stop deadline"), "{note}");
    assert_eq!(count_in(&note, "deadline;", "spans"), SPANS, "{note}");
    assert_eq!(count_in(&note, "deadline;", "log records"), RECORDS, "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_in_the_endpoint_shows_nowhere() {
    let endpoint = unreachable_endpoint().replace("http://", "http://otel:s3cret@");
    let telemetry = telemetry(&endpoint);
    let debug = format!("{telemetry:?}");
    produce(&telemetry);
    let (report, _) = run_and_stop(telemetry).await;
    let shown = format!("{report}\n{report:?}\n{debug}");
    assert!(shown.contains("otel:***@127.0.0.1"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}
