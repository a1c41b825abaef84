//! A component that hangs is abandoned at its timeout and reported with its stage, elapsed
//! time and outstanding tasks, while everything that does not depend on it still stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use lifecycle_core::{ComponentOptions, Failure, Outcome, Stage, TaskCount};
use support::{Hook, Log, Probe, Task, builder, outcome, run_until_ready_then_stop};

fn stop_within(ms: u64) -> ComponentOptions {
    ComponentOptions::new().stop_timeout(Duration::from_millis(ms))
}

fn timed_out_in(report: &lifecycle_core::Report, name: &str, expected: Stage) -> Duration {
    match outcome(report, name) {
        Outcome::Failed { stage, failure: Failure::TimedOut(after) } if *stage == expected => *after,
        other => panic!("{name}: expected a timeout while {expected}, got {other}\n{report}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_stop_hook_is_abandoned_and_the_rest_still_stops() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    b.add(Probe::new("cache", &log));
    b.add(Probe::new("stuck", &log).deps(&["db"]).stop(Hook::Hang).options(stop_within(200)));
    b.add(Probe::new("api", &log).deps(&["stuck", "cache"]));
    b.add(Probe::new("metrics", &log));
    let report = run_until_ready_then_stop(b.build().unwrap()).await;

    let after = timed_out_in(&report, "stuck", Stage::Stopping);
    assert!(after >= Duration::from_millis(200) && after < Duration::from_secs(5), "{after:?}");
    for name in ["db", "cache", "api", "metrics"] {
        assert!(matches!(outcome(&report, name), Outcome::Stopped), "{name} still stops\n{report}");
    }
    // `db` only stops once `stuck` was given up on: its dependent is never left using it.
    assert!(log.at("db", "stop-begin").unwrap() > log.at("stuck", "stop-begin").unwrap());
    assert_eq!(report.exit_code, 1);
    let table = report.to_string();
    assert!(
        table
            .lines()
            .any(|l| l.contains("stuck") && l.contains("timed out after") && l.contains("(stopping)")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_that_ignores_cancellation_is_named_in_the_report() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("worker", &log).task(Task::IgnoresCancellation).options(stop_within(150)));
    b.add(Probe::new("poller", &log).task(Task::Cooperative));
    let report = run_until_ready_then_stop(b.build().unwrap()).await;

    timed_out_in(&report, "worker", Stage::WaitingForTasks);
    let worker = report.component("worker").unwrap();
    assert_eq!(worker.outstanding_tasks, vec![TaskCount { name: "stubborn".into(), count: 1 }]);
    assert!(matches!(outcome(&report, "poller"), Outcome::Stopped));
    assert!(report.component("poller").unwrap().outstanding_tasks.is_empty());
    assert!(report.to_string().contains("stubborn"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_hook_that_blocks_its_thread_is_abandoned_at_its_timeout() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    b.add(
        Probe::new("blocker", &log)
            .deps(&["db"])
            .stop(Hook::BlockThread(Duration::from_secs(2)))
            .options(stop_within(200)),
    );
    let began = Instant::now();
    let report = run_until_ready_then_stop(b.build().unwrap()).await;
    assert!(began.elapsed() < Duration::from_millis(1500), "the blocked thread was not waited for");
    timed_out_in(&report, "blocker", Stage::Stopping);
    assert!(matches!(outcome(&report, "db"), Outcome::Stopped), "{report}");
}

#[test]
fn spawn_blocking_that_never_returns_is_reported_outstanding() {
    // Dropping a runtime waits for its blocking threads, forever here: shut it down in the
    // background instead, as a process would by exiting.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = runtime.block_on(async {
        let log = Log::default();
        let mut b = builder();
        b.add(Probe::new("files", &log).task(Task::BlockingForever).options(stop_within(150)));
        run_until_ready_then_stop(b.build().unwrap()).await
    });
    runtime.shutdown_background();
    timed_out_in(&report, "files", Stage::WaitingForTasks);
    assert_eq!(
        report.component("files").unwrap().outstanding_tasks,
        vec![TaskCount { name: "blocking_forever".into(), count: 1 }]
    );
}

/// A stop timeout at or above the global deadline no longer lets one hung component eat it:
/// what it depends on still gets its stop hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dependency_of_a_hung_component_still_gets_its_stop_hook() {
    let log = Log::default();
    let mut b = builder();
    b.shutdown_deadline(Duration::from_millis(300));
    b.add(Probe::new("db", &log));
    b.add(Probe::new("slow_a", &log).deps(&["db"]).stop(Hook::Hang).options(stop_within(10_000)));
    b.add(Probe::new("slow_b", &log).stop(Hook::Hang).options(stop_within(10_000)));
    let began = Instant::now();
    let report = run_until_ready_then_stop(b.build().unwrap()).await;
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    // `slow_a` (10 s of its own, 300 ms left) is cut at 270 ms, keeping `db` below it its reserve
    // (a tenth of the deadline), so `db` still stops; `slow_b`, with nothing below it, runs into
    // the deadline itself.
    let slow_a = timed_out_in(&report, "slow_a", Stage::Stopping);
    assert!(
        slow_a >= Duration::from_millis(260) && slow_a < Duration::from_millis(290),
        "{slow_a:?}\n{report}"
    );
    timed_out_in(&report, "slow_b", Stage::Stopping);
    assert!(matches!(outcome(&report, "db"), Outcome::Stopped), "{report}");
    assert!(log.at("db", "stop-end").is_some(), "db's stop hook ran");
    assert!(report.deadline_exceeded, "{report}");
    assert_eq!(report.exit_code, lifecycle_core::EXIT_DEADLINE, "{report}");
    assert!(report.to_string().contains("shutdown deadline exceeded"), "{report}");
}

/// Gives up a little before its deadline, with an error that says why.
struct Polite;

impl lifecycle_core::Component for Polite {
    fn options(&self) -> ComponentOptions {
        stop_within(200)
    }

    async fn stop(&self, ctx: &lifecycle_core::Context) -> Result<(), lifecycle_core::BoxError> {
        let deadline = ctx.deadline().expect("a stop hook has a deadline");
        tokio::time::sleep_until(deadline - Duration::from_millis(50)).await;
        Err("3 connections still checked out".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_can_read_its_deadline_and_end_with_a_better_error() {
    let mut b = builder();
    b.add(Polite);
    let report = run_until_ready_then_stop(b.build().unwrap()).await;
    match outcome(&report, "polite") {
        Outcome::Failed { stage: Stage::Stopping, failure: Failure::Error(error) } => {
            assert_eq!(error.to_string(), "3 connections still checked out");
        }
        other => panic!("expected the hook's own error, got {other}\n{report}"),
    }
    let stop = report.component("polite").unwrap().stop_duration.unwrap();
    assert!(stop >= Duration::from_millis(140) && stop < Duration::from_millis(200), "{stop:?}");
}
