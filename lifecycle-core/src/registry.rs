//! Putting components together: the builder that checks them, and the registry that runs them.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::component::SharedComponent;
use crate::failure::FailureLog;
use crate::graph::{Graph, GraphInput};
use crate::progress::Progress;
use crate::run::{Limits, OnReady, Parts, RunConfig};
use crate::{
    BuildError, Component, ComponentId, ComponentOptions, Context, Dep, Dependency, LifecycleHandle, Report,
    RestartPolicy, Shutdown, SignalListener, Signals, Tasks,
};

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
#[must_use = "a builder does nothing until it is built and run"]
pub struct RegistryBuilder {
    entries: Vec<Entry>,
    config: RunConfig,
    listener: Option<SignalListener>,
    on_ready: Vec<OnReady>,
    /// For a scope: its owner's token (the parent of its root) and where it sits.
    pub(crate) parent: Option<(CancellationToken, String)>,
    /// The restart policy of components that set none and can take one.
    default_restart: Option<RestartPolicy>,
}

struct Entry {
    id: ComponentId,
    type_id: TypeId,
    component: SharedComponent,
    dependencies: Vec<Dependency>,
    options: ComponentOptions,
    restartable: bool,
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
        let shared = SharedComponent::new(Arc::clone(&component));
        let up = shared.up.clone();
        let entry = Entry {
            id: id.clone(),
            type_id: TypeId::of::<T>(),
            dependencies: component.dependencies(),
            options: component.options(),
            restartable: component.restartable(),
            component: shared,
        };
        self.entries.push(entry);
        let last = self.entries.len() - 1;
        Registration { entry: &mut self.entries[last], dep: Dep::new(id, component, up) }
    }

    /// The time from a shutdown request to the end of the run, whatever hangs (default 25 s).
    /// The process ends at the latest at this deadline plus the
    /// [watchdog grace](RegistryBuilder::watchdog_grace): keep that sum below the platform's
    /// grace period (Kubernetes: 30 s after preStop; systemd: `TimeoutStopSec=`).
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

    /// How long after the shutdown deadline the watchdog ends a process whose run could not
    /// finish (default 500 ms, at most 60 s): the time the run has to write its own report
    /// first. The watchdog runs on an OS thread and the real clock, even in tests with paused
    /// time.
    pub fn watchdog_grace(&mut self, grace: Duration) -> &mut Self {
        self.config.watchdog_grace = grace;
        self
    }

    /// Uses signals already being caught (installed first thing in `main`, before anything
    /// could fail or take time) instead of installing the [`signals`](RegistryBuilder::signals)
    /// when the run starts. Signals that arrived in between are acted on at once.
    pub fn signal_listener(&mut self, listener: SignalListener) -> &mut Self {
        self.config.signals = listener.signals();
        self.listener = Some(listener);
        self
    }

    /// Calls `callback` once, when every component has started and the service turns ready:
    /// for what belongs to the program rather than to a component (print an address, tell a
    /// test harness). It runs on the run's task, so it must not block; a panic in it is logged.
    pub fn on_ready(&mut self, callback: impl FnOnce(&LifecycleHandle) + Send + 'static) -> &mut Self {
        self.on_ready.push(Box::new(callback));
        self
    }

    /// The restart policy of every component that sets none, where it fits: the component can
    /// start twice, and so can everything that depends on it (a restart restarts them too).
    /// The others keep no policy; a component opts out with `RestartPolicy::never()`.
    pub fn default_restart(&mut self, policy: RestartPolicy) -> &mut Self {
        self.default_restart = Some(policy);
        self
    }

    /// How long one health check may take (default 2 s).
    pub fn health_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.config.health_timeout = timeout;
        self
    }

    /// Checks names, dependencies and settings, and prepares the run. Every problem found is
    /// reported, not only the first. A stop timeout at or above the shutdown deadline is logged
    /// as a warning: should that component hang, the run shares the time left between it and
    /// what it depends on (see the crate documentation).
    pub fn build(mut self) -> Result<Registry, BuildError> {
        let mut errors = self.check_settings();
        self.add_stops_last_edges();
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
        let graph = match Graph::build(&inputs) {
            Ok(graph) => graph,
            Err(graph_errors) => {
                errors.extend(graph_errors);
                return Err(BuildError::from_list(errors));
            }
        };
        errors.extend(self.check_restarts(&graph));
        if !errors.is_empty() {
            return Err(BuildError::from_list(errors));
        }
        let restart = self.restart_policies(&graph);

        let shutdown = Shutdown::new();
        let options: Vec<Limits> = self
            .entries
            .iter()
            .enumerate()
            .map(|(index, e)| Limits {
                start_timeout: e.options.start_timeout.unwrap_or(self.config.default_start_timeout),
                stop_timeout: e.options.stop_timeout.unwrap_or(self.config.default_stop_timeout),
                critical: e.options.critical,
                restart: restart[index],
                completes_run: e.options.run_to_completion,
            })
            .collect();
        self.warn_about_stop_budget(&options);
        let failures: Vec<FailureLog> = self.entries.iter().map(|_| FailureLog::default()).collect();
        let (troubles, trouble_receiver) = tokio::sync::mpsc::unbounded_channel();
        let tasks: Vec<Tasks> = self
            .entries
            .iter()
            .zip(&options)
            .zip(&failures)
            .enumerate()
            .map(|(index, ((e, o), failures))| {
                let supervisor = o.restart.restarts().then(|| (index, troubles.clone()));
                Tasks::new(e.id.clone(), o.critical, shutdown.clone(), failures.clone(), supervisor)
            })
            .collect();
        let progress = Arc::new(Progress::new(
            self.entries.iter().map(|e| e.id.clone()).collect(),
            options.iter().map(|o| o.critical).collect(),
            tasks.clone(),
            failures,
            self.entries.iter().map(|e| e.component.up.clone()).collect(),
        ));
        let root = self.parent.as_ref().map_or_else(CancellationToken::new, |(token, _)| token.child_token());
        // The tasks of scopes opened through the handle, which no component owns.
        let run_tasks =
            Tasks::new(ComponentId::from("lifecycle"), false, shutdown.clone(), FailureLog::default(), None);
        let (reloads, reload_requests) = crate::reload::Reloads::new();
        let handle = LifecycleHandle::new(
            shutdown,
            progress,
            self.entries.iter().map(|e| (e.id.clone(), Arc::downgrade(&e.component.hooks))).collect(),
            self.config.health_timeout,
            self.parent.as_ref().map(|(_, path)| path.clone()).unwrap_or_default(),
            (root.clone(), run_tasks),
            reloads,
        );
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
            parts: Parts {
                components: self.entries.into_iter().map(|e| e.component).collect(),
                contexts,
                limits: options,
                graph,
                config: self.config,
                listener: self.listener,
                on_ready: self.on_ready,
                handle,
                root,
                troubles: trouble_receiver,
                reload_requests,
            },
        })
    }

    /// Makes every component depend, optionally, on each one marked
    /// [`stops_last`](ComponentOptions::stops_last) and not marked itself: an optional edge
    /// orders the start and the stop without restarting the others with it, nor stopping them
    /// when it is down.
    fn add_stops_last_edges(&mut self) {
        let last: Vec<ComponentId> =
            self.entries.iter().filter(|e| e.options.stops_last).map(|e| e.id.clone()).collect();
        if last.is_empty() {
            return;
        }
        for entry in self.entries.iter_mut().filter(|e| !e.options.stops_last) {
            entry.dependencies.extend(last.iter().map(|id| Dependency::on(id.clone()).optional()));
        }
    }

    /// Settings that cannot work: a zero or unrepresentable deadline, a grace out of range.
    fn check_settings(&self) -> Vec<BuildError> {
        const FINITE: &str = "a duration the clock can add to now (not `Duration::MAX`)";
        let config = &self.config;
        let mut errors = Vec::new();
        let mut check = |setting: &'static str, ok: bool, value: Duration, expected: &'static str| {
            if !ok {
                errors.push(BuildError::InvalidSetting { setting, value: format!("{value:?}"), expected });
            }
        };
        // `Instant` arithmetic panics on overflow: a deadline must fit after any moment of the run.
        let fits = |d: Duration| tokio::time::Instant::now().checked_add(d.saturating_mul(2)).is_some();
        check(
            "shutdown_deadline",
            !config.shutdown_deadline.is_zero(),
            config.shutdown_deadline,
            "more than zero",
        );
        check("shutdown_deadline", fits(config.shutdown_deadline), config.shutdown_deadline, FINITE);
        check("drain_delay", fits(config.drain_delay), config.drain_delay, FINITE);
        check(
            "default_start_timeout",
            fits(config.default_start_timeout),
            config.default_start_timeout,
            FINITE,
        );
        check("default_stop_timeout", fits(config.default_stop_timeout), config.default_stop_timeout, FINITE);
        check("health_timeout", fits(config.health_timeout), config.health_timeout, FINITE);
        check(
            "watchdog_grace",
            !config.watchdog_grace.is_zero() && config.watchdog_grace <= Duration::from_secs(60),
            config.watchdog_grace,
            "between 1 ns and 60 s",
        );
        for (setting, value, expected) in self.default_restart.map(|p| p.problems(true)).unwrap_or_default() {
            errors.push(BuildError::InvalidSetting {
                setting: if setting == "restart" { "default_restart" } else { setting },
                value,
                expected,
            });
        }
        for entry in &self.entries {
            for (setting, value) in
                [("start_timeout", entry.options.start_timeout), ("stop_timeout", entry.options.stop_timeout)]
            {
                if let Some(value) = value.filter(|&v| !fits(v)) {
                    errors.push(BuildError::InvalidComponentSetting {
                        component: entry.id.clone(),
                        setting,
                        value: format!("{value:?}"),
                        expected: FINITE,
                    });
                }
            }
            let Some(restart) = &entry.options.restart else { continue };
            for (setting, value, expected) in restart.problems(true) {
                errors.push(BuildError::InvalidComponentSetting {
                    component: entry.id.clone(),
                    setting,
                    value,
                    expected,
                });
            }
            if restart.restarts() && !entry.restartable {
                errors.push(BuildError::InvalidComponentSetting {
                    component: entry.id.clone(),
                    setting: "restart",
                    value: restart.restart().to_string(),
                    expected: "`never`: this component's start cannot run twice (it is not restartable)",
                });
            }
        }
        errors
    }

    /// Each component's policy: its own, else the default where it fits (the component and every
    /// hard dependent of it, directly or not, can start twice), else never.
    fn restart_policies(&self, graph: &Graph) -> Vec<RestartPolicy> {
        let count = self.entries.len();
        // Whether a component and all that would restart with it can start twice, dependents
        // first: registration order is not dependency order, so repeat until nothing changes.
        let mut fits: Vec<bool> = self.entries.iter().map(|e| e.restartable).collect();
        let mut changed = true;
        while changed {
            changed = false;
            for index in 0..count {
                let blocked =
                    graph.dependents(index).iter().any(|&d| !graph.is_optional(d, index) && !fits[d]);
                if fits[index] && blocked {
                    fits[index] = false;
                    changed = true;
                }
            }
        }
        self.entries
            .iter()
            .enumerate()
            .map(|(index, e)| match (e.options.restart, self.default_restart) {
                (Some(own), _) => own,
                (None, Some(default)) if fits[index] => default,
                _ => RestartPolicy::never(),
            })
            .collect()
    }

    /// A restart also restarts everything that depends on the component: each of those must be
    /// able to start twice.
    fn check_restarts(&self, graph: &Graph) -> Vec<BuildError> {
        let mut errors = Vec::new();
        let mut reported = vec![false; self.entries.len()];
        for (index, entry) in self.entries.iter().enumerate() {
            if !entry.options.restart.is_some_and(|p| p.restarts()) {
                continue;
            }
            let mut seen = vec![false; self.entries.len()];
            let mut stack = vec![index];
            while let Some(current) = stack.pop() {
                for &dependent in graph.dependents(current) {
                    // An optional dependent keeps running through the restart.
                    if graph.is_optional(dependent, current) || std::mem::replace(&mut seen[dependent], true)
                    {
                        continue;
                    }
                    stack.push(dependent);
                    if !self.entries[dependent].restartable
                        && !std::mem::replace(&mut reported[dependent], true)
                    {
                        errors.push(BuildError::NotRestartable {
                            component: self.entries[dependent].id.clone(),
                            restarted_with: entry.id.clone(),
                        });
                    }
                }
            }
        }
        errors
    }

    /// Warns about stop timeouts that cannot fit in the shutdown deadline at all. (A chain of
    /// timeouts that together exceed it is normal: they are limits, not expected durations.)
    fn warn_about_stop_budget(&self, limits: &[Limits]) {
        let deadline = self.config.shutdown_deadline;
        for (index, entry) in self.entries.iter().enumerate() {
            if limits[index].stop_timeout >= deadline {
                tracing::warn!(
                    component = %entry.id,
                    stop_timeout_ms = limits[index].stop_timeout.as_millis() as u64,
                    shutdown_deadline_ms = deadline.as_millis() as u64,
                    "stop timeout does not fit in the shutdown deadline; if the component hangs, it is cut \
                     short so that what it depends on keeps time to stop"
                );
            }
        }
    }
}

impl fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("components", &self.entries.iter().map(|e| &e.id).collect::<Vec<_>>())
            .field("config", &self.config)
            .field("signal_listener", &self.listener)
            .field("on_ready", &self.on_ready.len())
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

    /// Overrides the restart policy.
    pub fn restart(self, policy: RestartPolicy) -> Self {
        self.entry.options.restart = Some(policy);
        self
    }

    /// Makes the run end by itself, with exit code 0, once this component (and every other one
    /// marked so) is done: started, and every task it spawned ended without failing.
    pub fn run_to_completion(self) -> Self {
        self.entry.options.run_to_completion = true;
        self
    }

    /// Makes every other component stop before this one (see
    /// [`ComponentOptions::stops_last`]).
    pub fn stops_last(self) -> Self {
        self.entry.options.stops_last = true;
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
#[must_use = "a registry does nothing until it is run"]
pub struct Registry {
    parts: Parts,
}

impl Registry {
    /// A new builder.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::new()
    }

    /// A handle on the run, to keep before calling [`run`](Registry::run).
    pub fn handle(&self) -> LifecycleHandle {
        self.parts.handle.clone()
    }

    /// The root cancellation token: every component's token is a child of it. It is cancelled
    /// when the run ends.
    pub fn root_token(&self) -> &CancellationToken {
        &self.parts.root
    }

    /// Starts every component, waits for a shutdown request, stops every component, and
    /// returns the report. See the crate documentation for the sequence.
    ///
    /// Needs a multi-threaded tokio runtime for per-hook timeouts to hold when a hook blocks
    /// its thread; the watchdog bounds the shutdown either way.
    pub async fn run(self) -> Report {
        crate::run::run(self.parts).await
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("components", &self.parts.contexts.iter().map(Context::name).collect::<Vec<_>>())
            .field("graph", &self.parts.graph)
            .field("config", &self.parts.config)
            .finish()
    }
}
