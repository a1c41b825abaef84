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
            "lifecycle report: component `broken` failed to start: failed: connection refused (127.0.0.1:1)"
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
    assert!(stderr.contains("lifecycle report: shutdown requested: work done (exit code 3)"), "{stderr}");
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
    assert_eq!(stderr.trim(), "error: unknown mode \"nonsense\"; use `fail`, `ok` or `exit3`");
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
    assert_eq!(stderr.trim(), "error: no mode given; use `fail`, `ok`, `exit3` or `threads`");
}
