//! Consumer throughput of `lifecycle_nats::JetStreamConsumer` against the same work written
//! directly on async-nats, in the same process, on the shared NATS server (127.0.0.1:4222 with
//! JetStream; `scripts/test` starts it). Issue 16's target: within 5%.
//!
//! One stream holds the messages (100 bytes each, published once at the start); each measurement
//! reads all of them through a durable pull consumer of its own, so every round sees the same
//! stream. The work per message is the same on both sides: a handler that does nothing, then an
//! ack the server confirms (`double_ack`: what the adapter does, so that an ack lost with the
//! connection is not counted as done), `CONCURRENCY` messages at a time.
//! - **raw**: `consumer.messages()` (async-nats's own continuous pull) and
//!   `for_each_concurrent(CONCURRENCY, ..)` acking each message.
//! - **adapter**: a `JetStreamConsumer` with `concurrency(CONCURRENCY)` in a registry, as a
//!   service runs it; timed from the registry's start to the last confirmed ack. Twice: with its
//!   default prefetch (as many as `CONCURRENCY`), and asking as far ahead as the raw loop does.
//!
//! The two alternate, `ROUNDS` times each; the table has each round's rate and the median's ratio.
//! `cargo run --release -p lifecycle-benches --bin nats_consumer [-- --quick]`

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lifecycle_core::{BoxError, CancellationToken, Registry, Signals};
use lifecycle_nats::async_nats::{self, jetstream};
use lifecycle_nats::{Delivery, JetStreamConsumer, MessageHandler};

const URL: &str = "nats://127.0.0.1:4222";
const CONCURRENCY: usize = 32;
const ROUNDS: usize = 7;
/// What `consumer.messages()` asks for ahead by default (its batch): the adapter's second
/// measurement waits on as many (`CONCURRENCY` handled, the rest prefetched).
const RAW_BATCH: usize = 200;

struct Nothing;

impl MessageHandler for Nothing {
    async fn handle(&self, _delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
        Ok(())
    }
}

fn consumer_config(durable: &str) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(durable.to_owned()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ..Default::default()
    }
}

async fn raw(
    context: &jetstream::Context,
    stream: &str,
    durable: &str,
    messages: u64,
) -> Result<Duration, BoxError> {
    let began = Instant::now();
    let consumer =
        context.get_stream(stream).await?.get_or_create_consumer(durable, consumer_config(durable)).await?;
    let acked = std::sync::atomic::AtomicU64::new(0);
    consumer
        .messages()
        .await?
        .take(messages as usize)
        .for_each_concurrent(CONCURRENCY, |message| async {
            if let Ok(message) = message
                && message.double_ack().await.is_ok()
            {
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .await;
    let time = began.elapsed();
    let acked = acked.into_inner();
    if acked != messages {
        return Err(format!("raw: {acked} of {messages} acked").into());
    }
    Ok(time)
}

async fn adapter(stream: &str, durable: &str, messages: u64, prefetch: usize) -> Result<Duration, BoxError> {
    let began = Instant::now();
    let mut builder = Registry::builder();
    builder.signals(Signals::none());
    let consumer = builder
        .add(
            JetStreamConsumer::new("consumer", URL, stream, durable, Nothing)
                .concurrency(CONCURRENCY)
                .prefetch(prefetch),
        )
        .dep();
    let registry = builder.build()?;
    let handle = registry.handle();
    let run = tokio::spawn(registry.run());
    while consumer.stats().acked < messages {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let time = began.elapsed();
    handle.shutdown().request("bench over", 0);
    let report = run.await?;
    if !report.is_success() {
        return Err(format!("adapter: {report}").into());
    }
    Ok(time)
}

async fn publish(context: &jetstream::Context, subject: &str, messages: u64) -> Result<(), BoxError> {
    let payload = vec![b'x'; 100];
    let mut acks = Vec::with_capacity(1000);
    for _ in 0..messages {
        acks.push(context.publish(subject.to_owned(), payload.clone().into()).await?);
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let messages: u64 = if quick { 5_000 } else { 100_000 };
    lifecycle_benches::runtime().block_on(async move {
        let context = jetstream::new(async_nats::connect(URL).await?);
        let stream = format!("BENCH_CONSUMER_{}", std::process::id());
        context
            .create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{stream}.>")],
                ..Default::default()
            })
            .await?;
        publish(&context, &format!("{stream}.event"), messages).await?;
        let mut rates = (Vec::new(), Vec::new(), Vec::new());
        println!("{messages} messages of 100 bytes, {CONCURRENCY} at a time, acks confirmed by the server\n");
        println!(
            "| round | raw async-nats (asks {RAW_BATCH} ahead) | adapter, default prefetch ({CONCURRENCY}) | / raw | adapter, prefetch {} | / raw |",
            RAW_BATCH - CONCURRENCY
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for round in 1..=ROUNDS {
            let rate = |time: Duration| messages as f64 / time.as_secs_f64();
            let raw_rate = rate(raw(&context, &stream, &format!("raw{round}"), messages).await?);
            let default_rate =
                rate(adapter(&stream, &format!("adapter{round}"), messages, CONCURRENCY).await?);
            let same_rate = rate(
                adapter(&stream, &format!("adapter_ahead{round}"), messages, RAW_BATCH - CONCURRENCY).await?,
            );
            println!(
                "| {round} | {raw_rate:.0}/s | {default_rate:.0}/s | {:.3}x | {same_rate:.0}/s | {:.3}x |",
                default_rate / raw_rate,
                same_rate / raw_rate
            );
            rates.0.push(raw_rate);
            rates.1.push(default_rate);
            rates.2.push(same_rate);
        }
        let raw = lifecycle_benches::median(rates.0);
        let (default, same) = (lifecycle_benches::median(rates.1), lifecycle_benches::median(rates.2));
        println!(
            "| median | {raw:.0}/s | {default:.0}/s | **{:.3}x** | {same:.0}/s | **{:.3}x** |",
            default / raw,
            same / raw
        );
        context.delete_stream(&stream).await?;
        Ok(())
    })
}
