//! What a component's hooks receive: its name, cancellation token, tasks and dependencies.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::component::SharedComponent;
use crate::error::DependencyError;
use crate::tasks::TaskOutput;
use crate::{
    BuildError, Component, ComponentId, Dep, LifecycleHandle, RestartPolicy, ScopeBuilder, Shutdown, Tasks,
    lock,
};

/// A component's view of the run. Cheap to clone; a clone can move into tasks.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    index: usize,
    id: ComponentId,
    token: CancellationToken,
    tasks: Tasks,
    lifecycle: LifecycleHandle,
    dependencies: Vec<(ComponentId, SharedComponent)>,
    deadline: Mutex<Option<Instant>>,
}

impl Context {
    pub(crate) fn new(
        index: usize,
        id: ComponentId,
        token: CancellationToken,
        tasks: Tasks,
        lifecycle: LifecycleHandle,
        dependencies: Vec<(ComponentId, SharedComponent)>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                index,
                id,
                token,
                tasks,
                lifecycle,
                dependencies,
                deadline: Mutex::new(None),
            }),
        }
    }

    /// The context of the component's next start: the same component, tasks and dependencies,
    /// with a fresh `token` (this one's is cancelled by the stop before it).
    pub(crate) fn renewed(&self, token: CancellationToken) -> Self {
        let inner = &self.inner;
        Self::new(
            inner.index,
            inner.id.clone(),
            token,
            inner.tasks.clone(),
            inner.lifecycle.clone(),
            inner.dependencies.clone(),
        )
    }

    /// Where the component sits: its name in the service, `owner/scope/name` in a scope.
    pub fn path(&self) -> String {
        match self.inner.lifecycle.path() {
            "" => self.inner.id.to_string(),
            run => format!("{run}/{}", self.inner.id),
        }
    }

    /// Components (and their tasks) to start while the service runs, owned by this component:
    /// see [`ScopeBuilder`]. Its path is this component's path and `name`.
    pub fn scope(&self, name: &str) -> ScopeBuilder {
        ScopeBuilder::new(self, name)
    }

    pub(crate) fn index(&self) -> usize {
        self.inner.index
    }

    /// Whether the component has a restart policy (its own, or the registry's
    /// [default](crate::RegistryBuilder::default_restart)): a failure of one of its tasks then
    /// restarts it, rather than being final. A component may fail faster when it does (let it
    /// crash), and retry in place when it does not.
    pub fn restarts_on_failure(&self) -> bool {
        self.inner.tasks.is_supervised()
    }

    /// The component's name.
    pub fn name(&self) -> &ComponentId {
        &self.inner.id
    }

    /// Cancelled when this component begins to stop (after every component that depends on it
    /// has stopped), or when the run is forced to end. A child of the run's root token: make
    /// child tokens of it for finer-grained work.
    pub fn token(&self) -> &CancellationToken {
        &self.inner.token
    }

    /// Completes when [`token`](Context::token) is cancelled.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.inner.token.cancelled()
    }

    /// When the hook now running will be given up on: its own timeout, cut short by the global
    /// shutdown deadline. A hook that can end early with a better error (a pool that stops
    /// waiting for connections and says how many are still out) finishes a little before it.
    /// `None` outside a hook. On tokio's clock, so that tests with paused time see it move.
    pub fn deadline(&self) -> Option<Instant> {
        *lock(&self.inner.deadline)
    }

    /// [`deadline`](Context::deadline) minus `margin`: when a hook that wants its own error in
    /// the report should give up. Without a deadline (outside a hook), `fallback` from now.
    pub fn give_up_at(&self, margin: Duration, fallback: Duration) -> Instant {
        match self.deadline() {
            Some(deadline) => deadline.checked_sub(margin).unwrap_or(deadline),
            None => Instant::now() + fallback,
        }
    }

    pub(crate) fn set_deadline(&self, deadline: Instant) {
        *lock(&self.inner.deadline) = Some(deadline);
    }

    /// Adds a line to this component's entry in the report: what a stop achieved ("drained 120
    /// requests, cut 1"), or what it could not do.
    pub fn note(&self, note: impl Into<String>) {
        self.inner.lifecycle.progress().note(self.inner.index, note.into());
    }

    /// The component's tasks.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// Shorthand for `ctx.tasks().spawn(name, task)`.
    pub fn spawn<F>(&self, name: impl Into<std::borrow::Cow<'static, str>>, task: F) -> JoinHandle<()>
    where
        F: std::future::Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.inner.tasks.spawn(name, task)
    }

    /// Spawns a task that is made afresh by `make` and started again by `policy` when it fails
    /// (or, with [`RestartPolicy::always`], whenever it ends), until the component stops: a
    /// consumer loop that reconnects, a poller that must not die with one bad response. Within
    /// the policy's budget its failures are recorded and counted in the report; past it, the
    /// failure is the task's, handled as any task failure of the component.
    ///
    /// ```
    /// # async fn example(ctx: lifecycle_core::Context) -> Result<(), lifecycle_core::BuildError> {
    /// use lifecycle_core::RestartPolicy;
    /// let token = ctx.token().clone();
    /// ctx.spawn_supervised("consumer", RestartPolicy::on_failure(), move || {
    ///     let token = token.clone();
    ///     async move {
    ///         token.cancelled().await; // connect, then consume until cancelled
    ///         Ok::<(), std::io::Error>(())
    ///     }
    /// })?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the policy cannot work (a budget of 0, a backoff whose initial delay exceeds its
    /// maximum), naming the component and the setting; nothing is spawned.
    ///
    /// # Panics
    /// Outside a tokio runtime, like [`tokio::spawn`].
    pub fn spawn_supervised<M, F>(
        &self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        policy: RestartPolicy,
        make: M,
    ) -> Result<JoinHandle<()>, BuildError>
    where
        M: FnMut() -> F + Send + 'static,
        F: std::future::Future + Send + 'static,
        F::Output: TaskOutput,
    {
        let problems: Vec<BuildError> = policy
            .problems(false)
            .into_iter()
            .map(|(setting, value, expected)| BuildError::InvalidComponentSetting {
                component: self.inner.id.clone(),
                setting,
                value,
                expected,
            })
            .collect();
        if !problems.is_empty() {
            return Err(BuildError::from_list(problems));
        }
        Ok(self.inner.tasks.spawn_supervised(name.into(), self.inner.token.clone(), policy, make))
    }

    /// The run's phase, readiness, components and health.
    pub fn lifecycle(&self) -> &LifecycleHandle {
        &self.inner.lifecycle
    }

    /// The handle that requests a shutdown.
    pub fn shutdown(&self) -> &Shutdown {
        self.inner.lifecycle.shutdown()
    }

    /// The one declared dependency of type `T`.
    pub fn dep<T: Component>(&self) -> Result<Dep<T>, DependencyError> {
        let candidates: Vec<&(ComponentId, SharedComponent)> =
            self.inner.dependencies.iter().filter(|(_, c)| c.value.is::<T>()).collect();
        match candidates.as_slice() {
            [(id, component)] => Ok(typed(id, component)?),
            [] => Err(DependencyError::NotDeclared {
                component: self.inner.id.clone(),
                type_name: std::any::type_name::<T>(),
                declared: self.inner.dependencies.iter().map(|(id, _)| id.clone()).collect(),
            }),
            many => Err(DependencyError::Ambiguous {
                component: self.inner.id.clone(),
                type_name: std::any::type_name::<T>(),
                candidates: many.iter().map(|(id, _)| id.clone()).collect(),
            }),
        }
        .map_err(|e| self.owned_error(e))
    }

    /// The declared dependency named `name`, as a `T`.
    pub fn dep_named<T: Component>(&self, name: &str) -> Result<Dep<T>, DependencyError> {
        match self.inner.dependencies.iter().find(|(id, _)| id.as_str() == name) {
            Some((id, component)) => typed(id, component).map_err(|e| self.owned_error(e)),
            None => Err(DependencyError::NotDeclared {
                component: self.inner.id.clone(),
                type_name: std::any::type_name::<T>(),
                declared: self.inner.dependencies.iter().map(|(id, _)| id.clone()).collect(),
            }),
        }
    }

    fn owned_error(&self, error: DependencyError) -> DependencyError {
        match error {
            DependencyError::WrongType { name, type_name, actual, .. } => {
                DependencyError::WrongType { component: self.inner.id.clone(), name, type_name, actual }
            }
            other => other,
        }
    }
}

fn typed<T: Component>(id: &ComponentId, component: &SharedComponent) -> Result<Dep<T>, DependencyError> {
    match Arc::clone(&component.value).downcast::<T>() {
        Ok(value) => Ok(Dep::new(id.clone(), value, component.up.clone())),
        Err(_) => Err(DependencyError::WrongType {
            component: id.clone(),
            name: id.clone(),
            type_name: std::any::type_name::<T>(),
            actual: component.type_name,
        }),
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.inner.id)
            .field("cancelled", &self.inner.token.is_cancelled())
            .field("tasks", &self.inner.tasks)
            .finish()
    }
}
