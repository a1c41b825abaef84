//! The report and the exit code tell the truth: every failure is kept, abandoned work does not
//! outlive the run, log lines say whose task wrote them, and tokio's paused clock is the clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifecycle_core::testing::{TestRun, assert_clean, eventually};
use lifecycle_core::{
    BoxError, Component, ComponentOptions, Context, ExitCause, Failure, Failures, Health, Outcome, Phase,
    Stage,
};
use support::{Hook, Log, Probe, Task, builder, outcome, run_until_ready_then_stop};

/// Its one task fails when the component is told to stop (a flush that fails, say).
struct FailsOnStop;

impl Component for FailsOnStop {
    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let token = ctx.token().clone();
        ctx.tasks().spawn("flusher", async move {
            token.cancelled().await;
            Err::<(), _>(std::io::Error::other("flush failed"))
        });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_whose_task_fails_after_another_failure_is_reported_failed() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("consumer", &log).task(Task::FailsAfter(Duration::from_millis(20))));
    b.add(FailsOnStop);
    let report = b.build().unwrap().run().await;

    assert_eq!(report.exit_code, 1, "{report}");
    assert_eq!(report.exit_cause, ExitCause::ComponentFailed("consumer".into()));
    // Its failure came second (the service was already stopping): it is still a failure.
    match outcome(&report, "fails_on_stop") {
        Outcome::Failed { stage: Stage::Running, failure: Failure::Error(error) } => {
            assert_eq!(error.to_string(), "flush failed");
        }
        other => panic!("expected the task's failure, got {other}\n{report}"),
    }
    assert!(
        report.to_string().contains("`fails_on_stop`: task `flusher` failed: flush failed (running)"),
        "{report}"
    );
}

/// Spawns `count` tasks that each fail.
struct Flaky {
    count: usize,
}

impl Component for Flaky {
    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().critical(false)
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        for n in 0..self.count {
            ctx.tasks()
                .spawn(format!("attempt_{n}"), async move { Err::<(), _>(format!("attempt {n} failed")) });
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_is_counted_and_the_last_few_kept_in_bounded_memory() {
    let mut b = builder();
    b.add(Flaky { count: 1_000 });
    let mut run = TestRun::start(b);
    run.ready().await;
    let handle = run.handle().clone();
    eventually("1,000 failures counted", Duration::from_secs(10), || {
        handle.components()[0].failures == 1_000
    })
    .await;
    let report = run.stop().await;

    let flaky = report.component("flaky").unwrap();
    let Failures { count, first, recent, .. } = &flaky.failures;
    assert_eq!(*count, 1_000);
    assert!(first.is_some());
    assert_eq!(recent.len(), Failures::KEPT);
    assert_eq!(flaky.failures.dropped(), 1_000 - 1 - Failures::KEPT as u64);
    assert!(report.to_string().contains("991 more failures not kept"), "{report}");
    // Non-critical: reported, never the exit code.
    assert_eq!(report.exit_code, 0, "{report}");
}

/// A task that ignores its cancellation, and says when it is dropped.
struct Stubborn {
    dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Component for Stubborn {
    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().stop_timeout(Duration::from_millis(100))
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let guard = SetOnDrop(Arc::clone(&self.dropped));
        ctx.tasks().spawn("stubborn", async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_task_is_aborted_once_the_run_returns() {
    let dropped = Arc::new(AtomicBool::new(false));
    let mut b = builder();
    b.add(Stubborn { dropped: Arc::clone(&dropped) });
    let report = run_until_ready_then_stop(b.build().unwrap()).await;
    assert!(
        matches!(outcome(&report, "stubborn"), Outcome::Failed { stage: Stage::WaitingForTasks, .. }),
        "{report}"
    );
    assert_eq!(report.component("stubborn").unwrap().outstanding_tasks.len(), 1, "reported as still running");
    eventually("the abandoned task to be dropped", Duration::from_secs(5), || dropped.load(Ordering::SeqCst))
        .await;
}

/// Collects what a `fmt` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs from inside its task.
struct Chatty;

impl Component for Chatty {
    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let token = ctx.token().clone();
        ctx.tasks().spawn("poller", async move {
            tracing::info!("polled once");
            token.cancelled().await;
        });
        ctx.tasks().spawn_blocking("reader", || tracing::info!("read a file"));
        Ok(())
    }
}

#[tokio::test]
async fn a_task_logs_inside_its_components_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let mut b = builder();
    b.add(Chatty);
    let mut run = TestRun::start(b);
    run.ready().await;
    eventually("both tasks to log", Duration::from_secs(5), || {
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        text.contains("polled once") && text.contains("read a file")
    })
    .await;
    assert_clean(&run.stop().await);
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let line = |needle: &str| text.lines().find(|l| l.contains(needle)).unwrap().to_owned();
    assert!(line("polled once").contains("task{component=chatty task=\"poller\"}"), "{text}");
    assert!(line("read a file").contains("task{component=chatty task=\"reader\"}"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn timeouts_run_on_tokio_clock_so_paused_time_works() {
    let log = Log::default();
    let mut b = builder();
    b.add(
        Probe::new("slow", &log)
            .stop(Hook::Sleep(Duration::from_secs(5)))
            .options(ComponentOptions::new().stop_timeout(Duration::from_secs(10))),
    );
    b.add(
        Probe::new("hung", &log)
            .stop(Hook::Hang)
            .options(ComponentOptions::new().stop_timeout(Duration::from_secs(2))),
    );
    let began = std::time::Instant::now();
    let report = run_until_ready_then_stop(b.build().unwrap()).await;
    assert!(began.elapsed() < Duration::from_secs(2), "virtual seconds, not real ones");

    assert!(matches!(outcome(&report, "slow"), Outcome::Stopped), "{report}");
    let slow_stop = report.component("slow").unwrap().stop_duration.unwrap();
    assert!(slow_stop >= Duration::from_secs(5) && slow_stop < Duration::from_secs(6), "{slow_stop:?}");
    match outcome(&report, "hung") {
        Outcome::Failed { failure: Failure::TimedOut(after), .. } => {
            assert!(*after >= Duration::from_secs(2) && *after < Duration::from_secs(3), "{after:?}");
        }
        other => panic!("{other}\n{report}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_hooks_deadline_is_on_tokio_clock() {
    struct Reader(Arc<Mutex<Option<Duration>>>);
    impl Component for Reader {
        fn options(&self) -> ComponentOptions {
            ComponentOptions::new().stop_timeout(Duration::from_secs(7))
        }
        async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
            let left = ctx.deadline().unwrap() - tokio::time::Instant::now();
            *self.0.lock().unwrap() = Some(left);
            Ok(())
        }
    }
    let seen = Arc::new(Mutex::new(None));
    let mut b = builder();
    b.add(Reader(Arc::clone(&seen)));
    assert_clean(&run_until_ready_then_stop(b.build().unwrap()).await);
    assert_eq!(*seen.lock().unwrap(), Some(Duration::from_secs(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_ready_runs_once_when_the_service_turns_ready() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    b.on_ready(move |handle| {
        assert_eq!(handle.phase(), Phase::Ready);
        seen.fetch_add(1, Ordering::SeqCst);
    });
    b.on_ready(|_| panic!("a broken callback"));
    let report = run_until_ready_then_stop(b.build().unwrap()).await;
    assert_clean(&report);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_health_check_reads_as_unhealthy_with_its_message() {
    struct Broken;
    impl Component for Broken {
        async fn health(&self) -> Health {
            panic!("lost the replica")
        }
    }
    let mut b = builder();
    b.add(Broken);
    let mut run = TestRun::start(b);
    run.ready().await;
    let health = run.handle().health().await;
    assert_eq!(health[0].1, Health::Unhealthy("health check panicked: lost the replica".into()));
    assert_clean(&run.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_code_that_cannot_be_an_exit_status_is_refused() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log));
    let mut run = TestRun::start(b);
    run.ready().await;
    // 256 would read as 0 (success) to a shell: it becomes 1.
    run.handle().shutdown().request("too big", 256);
    let report = run.finished().await;
    assert_eq!(report.exit_code, 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reports_exit_line_says_the_code_used_and_why() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log).stop(Hook::Fail));
    let report = run_until_ready_then_stop(b.build().unwrap()).await;
    let text = report.to_string();
    let mut lines = text.lines();
    // The first line no longer claims the requested 0 while the real code is 1.
    assert_eq!(lines.next(), Some("lifecycle report: shutdown requested: test over"));
    assert!(
        lines.next().unwrap().starts_with("exit code 1 (critical component `db` failed), run "),
        "{text}"
    );
}

#[test]
fn build_warns_when_a_stop_timeout_cannot_fit_in_the_deadline() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::with_default(subscriber, || {
        let log = Log::default();
        let mut b = builder();
        b.shutdown_deadline(Duration::from_secs(5));
        b.add(Probe::new("db", &log).options(ComponentOptions::new().stop_timeout(Duration::from_secs(1))));
        b.add(
            Probe::new("http", &log)
                .deps(&["db"])
                .options(ComponentOptions::new().stop_timeout(Duration::from_secs(5))),
        );
        drop(b.build().unwrap());
    });
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "only `http` cannot fit: {text}");
    assert!(
        warnings[0].contains("component=http")
            && warnings[0].contains("does not fit in the shutdown deadline"),
        "{text}"
    );
}
