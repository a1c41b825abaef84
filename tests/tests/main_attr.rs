//! `#[lifecycle::main]` maps the report to the exit code and writes it when the run failed; its
//! setup runs before the runtime's threads exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_main_attr");

/// Runs the binary with `args`: its exit code and standard error.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(BINARY).args(args).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_failed_start_exits_one_with_the_report() {
    let (code, stderr) = run(&["fail"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "lifecycle report: component `broken` failed to start: connection refused (127.0.0.1:1)\n\
             exit code 1 (critical component `broken` failed)"
        ),
        "{stderr}"
    );
}

#[test]
fn a_clean_run_exits_zero_without_printing_the_report() {
    let (code, stderr) = run(&["ok"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("lifecycle report"), "the report is written on failure only: {stderr}");
}

#[test]
fn a_requested_exit_code_is_the_process_exit_code() {
    let (code, stderr) = run(&["exit3"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr
            .contains("lifecycle report: shutdown requested: work done\nexit code 3 (exit code 3 requested)"),
        "{stderr}"
    );
    // The start that asked for the shutdown had completed: the component is stopped, not cancelled.
    assert!(
        stderr.lines().any(|l| l.trim_start().starts_with("finisher") && l.contains("stopped")),
        "{stderr}"
    );
}

#[test]
fn an_error_instead_of_a_builder_exits_one_with_the_error() {
    let (code, stderr) = run(&["nonsense"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.trim(),
        "error: unknown mode \"nonsense\"; use `fail`, `ok`, `exit3`, `threads`, `early`, `slow` or `reload`"
    );
}

#[test]
fn the_setup_runs_before_the_runtime_starts_a_thread() {
    let output = Command::new(BINARY).arg("threads").output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "threads during setup: 1");
}

#[test]
fn a_failed_setup_exits_one_with_its_error() {
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.trim(),
        "error: no mode given; use `fail`, `ok`, `exit3`, `threads`, `early`, `slow` or `reload`"
    );
}

#[test]
fn a_signal_before_the_run_starts_is_kept_for_the_run() {
    // The setup sends itself SIGTERM before the runtime exists; the process is not killed by it:
    // the run sees it first thing, cancels the start in flight and exits 0.
    let began = std::time::Instant::now();
    let output = Command::new(BINARY).arg("early").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "not ended by the signal itself: {:?} {stderr}", output.status);
    assert!(began.elapsed() < std::time::Duration::from_secs(10), "the start waiting forever was cancelled");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "SIGTERM sent during setup");
}

#[test]
fn a_second_signal_before_the_run_starts_ends_the_process_at_once() {
    // `main` takes 30 s to return its builder: the first SIGTERM is kept for the run, the second
    // means "now", as it does during a run.
    let service = lifecycle_tests::Service::spawn(BINARY, &["slow"]).unwrap();
    service.wait_for_line("building", std::time::Duration::from_secs(10)).unwrap();
    service.signal("TERM").unwrap();
    // Later than a second delivery of the same signal (to the process group) would come.
    std::thread::sleep(std::time::Duration::from_millis(200));
    service.signal("TERM").unwrap();
    let (status, stderr, lived) = service.wait(std::time::Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert!(lived < std::time::Duration::from_secs(10), "{lived:?}");
    assert!(stderr.contains("lifecycle: second SIGTERM before the run started; exiting"), "{stderr}");
}

#[test]
fn sighup_reloads_the_running_process_and_one_before_the_run_is_kept_for_it() {
    // The setup sends itself SIGHUP before the runtime exists: not the default disposition (which
    // ends the process) and not a shutdown, but a reload once the service is ready.
    let service = lifecycle_tests::Service::spawn(BINARY, &["reload"]).unwrap();
    let limit = std::time::Duration::from_secs(10);
    service.wait_for_line("SIGHUP sent during setup", limit).unwrap();
    service.wait_for_line("started", limit).unwrap();
    service.wait_for_line("reloaded 1", limit).unwrap();
    // Each SIGHUP afterwards reloads the same process; it neither stops nor starts another.
    for count in 2..=4 {
        service.signal("HUP").unwrap();
        service.wait_for_line(&format!("reloaded {count}"), limit).unwrap();
        // Apart, so that the kernel does not merge two pending deliveries into one.
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    assert!(!lifecycle_tests::exited(service.pid()));
    service.signal("TERM").unwrap();
    let (status, stderr, _) = service.wait(limit).unwrap();
    assert_eq!(status.code(), Some(0), "a reload is not a failure: {stderr}");
}
