//! Putting components together: the builder that checks them, and the registry that runs them.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::component::SharedComponent;
use crate::graph::{Graph, GraphInput};
use crate::progress::Progress;
use crate::{
    BuildError, Component, ComponentId, ComponentOptions, Context, Dep, Dependency, LifecycleHandle, Report,
    Shutdown, Signals, Tasks,
};

/// Settings of a run, set through [`RegistryBuilder`].
#[derive(Clone, Debug)]
pub(crate) struct RunConfig {
    pub(crate) default_start_timeout: Duration,
    pub(crate) default_stop_timeout: Duration,
    pub(crate) shutdown_deadline: Duration,
    pub(crate) drain_delay: Duration,
    pub(crate) signals: Signals,
    pub(crate) watchdog: bool,
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
}

/// Collects components and run settings; [`build`](RegistryBuilder::build) checks them.
///
/// ```
/// use lifecycle_core::{Component, Dependency, Registry};
///
/// struct Database;
/// impl Component for Database {}
///
/// struct Api;
/// impl Component for Api {
///     fn dependencies(&self) -> Vec<Dependency> {
///         vec![Dependency::on_type::<Database>()]
///     }
/// }
///
/// let mut builder = Registry::builder();
/// builder.drain_delay(std::time::Duration::from_secs(5));
/// builder.add(Database);
/// builder.add(Api);
/// let registry = builder.build()?;
/// # Ok::<(), lifecycle_core::BuildError>(())
/// ```
#[derive(Default)]
pub struct RegistryBuilder {
    entries: Vec<Entry>,
    config: RunConfig,
}

struct Entry {
    id: ComponentId,
    type_id: TypeId,
    component: SharedComponent,
    dependencies: Vec<Dependency>,
    options: ComponentOptions,
}

impl RegistryBuilder {
    /// An empty builder with the default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a component, with the name, dependencies and options it declares.
    pub fn add<T: Component>(&mut self, component: T) -> Registration<'_, T> {
        self.add_shared(Arc::new(component))
    }

    /// Registers a component that is already shared.
    pub fn add_shared<T: Component>(&mut self, component: Arc<T>) -> Registration<'_, T> {
        let id = component.name();
        let entry = Entry {
            id: id.clone(),
            type_id: TypeId::of::<T>(),
            dependencies: component.dependencies(),
            options: component.options(),
            component: SharedComponent::new(Arc::clone(&component)),
        };
        self.entries.push(entry);
        let last = self.entries.len() - 1;
        Registration { entry: &mut self.entries[last], dep: Dep::new(id, component) }
    }

    /// The time from a shutdown request to the end of the run, whatever hangs (default 25 s).
    /// Set it below the platform's grace period (Kubernetes: 30 s after preStop).
    pub fn shutdown_deadline(&mut self, deadline: Duration) -> &mut Self {
        self.config.shutdown_deadline = deadline;
        self
    }

    /// How long the service stays up but unready before anything stops (default 0), so load
    /// balancers and endpoint controllers stop routing to it.
    pub fn drain_delay(&mut self, delay: Duration) -> &mut Self {
        self.config.drain_delay = delay;
        self
    }

    /// Start timeout of components that set none (default 15 s).
    pub fn default_start_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.config.default_start_timeout = timeout;
        self
    }

    /// Stop timeout of components that set none (default 10 s).
    pub fn default_stop_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.config.default_stop_timeout = timeout;
        self
    }

    /// The signals that start a shutdown (default `SIGTERM` and `SIGINT`).
    pub fn signals(&mut self, signals: Signals) -> &mut Self {
        self.config.signals = signals;
        self
    }

    /// Whether a watchdog thread ends the process when the shutdown deadline passes (default
    /// true). Turn it off only where something else bounds the process, such as a test harness.
    pub fn watchdog(&mut self, enabled: bool) -> &mut Self {
        self.config.watchdog = enabled;
        self
    }

    /// How long one health check may take (default 2 s).
    pub fn health_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.config.health_timeout = timeout;
        self
    }

    /// Checks names and dependencies and prepares the run.
    pub fn build(self) -> Result<Registry, BuildError> {
        let inputs: Vec<GraphInput<'_>> = self
            .entries
            .iter()
            .map(|e| GraphInput {
                id: &e.id,
                type_id: e.type_id,
                type_name: e.component.type_name,
                dependencies: &e.dependencies,
            })
            .collect();
        let graph = Graph::build(&inputs)?;

        let shutdown = Shutdown::new();
        let options: Vec<Limits> = self
            .entries
            .iter()
            .map(|e| Limits {
                start_timeout: e.options.start_timeout.unwrap_or(self.config.default_start_timeout),
                stop_timeout: e.options.stop_timeout.unwrap_or(self.config.default_stop_timeout),
                critical: e.options.critical,
            })
            .collect();
        let tasks: Vec<Tasks> = self
            .entries
            .iter()
            .zip(&options)
            .map(|(e, o)| Tasks::new(e.id.clone(), o.critical, shutdown.clone()))
            .collect();
        let progress = Arc::new(Progress::new(
            self.entries.iter().map(|e| e.id.clone()).collect(),
            options.iter().map(|o| o.critical).collect(),
            tasks.clone(),
        ));
        let handle = LifecycleHandle::new(
            shutdown,
            progress,
            self.entries.iter().map(|e| (e.id.clone(), Arc::downgrade(&e.component.hooks))).collect(),
            self.config.health_timeout,
        );
        let root = CancellationToken::new();
        let contexts = self
            .entries
            .iter()
            .zip(tasks)
            .enumerate()
            .map(|(index, (entry, tasks))| {
                let dependencies = graph
                    .dependencies(index)
                    .iter()
                    .map(|&d| (self.entries[d].id.clone(), self.entries[d].component.clone()))
                    .collect();
                Context::new(index, entry.id.clone(), root.child_token(), tasks, handle.clone(), dependencies)
            })
            .collect();
        Ok(Registry {
            components: self.entries.into_iter().map(|e| e.component).collect(),
            contexts,
            options,
            graph,
            config: self.config,
            handle,
            root,
        })
    }
}

impl fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("components", &self.entries.iter().map(|e| &e.id).collect::<Vec<_>>())
            .field("config", &self.config)
            .finish()
    }
}

/// One component being registered: add dependencies and options, then take its typed handle.
pub struct Registration<'a, T> {
    entry: &'a mut Entry,
    dep: Dep<T>,
}

impl<T> Registration<'_, T> {
    /// Adds a dependency to the ones the component declares.
    pub fn depends_on(self, dependency: impl Into<Dependency>) -> Self {
        self.entry.dependencies.push(dependency.into());
        self
    }

    /// Overrides the start timeout.
    pub fn start_timeout(self, timeout: Duration) -> Self {
        self.entry.options.start_timeout = Some(timeout);
        self
    }

    /// Overrides the stop timeout.
    pub fn stop_timeout(self, timeout: Duration) -> Self {
        self.entry.options.stop_timeout = Some(timeout);
        self
    }

    /// Overrides whether the component is critical.
    pub fn critical(self, critical: bool) -> Self {
        self.entry.options.critical = critical;
        self
    }

    /// The component's name.
    pub fn id(&self) -> &ComponentId {
        &self.entry.id
    }

    /// The typed handle to pass to the components that depend on this one.
    pub fn dep(self) -> Dep<T> {
        self.dep
    }
}

impl<T> fmt::Debug for Registration<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration").field("id", &self.entry.id).finish()
    }
}

/// Checked components, ready to run.
pub struct Registry {
    pub(crate) components: Vec<SharedComponent>,
    pub(crate) contexts: Vec<Context>,
    pub(crate) options: Vec<Limits>,
    pub(crate) graph: Graph,
    pub(crate) config: RunConfig,
    pub(crate) handle: LifecycleHandle,
    pub(crate) root: CancellationToken,
}

impl Registry {
    /// A new builder.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::new()
    }

    /// A handle on the run, to keep before calling [`run`](Registry::run).
    pub fn handle(&self) -> LifecycleHandle {
        self.handle.clone()
    }

    /// The root cancellation token: every component's token is a child of it. It is cancelled
    /// when the run ends.
    pub fn root_token(&self) -> &CancellationToken {
        &self.root
    }

    /// Starts every component, waits for a shutdown request, stops every component, and
    /// returns the report. See the crate documentation for the sequence.
    ///
    /// Needs a multi-threaded tokio runtime for per-hook timeouts to hold when a hook blocks
    /// its thread; the watchdog bounds the shutdown either way.
    pub async fn run(self) -> Report {
        crate::run::run(self).await
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("components", &self.contexts.iter().map(Context::name).collect::<Vec<_>>())
            .field("graph", &self.graph)
            .field("config", &self.config)
            .finish()
    }
}
