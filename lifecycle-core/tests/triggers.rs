//! What starts a shutdown, what the service looks like while it drains, and what the report says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifecycle_core::{Failure, Outcome, Phase, ShutdownReason, Stage};
use support::{Hook, Log, Probe, Task, builder, outcome, run_until_ready_then_stop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programmatic_request_carries_its_reason_and_exit_code() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    let registry = b.build().unwrap();
    let handle = registry.handle();
    let run = tokio::spawn(registry.run());
    handle.reached(Phase::Ready).await;
    assert!(handle.shutdown().request("maintenance window", 75));
    assert!(!handle.shutdown().request("a second reason", 9), "the first request wins");
    let report = run.await.unwrap();
    assert_eq!(report.exit_code, 75);
    assert!(
        matches!(&report.reason, ShutdownReason::Requested { message, exit_code: 75 } if message == "maintenance window")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_task_failure_stops_the_whole_service_with_exit_code_one() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log).task(Task::Cooperative));
    b.add(Probe::new("consumer", &log).deps(&["db"]).task(Task::FailsAfter(Duration::from_millis(50))));
    let report = b.build().unwrap().run().await;

    assert_eq!(report.exit_code, 1);
    assert!(
        matches!(&report.reason, ShutdownReason::ComponentFailed { component, task, .. } if component.as_str() == "consumer" && task == "doomed"),
        "{report}"
    );
    assert!(
        matches!(outcome(&report, "consumer"), Outcome::Failed { stage: Stage::Running, failure: Failure::Error(e) } if e.to_string() == "lost the connection"),
        "{report}"
    );
    assert!(matches!(outcome(&report, "db"), Outcome::Stopped), "the others still stop cleanly: {report}");
    assert_eq!(log.order("stop-end"), vec!["consumer", "db"]);
    let error = report.into_result().unwrap_err();
    assert_eq!(error.to_string(), "component `consumer` failed while running (task `doomed`)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_tasks_and_hooks_are_caught_and_reported() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    b.add(
        Probe::new("sidecar", &log)
            .task(Task::PanicsAfter(Duration::from_millis(1)))
            .options(lifecycle_core::ComponentOptions::new().critical(false)),
    );
    b.add(Probe::new("api", &log).deps(&["db"]).stop(Hook::Panic));
    let registry = b.build().unwrap();
    let handle = registry.handle();
    let run = tokio::spawn(registry.run());
    handle.reached(Phase::Ready).await;
    // The non-critical panic is recorded without stopping the service.
    lifecycle_core::testing::eventually("the sidecar's panic", Duration::from_secs(5), || {
        handle.components().iter().any(|c| c.failures > 0)
    })
    .await;
    assert_eq!(handle.phase(), Phase::Ready, "a non-critical task panic does not stop the service");
    handle.shutdown().request("done", 0);
    let report = run.await.unwrap();

    let sidecar = report.component("sidecar").unwrap();
    assert_eq!(sidecar.failures.count, 1);
    let first = sidecar.failures.first.as_ref().unwrap();
    assert!(matches!(&first.failure, Failure::Panic(m) if m == "task panicked on purpose"));
    assert_eq!(first.task.as_deref(), Some("reckless"));
    assert!(
        matches!(outcome(&report, "api"), Outcome::Failed { stage: Stage::Stopping, failure: Failure::Panic(m) } if m == "stop of api panicked on purpose"),
        "{report}"
    );
    assert!(matches!(outcome(&report, "db"), Outcome::Stopped), "a panic never aborts the others: {report}");
    assert_eq!(report.exit_code, 1);
    assert!(
        report
            .to_string()
            .contains("`sidecar`: task `reckless` panicked: task panicked on purpose (running)"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_drops_first_then_drain_hooks_then_the_drain_delay_then_stops() {
    let log = Log::default();
    let mut b = builder();
    b.drain_delay(Duration::from_millis(200));
    b.add(Probe::new("db", &log));
    b.add(Probe::new("registration", &log).deps(&["db"]).drain(Hook::Sleep(Duration::from_millis(20))));
    b.add(Probe::new("http", &log).deps(&["db"]));
    let registry = b.build().unwrap();
    let handle = registry.handle();
    let mut watch = handle.watch_phase();
    let phases = Arc::new(Mutex::new(vec![(*watch.borrow(), Instant::now())]));
    let seen = Arc::clone(&phases);
    let shutdown = handle.shutdown().clone();
    // A watch channel keeps only the latest value: the watcher itself asks for the shutdown once
    // it has seen `Ready`, so no phase can be skipped.
    let watcher = tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            let phase = *watch.borrow_and_update();
            seen.lock().unwrap().push((phase, Instant::now()));
            match phase {
                Phase::Ready => {
                    shutdown.request("test over", 0);
                }
                Phase::Stopped => break,
                _ => {}
            }
        }
    });
    let report = registry.run().await;
    watcher.await.unwrap();
    assert!(report.is_success(), "{report}");

    let phases = phases.lock().unwrap().clone();
    let names: Vec<Phase> = phases.iter().map(|(p, _)| *p).collect();
    // A watch channel keeps only the latest value: the brief `Stopping` may be coalesced into
    // `Stopped` on a loaded machine. The phases seen only move forward, through the long ones.
    assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    for phase in [Phase::Starting, Phase::Ready, Phase::Draining, Phase::Stopped] {
        assert!(names.contains(&phase), "{names:?}");
    }

    // Every started component drained (the probe asserts it was unready by then), before any stop.
    let mut drained = log.order("drain-end");
    drained.sort();
    assert_eq!(drained, vec!["db", "http", "registration"]);
    let first_stop = log.events().iter().filter(|e| e.what == "stop-begin").map(|e| e.at).min().unwrap();
    let last_drain = log.events().iter().filter(|e| e.what == "drain-end").map(|e| e.at).max().unwrap();
    // The probe's drain hook itself asserts the phase is already `Draining` when it runs.
    assert!(
        first_stop - last_drain >= Duration::from_millis(200),
        "the drain delay passes before the first stop"
    );
    if let Some((_, stopping)) = phases.iter().find(|(p, _)| *p == Phase::Stopping) {
        assert!(*stopping <= first_stop);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_drain_hook_is_reported_and_the_component_still_stops() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("registration", &log).drain(Hook::Fail));
    let report = run_until_ready_then_stop(b.build().unwrap()).await;
    assert!(
        matches!(outcome(&report, "registration"), Outcome::Failed { stage: Stage::Draining, .. }),
        "{report}"
    );
    assert_eq!(log.order("stop-end"), vec!["registration"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_each_running_component() {
    use lifecycle_core::{Component, Health};
    struct Sick;
    impl Component for Sick {
        async fn health(&self) -> Health {
            Health::Unhealthy("replica lag 30s".into())
        }
    }
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    b.add(Sick);
    let registry = b.build().unwrap();
    let handle = registry.handle();
    let before = handle.health().await;
    assert!(before.iter().all(|(_, h)| *h == Health::Unhealthy("not running".into())));
    let run = tokio::spawn(registry.run());
    handle.reached(Phase::Ready).await;
    let health = handle.health().await;
    assert_eq!(health[0].1, Health::Healthy);
    assert_eq!((health[1].0.as_str(), &health[1].1), ("sick", &Health::Unhealthy("replica lag 30s".into())));
    handle.shutdown().request("done", 0);
    lifecycle_core::testing::assert_clean(&run.await.unwrap());
}
