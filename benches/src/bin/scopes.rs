//! Cost of opening and closing a scope: 10,000 scopes, one at a time, each with one component
//! that spawns one task and waits for its token, against spawning the same task on a raw
//! `TaskTracker` with a child `CancellationToken`, cancelling it and waiting for it.
//!
//! A scope does more: it builds and checks a registry, starts its component in its own task
//! with a timeout, turns ready, drains, stops in order and writes a report. The ratio says what
//! that costs per scope.
//!
//! `cargo run --release -p lifecycle-benches --bin scopes [-- --quick]`

use std::time::{Duration, Instant};

use lifecycle_benches::{human, median, runtime};
use lifecycle_core::{BoxError, Component, Context, FnComponent, Phase, Registry, Signals};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const SCOPES: usize = 10_000;

/// The owner: opens and closes `SCOPES` scopes in its start, and says how long it took.
struct Owner {
    took: std::sync::Mutex<Option<Duration>>,
}

impl Component for Owner {
    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let began = Instant::now();
        for _ in 0..SCOPES {
            let mut scope = ctx.scope("session");
            scope.add(FnComponent::new("conn").on_start(|ctx| {
                let token = ctx.token().clone();
                ctx.tasks().spawn("serve", async move { token.cancelled().await });
                async { Ok::<(), std::io::Error>(()) }
            }));
            let report = scope.start().await?.stop().await;
            assert!(report.is_success(), "{report}");
        }
        if let Ok(mut took) = self.took.lock() {
            *took = Some(began.elapsed());
        }
        Ok(())
    }
}

async fn lifecycle() -> Duration {
    let mut builder = Registry::builder();
    builder.signals(Signals::none()).watchdog(false);
    let owner = builder.add(Owner { took: std::sync::Mutex::new(None) }).dep();
    let registry = match builder.build() {
        Ok(registry) => registry,
        Err(error) => panic!("{error}"),
    };
    let handle = registry.handle();
    let run = tokio::spawn(registry.run());
    handle.reached(Phase::Ready).await;
    handle.shutdown().request("bench over", 0);
    let _ = run.await;
    let took = owner.took.lock().ok().and_then(|took| *took);
    took.unwrap_or_else(|| panic!("the owner did not finish"))
}

async fn baseline() -> Duration {
    let root = CancellationToken::new();
    let began = Instant::now();
    for _ in 0..SCOPES {
        let tracker = TaskTracker::new();
        let token = root.child_token();
        let task_token = token.clone();
        tracker.spawn(async move { task_token.cancelled().await });
        tokio::task::yield_now().await; // let it start, as the scope's start does
        token.cancel();
        tracker.close();
        tracker.wait().await;
    }
    began.elapsed()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 11 };
    let (mut base, mut scopes) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        let runtime = runtime();
        let (b, s) = runtime.block_on(async { (baseline().await, lifecycle().await) });
        runtime.shutdown_timeout(Duration::from_secs(5));
        if round > 0 {
            base.push(b.as_secs_f64() / SCOPES as f64);
            scopes.push(s.as_secs_f64() / SCOPES as f64);
        }
    }
    let (base, scopes) = (median(base), median(scopes));
    println!("| open and close, per scope (median of {rounds} rounds of {SCOPES}) | time | ratio |");
    println!("|---|---:|---:|");
    println!("| raw `TaskTracker` + child token: spawn, cancel, wait | {} | 1.0x |", human(base));
    println!(
        "| lifecycle scope with one component and one task: start, stop, report | {} | {:.1}x |",
        human(scopes),
        scopes / base
    );
}
