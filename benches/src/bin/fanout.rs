//! Shutdown fan-out: N tasks waiting on cancellation in one component, from the shutdown trigger
//! to the run's return, and peak heap per task. Raw tokio-util (`CancellationToken` and
//! `TaskTracker`) is the baseline; lifecycle and tokio-graceful-shutdown 0.20 do the same work in
//! the same process, interleaved.
//!
//! `cargo run --release -p lifecycle-benches --bin fanout [-- --quick]`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lifecycle_benches::{Sample, heap_now, heap_peak, human, median, reset_peak, runtime};
use lifecycle_core::{BoxError, Component, Context, Registry, Signals};
use tokio_graceful_shutdown::{SubsystemBuilder, SubsystemHandle, Toplevel};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Waits until `count` tasks report that they are parked on their cancellation future.
async fn all_waiting(started: &AtomicUsize, count: usize) {
    while started.load(Ordering::Acquire) < count {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn raw(n: usize) -> Sample {
    let base = heap_now();
    reset_peak();
    let started = Arc::new(AtomicUsize::new(0));
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    for _ in 0..n {
        let token = token.clone();
        let started = Arc::clone(&started);
        tracker.spawn(async move {
            started.fetch_add(1, Ordering::Release);
            token.cancelled().await;
        });
    }
    all_waiting(&started, n).await;
    let trigger = Instant::now();
    token.cancel();
    tracker.close();
    tracker.wait().await;
    let time = trigger.elapsed();
    Sample { time, bytes_per_unit: (heap_peak() - base) as f64 / n as f64 }
}

struct Fanout {
    n: usize,
    started: Arc<AtomicUsize>,
}

impl Component for Fanout {
    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        for _ in 0..self.n {
            let token = ctx.token().clone();
            let started = Arc::clone(&self.started);
            ctx.tasks().spawn("waiter", async move {
                started.fetch_add(1, Ordering::Release);
                token.cancelled().await;
            });
        }
        Ok(())
    }
}

async fn lifecycle(n: usize) -> Sample {
    let base = heap_now();
    reset_peak();
    let started = Arc::new(AtomicUsize::new(0));
    let mut builder = Registry::builder();
    builder.signals(Signals::none());
    builder.add(Fanout { n, started: Arc::clone(&started) });
    let registry = match builder.build() {
        Ok(registry) => registry,
        Err(error) => panic!("{error}"),
    };
    let handle = registry.handle();
    // The run is awaited where a service's `main` would await it, not in a spawned task.
    let trigger = async {
        handle.reached(lifecycle_core::Phase::Ready).await;
        all_waiting(&started, n).await;
        let trigger = Instant::now();
        handle.shutdown().request("bench", 0);
        trigger
    };
    let (report, trigger) = tokio::join!(registry.run(), trigger);
    let time = trigger.elapsed();
    assert!(report.is_success(), "{report}");
    drop(report);
    Sample { time, bytes_per_unit: (heap_peak() - base) as f64 / n as f64 }
}

async fn graceful_shutdown(n: usize) -> Sample {
    let base = heap_now();
    reset_peak();
    let started = Arc::new(AtomicUsize::new(0));
    let token = CancellationToken::new();
    let counter = Arc::clone(&started);
    let toplevel = Toplevel::new_with_shutdown_token(
        async move |s: &mut SubsystemHandle| {
            for _ in 0..n {
                let counter = Arc::clone(&counter);
                s.start(SubsystemBuilder::new("waiter", async move |h: &mut SubsystemHandle| {
                    counter.fetch_add(1, Ordering::Release);
                    h.on_shutdown_requested().await;
                    Ok::<(), std::io::Error>(())
                }));
            }
        },
        token.clone(),
    );
    let trigger = async {
        all_waiting(&started, n).await;
        let trigger = Instant::now();
        token.cancel();
        trigger
    };
    let (result, trigger) =
        tokio::join!(toplevel.handle_shutdown_requests(Duration::from_secs(120)), trigger);
    let time = trigger.elapsed();
    if let Err(error) = result {
        panic!("tokio-graceful-shutdown failed: {error}");
    }
    Sample { time, bytes_per_unit: (heap_peak() - base) as f64 / n as f64 }
}

const VARIANTS: [&str; 3] = ["raw tokio-util", "lifecycle", "tokio-graceful-shutdown 0.20"];

fn measure(variant: usize, n: usize) -> Sample {
    // A fresh runtime each time: no variant inherits another's warmed-up worker queues.
    let runtime = runtime();
    let sample = runtime.block_on(async move {
        match variant {
            0 => raw(n).await,
            1 => lifecycle(n).await,
            _ => graceful_shutdown(n).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    sample
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[(usize, usize)] =
        if quick { &[(1_000, 5), (100_000, 2)] } else { &[(1_000, 201), (100_000, 21)] };
    println!("| tasks | variant | trigger to return (median) | ratio | peak heap per task | ratio |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &(n, repetitions) in sizes {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        let mut bytes: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        // One warm-up round, then rounds that interleave the variants so drift hits all alike.
        for variant in 0..VARIANTS.len() {
            measure(variant, n);
        }
        for _ in 0..repetitions {
            for variant in 0..VARIANTS.len() {
                let sample = measure(variant, n);
                times[variant].push(sample.time.as_secs_f64());
                bytes[variant].push(sample.bytes_per_unit);
            }
        }
        let time: Vec<f64> = times.into_iter().map(median).collect();
        let heap: Vec<f64> = bytes.into_iter().map(median).collect();
        for (variant, name) in VARIANTS.iter().enumerate() {
            println!(
                "| {n} | {name} | {} | {:.2}x | {:.0} B | {:.2}x |",
                human(time[variant]),
                time[variant] / time[0],
                heap[variant],
                heap[variant] / heap[0]
            );
        }
    }
}
