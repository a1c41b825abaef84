//! The [`Component`] trait a resource implements, its name, its options and its health.

use std::any::Any;
use std::borrow::{Borrow, Cow};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::{Context, Dependency, RestartPolicy};

/// The error a hook returns: any error type converts into it with `?`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The name of a registered component, unique within a registry.
///
/// Reports, errors, logs and dependency declarations all refer to a component by this name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId(Cow<'static, str>);

impl ComponentId {
    /// A component name.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self(name.into())
    }

    /// The default name of a component of type `T`: its type name without path or generics, in
    /// snake_case (`HttpServer` becomes `http_server`).
    pub fn of_type<T: ?Sized>() -> Self {
        Self::of_type_name(std::any::type_name::<T>())
    }

    pub(crate) fn of_type_name(full: &str) -> Self {
        let without_generics = full.split('<').next().unwrap_or(full);
        let short = without_generics.rsplit("::").next().unwrap_or(without_generics);
        Self(Cow::Owned(snake_case(short)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            // A new word starts at an upper-case letter after a lower-case one, or at the last
            // capital of an acronym followed by a lower-case letter (`HTTPServer` -> `http_server`).
            let prev_lower = i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let acronym_end =
                i > 0 && chars[i - 1].is_uppercase() && chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev_lower || acronym_end {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&'static str> for ComponentId {
    fn from(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }
}

impl From<String> for ComponentId {
    fn from(name: String) -> Self {
        Self(Cow::Owned(name))
    }
}

impl Borrow<str> for ComponentId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The health a component reports when asked (for readiness endpoints and the report).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Working normally.
    Healthy,
    /// Working, with a problem worth showing.
    Degraded(String),
    /// Not able to do its work.
    Unhealthy(String),
}

impl Health {
    /// Whether the component can serve (healthy or degraded).
    pub fn is_serving(&self) -> bool {
        !matches!(self, Health::Unhealthy(_))
    }
}

/// How long a component's hooks may take and what its failure means for the service.
///
/// Built with [`ComponentOptions::new`] and its setters; a timeout left unset takes the registry's
/// default (see [`RegistryBuilder::default_start_timeout`](crate::RegistryBuilder::default_start_timeout)).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ComponentOptions {
    /// Limit for the start hook.
    pub start_timeout: Option<Duration>,
    /// Limit for the stop hook together with waiting for the component's tasks; always cut short
    /// by the global shutdown deadline.
    pub stop_timeout: Option<Duration>,
    /// When true (the default) a failure to start rolls the whole start back, and a task that fails
    /// while running stops the service with a non-zero exit code. When false the failure is reported
    /// and the service carries on without it. With a restart policy, this applies once its
    /// budget is spent.
    pub critical: bool,
    /// Whether a failed start or a failed task starts the component again, together with what
    /// depends on it. `None` (the default) takes the registry's
    /// [default](crate::RegistryBuilder::default_restart), itself never unless set.
    pub restart: Option<RestartPolicy>,
    /// Whether the run ends by itself, with exit code 0, once this component is done: its start
    /// succeeded and every task it spawned ended without failing. With several such components,
    /// once all are done. For a migration runner, a batch job, a command-line tool.
    pub run_to_completion: bool,
    /// Whether every other component of the registry stops before this one (and starts after
    /// it), as if each declared an [optional](crate::Dependency::optional) dependency on it:
    /// for what the others use until their last moment, such as telemetry providers that must
    /// flush the spans of every other stop. Such a component may depend only on others marked
    /// so (anything else is a cycle, refused by `build`); several marked ones stop together.
    pub stops_last: bool,
}

impl Default for ComponentOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ComponentOptions {
    /// Registry-default timeouts, critical.
    pub const fn new() -> Self {
        Self {
            start_timeout: None,
            stop_timeout: None,
            critical: true,
            restart: None,
            run_to_completion: false,
            stops_last: false,
        }
    }

    /// Sets the start timeout.
    #[must_use]
    pub const fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = Some(timeout);
        self
    }

    /// Sets the stop timeout.
    #[must_use]
    pub const fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = Some(timeout);
        self
    }

    /// Sets whether the component is critical.
    #[must_use]
    pub const fn critical(mut self, critical: bool) -> Self {
        self.critical = critical;
        self
    }

    /// Sets the restart policy.
    #[must_use]
    pub const fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = Some(policy);
        self
    }

    /// Sets whether the run ends once this component is done (see
    /// [`run_to_completion`](ComponentOptions::run_to_completion)).
    #[must_use]
    pub const fn run_to_completion(mut self, completes: bool) -> Self {
        self.run_to_completion = completes;
        self
    }

    /// Sets whether every other component stops before this one (see
    /// [`stops_last`](ComponentOptions::stops_last)).
    #[must_use]
    pub const fn stops_last(mut self, last: bool) -> Self {
        self.stops_last = last;
        self
    }
}

/// A resource with a lifecycle: a pool, a cache, a server, a worker, a registry entry.
///
/// Every hook has a default that does nothing, so a component implements only what it needs. The
/// registry calls the hooks in this order, each at most once per start:
///
/// 1. [`start`](Component::start) once every dependency has started; it returns when the component
///    is ready and leaves long-running work to tasks spawned through [`Context::tasks`].
/// 2. [`drain`](Component::drain) when shutdown begins and the service turns unready, on every
///    component at once, before anything stops: deregister from service discovery here.
/// 3. [`stop`](Component::stop) after every component that depends on this one has stopped. Just
///    before it, the component's [`Context::token`] is cancelled; after it, the registry waits for
///    the component's tasks. All of this runs within the stop timeout.
///
/// A component with a [restart policy](ComponentOptions::restart) goes through the three again
/// after a failure (and so does everything that depends on it): its `start` must set up afresh
/// what its last `stop` released, and [`restartable`](Component::restartable) says whether it can.
///
/// ```
/// use lifecycle_core::{BoxError, Component, ComponentOptions, Context};
/// use std::time::Duration;
///
/// struct Ticker;
///
/// impl Component for Ticker {
///     fn options(&self) -> ComponentOptions {
///         ComponentOptions::new().stop_timeout(Duration::from_secs(2))
///     }
///
///     async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
///         let token = ctx.token().clone();
///         ctx.tasks().spawn("tick", async move {
///             let mut tick = tokio::time::interval(Duration::from_secs(1));
///             loop {
///                 tokio::select! {
///                     _ = token.cancelled() => return,
///                     _ = tick.tick() => tracing::info!("tick"),
///                 }
///             }
///         });
///         Ok(())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a lifecycle component",
    label = "not a `Component`",
    note = "derive it with `#[derive(lifecycle_core::Component)]` or implement `lifecycle_core::Component`"
)]
pub trait Component: Send + Sync + 'static {
    /// The component's unique name. Defaults to the type name in snake_case.
    fn name(&self) -> ComponentId {
        ComponentId::of_type::<Self>()
    }

    /// What this component needs started before it, and stopped after it.
    ///
    /// Return [`Dep::dependency`](crate::Dep::dependency) for each [`Dep`](crate::Dep) field, or
    /// name a dependency with [`Dependency::on`] or [`Dependency::on_type`].
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }

    /// Timeouts and criticality; registration can override them.
    fn options(&self) -> ComponentOptions {
        ComponentOptions::new()
    }

    /// Acquires the resource and spawns the component's tasks; returns once it is ready.
    ///
    /// Not written, it does nothing, and the run spends no task on it.
    fn start(&self, ctx: &Context) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = ctx;
        NothingToDo
    }

    /// Called when the service turns unready, before any component stops.
    ///
    /// Not written, it does nothing, and the run spends no task on it.
    fn drain(&self, ctx: &Context) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = ctx;
        NothingToDo
    }

    /// Releases the resource. The component's token is already cancelled.
    ///
    /// Not written, it does nothing, and the run spends no task on it.
    fn stop(&self, ctx: &Context) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = ctx;
        NothingToDo
    }

    /// Re-reads what can change without a restart (configuration, certificates, log level), on
    /// a reload signal (`SIGHUP` by default) or
    /// [`LifecycleHandle::reload`](crate::LifecycleHandle::reload). Runs while the component
    /// runs, after the components it depends on reloaded, within its start timeout. A failure
    /// leaves it running as it was: keep the old state until the new one is complete.
    fn reload(&self, ctx: &Context) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Whether [`start`](Component::start) can run again after [`stop`](Component::stop), for a
    /// restart. Return false when a start uses up what the component was given (a listener it
    /// takes once): [`RegistryBuilder::build`](crate::RegistryBuilder::build) then refuses a
    /// restart policy on it, naming the component.
    fn restartable(&self) -> bool {
        true
    }

    /// A cheap check of whether the component can do its work.
    fn health(&self) -> impl Future<Output = Health> + Send {
        async { Health::Healthy }
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The future of a start, drain or stop hook a component leaves to the trait: done at once.
/// Private, so that no hook a user writes can return it: the run tells an unwritten hook by this
/// type alone (see [`WrittenHooks`]), without calling it.
struct NothingToDo;

impl Future for NothingToDo {
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

/// Which of its start, drain and stop hooks a component type writes itself. The run spends a
/// task on each written hook (it may block, hang or panic) and none on the others, which do
/// nothing: most components write one or two of the three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WrittenHooks {
    pub(crate) start: bool,
    pub(crate) drain: bool,
    pub(crate) stop: bool,
}

impl WrittenHooks {
    /// Read off the hooks' return types, at compile time: the trait's defaults return
    /// [`NothingToDo`], and nothing else can.
    pub(crate) fn of<T: Component>() -> Self {
        Self {
            start: !returns_nothing_to_do::<T, _>(<T as Component>::start),
            drain: !returns_nothing_to_do::<T, _>(<T as Component>::drain),
            stop: !returns_nothing_to_do::<T, _>(<T as Component>::stop),
        }
    }
}

/// Whether `hook` returns [`NothingToDo`]. The hook is not called: its future's type is inferred
/// from its signature, and compared with lifetimes left out (`typeid`), as the hook's future
/// borrows the component and its context.
fn returns_nothing_to_do<'a, T: ?Sized, F>(hook: fn(&'a T, &'a Context) -> F) -> bool {
    let _ = hook;
    typeid::of::<F>() == typeid::of::<NothingToDo>()
}

/// [`Component`] with boxed futures, so components of different types live in one registry.
pub(crate) trait ErasedComponent: Send + Sync + 'static {
    fn start<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<(), BoxError>>;
    fn drain<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<(), BoxError>>;
    fn stop<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<(), BoxError>>;
    fn reload<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<(), BoxError>>;
    fn health(&self) -> BoxFuture<'_, Health>;
}

impl<T: Component> ErasedComponent for T {
    fn start<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(Component::start(self, ctx))
    }

    fn drain<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(Component::drain(self, ctx))
    }

    fn stop<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(Component::stop(self, ctx))
    }

    fn reload<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(Component::reload(self, ctx))
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(Component::health(self))
    }
}

/// A registered component in both of the forms the registry needs: callable hooks, and a value
/// that typed handles downcast from.
#[derive(Clone)]
pub(crate) struct SharedComponent {
    pub(crate) hooks: Arc<dyn ErasedComponent>,
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) type_name: &'static str,
    /// Which hooks it writes, so that the run spends no task on the others.
    pub(crate) written: WrittenHooks,
    /// Whether it is running now, for typed handles to tell.
    pub(crate) up: Up,
}

impl SharedComponent {
    pub(crate) fn new<T: Component>(component: Arc<T>) -> Self {
        Self {
            hooks: component.clone(),
            value: component,
            type_name: std::any::type_name::<T>(),
            written: WrittenHooks::of::<T>(),
            up: Up::default(),
        }
    }
}

/// Whether a component is running (started, and not stopping or restarting). Shared between
/// the run, which sets it, and the component's typed handles, which read it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Up(Arc<std::sync::atomic::AtomicBool>);

impl Up {
    pub(crate) fn set(&self, up: bool) {
        self.0.store(up, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct HttpServer;
    struct HTTPServer;
    struct Pool<T>(T);
    struct Db2Pool;

    #[test]
    fn default_names_are_snake_case_type_names() {
        assert_eq!(ComponentId::of_type::<HttpServer>().as_str(), "http_server");
        assert_eq!(ComponentId::of_type::<HTTPServer>().as_str(), "http_server");
        assert_eq!(ComponentId::of_type::<Pool<u8>>().as_str(), "pool");
        assert_eq!(ComponentId::of_type::<Db2Pool>().as_str(), "db2_pool");
        let _ = Pool(0u8).0;
    }

    struct WritesNone;
    impl Component for WritesNone {}

    struct WritesStop;
    impl Component for WritesStop {
        async fn stop(&self, _: &Context) -> Result<(), BoxError> {
            Ok(())
        }
    }

    /// Written without `async`, ready at once like the default: still a hook of its own (the
    /// call may do its work before it returns the future).
    struct WritesReadyStartAndDrain;
    impl Component for WritesReadyStartAndDrain {
        fn start(&self, _: &Context) -> impl Future<Output = Result<(), BoxError>> + Send {
            std::future::ready(Ok(()))
        }

        fn drain(&self, _: &Context) -> impl Future<Output = Result<(), BoxError>> + Send {
            std::future::ready(Ok(()))
        }
    }

    #[test]
    fn hooks_left_to_the_trait_are_told_from_written_ones() {
        let none = WrittenHooks { start: false, drain: false, stop: false };
        assert_eq!(WrittenHooks::of::<WritesNone>(), none);
        assert_eq!(WrittenHooks::of::<WritesStop>(), WrittenHooks { stop: true, ..none });
        assert_eq!(
            WrittenHooks::of::<WritesReadyStartAndDrain>(),
            WrittenHooks { start: true, drain: true, ..none }
        );
    }
}
