//! Testing components and registries (feature `test-util`): build a registry without signals or
//! watchdog, start it, wait until it is ready, poke it, stop it, and check its report.
//!
//! Everything here runs on tokio's clock, so it works in `#[tokio::test(start_paused = true)]`
//! tests; a failed expectation panics with what was expected and the report.
//!
//! ```
//! use lifecycle_core::{BoxError, Component, Context, testing};
//!
//! struct Ticker;
//! impl Component for Ticker {
//!     async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
//!         let token = ctx.token().clone();
//!         ctx.tasks().spawn("tick", async move { token.cancelled().await });
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut builder = testing::builder();
//! builder.add(Ticker);
//! let mut run = testing::TestRun::start(builder);
//! run.ready().await;
//! assert_eq!(run.handle().components()[0].name.as_str(), "ticker");
//! let report = run.stop().await;
//! testing::assert_clean(&report);
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::{LifecycleHandle, Outcome, Phase, Registry, RegistryBuilder, Report, Signals};

/// A builder for tests: no signals (the test process keeps its own), no watchdog (the test
/// harness bounds the process, and a paused clock must not race a real-time thread).
pub fn builder() -> RegistryBuilder {
    let mut builder = Registry::builder();
    builder.signals(Signals::none()).watchdog(false);
    builder
}

/// A registry running in its own task, for a test to drive.
#[derive(Debug)]
pub struct TestRun {
    handle: LifecycleHandle,
    run: JoinHandle<Report>,
}

impl TestRun {
    /// Builds the registry and starts its run in a task.
    ///
    /// # Panics
    /// When the builder does not build (with the build error), or outside a tokio runtime.
    pub fn start(builder: RegistryBuilder) -> Self {
        match builder.build() {
            Ok(registry) => Self::run(registry),
            Err(error) => panic!("the registry does not build: {error}"),
        }
    }

    /// Starts the run of a registry already built.
    pub fn run(registry: Registry) -> Self {
        let handle = registry.handle();
        // Owned by this value and awaited by `stop`/`finished`: the run is never detached.
        let run = tokio::spawn(registry.run());
        Self { handle, run }
    }

    /// The run's handle: phase, components, health, shutdown.
    pub fn handle(&self) -> &LifecycleHandle {
        &self.handle
    }

    /// Waits until every component started and the service is ready.
    ///
    /// # Panics
    /// When the run ends first (a critical start failed), with its report.
    pub async fn ready(&mut self) {
        tokio::select! {
            () = self.handle.reached(Phase::Ready) => {
                if self.handle.phase() != Phase::Ready {
                    // Reached a later phase without ever being ready.
                    let report = self.finished_mut().await;
                    panic!("the service never turned ready:\n{report}");
                }
            }
            report = &mut self.run => panic!("the run ended before the service was ready:\n{}", joined(report)),
        }
    }

    /// Requests a graceful shutdown (exit code 0) and returns the report.
    pub async fn stop(self) -> Report {
        self.handle.shutdown().request("test over", 0);
        self.finished().await
    }

    /// Waits for the run to end on its own (a failure, or a shutdown requested elsewhere).
    pub async fn finished(mut self) -> Report {
        self.finished_mut().await
    }

    async fn finished_mut(&mut self) -> Report {
        joined((&mut self.run).await)
    }
}

fn joined(result: Result<Report, tokio::task::JoinError>) -> Report {
    match result {
        Ok(report) => report,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("the run's task did not finish: {error}"),
    }
}

/// Runs `registry`, requests a shutdown as soon as it is ready, and returns the report.
pub async fn run_until_ready_then_stop(registry: Registry) -> Report {
    let mut run = TestRun::run(registry);
    run.ready().await;
    run.stop().await
}

/// Asserts the run left nothing behind and nothing failed: exit code 0, every component that
/// started stopped cleanly, no task still running, no failure, the deadline kept.
///
/// # Panics
/// Otherwise, with the report.
pub fn assert_clean(report: &Report) {
    let mut problems = Vec::new();
    if report.exit_code != 0 {
        problems.push(format!("exit code {} ({})", report.exit_code, report.exit_cause));
    }
    if report.deadline_exceeded {
        problems.push("the shutdown deadline was exceeded".to_owned());
    }
    for component in &report.components {
        if !matches!(component.outcome, Outcome::Stopped | Outcome::NotStarted) {
            problems.push(format!("`{}` {}", component.name, component.outcome));
        }
        if !component.outstanding_tasks.is_empty() {
            problems.push(format!(
                "`{}` left {} task names running",
                component.name,
                component.outstanding_tasks.len()
            ));
        }
        if !component.failures.is_empty() {
            problems.push(format!("`{}` failed {} times", component.name, component.failures.count));
        }
    }
    assert!(problems.is_empty(), "the run was not clean: {}\n{report}", problems.join("; "));
}

/// Waits until `condition` holds, checking every 5 ms of tokio's clock, for at most `within`.
///
/// # Panics
/// When it still does not hold after `within`, naming `what` was awaited.
pub async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(within, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "waited {within:?} for {what}, in vain");
}

/// Awaits `future` for at most `within` of tokio's clock.
///
/// # Panics
/// When it does not complete in time, naming `what` was awaited.
pub async fn within<T>(what: &str, within: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(within, future).await {
        Ok(value) => value,
        Err(_) => panic!("waited {within:?} for {what}, in vain"),
    }
}
