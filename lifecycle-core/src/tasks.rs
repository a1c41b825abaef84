//! A component's tasks: spawned with a name, tracked until they end, failures caught and reported.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll, ready};

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerWaitFuture;

use crate::panic::{CatchUnwind, panic_message};
use crate::report::{Failure, TaskFailure};
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
/// Every task spawned here is waited for when the component stops, named in the report if it
/// is still running at the stop timeout, and has its error or panic caught and reported. When the
/// component is critical, a task that fails stops the whole service with a non-zero exit code.
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
    // Tasks are counted per name rather than one entry per task: a component with 100,000
    // tasks named "connection" costs one entry, and a finishing task only decrements an atomic.
    names: Mutex<HashMap<Cow<'static, str>, Arc<NameCount>>>,
    failures: Mutex<Vec<TaskFailure>>,
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

/// Held by a running task; counts it out when the task ends, however it ends.
struct LiveGuard(Arc<NameCount>);

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
            Ok(Err(error)) => Failure::Error(Arc::from(error)),
            Err(panic) => Failure::Panic(panic),
        };
        if let Some(shared) = self.0.shared.upgrade() {
            shared.fail(&self.0.name, failure);
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
        let mut names = lock(&self.names);
        if !names.contains_key(&name) && names.len() >= SWEEP_ABOVE {
            names.retain(|_, count| running(count) > 0);
        }
        let entry = names.entry(name).or_insert_with_key(|name| {
            Arc::new(NameCount { name: name.clone(), shared: Arc::downgrade(self) })
        });
        LiveGuard(Arc::clone(entry))
    }

    fn prune(&self, count: &Arc<NameCount>) {
        let mut names = lock(&self.names);
        // Spawns count in under this lock, so two references (the map's and the caller's) mean
        // no other task of this name exists or can appear before the removal.
        if Arc::strong_count(count) == 2
            && names.get(&count.name).is_some_and(|entry| Arc::ptr_eq(entry, count))
        {
            names.remove(&count.name);
        }
    }

    fn fail(&self, task: &str, failure: Failure) {
        if self.critical {
            tracing::error!(component = %self.component, task, %failure, "critical task failed; stopping the service");
            self.shutdown.trigger(ShutdownReason::ComponentFailed {
                component: self.component.clone(),
                task: task.to_owned(),
                failure: failure.clone(),
            });
        } else {
            tracing::warn!(component = %self.component, task, %failure, "task failed");
        }
        lock(&self.failures).push(TaskFailure { task: task.to_owned(), failure });
    }
}

impl Tasks {
    pub(crate) fn new(component: ComponentId, critical: bool, shutdown: Shutdown) -> Self {
        Self {
            tracker: TaskTracker::new(),
            shared: Arc::new(Shared {
                component,
                critical,
                shutdown,
                names: Mutex::new(HashMap::new()),
                failures: Mutex::new(Vec::new()),
            }),
        }
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
        let guard = self.shared.count_in(name.into());
        self.tracker.spawn(NamedTask { inner: CatchUnwind::new(task), guard: Some(guard) })
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
        let guard = self.shared.count_in(name.into());
        self.tracker.spawn_blocking(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task))
                .map(TaskOutput::into_result)
                .map_err(|payload| panic_message(payload.as_ref()));
            guard.finish(outcome);
        })
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
        let names = lock(&self.shared.names);
        let mut counts: Vec<TaskCount> = names
            .values()
            .map(|c| TaskCount { name: c.name.to_string(), count: running(c) })
            .filter(|c| c.count > 0)
            .collect();
        counts.sort_by(|a, b| a.name.cmp(&b.name));
        counts
    }

    /// Tasks that returned an error or panicked, in the order they ended.
    pub fn failures(&self) -> Vec<TaskFailure> {
        lock(&self.shared.failures).clone()
    }

    /// How many tasks returned an error or panicked.
    pub fn failure_count(&self) -> usize {
        lock(&self.shared.failures).len()
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
        (Tasks::new(ComponentId::from("worker"), critical, shutdown.clone()), shutdown)
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
        assert!(lock(&tasks.shared.names).is_empty(), "finished names are pruned");
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
        assert_eq!(tasks.failures().len(), 1);
    }

    #[tokio::test]
    async fn a_panicking_task_of_a_non_critical_component_is_recorded_only() {
        let (tasks, shutdown) = tasks(false);
        tasks.spawn("bad", async { panic!("boom") as () });
        tasks.spawn_blocking("bad_blocking", || -> () { panic!("blocking boom") });
        tasks.close();
        tasks.wait().await;
        assert!(!shutdown.is_requested());
        let mut failures: Vec<String> =
            tasks.failures().iter().map(|f| format!("{} {}", f.task, f.failure)).collect();
        failures.sort();
        assert_eq!(failures, vec!["bad panicked: boom", "bad_blocking panicked: blocking boom"]);
    }
}
