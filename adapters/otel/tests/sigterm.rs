//! A real service process sent SIGTERM: every span it made reached the collector, with its
//! metric points and log records, and so did the lifecycle's own hook spans.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{Receiver, count_in};

/// The example service, built once for this test binary (cargo has released its lock by now).
fn service_binary() -> PathBuf {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*built {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "lifecycle-otel", "--example", "otel_service"])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build the example");
        *built = true;
    }
    // target/debug/deps/sigterm-* -> target/debug/examples/otel_service
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join("otel_service")
}

struct Ended {
    status: std::process::ExitStatus,
    stdout: Vec<String>,
    stderr: String,
}

/// Runs the service against `receiver` for `serving`, sends SIGTERM, waits for the exit.
async fn serve_then_terminate(receiver: &Receiver, serving: Duration) -> Ended {
    let mut child = Command::new(service_binary())
        .env("OTEL_ENDPOINT", receiver.endpoint())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, stdout) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || std::io::read_to_string(err).unwrap());
    let ready = tokio::task::spawn_blocking(move || {
        let first = stdout.recv_timeout(Duration::from_secs(60));
        (first, stdout)
    });
    let (first, stdout) = ready.await.unwrap();
    assert_eq!(first.as_deref(), Ok("ready"));
    tokio::time::sleep(serving).await; // the service works meanwhile: this is its load
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    reader.join().unwrap();
    Ended { status, stdout: stdout.try_iter().collect(), stderr: stderr.join().unwrap() }
}

fn requests_made(stdout: &[String]) -> u64 {
    let line = stdout.iter().find(|l| l.starts_with("requests ")).expect("a `requests N` line");
    line["requests ".len()..].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_span_made_before_sigterm_reaches_the_collector() {
    let receiver = Receiver::start().await;
    let ended = serve_then_terminate(&receiver, Duration::from_millis(500)).await;
    assert!(ended.status.success(), "{:?}\n{}", ended.status, ended.stderr);

    let made = requests_made(&ended.stdout);
    assert!(made > 10, "the service made {made} requests");
    // The receiver answered every export before the service exited, so no wait is needed.
    assert_eq!(receiver.spans_named("request").len() as u64, made, "{}", ended.stderr);
    let (spans, points, records) = receiver.with(|r| (r.spans.len() as u64, r.metric_points, r.log_records));
    assert!(points >= 1, "no metric point reached the collector");
    assert!(records >= made, "{records} log records for {made} requests");
    // The report's numbers are what the collector received.
    let note = ended.stderr.lines().find(|l| l.contains("`telemetry`: exported")).expect(&ended.stderr);
    assert!(note.contains("none dropped"), "{note}");
    assert_eq!(count_in(note, "exported", "spans"), spans, "{note}");
    assert_eq!(count_in(note, "exported", "metric points"), points, "{note}");
    assert_eq!(count_in(note, "exported", "log records"), records, "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_hooks_become_spans_at_the_collector() {
    let receiver = Receiver::start().await;
    let ended = serve_then_terminate(&receiver, Duration::from_millis(100)).await;
    assert!(ended.status.success(), "{:?}\n{}", ended.status, ended.stderr);

    let hooks: Vec<(String, String)> = receiver
        .spans_named("lifecycle")
        .into_iter()
        .map(|s| (s.attributes["component"].clone(), s.attributes["hook"].clone()))
        .collect();
    for (component, hook) in
        [("telemetry", "start"), ("worker", "start"), ("worker", "drain"), ("worker", "stop")]
    {
        let seen = hooks.iter().filter(|(c, h)| c == component && h == hook).count();
        assert_eq!(seen, 1, "{component} {hook} in {hooks:?}");
    }
    // The worker's task span too, which ends with its stop.
    let tasks = receiver.spans_named("task");
    assert!(
        tasks.iter().any(|t| t.attributes.get("component").map(String::as_str) == Some("worker")),
        "{tasks:?}"
    );
}
