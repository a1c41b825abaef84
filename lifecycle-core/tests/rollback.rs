//! A start that fails, times out or panics rolls back what started; a shutdown during start
//! cancels the starts in flight and stops only what started.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use lifecycle_core::{ComponentOptions, Failure, Outcome, ShutdownReason, Stage};
use support::{Hook, Log, Probe, Task, builder, outcome};

const CHAIN: usize = 6;

fn chain_names() -> Vec<String> {
    (0..CHAIN).map(|i| format!("c{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failure_at_every_position_rolls_back_in_reverse_order() {
    let names = chain_names();
    for failing in 0..CHAIN {
        let log = Log::default();
        let mut b = builder();
        for (i, name) in names.iter().enumerate() {
            let deps: Vec<&str> = if i == 0 { vec![] } else { vec![names[i - 1].as_str()] };
            let hook = if i == failing { Hook::Fail } else { Hook::Succeed };
            b.add(Probe::new(name, &log).deps(&deps).start(hook).task(Task::Cooperative));
        }
        let report = b.build().unwrap().run().await;

        let before: Vec<String> = names[..failing].to_vec();
        let mut reversed = before.clone();
        reversed.reverse();
        assert_eq!(log.order("start-end"), before, "failing at {failing}");
        assert_eq!(
            log.order("stop-end"),
            reversed,
            "only what started stops, in reverse (failing at {failing})"
        );
        assert_eq!(log.order("task-end").len(), failing, "every started component's task ended");
        for name in &names[..failing] {
            assert!(matches!(outcome(&report, name), Outcome::Stopped), "{report}");
        }
        assert!(
            matches!(
                outcome(&report, &names[failing]),
                Outcome::Failed { stage: Stage::Starting, failure: Failure::Error(_) }
            ),
            "{report}"
        );
        for name in &names[failing + 1..] {
            assert!(matches!(outcome(&report, name), Outcome::NotStarted), "{report}");
        }
        assert_eq!(report.exit_code, 1);
        let error = report.into_result().unwrap_err();
        assert_eq!(error.to_string(), format!("component `c{failing}` failed to start"));
        let source = std::error::Error::source(&error).map(ToString::to_string);
        // The cause is said once, in `source()`, not repeated in `Display`.
        assert_eq!(source.as_deref(), Some(format!("start of c{failing} failed on purpose").as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_timeout_and_start_panic_are_reported_with_the_component_and_cause() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    b.add(
        Probe::new("slow", &log)
            .deps(&["db"])
            .start(Hook::Hang)
            .options(ComponentOptions::new().start_timeout(Duration::from_millis(100))),
    );
    let report = b.build().unwrap().run().await;
    assert!(
        matches!(outcome(&report, "slow"), Outcome::Failed { stage: Stage::Starting, failure: Failure::TimedOut(d) } if *d >= Duration::from_millis(100)),
        "{report}"
    );
    assert!(
        matches!(&report.reason, ShutdownReason::StartFailed { component, .. } if component.as_str() == "slow")
    );
    assert!(
        // The time itself is checked above (at least 100 ms); a loaded machine may take longer.
        report.reason.to_string().starts_with("component `slow` failed to start: timed out after "),
        "{}",
        report.reason
    );
    assert!(matches!(outcome(&report, "db"), Outcome::Stopped));

    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    b.add(Probe::new("mad", &log).deps(&["db"]).start(Hook::Panic));
    let report = b.build().unwrap().run().await;
    assert!(
        matches!(outcome(&report, "mad"), Outcome::Failed { failure: Failure::Panic(m), .. } if m == "start of mad panicked on purpose"),
        "{report}"
    );
    assert!(matches!(outcome(&report, "db"), Outcome::Stopped), "{report}");
    assert_eq!(log.order("stop-end"), vec!["db"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_cancels_sibling_starts_in_flight_and_cleans_their_tasks() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    // `slow` spawns a task, then takes its time: it is cancelled when `bad` fails.
    b.add(Probe::new("slow", &log).deps(&["db"]).start(Hook::Sleep(Duration::from_secs(30))));
    b.add(Probe::new("bad", &log).deps(&["db"]).start(Hook::Fail));
    let began = Instant::now();
    let report = b.build().unwrap().run().await;
    assert!(began.elapsed() < Duration::from_secs(10), "the slow start was not waited for");
    assert!(matches!(outcome(&report, "slow"), Outcome::StartCancelled), "{report}");
    assert!(matches!(outcome(&report, "db"), Outcome::Stopped), "{report}");
    assert_eq!(log.order("stop-begin"), vec!["db"], "no stop hook for components that did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_start_cancels_starts_in_flight_and_stops_only_what_started() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log).task(Task::Cooperative));
    b.add(Probe::new("migrations", &log).deps(&["db"]).start(Hook::Sleep(Duration::from_secs(30))));
    b.add(Probe::new("api", &log).deps(&["migrations"]));
    let registry = b.build().unwrap();
    let handle = registry.handle();
    let mut phases = handle.watch_phase();
    let run = tokio::spawn(registry.run());
    while log.at("migrations", "start-begin").is_none() {
        tokio::task::yield_now().await;
    }
    handle.shutdown().request("deploy cancelled", 3);
    let report = run.await.unwrap();

    assert!(matches!(outcome(&report, "db"), Outcome::Stopped), "{report}");
    assert!(matches!(outcome(&report, "migrations"), Outcome::StartCancelled), "{report}");
    assert!(matches!(outcome(&report, "api"), Outcome::NotStarted), "{report}");
    assert_eq!(log.order("stop-end"), vec!["db"]);
    assert_eq!(log.order("task-end"), vec!["db"]);
    assert!(log.order("drain-begin").is_empty(), "never ready, so nothing drains");
    assert_eq!(report.exit_code, 3);
    assert!(phases.has_changed().unwrap_or(true));
    assert_eq!(*phases.borrow_and_update(), lifecycle_core::Phase::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_critical_start_failure_is_reported_and_the_service_runs_without_it() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    b.add(
        Probe::new("registry_entry", &log).start(Hook::Fail).options(ComponentOptions::new().critical(false)),
    );
    b.add(Probe::new("api", &log).deps(&["db", "registry_entry"]));
    let report = support::run_until_ready_then_stop(b.build().unwrap()).await;
    assert!(
        matches!(outcome(&report, "registry_entry"), Outcome::Failed { stage: Stage::Starting, .. }),
        "{report}"
    );
    assert!(matches!(outcome(&report, "api"), Outcome::Stopped), "{report}");
    assert_eq!(report.exit_code, 0, "a non-critical failure does not fail the run: {report}");
    assert!(report.to_string().contains("registry_entry (non-critical)"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_requested_before_the_run_starts_nothing() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    let registry = b.build().unwrap();
    registry.handle().shutdown().request("cancelled before start", 0);
    let report = registry.run().await;
    assert!(log.events().is_empty(), "no hook ran: {:?}", log.events());
    assert!(matches!(outcome(&report, "db"), Outcome::NotStarted), "{report}");
    assert_eq!(report.exit_code, 0);
}

/// Asks for the shutdown from inside its own start, which then completes.
struct SelfStopping {
    log: Log,
}

impl lifecycle_core::Component for SelfStopping {
    async fn start(&self, ctx: &lifecycle_core::Context) -> Result<(), lifecycle_core::BoxError> {
        ctx.shutdown().request("work done", 0);
        Ok(())
    }

    async fn stop(&self, _ctx: &lifecycle_core::Context) -> Result<(), lifecycle_core::BoxError> {
        self.log.push("self_stopping", "stop-end");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_completes_as_shutdown_is_requested_is_stopped_not_cancelled() {
    for _ in 0..20 {
        let log = Log::default();
        let mut b = builder();
        b.add(SelfStopping { log: log.clone() });
        let report = b.build().unwrap().run().await;
        assert!(matches!(outcome(&report, "self_stopping"), Outcome::Stopped), "{report}");
        assert_eq!(log.order("stop-end"), vec!["self_stopping"], "its stop hook ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_blocking_its_thread_cannot_hold_a_shutdown_past_the_deadline() {
    let log = Log::default();
    let mut b = builder();
    b.shutdown_deadline(Duration::from_millis(300));
    b.add(
        Probe::new("stuck", &log)
            .start(Hook::BlockThread(Duration::from_secs(2)))
            .options(ComponentOptions::new().start_timeout(Duration::from_secs(60))),
    );
    let registry = b.build().unwrap();
    let handle = registry.handle();
    let run = tokio::spawn(registry.run());
    while log.at("stuck", "start-begin").is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let requested = Instant::now();
    handle.shutdown().request("deploy cancelled", 0);
    let report = run.await.unwrap();
    assert!(requested.elapsed() < Duration::from_millis(1500), "{:?}", requested.elapsed());
    assert!(
        matches!(outcome(&report, "stuck"), Outcome::Abandoned { stage: Stage::Starting, .. }),
        "{report}"
    );
    assert!(report.deadline_exceeded);
}
