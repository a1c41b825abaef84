//! A real service process, real signals: graceful stop on SIGTERM and SIGINT, a second signal
//! that ends the wait at once, and a deadline that holds even when every runtime thread is stuck.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lifecycle_tests::{Service, report_row as row};

const FIXTURE: &str = env!("CARGO_BIN_EXE_fixture");
const READY_WITHIN: Duration = Duration::from_secs(10);

fn start(args: &[&str]) -> Service {
    let service = Service::spawn(FIXTURE, args).unwrap();
    service.wait_for_line("ready", READY_WITHIN).unwrap();
    service
}

#[test]
fn sigterm_stops_every_component_and_exits_zero() {
    let service = start(&[]);
    service.signal("TERM").unwrap();
    let (status, stderr, _) = service.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("lifecycle report: SIGTERM received"), "{stderr}");
    assert!(row(&stderr, "database").starts_with("database stopped"), "{stderr}");
    assert!(row(&stderr, "worker").starts_with("worker stopped"), "{stderr}");
}

#[test]
fn sigint_stops_gracefully_too() {
    let service = start(&[]);
    service.signal("INT").unwrap();
    let (status, stderr, _) = service.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("lifecycle report: SIGINT received"), "{stderr}");
}

#[test]
fn second_signal_ends_the_wait_at_once_with_the_report() {
    // The worker's stop would take a minute; the second signal must not wait for it.
    let service = start(&["--slow-stop", "60000", "--deadline", "120000"]);
    service.signal("TERM").unwrap();
    // The first stop is in flight, so the report has something to show as abandoned.
    service.wait_for_line("stopping worker", Duration::from_secs(5)).unwrap();
    // Later than a second delivery of the same signal (to the process group) would come.
    std::thread::sleep(Duration::from_millis(200));
    service.signal("TERM").unwrap();
    let (status, stderr, lived) = service.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert!(lived < Duration::from_secs(30), "exited without waiting for the slow stop ({lived:?})");
    assert!(stderr.contains("forced by a second SIGTERM"), "{stderr}");
    assert!(row(&stderr, "worker").starts_with("worker abandoned while stopping"), "{stderr}");
}

#[test]
fn hook_that_blocks_a_thread_cannot_outlast_the_deadline() {
    // Two runtime threads: the blocked one is given up on in time for the database below it to
    // stop too (the worker's 30 s stop timeout cannot fit in the 1 s deadline: it is cut at 900 ms,
    // keeping the database its reserve of a tenth of the deadline).
    let service = start(&["--block-stop", "--deadline", "1000"]);
    service.signal("TERM").unwrap();
    let (status, stderr, lived) = service.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(lived < Duration::from_secs(10), "{lived:?}");
    assert!(stderr.contains("exit code 1 (critical component `worker` failed)"), "{stderr}");
    assert!(row(&stderr, "worker").starts_with("worker timed out after"), "{stderr}");
    assert!(
        !row(&stderr, "worker").contains("poll_loop"),
        "the cancelled task still ended on the free thread: {stderr}"
    );
    assert!(row(&stderr, "database").starts_with("database stopped"), "{stderr}");
    assert_eq!(stderr.matches("lifecycle report:").count(), 1, "one report: {stderr}");
}

/// The same missed deadline ends with the same code whatever the runtime: the global deadline,
/// not a component's own timeout, cuts a hook that hangs with nothing below it.
#[test]
fn a_missed_deadline_exits_124_on_either_runtime_flavour() {
    for flavour in [&[][..], &["--current-thread"][..]] {
        let mut args = vec!["--block-stop", "--worker-alone", "--deadline", "700"];
        args.extend_from_slice(flavour);
        let service = start(&args);
        service.signal("TERM").unwrap();
        let (status, stderr, lived) = service.wait(Duration::from_secs(20)).unwrap();
        assert_eq!(status.code(), Some(lifecycle::EXIT_DEADLINE), "{flavour:?}: {stderr}");
        assert!(lived < Duration::from_secs(10), "{lived:?}");
        assert!(stderr.contains("shutdown deadline exceeded"), "{flavour:?}: {stderr}");
        assert_eq!(stderr.matches("lifecycle report:").count(), 1, "one report: {stderr}");
    }
}

/// A run that finished (a hung hook abandoned within the deadline) keeps its exit code: the
/// watchdog, finding the process still held by that hook when `main` returns, ends it with the
/// run's code and a one-line note, not a second report.
#[test]
fn watchdog_keeps_the_exit_code_of_a_finished_run() {
    let service = start(&["--block-stop", "--deadline", "1000", "--return-from-main"]);
    service.signal("TERM").unwrap();
    let (status, stderr, lived) = service.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(lived < Duration::from_secs(10), "{lived:?}");
    assert_eq!(stderr.matches("lifecycle report:").count(), 1, "one report: {stderr}");
    assert!(!stderr.contains("shutdown deadline exceeded"), "{stderr}");
    assert!(!stderr.contains("shutdown deadline passed"), "{stderr}");
    assert!(
        stderr.contains(
            "lifecycle: the run ended with exit code 1, but the stop hook of `worker` still held the process \
             at the deadline; ending it with exit code 1"
        ),
        "{stderr}"
    );
}

/// The watchdog fires at the deadline plus the configured grace, not a hidden constant.
#[test]
fn watchdog_ends_the_process_within_the_configured_grace() {
    for (grace, at_least, below) in [(100, 1000, 2500), (2500, 3400, 6000)] {
        let grace_arg = grace.to_string();
        let args = ["--current-thread", "--block-stop", "--deadline", "1000", "--watchdog-grace", &grace_arg];
        let service = start(&args);
        service.signal("TERM").unwrap();
        let (status, stderr, lived) = service.wait(Duration::from_secs(20)).unwrap();
        assert_eq!(status.code(), Some(lifecycle::EXIT_DEADLINE), "{stderr}");
        assert!(
            lived >= Duration::from_millis(at_least) && lived < Duration::from_millis(below),
            "grace {grace} ms: lived {lived:?}"
        );
    }
}

#[test]
fn watchdog_ends_the_process_when_every_runtime_thread_is_blocked() {
    // One runtime thread, blocked forever by the stop hook: only the watchdog thread is left.
    let service = start(&["--current-thread", "--block-stop", "--blocking-task", "--deadline", "1000"]);
    service.signal("TERM").unwrap();
    let (status, stderr, lived) = service.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(lifecycle::EXIT_DEADLINE), "{stderr}");
    assert!(lived < Duration::from_secs(10), "{lived:?}");
    assert!(stderr.contains("lifecycle: shutdown deadline passed; ending the process now"), "{stderr}");
    assert!(stderr.contains("lifecycle report: SIGTERM received"), "{stderr}");
    assert!(row(&stderr, "worker").starts_with("worker abandoned while stopping"), "{stderr}");
    assert!(row(&stderr, "worker").contains("stuck_file_read"), "outstanding tasks are named: {stderr}");
}

#[test]
fn spawn_blocking_that_never_returns_does_not_keep_the_process_alive() {
    let service = start(&["--blocking-task", "--deadline", "1000"]);
    service.signal("TERM").unwrap();
    let (status, stderr, lived) = service.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(lived < Duration::from_secs(10), "{lived:?}");
    assert!(row(&stderr, "worker").contains("stuck_file_read"), "{stderr}");
}

#[test]
fn drain_delay_keeps_the_process_up_before_stopping() {
    let service = start(&["--drain-delay", "700"]);
    service.signal("TERM").unwrap();
    service.wait_for_line("draining", Duration::from_secs(5)).unwrap();
    let (status, stderr, _) = service.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // The report's shutdown time includes the drain delay.
    let summary = stderr.lines().find(|l| l.starts_with("exit code 0 (stopped cleanly), run")).unwrap();
    let shutdown = summary.rsplit("shutdown ").next().unwrap();
    assert!(
        shutdown.ends_with("ms") && shutdown.trim_end_matches("ms").parse::<f64>().unwrap() >= 700.0,
        "{summary}"
    );
}

#[test]
fn the_same_signal_delivered_twice_at_once_is_one_request() {
    // coreutils' `timeout` signals the process and then its group: two SIGTERMs a moment apart.
    // The worker's stop takes a second: forced, it would be abandoned.
    let service = start(&["--slow-stop", "1000"]);
    let pid = service.pid();
    let both = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {pid} && kill -TERM {pid}"))
        .status()
        .unwrap();
    assert!(both.success());
    let (status, stderr, _) = service.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("forced"), "{stderr}");
    assert!(row(&stderr, "worker").starts_with("worker stopped"), "{stderr}");
}
