//! Consumer throughput of `lifecycle-rabbitmq` against the same loop written directly on lapin,
//! in the same process, interleaved. Needs RabbitMQ on 127.0.0.1:5672 with guest/guest
//! (`scripts/test` starts it).
//!
//! Each round fills a fresh queue with N persistent messages (not timed), then times from
//! nothing to every message acked: connect, channel, qos, `basic.consume`, and N deliveries
//! handed to a no-op handler, 16 at a time, prefetch 64, each acked after it. The direct loop
//! takes a semaphore slot, the next delivery, and spawns a task that acks it; the adapter is a
//! `RabbitConsumer` alone in a registry, timed from `run()` to its `acked` counter reaching N.
//!
//! `cargo run --release -p lifecycle-benches --bin rabbitmq [-- --quick]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lifecycle_benches::{human, median, runtime};
use lifecycle_core::{BoxError, CancellationToken, Registry, Signals};
use lifecycle_rabbitmq::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lifecycle_rabbitmq::lapin::types::FieldTable;
use lifecycle_rabbitmq::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use lifecycle_rabbitmq::{Delivery, MessageHandler, RabbitConsumer};
use tokio::sync::Semaphore;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const CONCURRENCY: usize = 16;
const PREFETCH: u16 = 64;

fn or_panic<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error}"),
    }
}

/// A fresh durable queue holding `count` persistent messages, on the bench's own connection.
async fn fill(channel: &Channel, name: &str, count: usize) {
    or_panic(
        channel.queue_declare(name.into(), QueueDeclareOptions::durable(), FieldTable::default()).await,
        "queue.declare",
    );
    let mut confirms = Vec::with_capacity(count);
    for i in 0..count {
        let properties = BasicProperties::default().with_delivery_mode(2);
        let body = format!("message {i}");
        let confirm = channel
            .basic_publish(
                "".into(),
                name.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await;
        confirms.push(or_panic(confirm, "basic.publish"));
    }
    for confirm in confirms {
        or_panic(confirm.await, "confirm");
    }
}

async fn direct(queue: &str, count: u64) -> Duration {
    let began = Instant::now();
    let connection = or_panic(Connection::connect(URL, ConnectionProperties::default()).await, "connect");
    let channel = or_panic(connection.create_channel().await, "channel");
    or_panic(channel.basic_qos(PREFETCH, BasicQosOptions::default()).await, "basic.qos");
    let mut consumer = or_panic(
        channel
            .basic_consume(
                queue.into(),
                "bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await,
        "basic.consume",
    );
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let permit = or_panic(Arc::clone(&slots).acquire_owned().await, "semaphore");
        let Some(delivery) = consumer.next().await else { panic!("the consumer ended") };
        let delivery = or_panic(delivery, "delivery");
        let acked = Arc::clone(&acked);
        let done = Arc::clone(&done);
        tasks.spawn(async move {
            let _permit = permit;
            or_panic(delivery.acker.ack(BasicAckOptions::default()).await, "ack");
            if acked.fetch_add(1, Ordering::Relaxed) + 1 == count {
                done.notify_one();
            }
        });
    }
    done.notified().await;
    let elapsed = began.elapsed();
    while tasks.join_next().await.is_some() {}
    or_panic(channel.close(200, "OK".into()).await, "channel.close");
    or_panic(connection.close(200, "OK".into()).await, "connection.close");
    elapsed
}

struct Nothing;

impl MessageHandler for Nothing {
    async fn handle(&self, _delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
        Ok(())
    }
}

async fn adapter(queue: &str, count: u64) -> Duration {
    let mut builder = Registry::builder();
    builder.signals(Signals::none());
    let consumer = builder
        .add(RabbitConsumer::new("bench", URL, queue, Nothing).concurrency(CONCURRENCY).prefetch(PREFETCH))
        .dep();
    let registry = or_panic(builder.build(), "registry");
    let handle = registry.handle();
    let began = Instant::now();
    let timed = async {
        while consumer.stats().acked < count {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let elapsed = began.elapsed();
        handle.shutdown().request("bench", 0);
        elapsed
    };
    let (report, elapsed) = tokio::join!(registry.run(), timed);
    assert!(report.is_success(), "{report}");
    elapsed
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, count) = if quick { (2, 5_000) } else { (5, 20_000) };
    let runtime = runtime();
    let mut samples: [Vec<f64>; 2] = Default::default();
    runtime.block_on(async {
        let connection = or_panic(Connection::connect(URL, ConnectionProperties::default()).await, "connect");
        let channel = or_panic(connection.create_channel().await, "channel");
        or_panic(channel.confirm_select(ConfirmSelectOptions::default()).await, "confirm.select");
        for round in 0..=rounds {
            for (variant, times) in samples.iter_mut().enumerate() {
                let queue = format!("lifecycle_bench_{}_{round}_{variant}", std::process::id());
                fill(&channel, &queue, count).await;
                let elapsed = if variant == 0 {
                    direct(&queue, count as u64).await
                } else {
                    adapter(&queue, count as u64).await
                };
                or_panic(
                    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await,
                    "delete",
                );
                if round > 0 {
                    times.push(elapsed.as_secs_f64());
                }
            }
        }
        or_panic(connection.close(200, "OK".into()).await, "close");
    });
    let direct = median(samples[0].clone());
    let ours = median(samples[1].clone());
    println!("{count} messages, {rounds} rounds (median), concurrency {CONCURRENCY}, prefetch {PREFETCH}");
    println!("| consumer | time to ack all | messages/s | ratio |");
    println!("|---|---:|---:|---:|");
    println!("| lapin directly | {} | {:.0} | 1.00x |", human(direct), count as f64 / direct);
    println!("| lifecycle-rabbitmq | {} | {:.0} | {:.2}x |", human(ours), count as f64 / ours, ours / direct);
}
