//! The run: start in dependency order, wait for a shutdown request, drain, stop in reverse order,
//! and leave nothing running behind.
//!
//! Every hook goes through one launcher ([`hooks`]); [`start`] and [`stop`] decide what to
//! launch when, and with which time limit.

mod hooks;
mod reload;
mod start;
mod stop;
mod supervise;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use stop::reserve_below;

use crate::component::SharedComponent;
use crate::exit::EXIT_FAILURE;
use crate::graph::Graph;
use crate::progress::Progress;
use crate::reload::{ReloadCause, ReloadRequest};
use crate::restart::{RestartBudget, RestartPolicy, Trouble};
use crate::signal::SignalListener;
use crate::watchdog::{AbandonedHook, LeftBehind, Watchdog};
use crate::{ComponentId, Context, LifecycleHandle, Phase, Report, Shutdown, ShutdownReason, Signals};

/// Settings of a run, set through [`RegistryBuilder`](crate::RegistryBuilder).
#[derive(Clone, Debug)]
pub(crate) struct RunConfig {
    pub(crate) default_start_timeout: Duration,
    pub(crate) default_stop_timeout: Duration,
    pub(crate) shutdown_deadline: Duration,
    pub(crate) drain_delay: Duration,
    pub(crate) signals: Signals,
    pub(crate) watchdog: bool,
    pub(crate) watchdog_grace: Duration,
    pub(crate) health_timeout: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            default_start_timeout: Duration::from_secs(15),
            default_stop_timeout: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(25),
            drain_delay: Duration::ZERO,
            signals: Signals::default(),
            watchdog: true,
            watchdog_grace: Duration::from_millis(500),
            health_timeout: Duration::from_secs(2),
        }
    }
}

/// A component's options with the registry's defaults filled in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) start_timeout: Duration,
    pub(crate) stop_timeout: Duration,
    pub(crate) critical: bool,
    pub(crate) restart: RestartPolicy,
    /// The run ends once every component with this is done.
    pub(crate) completes_run: bool,
}

/// A callback run once when the service turns ready.
pub(crate) type OnReady = Box<dyn FnOnce(&LifecycleHandle) + Send>;

/// Everything a run needs, as the registry prepared it.
pub(crate) struct Parts {
    pub(crate) components: Vec<SharedComponent>,
    pub(crate) contexts: Vec<Context>,
    pub(crate) limits: Vec<Limits>,
    pub(crate) graph: Graph,
    pub(crate) config: RunConfig,
    pub(crate) listener: Option<SignalListener>,
    pub(crate) on_ready: Vec<OnReady>,
    pub(crate) handle: LifecycleHandle,
    pub(crate) root: CancellationToken,
    /// Failures of components with a restart policy, from their task sets.
    pub(crate) troubles: tokio::sync::mpsc::UnboundedReceiver<Trouble>,
    /// Reload requests, from the handle and the reload signals.
    pub(crate) reload_requests: tokio::sync::mpsc::UnboundedReceiver<ReloadRequest>,
}

/// How far a component got in the start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Started {
    /// Its start was never attempted.
    No,
    /// Its start hook succeeded: it gets a stop hook.
    Yes,
    /// Its start hook failed; only its token and tasks are cleaned up.
    Failed,
    /// Its start was cancelled by a shutdown request; likewise.
    Cancelled,
    /// Stopped by a restart (its own or a dependency's) and not started again yet; likewise.
    Restarting,
}

struct Run {
    components: Vec<SharedComponent>,
    contexts: Vec<Context>,
    limits: Vec<Limits>,
    graph: Graph,
    config: RunConfig,
    handle: LifecycleHandle,
    shutdown: Shutdown,
    progress: Arc<Progress>,
    names: Vec<ComponentId>,
    /// For each component, the time kept for its dependencies once it stopped.
    reserve_below: Vec<Duration>,
    /// Hooks the run gave up on, gathered from every phase.
    abandoned: Vec<AbandonedHook>,
    /// How far each component got.
    started: Vec<Started>,
    /// Whether each component's start was launched before: a new start gets a new context.
    launched: Vec<bool>,
    /// Each component's restarts against its policy.
    budgets: Vec<RestartBudget>,
    /// Components waiting for their backoff to start again.
    pending: supervise::Pending,
    troubles: tokio::sync::mpsc::UnboundedReceiver<Trouble>,
    reload_requests: tokio::sync::mpsc::UnboundedReceiver<ReloadRequest>,
    /// Components that run to completion and are done, of those that have their tasks' end
    /// watched (by component index and incarnation).
    completion: supervise::Completion,
    /// The parent of every component's token.
    root: CancellationToken,
    /// The run's own helpers (the signal listener, completion watchers), and what ends them.
    background: TaskTracker,
    background_stop: CancellationToken,
}

pub(crate) async fn run(parts: Parts) -> Report {
    let Parts {
        components,
        contexts,
        limits,
        graph,
        config,
        listener,
        on_ready,
        handle,
        root,
        troubles,
        reload_requests,
    } = parts;
    let shutdown = handle.shutdown().clone();
    let progress = Arc::clone(handle.progress());
    let names = contexts.iter().map(|ctx| ctx.name().clone()).collect();
    let reserve_below = reserve_below(&graph, &limits, config.shutdown_deadline);
    let count = components.len();
    let budgets = limits.iter().map(|l| RestartBudget::new(l.restart)).collect();
    let limits_completing: Vec<bool> = limits.iter().map(|l| l.completes_run).collect();
    let mut run = Run {
        components,
        contexts,
        limits,
        graph,
        config,
        handle,
        shutdown,
        progress,
        names,
        reserve_below,
        abandoned: Vec::new(),
        started: vec![Started::No; count],
        launched: vec![false; count],
        budgets,
        pending: supervise::Pending::new(count),
        troubles,
        reload_requests,
        completion: supervise::Completion::new(&limits_completing),
        root,
        background: TaskTracker::new(),
        background_stop: CancellationToken::new(),
    };
    run.progress.run_started();
    // A run dropped before it returned (a scope's task aborted with its owner) must not leave
    // its components' tasks running, nor the scopes they opened.
    let mut orphans = AbortOnDrop(
        run.contexts
            .iter()
            .map(|ctx| ctx.tasks().clone())
            .chain([run.handle.run_owner().1.clone()])
            .collect(),
    );

    // Listen before the first start, so a signal during start cancels it.
    let listening = run.background_stop.clone();
    let listener = match listener {
        Some(listener) => Some(listener),
        None if run.config.signals.is_empty() => None,
        None => SignalListener::install(&run.config.signals)
            .inspect_err(|error| tracing::error!(%error, "cannot listen for signals"))
            .ok(),
    };
    if let Some(listener) = listener {
        let shutdown = run.shutdown.clone();
        let reloads = run.handle.reloads().clone();
        let signals = listener.signals();
        let mut first = crate::signal::FirstSignal::default();
        run.background.spawn(crate::signal::listen(listener, listening.clone(), move |signal| {
            if signals.is_reload(signal) {
                // Answered in the log; one that comes during a shutdown is refused there.
                tracing::info!(%signal, "reload requested");
                reloads.request(ReloadRequest { cause: ReloadCause::Signal(signal), reply: None });
            } else if shutdown.trigger(ShutdownReason::Signal(signal)) {
                first.seen();
                tracing::info!(%signal, "signal received; shutting down");
            } else if first.echoed() {
                tracing::info!(%signal, "the same signal delivered twice (to the process and its group); not a second one");
            } else {
                tracing::warn!(%signal, "second signal; ending without waiting for the rest");
                shutdown.force(signal);
            }
        }));
    }
    let watchdog = run
        .config
        .watchdog
        .then(|| Watchdog::start(Arc::clone(&run.progress), run.shutdown.clone(), run.config.watchdog_grace))
        .flatten();

    run.handle.set_phase(Phase::Starting);
    let start_failure = run.start_set(&vec![true; count], start::StartMode::Boot).await;
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
        for callback in on_ready {
            // A panicking callback is the caller's bug, but must not take the run down with it.
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(&run.handle)));
            if let Err(payload) = caught {
                tracing::error!(panic = %crate::panic::panic_message(payload.as_ref()), "on_ready callback panicked");
            }
        }
        run.supervise().await;
    }
    run.refuse_reloads();

    let deadline = run.deadline();
    run.progress.shutdown_started(deadline - run.config.shutdown_deadline);
    if let Some(watchdog) = &watchdog {
        watchdog.arm(deadline);
    }
    let reason = run.shutdown.reason().unwrap_or_else(|| ShutdownReason::Requested {
        message: "run ended without a recorded reason".into(),
        exit_code: EXIT_FAILURE,
    });
    tracing::info!(%reason, deadline_ms = run.config.shutdown_deadline.as_millis() as u64, "lifecycle shutdown");

    let mut deadline_exceeded = false;
    let mut forced = false;
    let started = run.started.clone();
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
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }
    if !forced {
        run.handle.set_phase(Phase::Stopping);
        // Scopes opened through the handle belong to no component: they stop before any does.
        let stopped = crate::scope::stop_scopes(run.handle.scopes_of(crate::scope::RUN_OWNER));
        match tokio::time::timeout_at(deadline, stopped).await {
            Ok(lines) => lines.iter().for_each(|line| tracing::info!("{line}")),
            Err(_) => tracing::warn!("scopes opened through the handle did not stop by the deadline"),
        }
        deadline_exceeded = run.stop_all(&started, deadline, false).await;
    }
    run.root.cancel();
    run.handle.set_phase(Phase::Stopped);

    run.background_stop.cancel();
    run.background.close();
    run.background.wait().await;

    run.refuse_reloads();
    orphans.0.clear(); // returned normally: what is left is handled below
    let report = run.progress.report(reason, run.shutdown.forced_by(), deadline_exceeded);
    report.emit();
    // What the run gave up on must not outlive it: async tasks are aborted; a hook or a blocking
    // task stuck on its thread cannot be, so the watchdog, told the run's exit code, ends the
    // process at the deadline if one still holds it then, with a note instead of a new report.
    for ctx in &run.contexts {
        ctx.tasks().close();
        ctx.tasks().abort_all();
    }
    if let Some(watchdog) = watchdog {
        // Only what may still be running is handed over: usually nothing.
        let tasks = run
            .contexts
            .iter()
            .filter(|ctx| !ctx.tasks().is_empty())
            .map(|ctx| (ctx.name().clone(), ctx.tasks().clone()))
            .collect();
        watchdog.run_ended(report.exit_code, LeftBehind::new(std::mem::take(&mut run.abandoned), tasks));
    }
    report
}

/// Aborts the tasks it holds when dropped, unless emptied first.
struct AbortOnDrop(Vec<crate::Tasks>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for tasks in &self.0 {
            tasks.close();
            tasks.abort_all();
        }
    }
}

impl Run {
    /// The global deadline: the shutdown deadline after the request (or now, if none was made).
    fn deadline(&self) -> Instant {
        self.shutdown.requested_at().unwrap_or_else(Instant::now) + self.config.shutdown_deadline
    }
}
