//! A component's tasks: spawned with a name, tracked until they end, failures caught and reported.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll, ready};

use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerWaitFuture;
use tracing::Instrument;

use crate::failure::{Failure, FailureLog, FailureRecord, Stage};
use crate::panic::{CatchUnwind, panic_message};
use crate::restart::{Restart, RestartBudget, RestartPolicy, Trouble, TroubleSender};
use crate::shutdown::{Shutdown, ShutdownReason};
use crate::{BoxError, ComponentId, lock};

/// What a task may return: `()`, or a `Result` whose error is reported as the task's failure.
pub trait TaskOutput: Send + 'static {
    /// The task's result as the registry sees it.
    fn into_result(self) -> Result<(), BoxError>;
}

impl TaskOutput for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError> + Send + 'static> TaskOutput for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// A task that never returns (`|| panic!(..)`, `async { loop { .. } }`) has the output `!`,
/// which stable Rust cannot name directly; a function pointer's return type names it.
impl TaskOutput for never::Never {
    fn into_result(self) -> Result<(), BoxError> {
        match self {}
    }
}

mod never {
    /// The return type of a function pointer type.
    pub trait Returns {
        /// What it returns.
        type Output;
    }

    impl<O> Returns for fn() -> O {
        type Output = O;
    }

    /// The never type, `!`.
    pub(super) type Never = <fn() -> ! as Returns>::Output;
}

/// How many tasks with one name are still running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskCount {
    /// The name the tasks were spawned with.
    pub name: String,
    /// How many of them are still running.
    pub count: usize,
}

/// The tasks of one component. Cheap to clone; every clone spawns into the same set.
///
/// Every task spawned here runs in a `task` span carrying the component's name and its own, is
/// waited for when the component stops, named in the report if it is still running at the stop
/// timeout (and aborted once the run returns), and has its error or panic caught and recorded
/// in the component's failures. A task that fails restarts the component when it has a
/// [restart policy](crate::RestartPolicy); without one, a failure of a critical component's task
/// stops the whole service with a non-zero exit code.
///
/// ```
/// # async fn example(ctx: lifecycle_core::Context) {
/// let token = ctx.token().clone();
/// ctx.tasks().spawn("poller", async move {
///     token.cancelled().await;
///     Ok::<(), std::io::Error>(())
/// });
/// # }
/// ```
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    shared: Arc<Shared>,
}

struct Shared {
    component: ComponentId,
    critical: bool,
    shutdown: Shutdown,
    registry: Mutex<Registry>,
    failures: FailureLog,
    /// Set when the component has a restart policy: failures go to the run's supervision.
    supervisor: Option<(usize, TroubleSender)>,
    /// Which start of the component the tasks spawned now belong to.
    incarnation: AtomicU64,
    /// Restarts of supervised tasks, over the component's whole life.
    task_restarts: AtomicU64,
}

/// What the set knows of its running tasks.
#[derive(Default)]
struct Registry {
    // Tasks are counted per name rather than one entry per task: a component with 100,000
    // tasks named "connection" costs one entry, and a finishing task only decrements an atomic.
    names: HashMap<Cow<'static, str>, Arc<NameCount>>,
    // To abort what is left once the run gave up on it. Finished tasks' handles are swept when
    // the list outgrows the running tasks by a quarter, so a spawn costs amortised O(1) and a
    // finishing task still only its atomic decrement.
    aborts: Vec<AbortHandle>,
}

/// The running tasks of one name. Each running task holds one reference to it and the name map
/// another, so the count of running tasks is the reference count minus one: a finishing task
/// pays for a single atomic decrement, as it would with a bare `TaskTracker`.
struct NameCount {
    name: Cow<'static, str>,
    shared: Weak<Shared>,
}

fn running(count: &Arc<NameCount>) -> usize {
    Arc::strong_count(count).saturating_sub(1)
}

/// Held by a running task; counts it out when the task ends, however it ends. Also holds the
/// incarnation of the component the task was spawned in.
struct LiveGuard(Arc<NameCount>, u64);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        // The last task of a name removes the name, so per-request names do not pile up. Two
        // tasks ending at once may both see the other and leave the entry; it is then reused
        // by the next task of that name, or swept when new names are added.
        if Arc::strong_count(&self.0) == 2 {
            if let Some(shared) = self.0.shared.upgrade() {
                shared.prune(&self.0);
            }
        }
    }
}

impl LiveGuard {
    fn finish(&self, outcome: Result<Result<(), BoxError>, String>) {
        let failure = match outcome {
            Ok(Ok(())) => return,
            // A supervised task passes on its last attempt's failure as it was.
            Ok(Err(error)) => match error.downcast::<Failure>() {
                Ok(failure) => *failure,
                Err(error) => Failure::Error(Arc::from(error)),
            },
            Err(panic) => Failure::Panic(panic),
        };
        if let Some(shared) = self.0.shared.upgrade() {
            shared.fail(&self.0.name, self.1, failure);
        }
    }
}

pin_project_lite::pin_project! {
    /// A spawned task: the caller's future, its panic caught, its end counted and its failure
    /// reported. A hand-written future rather than an `async` block, which would store the
    /// caller's future twice (once captured, once being awaited) and double the task's size.
    struct NamedTask<F> {
        #[pin]
        inner: CatchUnwind<F>,
        guard: Option<LiveGuard>,
    }
}

impl<F> Future for NamedTask<F>
where
    F: Future,
    F::Output: TaskOutput,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.project();
        let outcome = ready!(this.inner.poll(cx));
        if let Some(guard) = this.guard.take() {
            guard.finish(outcome.map(TaskOutput::into_result));
        }
        Poll::Ready(())
    }
}

/// Above this many names, adding a new one first sweeps the names no task holds.
const SWEEP_ABOVE: usize = 64;

impl Shared {
    fn count_in(self: &Arc<Self>, name: Cow<'static, str>) -> LiveGuard {
        let mut registry = lock(&self.registry);
        let names = &mut registry.names;
        if !names.contains_key(&name) && names.len() >= SWEEP_ABOVE {
            names.retain(|_, count| running(count) > 0);
        }
        let entry = names.entry(name).or_insert_with_key(|name| {
            Arc::new(NameCount { name: name.clone(), shared: Arc::downgrade(self) })
        });
        LiveGuard(Arc::clone(entry), self.incarnation.load(Ordering::Acquire))
    }

    fn keep_abort_handle(&self, handle: AbortHandle, running: usize) {
        let mut registry = lock(&self.registry);
        if registry.aborts.len() >= SWEEP_ABOVE && registry.aborts.len() > running + running / 4 {
            registry.aborts.retain(|handle| !handle.is_finished());
        }
        registry.aborts.push(handle);
    }

    fn prune(&self, count: &Arc<NameCount>) {
        let mut registry = lock(&self.registry);
        let names = &mut registry.names;
        // Spawns count in under this lock, so two references (the map's and the caller's) mean
        // no other task of this name exists or can appear before the removal.
        if Arc::strong_count(count) == 2
            && names.get(&count.name).is_some_and(|entry| Arc::ptr_eq(entry, count))
        {
            names.remove(&count.name);
        }
    }

    fn fail(&self, task: &str, incarnation: u64, failure: Failure) {
        let record = FailureRecord { stage: Stage::Running, task: Some(task.to_owned()), failure };
        // A task of a start already replaced (a blocking one outlives its stop): kept in the
        // record, but it is not the failure of the component's current start.
        if incarnation != self.incarnation.load(Ordering::Acquire) {
            tracing::warn!(component = %self.component, failure = %record, "a task of an earlier start failed");
            self.failures.record_recovered(record);
            return;
        }
        if let Some((index, supervisor)) = &self.supervisor {
            tracing::warn!(component = %self.component, failure = %record, "task failed; restarting the component by its policy");
            self.failures.record(record);
            // The run decides: a restart, or an escalation once the budget is spent. A send
            // fails only once the run has ended, when there is nothing left to restart.
            let _ = supervisor.send(Trouble { index: *index, incarnation });
            return;
        }
        if self.critical {
            tracing::error!(component = %self.component, failure = %record, "critical task failed; stopping the service");
            self.shutdown.trigger(ShutdownReason::ComponentFailed {
                component: self.component.clone(),
                task: task.to_owned(),
                failure: record.failure.clone(),
            });
        } else {
            tracing::warn!(component = %self.component, failure = %record, "task failed");
        }
        self.failures.record(record);
    }
}

impl Tasks {
    /// The task set of `component`. With a `supervisor` (the component's index and the run's
    /// channel), failures go to the run's supervision instead of stopping the service.
    pub(crate) fn new(
        component: ComponentId,
        critical: bool,
        shutdown: Shutdown,
        failures: FailureLog,
        supervisor: Option<(usize, TroubleSender)>,
    ) -> Self {
        Self {
            tracker: TaskTracker::new(),
            shared: Arc::new(Shared {
                component,
                critical,
                shutdown,
                registry: Mutex::new(Registry::default()),
                failures,
                supervisor,
                incarnation: AtomicU64::new(0),
                task_restarts: AtomicU64::new(0),
            }),
        }
    }

    /// Whether failures of these tasks go to a restart policy.
    pub(crate) fn is_supervised(&self) -> bool {
        self.shared.supervisor.is_some()
    }

    /// The incarnation tasks spawned now belong to.
    pub(crate) fn incarnation(&self) -> u64 {
        self.shared.incarnation.load(Ordering::Acquire)
    }

    /// Opens the set again for the next start of its component, whose tasks belong to a new
    /// incarnation. The previous incarnation's tasks have ended or been aborted by then.
    pub(crate) fn reopen(&self) {
        self.shared.incarnation.fetch_add(1, Ordering::AcqRel);
        self.tracker.reopen();
    }

    /// The span a task runs in: the component's name and the task's, so its log lines say whose
    /// they are.
    fn span(&self, task: &str) -> tracing::Span {
        // A root span: a task outlives the hook that spawned it, so it must not claim to be inside it.
        tracing::info_span!(parent: None, "task", component = %self.shared.component, task)
    }

    /// Spawns a named task on the current runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime, like [`tokio::spawn`].
    pub fn spawn<F>(&self, name: impl Into<Cow<'static, str>>, task: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        let name = name.into();
        let span = self.span(&name);
        let guard = self.shared.count_in(name);
        let task = NamedTask { inner: CatchUnwind::new(task), guard: Some(guard) };
        // Without a subscriber that takes the span, entering it at every poll is work for nothing
        // (with `tracing`'s `log` feature, two calls per poll).
        let handle = if span.is_disabled() {
            self.tracker.spawn(task)
        } else {
            self.tracker.spawn(task.instrument(span))
        };
        self.shared.keep_abort_handle(handle.abort_handle(), self.tracker.len());
        handle
    }

    /// Spawns a task that `make` creates afresh each time it is restarted by `policy`, until
    /// `token` is cancelled. Failures within the budget are recorded and restart the task after
    /// its backoff; the one past the budget is the task's own failure (which restarts or stops
    /// the component, as for any task).
    pub(crate) fn spawn_supervised<M, F>(
        &self,
        name: Cow<'static, str>,
        token: CancellationToken,
        policy: RestartPolicy,
        make: M,
    ) -> JoinHandle<()>
    where
        M: FnMut() -> F + Send + 'static,
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        let shared = Arc::clone(&self.shared);
        let task = name.clone();
        self.spawn(name, supervise(shared, task, token, policy, make))
    }

    /// Runs a named blocking closure on tokio's blocking pool, tracked like any task.
    ///
    /// # Panics
    /// Outside a tokio runtime, like [`tokio::task::spawn_blocking`].
    pub fn spawn_blocking<F, R>(&self, name: impl Into<Cow<'static, str>>, task: F) -> JoinHandle<()>
    where
        F: FnOnce() -> R + Send + 'static,
        R: TaskOutput,
    {
        let name = name.into();
        let span = self.span(&name);
        let guard = self.shared.count_in(name);
        // The blocking pool's threads have no default subscriber of their own: take the
        // spawner's, so the task's lines go where the component's go.
        let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
        self.tracker.spawn_blocking(move || {
            let _dispatch = tracing::dispatcher::set_default(&dispatch);
            let _entered = span.enter();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task))
                .map(TaskOutput::into_result)
                .map_err(|payload| panic_message(payload.as_ref()));
            guard.finish(outcome);
        })
    }

    /// How many times supervised tasks of this set were restarted.
    pub(crate) fn task_restarts(&self) -> u64 {
        self.shared.task_restarts.load(Ordering::Relaxed)
    }

    /// How many tasks are running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Running tasks, counted by name, sorted by name.
    pub fn outstanding(&self) -> Vec<TaskCount> {
        let registry = lock(&self.shared.registry);
        let mut counts: Vec<TaskCount> = registry
            .names
            .values()
            .map(|c| TaskCount { name: c.name.to_string(), count: running(c) })
            .filter(|c| c.count > 0)
            .collect();
        counts.sort_by(|a, b| a.name.cmp(&b.name));
        counts
    }

    /// Aborts every async task still running: for tasks the run gave up on. Blocking tasks
    /// cannot be aborted; they are left to end with the process.
    pub(crate) fn abort_all(&self) {
        let aborts = std::mem::take(&mut lock(&self.shared.registry).aborts);
        for handle in aborts {
            handle.abort();
        }
    }

    /// Marks the set closed: [`wait`](Tasks::wait) completes once it is closed and empty.
    /// Tasks can still be spawned; they are waited for too.
    pub fn close(&self) -> bool {
        self.tracker.close()
    }

    /// Whether the set is closed.
    pub fn is_closed(&self) -> bool {
        self.tracker.is_closed()
    }

    /// Completes when the set is closed and every task has ended.
    pub fn wait(&self) -> TaskTrackerWaitFuture<'_> {
        self.tracker.wait()
    }
}

/// The body of a supervised task: runs what `make` makes, again by `policy`.
async fn supervise<M, F>(
    shared: Arc<Shared>,
    task: Cow<'static, str>,
    token: CancellationToken,
    policy: RestartPolicy,
    mut make: M,
) -> Result<(), BoxError>
where
    M: FnMut() -> F + Send + 'static,
    F: Future + Send + 'static,
    F::Output: TaskOutput,
{
    let mut budget = RestartBudget::new(policy);
    loop {
        // The call that makes the future may panic too: that is the attempt's failure.
        let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut make)) {
            Ok(future) => CatchUnwind::new(future).await.map(TaskOutput::into_result),
            Err(payload) => Err(panic_message(payload.as_ref())),
        };
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(Failure::Error(Arc::from(error))),
            Err(panic) => Some(Failure::Panic(panic)),
        };
        let restart = match &failure {
            Some(_) => policy.restarts(),
            None => policy.restart() == Restart::Always,
        };
        if token.is_cancelled() || !restart {
            return failure.map_or(Ok(()), |failure| Err(failure.into()));
        }
        let Some(delay) = budget.grant(Instant::now()) else {
            tracing::error!(component = %shared.component, task = %task, restarts = budget.total(), "task restart budget spent");
            return failure.map_or(Ok(()), |failure| Err(failure.into()));
        };
        shared.task_restarts.fetch_add(1, Ordering::Relaxed);
        match failure {
            Some(failure) => {
                let record = FailureRecord { stage: Stage::Running, task: Some(task.to_string()), failure };
                tracing::warn!(component = %shared.component, failure = %record, delay_ms = delay.as_millis() as u64, "task failed; restarting it by its policy");
                shared.failures.record_recovered(record);
            }
            None => {
                tracing::info!(component = %shared.component, task = %task, delay_ms = delay.as_millis() as u64, "task ended; restarting it by its policy")
            }
        }
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tasks")
            .field("component", &self.shared.component)
            .field("len", &self.len())
            .field("is_closed", &self.is_closed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(critical: bool) -> (Tasks, Shutdown) {
        let shutdown = Shutdown::new();
        let tasks =
            Tasks::new(ComponentId::from("worker"), critical, shutdown.clone(), FailureLog::default(), None);
        (tasks, shutdown)
    }

    #[tokio::test]
    async fn outstanding_tasks_are_counted_by_name_and_forgotten_when_done() {
        let (tasks, _) = tasks(true);
        let gate = tokio_util::sync::CancellationToken::new();
        for _ in 0..3 {
            let gate = gate.clone();
            tasks.spawn("conn", async move { gate.cancelled().await });
        }
        let g = gate.clone();
        tasks.spawn("poller", async move { g.cancelled().await });
        assert_eq!(
            tasks.outstanding(),
            vec![TaskCount { name: "conn".into(), count: 3 }, TaskCount { name: "poller".into(), count: 1 }]
        );
        gate.cancel();
        tasks.close();
        tasks.wait().await;
        assert!(tasks.outstanding().is_empty());
        assert!(lock(&tasks.shared.registry).names.is_empty(), "finished names are pruned");
    }

    #[tokio::test]
    async fn a_failing_task_of_a_critical_component_requests_shutdown() {
        let (tasks, shutdown) = tasks(true);
        tasks.spawn("loader", async { Err::<(), _>(std::io::Error::other("disk gone")) });
        tasks.close();
        tasks.wait().await;
        let reason = shutdown.reason().map(|r| r.to_string());
        assert_eq!(
            reason.as_deref(),
            Some("component `worker` failed while running: task `loader` failed: disk gone")
        );
        assert_eq!(tasks.shared.failures.count(), 1);
    }

    #[tokio::test]
    async fn a_panicking_task_of_a_non_critical_component_is_recorded_only() {
        let (tasks, shutdown) = tasks(false);
        // Never-returning bodies compile as they are: their output is `!`.
        tasks.spawn("bad", async { panic!("boom") });
        tasks.spawn_blocking("bad_blocking", || panic!("blocking boom"));
        tasks.close();
        tasks.wait().await;
        assert!(!shutdown.is_requested());
        let mut failures: Vec<String> =
            tasks.shared.failures.snapshot().iter().map(ToString::to_string).collect();
        failures.sort();
        assert_eq!(
            failures,
            vec![
                "task `bad_blocking` panicked: blocking boom (running)",
                "task `bad` panicked: boom (running)"
            ]
        );
    }

    #[tokio::test]
    async fn tasks_left_running_are_aborted() {
        let (tasks, _) = tasks(false);
        for _ in 0..100 {
            tasks.spawn("quick", async {});
        }
        tasks.spawn("stubborn", std::future::pending::<()>());
        tokio::task::yield_now().await;
        tasks.abort_all();
        tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
            .await
            .unwrap_or_else(|_| panic!("aborted"));
        assert!(tasks.outstanding().is_empty());
        assert_eq!(tasks.shared.failures.count(), 0, "an abort is not a failure");
    }
}
