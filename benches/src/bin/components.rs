//! Start and stop of 1,000 no-op components in a random dependency graph, per component, and
//! of 1,000 independent ones (which shows what the ordering itself costs).
//!
//! The baseline is the least any runtime can do for 1,000 units: spawn 1,000 no-op tokio tasks
//! and join them with a `JoinSet`, once for start and once for stop, with no ordering at all.
//! lifecycle does that work in dependency order, with a timeout, a supervisor, a drain hook and a
//! progress record per component.
//!
//! `cargo run --release -p lifecycle-benches --bin components [-- --quick]`

use std::time::{Duration, Instant};

use lifecycle_benches::{human, median, runtime};
use lifecycle_core::{Component, ComponentId, Dependency, Phase, Registry, Signals};
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

/// A random DAG: each component depends on up to `most` (0 to 3) earlier ones.
fn graph(seed: u64, most: usize) -> Registry {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut builder = Registry::builder();
    builder.signals(Signals::none());
    for i in 0..COMPONENTS {
        let dependencies = (0..rng.random_range(0..=most.min(i)))
            .map(|_| Dependency::on(format!("c{}", rng.random_range(0..i))))
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        builder.add(Noop { name: format!("c{i}"), dependencies });
    }
    match builder.build() {
        Ok(registry) => registry,
        Err(error) => panic!("{error}"),
    }
}

async fn lifecycle(seed: u64, most: usize) -> (Duration, Duration) {
    let registry = graph(seed, most);
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
    // Per variant (baseline, random DAG, independent), per phase (start, stop).
    let mut results: [[Vec<f64>; 2]; 3] = Default::default();
    for round in 0..=rounds {
        let runtime = runtime();
        let samples = runtime.block_on(async {
            [baseline().await, lifecycle(round as u64, 3).await, lifecycle(round as u64, 0).await]
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
    let [base, dag, flat] = results.map(|phases| phases.map(median));
    println!(
        "| phase | baseline per unit (JoinSet of no-op tasks) | lifecycle, random DAG | ratio | lifecycle, independent | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (phase, name) in ["start", "stop (drain, stop, report)"].iter().enumerate() {
        println!(
            "| {name} | {} | {} | {:.1}x | {} | {:.1}x |",
            human(base[phase]),
            human(dag[phase]),
            dag[phase] / base[phase],
            human(flat[phase]),
            flat[phase] / base[phase]
        );
    }
}
