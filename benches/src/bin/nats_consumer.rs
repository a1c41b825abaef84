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
//!   service runs it; timed from the registry's start to the last confirmed ack. Three times:
//!   with its defaults (prefetch as many as `CONCURRENCY`, handlers inside the fetch task),
//!   asking as far ahead as the raw loop does, and with a task per message (`spawn_handlers`).
//!
//! The four take turns, `ROUNDS` times each; each consumer is deleted after its measurement. The
//! tables give each round's rates, then the medians: rates, the rounds' own ratios, and this
//! process's CPU time per message (the server is another process).
//! `cargo run --release -p lifecycle-benches --bin nats_consumer [-- --quick]`

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lifecycle_core::{BoxError, CancellationToken, Registry, Signals};
use lifecycle_nats::async_nats::{self, jetstream};
use lifecycle_nats::{Delivery, JetStreamConsumer, MessageHandler};

const URL: &str = "nats://127.0.0.1:4222";
const CONCURRENCY: usize = 32;
const ROUNDS: usize = 11;
/// What `consumer.messages()` asks for ahead by default (its batch): the adapter's "prefetch 168"
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

/// How the adapter is set up in a measurement.
#[derive(Clone, Copy)]
struct Setup {
    prefetch: usize,
    spawn_handlers: bool,
}

async fn adapter(stream: &str, durable: &str, messages: u64, setup: Setup) -> Result<Duration, BoxError> {
    let began = Instant::now();
    let mut builder = Registry::builder();
    builder.signals(Signals::none());
    let consumer = builder
        .add(
            JetStreamConsumer::new("consumer", URL, stream, durable, Nothing)
                .concurrency(CONCURRENCY)
                .prefetch(setup.prefetch)
                .spawn_handlers(setup.spawn_handlers),
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
                // In memory: the server's disk writes for every ack made rounds differ by 2x.
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await?;
        publish(&context, &format!("{stream}.event"), messages).await?;
        let setups = [
            ("default prefetch (32)", Setup { prefetch: CONCURRENCY, spawn_handlers: false }),
            ("prefetch 168", Setup { prefetch: RAW_BATCH - CONCURRENCY, spawn_handlers: false }),
            ("default prefetch, `spawn_handlers`", Setup { prefetch: CONCURRENCY, spawn_handlers: true }),
        ];
        let mut raw_rates = Vec::new();
        let mut rates = vec![Vec::new(); setups.len()];
        let mut ratios = vec![Vec::new(); setups.len()];
        // This process's CPU time per message (all its threads; the server is another process):
        // steadier than the rates, which move with how the server and the client share the cores.
        let mut raw_cpu = Vec::new();
        let mut cpus = vec![Vec::new(); setups.len()];
        println!("{messages} messages of 100 bytes, {CONCURRENCY} at a time, acks confirmed by the server\n");
        print!("| round | raw async-nats (asks {RAW_BATCH} ahead) |");
        for (name, _) in &setups {
            print!(" adapter, {name} | / raw |");
        }
        println!("\n|---|---:|{}", "---:|---:|".repeat(setups.len()));
        for round in 1..=ROUNDS {
            let rate = |time: Duration| messages as f64 / time.as_secs_f64();
            // Each consumer is deleted after its measurement, so that the server's work does not
            // grow with the rounds.
            let done = |durable: String| {
                let context = &context;
                let stream = &stream;
                async move {
                    context.get_stream(stream).await?.delete_consumer(&durable).await?;
                    Ok::<(), BoxError>(())
                }
            };
            let cpu_before = lifecycle_benches::cpu_seconds(None);
            let raw_rate = rate(raw(&context, &stream, &format!("raw{round}"), messages).await?);
            raw_cpu.push((lifecycle_benches::cpu_seconds(None) - cpu_before) / messages as f64);
            done(format!("raw{round}")).await?;
            print!("| {round} | {raw_rate:.0}/s |");
            raw_rates.push(raw_rate);
            for (i, (_, setup)) in setups.iter().enumerate() {
                let durable = format!("adapter{i}_{round}");
                let cpu_before = lifecycle_benches::cpu_seconds(None);
                let adapter_rate = rate(adapter(&stream, &durable, messages, *setup).await?);
                cpus[i].push((lifecycle_benches::cpu_seconds(None) - cpu_before) / messages as f64);
                done(durable).await?;
                print!(" {adapter_rate:.0}/s | {:.3}x |", adapter_rate / raw_rate);
                rates[i].push(adapter_rate);
                ratios[i].push(adapter_rate / raw_rate);
            }
            println!();
        }
        let raw = lifecycle_benches::median(raw_rates);
        let raw_cpu = lifecycle_benches::median(raw_cpu);
        println!("\nMedians of {ROUNDS} rounds:\n");
        println!(
            "| consumer | messages/s | / raw | the rounds' own ratios | client CPU per message | / raw |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        println!(
            "| raw async-nats (asks {RAW_BATCH} ahead) | {raw:.0}/s | 1.0x | | {} | 1.0x |",
            lifecycle_benches::human(raw_cpu)
        );
        for (((name, _), rates), (ratios, cpus)) in setups.iter().zip(rates).zip(ratios.into_iter().zip(cpus))
        {
            let rate = lifecycle_benches::median(rates);
            let cpu = lifecycle_benches::median(cpus);
            println!(
                "| adapter, {name} | {rate:.0}/s | **{:.3}x** | {:.3}x | {} | {:.3}x |",
                rate / raw,
                lifecycle_benches::median(ratios),
                lifecycle_benches::human(cpu),
                cpu / raw_cpu
            );
        }
        context.delete_stream(&stream).await?;
        Ok(())
    })
}
