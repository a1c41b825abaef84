//! A run that ends by itself: once every component that runs to completion is done (started,
//! and every task it spawned ended), with exit code 0, the drain, the reverse stop and the
//! report; a failure is handled as any other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifecycle_core::testing::{TestRun, builder, within};
use lifecycle_core::{
    BoxError, Component, ComponentOptions, Context, ExitCause, FnComponent, ShutdownReason,
};

/// Spawns `batches` tasks that each take `each` and then succeed, or fail with `fails`.
struct Batch {
    name: &'static str,
    batches: u32,
    each: Duration,
    fails: bool,
    options: ComponentOptions,
    log: Arc<Mutex<Vec<String>>>,
}

impl Batch {
    fn new(name: &'static str, batches: u32, each: Duration, log: &Arc<Mutex<Vec<String>>>) -> Self {
        let options = ComponentOptions::new().run_to_completion(true);
        Self { name, batches, each, fails: false, options, log: Arc::clone(log) }
    }
}

impl Component for Batch {
    fn name(&self) -> lifecycle_core::ComponentId {
        self.name.into()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        for n in 0..self.batches {
            let (each, fails, log, name) = (self.each, self.fails, Arc::clone(&self.log), self.name);
            ctx.tasks().spawn(format!("batch {n}"), async move {
                tokio::time::sleep(each * (n + 1)).await;
                if fails {
                    return Err(std::io::Error::other("bad input row"));
                }
                log.lock().unwrap().push(format!("{name} batch {n} done"));
                Ok(())
            });
        }
        Ok(())
    }

    async fn stop(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.log.lock().unwrap().push(format!("{} stopped", self.name));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_run_ends_with_exit_code_zero_once_every_completing_component_is_done() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut b = builder();
    b.add(FnComponent::new("db"));
    b.add(Batch::new("import", 3, Duration::from_secs(1), &log)).depends_on("db");
    b.add(Batch::new("report", 1, Duration::from_secs(5), &log)).depends_on("db");
    let report =
        within("the run ends by itself", Duration::from_secs(60), TestRun::start(b).finished()).await;
    assert_eq!(report.exit_cause, ExitCause::Clean, "{report}");
    assert_eq!(report.exit_code, 0);
    assert_eq!(report.reason.to_string(), "run completed: `import`, `report` done");
    assert!(matches!(report.reason, ShutdownReason::Completed { .. }));
    let log = log.lock().unwrap().clone();
    // Every batch ran before anything stopped; the stop hooks still ran.
    assert_eq!(
        &log[..4],
        ["import batch 0 done", "import batch 1 done", "import batch 2 done", "report batch 0 done"]
    );
    assert!(
        log[4..].contains(&"import stopped".to_owned()) && log[4..].contains(&"report stopped".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn a_component_that_does_its_work_in_its_start_completes_the_run_after_it() {
    let mut b = builder();
    b.add(FnComponent::new("migrate").on_start(|_ctx| async { Ok::<(), std::io::Error>(()) }))
        .run_to_completion();
    b.add(FnComponent::new("other"));
    let report = within("the run ends", Duration::from_secs(60), TestRun::start(b).finished()).await;
    assert_eq!(report.reason.to_string(), "run completed: `migrate` done");
    assert!(report.is_success(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_task_of_a_completing_critical_component_fails_the_run() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut b = builder();
    let mut batch = Batch::new("import", 1, Duration::from_secs(1), &log);
    batch.fails = true;
    b.add(batch);
    let report = within("the run ends", Duration::from_secs(60), TestRun::start(b).finished()).await;
    assert_eq!(report.exit_code, 1, "{report}");
    assert!(matches!(report.reason, ShutdownReason::ComponentFailed { .. }), "{report}");
}

#[tokio::test(start_paused = true)]
async fn an_optional_completing_component_that_fails_is_over_too() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut b = builder();
    let mut failing = Batch::new("enrich", 1, Duration::from_secs(1), &log);
    failing.fails = true;
    failing.options = failing.options.critical(false);
    b.add(failing);
    b.add(Batch::new("import", 1, Duration::from_secs(2), &log));
    let report = within("the run ends", Duration::from_secs(60), TestRun::start(b).finished()).await;
    assert_eq!(report.reason.to_string(), "run completed: `enrich`, `import` done");
    assert_eq!(
        report.exit_code, 0,
        "an optional component's failure is reported, not the exit code:\n{report}"
    );
    assert_eq!(report.component("enrich").unwrap().failures.count, 1);
}

#[tokio::test(start_paused = true)]
async fn a_completing_component_restarted_by_its_policy_completes_after_the_restart() {
    let mut b = builder();
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = Arc::clone(&attempts);
    b.add(
        FnComponent::new("job")
            .on_start(move |ctx| {
                let attempt = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                ctx.tasks().spawn("work", async move {
                    if attempt == 0 { Err(std::io::Error::other("first try fails")) } else { Ok(()) }
                });
                async { Ok::<(), std::io::Error>(()) }
            })
            .options(
                ComponentOptions::new().run_to_completion(true).restart(
                    lifecycle_core::RestartPolicy::on_failure()
                        .backoff(Duration::from_millis(10), Duration::from_millis(10))
                        .max_restarts(3, Duration::from_secs(60)),
                ),
            ),
    );
    let report = within("the run ends", Duration::from_secs(60), TestRun::start(b).finished()).await;
    assert_eq!(report.reason.to_string(), "run completed: `job` done");
    assert!(report.is_success(), "{report}");
    assert_eq!(report.components[0].restarts, 1);
}
