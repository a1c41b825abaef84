//! Run with `cargo run -p quickstart`, then press Ctrl-C (or `kill -TERM <pid>`) to watch a graceful
//! shutdown and its report. `--run-for SECONDS` asks for the shutdown itself after that long.
//!
//! Four components with dependencies: a `store` (standing in for a database pool), a `cache` in
//! front of it, an `ingest` worker that writes an order every 100 ms in a background task, and a
//! `reporter` that logs totals. They start in dependency order (store, then cache, then the two
//! others in parallel) and stop in reverse; the worker finishes the order it is writing before
//! it stops, and the report says how each component ended.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lifecycle_core::{BoxError, Component, ComponentOptions, Context, Dep, Dependency, Registry};

/// An in-memory table standing in for a database pool.
#[derive(Default)]
struct Store {
    orders: Mutex<HashMap<u64, String>>,
}

impl Store {
    fn insert(&self, id: u64, item: String) {
        self.orders.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, item);
    }

    fn len(&self) -> usize {
        self.orders.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

impl Component for Store {
    async fn start(&self, _ctx: &Context) -> Result<(), BoxError> {
        // A real pool connects and runs `SELECT 1` here.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }

    async fn stop(&self, _ctx: &Context) -> Result<(), BoxError> {
        tracing::info!(orders = self.len(), "store closed");
        Ok(())
    }
}

/// A read-through cache in front of the store.
struct Cache {
    store: Dep<Store>,
    hits: AtomicU64,
}

impl Component for Cache {
    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.store.dependency()]
    }

    async fn start(&self, _ctx: &Context) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

/// A background worker: writes one order every 100 ms until told to stop.
struct Ingest {
    store: Dep<Store>,
    cache: Dep<Cache>,
    next_id: AtomicU64,
}

impl Component for Ingest {
    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.store.dependency(), self.cache.dependency()]
    }

    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().stop_timeout(Duration::from_secs(2))
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let token = ctx.token().clone();
        let store = self.store.clone();
        let cache = self.cache.clone();
        let first_id = self.next_id.load(Ordering::Relaxed);
        ctx.tasks().spawn("ingest_loop", async move {
            let mut id = first_id;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        // The write is never interrupted half-way: cancellation is only checked
                        // between orders.
                        store.insert(id, format!("order #{id}"));
                        cache.hits.fetch_add(1, Ordering::Relaxed);
                        id += 1;
                    }
                }
            }
            tracing::info!(last_order = id, "ingest loop finished its last order");
        });
        Ok(())
    }
}

/// Logs totals every second.
struct Reporter {
    store: Dep<Store>,
}

impl Component for Reporter {
    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.store.dependency()]
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
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

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let run_for = match run_for() {
        Ok(run_for) => run_for,
        Err(message) => {
            eprintln!("quickstart: {message}");
            std::process::exit(2);
        }
    };

    let mut builder = Registry::builder();
    builder.drain_delay(Duration::from_millis(300)).shutdown_deadline(Duration::from_secs(10));
    let store = builder.add(Store::default()).dep();
    let cache = builder.add(Cache { store: store.clone(), hits: AtomicU64::new(0) }).dep();
    builder.add(Ingest { store: store.clone(), cache, next_id: AtomicU64::new(1) });
    builder.add(Reporter { store });
    let registry = match builder.build() {
        Ok(registry) => registry,
        Err(error) => {
            eprintln!("quickstart: {error}");
            std::process::exit(2);
        }
    };

    let shutdown = registry.handle().shutdown().clone();
    println!("quickstart: pid {}; press Ctrl-C or send SIGTERM to stop", std::process::id());
    // Runs beside the registry and ends as soon as any shutdown starts, so nothing outlives it.
    let stop_after = async {
        let Some(after) = run_for else { return };
        tokio::select! {
            _ = tokio::time::sleep(after) => { shutdown.request(format!("--run-for {after:?} elapsed"), 0); }
            _ = shutdown.requested() => {}
        }
    };
    let (report, ()) = tokio::join!(registry.run(), stop_after);
    report.exit();
}
