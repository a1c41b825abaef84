//! Start in dependency order, stop in reverse, independent components in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use lifecycle_core::ComponentOptions;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::{Hook, Log, Probe, builder, is_stopped, run_until_ready_then_stop};

/// For every edge `dependent -> dependency`, the dependency's start ended before the dependent's
/// began, and the dependent's stop ended before the dependency's began.
fn assert_edges_respected(log: &Log, edges: &[(String, String)]) {
    for (dependent, dependency) in edges {
        let started = log.at(dependency, "start-end").unwrap();
        let dependent_began = log.at(dependent, "start-begin").unwrap();
        assert!(
            started <= dependent_began,
            "{dependent} started before its dependency {dependency} was ready"
        );
        let dependent_stopped = log.at(dependent, "stop-end").unwrap();
        let stop_began = log.at(dependency, "stop-begin").unwrap();
        assert!(dependent_stopped <= stop_began, "{dependency} stopped before its dependent {dependent}");
    }
}

fn overlaps(log: &Log, a: &str, b: &str, begin: &str, end: &str) -> bool {
    let (a0, a1) = (log.at(a, begin).unwrap(), log.at(a, end).unwrap());
    let (b0, b1) = (log.at(b, begin).unwrap(), log.at(b, end).unwrap());
    a0 < b1 && b0 < a1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_starts_in_dependency_order_and_stops_in_reverse() {
    let log = Log::default();
    let slow = Hook::Sleep(Duration::from_millis(50));
    let mut b = builder();
    // Registered in an order unrelated to the dependencies, on purpose.
    b.add(Probe::new("api", &log).deps(&["cache", "queue"]));
    b.add(Probe::new("cache", &log).deps(&["db"]).start(slow).stop(slow));
    b.add(Probe::new("queue", &log).deps(&["db"]).start(slow).stop(slow));
    b.add(Probe::new("db", &log));
    let report = run_until_ready_then_stop(b.build().unwrap()).await;

    assert!(report.is_success(), "{report}");
    for name in ["api", "cache", "queue", "db"] {
        assert!(is_stopped(&report, name), "{report}");
    }
    let edges: Vec<(String, String)> = [("api", "cache"), ("api", "queue"), ("cache", "db"), ("queue", "db")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_edges_respected(&log, &edges);
    assert_eq!(log.order("start-begin").first().map(String::as_str), Some("db"));
    assert_eq!(log.order("stop-end").last().map(String::as_str), Some("db"));
    assert!(
        overlaps(&log, "cache", "queue", "start-begin", "start-end"),
        "independent starts run in parallel"
    );
    assert!(overlaps(&log, "cache", "queue", "stop-begin", "stop-end"), "independent stops run in parallel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_graph_of_fifty_respects_every_edge() {
    for seed in [1_u64, 7, 42] {
        let mut rng = SmallRng::seed_from_u64(seed);
        let log = Log::default();
        let names: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
        let mut edges = Vec::new();
        let mut probes: Vec<Probe> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                // Each node depends on up to four earlier nodes: always a DAG.
                let mut deps: Vec<&str> = Vec::new();
                for _ in 0..rng.random_range(0..=4usize.min(i)) {
                    let dep = names[rng.random_range(0..i)].as_str();
                    if !deps.contains(&dep) {
                        deps.push(dep);
                        edges.push((name.clone(), dep.to_string()));
                    }
                }
                let jitter = Hook::Sleep(Duration::from_millis(rng.random_range(0..3)));
                Probe::new(name, &log).deps(&deps).start(jitter).stop(jitter)
            })
            .collect();
        probes.shuffle(&mut rng);
        let mut b = builder();
        for probe in probes {
            b.add(probe);
        }
        let report = run_until_ready_then_stop(b.build().unwrap()).await;
        assert!(report.is_success(), "seed {seed}: {report}");
        assert_eq!(log.order("start-end").len(), 50);
        assert_eq!(log.order("stop-end").len(), 50);
        assert_edges_respected(&log, &edges);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_lists_durations_and_renders_a_table() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log).start(Hook::Sleep(Duration::from_millis(20))));
    b.add(Probe::new("api", &log).deps(&["db"]).stop(Hook::Sleep(Duration::from_millis(20))));
    let report = run_until_ready_then_stop(b.build().unwrap()).await;

    let db = report.component("db").unwrap();
    assert!(db.start_duration.unwrap() >= Duration::from_millis(20));
    let api = report.component("api").unwrap();
    assert!(api.stop_duration.unwrap() >= Duration::from_millis(20));
    assert!(report.shutdown >= Duration::from_millis(20) && report.total >= report.shutdown);
    let table = report.to_string();
    assert!(
        table.starts_with(
            "lifecycle report: shutdown requested: test over\nexit code 0 (stopped cleanly), run "
        ),
        "{table}"
    );
    assert!(table.contains("component  outcome"), "{table}");
    assert!(table.lines().any(|l| l.trim_start().starts_with("db ") && l.contains("stopped")), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_marked_stops_last_stops_after_every_other_and_starts_before_them() {
    let log = Log::default();
    let slow = Hook::Sleep(Duration::from_millis(30));
    let mut b = builder();
    // Registered first and last, with components that know nothing about it.
    b.add(Probe::new("api", &log).deps(&["db"]).stop(slow));
    b.add(Probe::new("telemetry", &log).stop(slow).options(ComponentOptions::new().stops_last(true)));
    b.add(Probe::new("db", &log).stop(slow));
    b.add(Probe::new("worker", &log).stop(slow));
    b.add(Probe::new("metrics", &log).stop(slow)).stops_last();
    let report = run_until_ready_then_stop(b.build().unwrap()).await;

    assert!(report.is_success(), "{report}");
    for last in ["telemetry", "metrics"] {
        for other in ["api", "db", "worker"] {
            assert!(
                log.at(other, "stop-end").unwrap() <= log.at(last, "stop-begin").unwrap(),
                "{other} vs {last}"
            );
            assert!(
                log.at(last, "start-end").unwrap() <= log.at(other, "start-begin").unwrap(),
                "{other} vs {last}"
            );
        }
    }
    // The two marked ones do not wait for each other.
    assert!(overlaps(&log, "telemetry", "metrics", "stop-begin", "stop-end"), "marked ones stop in parallel");
}

/// A component that writes none of its hooks.
struct Silent(&'static str, &'static str);

impl lifecycle_core::Component for Silent {
    fn name(&self) -> lifecycle_core::ComponentId {
        lifecycle_core::ComponentId::new(self.0)
    }

    fn dependencies(&self) -> Vec<lifecycle_core::Dependency> {
        vec![lifecycle_core::Dependency::on(self.1)]
    }
}

/// A component that writes only its start, which spawns a task that outlives the token by 100 ms.
struct StartOnly {
    log: Log,
}

impl lifecycle_core::Component for StartOnly {
    fn name(&self) -> lifecycle_core::ComponentId {
        lifecycle_core::ComponentId::new("start_only")
    }

    fn dependencies(&self) -> Vec<lifecycle_core::Dependency> {
        vec![lifecycle_core::Dependency::on("silent_low")]
    }

    async fn start(&self, ctx: &lifecycle_core::Context) -> Result<(), lifecycle_core::BoxError> {
        let (token, log) = (ctx.token().clone(), self.log.clone());
        ctx.tasks().spawn("flush", async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            log.push("start_only", "task-end");
        });
        Ok(())
    }
}

/// Hooks a component leaves to the trait run no task, and the order still holds through them:
/// `top` -> `silent_high` (no hooks) -> `middle` -> `start_only` (its task, no stop hook) ->
/// `silent_low` (no hooks) -> `bottom`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_left_to_the_trait_keep_the_order_and_the_wait_for_tasks() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("top", &log).deps(&["silent_high"]));
    b.add(Silent("silent_high", "middle"));
    b.add(Probe::new("middle", &log).deps(&["start_only"]));
    b.add(StartOnly { log: log.clone() });
    b.add(Silent("silent_low", "bottom"));
    b.add(Probe::new("bottom", &log));
    let report = run_until_ready_then_stop(b.build().unwrap()).await;

    assert!(report.is_success(), "{report}");
    for name in ["top", "silent_high", "middle", "start_only", "silent_low", "bottom"] {
        assert!(is_stopped(&report, name), "{report}");
        let component = report.components.iter().find(|c| c.name.as_str() == name).unwrap();
        assert!(component.start_duration.is_some() && component.stop_duration.is_some(), "{report}");
    }
    assert!(log.at("bottom", "start-end").unwrap() <= log.at("middle", "start-begin").unwrap());
    assert!(log.at("middle", "start-end").unwrap() <= log.at("top", "start-begin").unwrap());
    assert!(log.at("top", "stop-end").unwrap() <= log.at("middle", "stop-begin").unwrap());
    // The task of the component without a stop hook is waited for before what it depends on stops.
    let task_end = log.at("start_only", "task-end").expect("the task was waited for");
    assert!(log.at("middle", "stop-end").unwrap() <= task_end);
    assert!(
        task_end <= log.at("bottom", "stop-begin").unwrap(),
        "bottom stopped before start_only's task ended"
    );
    assert_eq!(log.order("drain-begin").len(), 3, "the written drains ran");
}
