//! The `orders` example under coreutils' `timeout`, which signals its child and then its own
//! process group (the child included): the two deliveries of one SIGTERM are one request, so
//! the drain and the stop run in full, and the exit code is 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use lifecycle_tests::workspace_binary;

#[test]
fn timeout_s_term_gives_a_full_drain_and_a_clean_exit() {
    let dir = std::env::temp_dir().join(format!("orders_timeout_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let binary = workspace_binary("orders");
    let began = Instant::now();
    // `timeout` sends SIGTERM to orders after 3 s, then to its process group: orders gets it twice.
    let output = Command::new("timeout")
        .args(["--preserve-status", "-s", "TERM", "3"])
        .arg(&binary)
        .args(["--listen", "127.0.0.1:0", "--drain-delay", "1"])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let took = began.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "a clean stop, not a forced one: {stderr}");
    assert!(stderr.contains("lifecycle report: SIGTERM received"), "{stderr}");
    assert!(!stderr.contains("second signal"), "the echo was taken for a second signal: {stderr}");
    // Whether the log says "delivered twice" depends on timing: a second SIGTERM that arrives
    // while the first is still pending is merged with it by the kernel.
    // The drain delay ran in full before the stop.
    assert!(took >= Duration::from_secs(4), "stopped after {took:?}, before the 1 s drain delay ended");
    assert!(stderr.contains("exit code 0 (stopped cleanly)"), "{stderr}");
    for component in ["orders_db", "migrations", "worker", "http"] {
        let row = lifecycle_tests::report_row(&stderr, component);
        assert!(row.contains(" stopped "), "{row}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
