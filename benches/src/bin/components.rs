//! Start and stop of 1,000 no-op components in a random dependency graph, per component, and
//! of 1,000 independent ones (which shows what the ordering itself costs).
//!
//! The baseline is the least any runtime can do for 1,000 units: spawn 1,000 no-op tokio tasks
//! and join them with a `JoinSet`, once for start and once for stop, with no ordering at all.
//! lifecycle does that work in dependency order, with a progress record per component. A hook a
//! component leaves to the trait costs no task; the third variant writes all three (each an
//! `async fn` that returns at once), so each runs in a task of its own with its timeout.
//!
//! `cargo run --release -p lifecycle-benches --bin components [-- --quick]`

use std::time::{Duration, Instant};

use lifecycle_benches::{human, median, runtime};
use lifecycle_core::{BoxError, Component, ComponentId, Context, Dependency, Phase, Registry, Signals};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

const COMPONENTS: usize = 1_000;

struct Noop {
    name: String,
    dependencies: Vec<Dependency>,
}

impl Component for Noop {
    fn name(&self) -> ComponentId {
        ComponentId::from(self.name.clone())
    }

    fn dependencies(&self) -> Vec<Dependency> {
        self.dependencies.clone()
    }
}

/// A component that writes its start, drain and stop hooks, each doing nothing.
struct Written(Noop);

impl Component for Written {
    fn name(&self) -> ComponentId {
        self.0.name()
    }

    fn dependencies(&self) -> Vec<Dependency> {
        self.0.dependencies()
    }

    async fn start(&self, _: &Context) -> Result<(), BoxError> {
        Ok(())
    }

    async fn drain(&self, _: &Context) -> Result<(), BoxError> {
        Ok(())
    }

    async fn stop(&self, _: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A random DAG: each component depends on up to `most` (0 to 3) earlier ones; with `written`,
/// each component writes its hooks.
fn graph(seed: u64, most: usize, written: bool) -> Registry {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut builder = Registry::builder();
    builder.signals(Signals::none());
    for i in 0..COMPONENTS {
        let dependencies = (0..rng.random_range(0..=most.min(i)))
            .map(|_| Dependency::on(format!("c{}", rng.random_range(0..i))))
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        let noop = Noop { name: format!("c{i}"), dependencies };
        if written {
            builder.add(Written(noop));
        } else {
            builder.add(noop);
        }
    }
    match builder.build() {
        Ok(registry) => registry,
        Err(error) => panic!("{error}"),
    }
}

async fn lifecycle(seed: u64, most: usize, written: bool) -> (Duration, Duration) {
    let registry = graph(seed, most, written);
    let handle = registry.handle();
    let began = Instant::now();
    let run = tokio::spawn(registry.run());
    handle.reached(Phase::Ready).await;
    let start = began.elapsed();
    let trigger = Instant::now();
    handle.shutdown().request("bench", 0);
    let report = match run.await {
        Ok(report) => report,
        Err(error) => panic!("run panicked: {error}"),
    };
    let stop = trigger.elapsed();
    assert!(report.is_success(), "{report}");
    (start, stop)
}

async fn baseline() -> (Duration, Duration) {
    let phase = || async {
        let began = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..COMPONENTS {
            set.spawn(async {});
        }
        while set.join_next().await.is_some() {}
        began.elapsed()
    };
    let start = phase().await;
    let stop = phase().await;
    (start, stop)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 31 };
    // Per variant (baseline, random DAG, independent, random DAG with hooks written), per phase
    // (start, stop).
    let mut results: [[Vec<f64>; 2]; 4] = Default::default();
    for round in 0..=rounds {
        let runtime = runtime();
        let samples = runtime.block_on(async {
            [
                baseline().await,
                lifecycle(round as u64, 3, false).await,
                lifecycle(round as u64, 0, false).await,
                lifecycle(round as u64, 3, true).await,
            ]
        });
        runtime.shutdown_timeout(Duration::from_secs(5));
        if round == 0 {
            continue; // warm-up
        }
        for (variant, (start, stop)) in samples.into_iter().enumerate() {
            results[variant][0].push(start.as_secs_f64() / COMPONENTS as f64);
            results[variant][1].push(stop.as_secs_f64() / COMPONENTS as f64);
        }
    }
    let [base, dag, flat, written] = results.map(|phases| phases.map(median));
    println!(
        "| phase | baseline per unit (JoinSet of no-op tasks) | lifecycle, random DAG | ratio | lifecycle, independent | ratio | random DAG, hooks written | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (phase, name) in ["start", "stop (drain, stop, report)"].iter().enumerate() {
        let column =
            |variant: &[f64; 2]| format!("{} | {:.1}x", human(variant[phase]), variant[phase] / base[phase]);
        println!(
            "| {name} | {} | {} | {} | {} |",
            human(base[phase]),
            column(&dag),
            column(&flat),
            column(&written)
        );
    }
}
