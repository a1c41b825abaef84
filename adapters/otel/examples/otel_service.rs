//! A service that makes a `request` span (with a log line and a counter increment inside)
//! every 2 ms until it is sent SIGTERM, exporting to the collector at `$OTEL_ENDPOINT`:
//! `OTEL_ENDPOINT=http://127.0.0.1:4317 cargo run -p lifecycle-otel --example otel_service`.
//! Prints `ready` once serving, and `requests N` with the number of spans it made once its
//! worker stopped. The tests of `lifecycle-otel` run it.

use std::sync::Arc;
use std::time::Duration;

use lifecycle_core::{BoxError, FnComponent, Registry};
use lifecycle_otel::Telemetry;
use lifecycle_otel::opentelemetry::metrics::MeterProvider as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let endpoint = std::env::var("OTEL_ENDPOINT")?;
    let telemetry = Telemetry::builder("telemetry", endpoint).service_name("otel_service").build()?;
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(telemetry.layer()))?;
    let requests = Arc::new(telemetry.meter_provider().meter("otel_service").u64_counter("requests").build());

    let mut builder = Registry::builder();
    builder.shutdown_deadline(Duration::from_secs(20));
    builder.add(telemetry);
    builder.add(FnComponent::new("worker").on_start(move |ctx| {
        let requests = Arc::clone(&requests);
        async move {
            let token = ctx.token().clone();
            ctx.tasks().spawn("serve", async move {
                let mut made = 0_u64;
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                loop {
                    tokio::select! {
                        () = token.cancelled() => break,
                        _ = tick.tick() => {
                            made += 1;
                            let span = tracing::info_span!("request", n = made);
                            let _entered = span.enter();
                            tracing::info!(n = made, "request served");
                            requests.add(1, &[]);
                        }
                    }
                }
                println!("requests {made}");
            });
            Ok::<(), BoxError>(())
        }
    }));
    builder.on_ready(|_| println!("ready"));
    builder.build()?.run().await.exit()
}
