//! Run with `cargo run -p quickstart`, then press Ctrl-C (or `kill -TERM <pid>`) to watch a graceful
//! shutdown and its report. `--run-for SECONDS` asks for the shutdown itself after that long.
//!
//! Four components with dependencies: a `store` (standing in for a database pool), a `cache` in
//! front of it, an `ingest` worker that writes an order every 100 ms in a background task, and a
//! `reporter` that logs totals. They start in dependency order (store, then cache and reporter,
//! then ingest) and stop in reverse; the worker finishes the order it is writing before it stops,
//! and the report says how each component ended.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lifecycle_core::{BoxError, Component, Context, Dep, RegistryBuilder};

/// An in-memory table standing in for a database pool.
#[derive(Component, Default)]
#[component(start = connect, stop = close)]
struct Store {
    orders: Mutex<HashMap<u64, String>>,
}

impl Store {
    async fn connect(&self) -> Result<(), BoxError> {
        // A real pool connects and runs `SELECT 1` here.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }

    async fn close(&self) -> Result<(), BoxError> {
        tracing::info!(orders = self.len(), "store closed");
        Ok(())
    }

    fn insert(&self, id: u64, item: String) {
        self.orders.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, item);
    }

    fn len(&self) -> usize {
        self.orders.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

/// A read-through cache in front of the store: starts after it, stops before it.
#[derive(Component)]
#[component(start = warm)]
struct Cache {
    store: Dep<Store>,
    writes: AtomicU64,
}

impl Cache {
    async fn warm(&self) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        tracing::info!(entries = self.store.len(), "cache warm");
        Ok(())
    }
}

/// A background worker: writes one order every 100 ms until told to stop.
#[derive(Component)]
#[component(start = spawn_loop, stop_timeout = "2s")]
struct Ingest {
    store: Dep<Store>,
    cache: Dep<Cache>,
}

impl Ingest {
    async fn spawn_loop(&self, ctx: &Context) -> Result<(), BoxError> {
        let token = ctx.token().clone();
        let (store, cache) = (self.store.clone(), self.cache.clone());
        ctx.tasks().spawn("ingest_loop", async move {
            let mut id = 1;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        // Cancellation is only checked between orders: none is half-written.
                        store.insert(id, format!("order #{id}"));
                        cache.writes.fetch_add(1, Ordering::Relaxed);
                        id += 1;
                    }
                }
            }
            tracing::info!(orders_written = id - 1, "ingest loop finished its last order");
        });
        Ok(())
    }
}

/// Logs totals every second.
#[derive(Component)]
#[component(start = spawn_loop)]
struct Reporter {
    store: Dep<Store>,
}

impl Reporter {
    async fn spawn_loop(&self, ctx: &Context) -> Result<(), BoxError> {
        let token = ctx.token().clone();
        let store = self.store.clone();
        ctx.tasks().spawn("report_loop", async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => tracing::info!(orders = store.len(), "totals"),
                }
            }
        });
        Ok(())
    }
}

/// `--run-for`: asks for the shutdown after a while. A component, so its timer is a tracked task
/// that ends with the run.
#[derive(Component)]
#[component(start = arm, critical = false)]
struct StopAfter {
    after: Duration,
}

impl StopAfter {
    async fn arm(&self, ctx: &Context) -> Result<(), BoxError> {
        let (after, token, shutdown) = (self.after, ctx.token().clone(), ctx.shutdown().clone());
        ctx.tasks().spawn("timer", async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(after) => {
                    shutdown.request(format!("--run-for {after:?} elapsed"), 0);
                }
            }
        });
        Ok(())
    }
}

fn run_for() -> Result<Option<Duration>, String> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok(None),
        (Some("--run-for"), Some(seconds)) => seconds
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Some(Duration::from_secs_f64(s)))
            .ok_or_else(|| format!("--run-for takes a number of seconds, not `{seconds}`")),
        (Some(other), _) => Err(format!("unknown argument `{other}`; usage: quickstart [--run-for SECONDS]")),
    }
}

#[lifecycle_core::main(drain_delay = "300ms", shutdown_deadline = "10s", report = "always")]
async fn main() -> Result<RegistryBuilder, String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let run_for = run_for()?;
    println!("quickstart: pid {}; press Ctrl-C or send SIGTERM to stop", std::process::id());

    let mut builder = RegistryBuilder::new();
    let store = builder.add(Store::default()).dep();
    let cache = builder.add(Cache { store: store.clone(), writes: AtomicU64::new(0) }).dep();
    builder.add(Ingest { store: store.clone(), cache });
    builder.add(Reporter { store });
    if let Some(after) = run_for {
        builder.add(StopAfter { after });
    }
    Ok(builder)
}
