//! The run: start in dependency order, wait for a shutdown request, drain, stop in reverse order.
//!
//! Every hook runs in its own tracked task, watched by a supervisor task that enforces the
//! hook's timeout. A hook that blocks its thread therefore cannot stop the clock: the supervisor
//! runs on another worker, gives up on the hook, and the run moves on to everything that does
//! not depend on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::component::SharedComponent;
use crate::panic::CatchUnwind;
use crate::progress::Progress;
use crate::registry::{Limits, RunConfig};
use crate::report::{Failure, Outcome, Stage};
use crate::signal::SignalListener;
use crate::watchdog::Watchdog;
use crate::{BoxError, Context, LifecycleHandle, Phase, Registry, Report, Shutdown, ShutdownReason};

/// How far a component got in the start.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Started {
    /// Its start was never attempted.
    No,
    /// Its start hook succeeded: it gets a stop hook.
    Yes,
    /// Its start hook failed; only its token and tasks are cleaned up.
    Failed,
    /// Its start was cancelled by a shutdown request; likewise.
    Cancelled,
}

struct Run {
    components: Vec<SharedComponent>,
    contexts: Vec<Context>,
    limits: Vec<Limits>,
    graph: crate::graph::Graph,
    config: RunConfig,
    handle: LifecycleHandle,
    shutdown: Shutdown,
    progress: Arc<Progress>,
    /// Every hook task. Never waited for as a whole: a hung hook is abandoned, not awaited.
    hooks: TaskTracker,
}

type HookResult = Result<Result<(), BoxError>, String>;

pub(crate) async fn run(registry: Registry) -> Report {
    let Registry { components, contexts, options, graph, config, handle, root } = registry;
    let shutdown = handle.shutdown().clone();
    let progress = Arc::clone(handle.progress());
    let run = Run {
        components,
        contexts,
        limits: options,
        graph,
        config,
        handle,
        shutdown,
        progress,
        hooks: TaskTracker::new(),
    };
    run.progress.run_started();

    // Listen before the first start, so a signal during start cancels it.
    let background = TaskTracker::new();
    let listening = CancellationToken::new();
    if !run.config.signals.is_empty() {
        let listener = SignalListener::new(&run.config.signals);
        background.spawn(listen(listener, run.shutdown.clone(), listening.clone()));
    }
    let mut watchdog = run
        .config
        .watchdog
        .then(|| Watchdog::start(Arc::clone(&run.progress), run.shutdown.clone()))
        .flatten();

    run.handle.set_phase(Phase::Starting);
    let (started, start_failure) = run.start_all().await;
    let start_complete = start_failure.is_none();
    if let Some(reason) = start_failure {
        run.shutdown.trigger(reason);
    }
    // Readiness is only ever announced when every critical component started and nobody asked
    // to stop yet.
    let announced = start_complete && !run.shutdown.is_requested();
    if announced {
        run.handle.set_phase(Phase::Ready);
        tracing::info!(components = run.components.len(), "lifecycle ready");
        run.shutdown.requested().await;
    }

    let deadline = run.deadline();
    run.progress.shutdown_started(deadline - run.config.shutdown_deadline);
    if let Some(watchdog) = &watchdog {
        watchdog.arm(deadline + WATCHDOG_GRACE);
    }
    let reason = run.shutdown.reason().unwrap_or_else(|| ShutdownReason::Requested {
        message: "run ended without a recorded reason".into(),
        exit_code: crate::report::EXIT_FAILURE,
    });
    tracing::info!(%reason, deadline_ms = run.config.shutdown_deadline.as_millis() as u64, "lifecycle shutdown");

    let mut deadline_exceeded = false;
    let mut forced = false;
    if announced {
        run.handle.set_phase(Phase::Draining);
        forced = run.drain_all(&started, deadline).await;
        // The drain delay lets balancers notice; after a hand-over the successor already
        // accepts on the same sockets, so there is nothing to notice.
        let handed_over = matches!(reason, ShutdownReason::HandedOver { .. });
        if !forced && !handed_over && !run.config.drain_delay.is_zero() {
            let until = (Instant::now() + run.config.drain_delay).min(deadline);
            tokio::select! {
                biased;
                _ = run.shutdown.forced() => forced = true,
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }
    if !forced {
        run.handle.set_phase(Phase::Stopping);
        deadline_exceeded = run.stop_all(&started, deadline).await;
    }
    root.cancel();
    run.handle.set_phase(Phase::Stopped);

    listening.cancel();
    background.close();
    background.wait().await;

    let report = run.progress.report(reason, run.shutdown.forced_by(), deadline_exceeded);
    report.emit();
    // With nothing left behind, the process can outlive the run (embedding, tests). With a hung
    // hook or task left behind, returning from `main` could block on it, so the watchdog stays
    // armed and still ends the process at the deadline.
    let left_behind =
        !run.hooks.is_empty() || report.components.iter().any(|c| !c.outstanding_tasks.is_empty());
    if let Some(watchdog) = watchdog.take() {
        if left_behind {
            watchdog.keep_armed();
        }
    }
    report
}

/// How long after the global deadline the watchdog ends the process, to let the run finish
/// its own report first when it can.
const WATCHDOG_GRACE: Duration = Duration::from_millis(500);

async fn listen(mut listener: SignalListener, shutdown: Shutdown, done: CancellationToken) {
    loop {
        let signal = tokio::select! {
            _ = done.cancelled() => return,
            signal = listener.recv() => signal,
        };
        if shutdown.trigger(ShutdownReason::Signal(signal)) {
            tracing::info!(%signal, "signal received; shutting down");
        } else {
            tracing::warn!(%signal, "second signal; ending without waiting for the rest");
            shutdown.force(signal);
        }
    }
}

impl Run {
    /// The global deadline: the shutdown deadline after the request (or now, if none was made).
    fn deadline(&self) -> Instant {
        self.shutdown.requested_at().unwrap_or_else(Instant::now) + self.config.shutdown_deadline
    }

    /// Starts components as their dependencies become ready. Returns how far each got, and the
    /// reason to stop if a critical start failed.
    async fn start_all(&self) -> (Vec<Started>, Option<ShutdownReason>) {
        let count = self.components.len();
        let mut started = vec![Started::No; count];
        let mut waiting_on: Vec<usize> = (0..count).map(|i| self.graph.dependencies(i).len()).collect();
        let mut in_flight: Vec<Option<AbortHandle>> = vec![None; count];
        let mut running: JoinSet<(usize, Result<(), Option<Failure>>)> = JoinSet::new();
        let mut failure = None;

        let mut ready: Vec<usize> = (0..count).filter(|&i| waiting_on[i] == 0).collect();
        loop {
            if self.shutdown.is_requested() {
                tracing::info!("shutdown requested during start; cancelling the starts in flight");
                break;
            }
            for index in ready.drain(..) {
                in_flight[index] = Some(self.launch_start(index, &mut running));
            }
            if running.is_empty() {
                break;
            }
            let joined = tokio::select! {
                biased;
                _ = self.shutdown.requested() => None,
                joined = running.join_next() => joined,
            };
            // Requested: the check at the top of the loop ends the start.
            let Some(joined) = joined else { continue };
            let (index, result) = match joined {
                Ok(done) => done,
                Err(error) => {
                    // Supervisors catch everything; this is a bug, not a component failure.
                    tracing::error!(%error, "start supervisor ended abnormally");
                    continue;
                }
            };
            in_flight[index] = None;
            match result {
                // Only a shutdown aborts a start, and that ends this loop first.
                Err(None) => {
                    started[index] = Started::Cancelled;
                    continue;
                }
                Ok(()) => {
                    started[index] = Started::Yes;
                    self.progress.enter(index, Stage::Running);
                    tracing::info!(component = %self.contexts[index].name(), "started");
                }
                Err(Some(failure_)) => {
                    started[index] = Started::Failed;
                    let component = self.contexts[index].name().clone();
                    self.progress.fail(index, Stage::Starting, failure_.clone());
                    if self.limits[index].critical {
                        tracing::error!(component = %component, failure = %failure_, "start failed; rolling back");
                        failure = Some(ShutdownReason::StartFailed { component, failure: failure_ });
                        break;
                    }
                    tracing::warn!(component = %component, failure = %failure_, "non-critical component failed to start; continuing without it");
                }
            }
            // A non-critical failure releases its dependents too: they were told it may be absent.
            for &dependent in self.graph.dependents(index) {
                waiting_on[dependent] -= 1;
                if waiting_on[dependent] == 0 {
                    ready.push(dependent);
                }
            }
        }

        // Starts still in flight are cancelled. Their supervisors then say how each one ended:
        // a start that completed in the same instant is started (and gets its stop hook), an
        // aborted one is cancelled. A hook that ignores the abort (it blocks its thread) is not
        // waited for past the deadline.
        for handle in in_flight.iter().flatten() {
            handle.abort();
        }
        let deadline = self.deadline();
        while let Ok(Some(joined)) = timeout_at(deadline.into(), running.join_next()).await {
            let Ok((index, result)) = joined else { continue };
            in_flight[index] = None;
            started[index] = match result {
                Ok(()) => {
                    self.progress.enter(index, Stage::Running);
                    Started::Yes
                }
                Err(None) => Started::Cancelled,
                Err(Some(failure_)) => {
                    self.progress.fail(index, Stage::Starting, failure_);
                    Started::Failed
                }
            };
        }
        for index in (0..count).filter(|&i| in_flight[i].is_some()) {
            started[index] = Started::Cancelled;
        }
        running.abort_all();
        (started, failure)
    }

    fn launch_start(
        &self,
        index: usize,
        running: &mut JoinSet<(usize, Result<(), Option<Failure>>)>,
    ) -> AbortHandle {
        self.progress.enter(index, Stage::Starting);
        let component = Arc::clone(&self.components[index].hooks);
        let ctx = self.contexts[index].clone();
        let span = tracing::info_span!("lifecycle", component = %ctx.name(), hook = "start");
        let limit = Instant::now() + self.limits[index].start_timeout;
        ctx.set_deadline(limit);
        let hook =
            self.hooks.spawn(async move { CatchUnwind::new(component.start(&ctx)).await }.instrument(span));
        let abort = hook.abort_handle();
        running.spawn(async move { (index, supervise(hook, limit).await) });
        abort
    }

    /// Runs every started component's drain hook at once. Returns true when forced to stop waiting.
    async fn drain_all(&self, started: &[Started], deadline: Instant) -> bool {
        let mut running: JoinSet<(usize, Result<(), Option<Failure>>)> = JoinSet::new();
        for index in (0..self.components.len()).filter(|&i| started[i] == Started::Yes) {
            self.progress.enter(index, Stage::Draining);
            let component = Arc::clone(&self.components[index].hooks);
            let ctx = self.contexts[index].clone();
            let span = tracing::info_span!("lifecycle", component = %ctx.name(), hook = "drain");
            let limit = (Instant::now() + self.limits[index].stop_timeout).min(deadline);
            ctx.set_deadline(limit);
            let hook = self
                .hooks
                .spawn(async move { CatchUnwind::new(component.drain(&ctx)).await }.instrument(span));
            running.spawn(async move { (index, supervise(hook, limit).await) });
        }
        loop {
            let joined = tokio::select! {
                biased;
                _ = self.shutdown.forced() => return true,
                joined = running.join_next() => joined,
            };
            match joined {
                None => return false,
                Some(Ok((index, result))) => {
                    if let Err(Some(failure)) = result {
                        tracing::warn!(component = %self.contexts[index].name(), %failure, "drain hook failed");
                        self.progress.fail(index, Stage::Draining, failure);
                    }
                    self.progress.enter(index, Stage::Running);
                }
                Some(Err(error)) => tracing::error!(%error, "drain supervisor ended abnormally"),
            }
        }
    }

    /// Stops every component the start touched, each once all its dependents are done, within
    /// its own timeout and the global deadline. Returns whether the deadline cut anything short.
    async fn stop_all(&self, started: &[Started], deadline: Instant) -> bool {
        let count = self.components.len();
        let touched = |i: usize| started[i] != Started::No;
        let mut dependents_left: Vec<usize> =
            (0..count).map(|i| self.graph.dependents(i).iter().filter(|&&d| touched(d)).count()).collect();
        let mut running: JoinSet<(usize, Outcome, bool)> = JoinSet::new();
        let mut deadline_exceeded = false;

        // Reverse registration order among the ready ones, so a chain registered in dependency
        // order reads naturally in the logs; correctness comes from the counts alone.
        let mut ready: Vec<usize> =
            (0..count).rev().filter(|&i| touched(i) && dependents_left[i] == 0).collect();
        loop {
            while let Some(index) = ready.pop() {
                if Instant::now() < deadline {
                    self.launch_stop(index, started[index], deadline, &mut running);
                    continue;
                }
                // Out of time before its turn came: cancel what it runs and report it as it is.
                deadline_exceeded = true;
                self.contexts[index].token().cancel();
                let outcome = match self.progress.stage(index) {
                    // Still inside a start hook that ignored its cancellation.
                    Some((Stage::Starting, since)) => {
                        Outcome::Abandoned { stage: Stage::Starting, after: since.elapsed() }
                    }
                    _ => Outcome::NotStopped,
                };
                self.progress.finish(index, outcome);
                self.release_dependencies(index, started, &mut dependents_left, &mut ready);
            }
            if running.is_empty() {
                return deadline_exceeded;
            }
            let joined = tokio::select! {
                biased;
                _ = self.shutdown.forced() => return deadline_exceeded,
                joined = running.join_next() => joined,
            };
            match joined {
                Some(Ok((index, outcome, hit_deadline))) => {
                    deadline_exceeded |= hit_deadline;
                    let name = self.contexts[index].name();
                    if outcome.is_failure() {
                        tracing::error!(component = %name, %outcome, "stop failed");
                    } else {
                        tracing::info!(component = %name, "stopped");
                    }
                    self.progress.finish(index, outcome);
                    self.release_dependencies(index, started, &mut dependents_left, &mut ready);
                }
                Some(Err(error)) => tracing::error!(%error, "stop supervisor ended abnormally"),
                None => return deadline_exceeded,
            }
        }
    }

    fn release_dependencies(
        &self,
        index: usize,
        started: &[Started],
        dependents_left: &mut [usize],
        ready: &mut Vec<usize>,
    ) {
        for &dependency in self.graph.dependencies(index) {
            if started[dependency] == Started::No {
                continue;
            }
            dependents_left[dependency] -= 1;
            if dependents_left[dependency] == 0 {
                ready.push(dependency);
            }
        }
    }

    fn launch_stop(
        &self,
        index: usize,
        started: Started,
        deadline: Instant,
        running: &mut JoinSet<(usize, Outcome, bool)>,
    ) {
        let component = Arc::clone(&self.components[index].hooks);
        let ctx = self.contexts[index].clone();
        // Cancelled here rather than inside the hook's task: tokio queues the tasks this wakes on
        // the current worker, which must not be the one a blocking stop hook is about to hold.
        ctx.token().cancel();
        let own_limit = Instant::now() + self.limits[index].stop_timeout;
        let limit = own_limit.min(deadline);
        ctx.set_deadline(limit);
        let progress = Arc::clone(&self.progress);
        let span = tracing::info_span!("lifecycle", component = %ctx.name(), hook = "stop");
        let hook = self.hooks.spawn(
            async move {
                if started == Started::Yes {
                    progress.enter(index, Stage::Stopping);
                    let result = CatchUnwind::new(component.stop(&ctx)).await;
                    if let Err(failure) = hook_failure(result) {
                        progress.fail(index, Stage::Stopping, failure);
                    }
                }
                progress.enter(index, Stage::WaitingForTasks);
                ctx.tasks().close();
                ctx.tasks().wait().await;
                Ok(Ok(()))
            }
            .instrument(span),
        );
        let outcome = match started {
            Started::Cancelled => Outcome::StartCancelled,
            // A failed start was recorded as the component's failure; `finish` keeps it.
            Started::Yes | Started::Failed | Started::No => Outcome::Stopped,
        };
        let progress = Arc::clone(&self.progress);
        running.spawn(async move {
            match supervise(hook, limit).await {
                // Stop hooks are never aborted before their supervisor gives up on them.
                Ok(()) | Err(None) => (index, outcome, false),
                Err(Some(failure)) => {
                    let stage = progress.stage(index).map_or(Stage::Stopping, |(stage, _)| stage);
                    (index, Outcome::Failed { stage, failure }, limit < own_limit)
                }
            }
        });
    }
}

/// Waits for a hook task until `limit`, turning every way it can end into a `Failure`. A hook
/// still running at the limit is aborted (which takes effect at its next await, if ever).
/// `Err(None)` means the hook was cancelled (aborted by a shutdown during start).
async fn supervise(mut hook: JoinHandle<HookResult>, limit: Instant) -> Result<(), Option<Failure>> {
    let began = Instant::now();
    match timeout_at(limit.into(), &mut hook).await {
        Ok(Ok(result)) => hook_failure(result).map_err(Some),
        Ok(Err(join_error)) if join_error.is_cancelled() => Err(None),
        Ok(Err(join_error)) => Err(Some(Failure::Panic(join_error.to_string()))),
        Err(_) => {
            hook.abort();
            Err(Some(Failure::TimedOut(began.elapsed())))
        }
    }
}

fn hook_failure(result: HookResult) -> Result<(), Failure> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Failure::Error(Arc::from(error))),
        Err(panic) => Err(Failure::Panic(panic)),
    }
}
