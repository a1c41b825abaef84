//! Ready-made components for resources that need no adapter crate: a value with an async close,
//! and a component made of closures.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use crate::component::BoxFuture;
use crate::{BoxError, Close, Component, ComponentId, ComponentOptions, Context, Dependency};

type CloseFn<T> = Box<dyn Fn(Arc<T>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// Any value that must be closed when the service stops, as a component: an in-memory cache to
/// flush, a client library with a `shutdown()` method.
///
/// ```
/// use lifecycle_core::{Managed, RegistryBuilder};
/// use std::sync::Mutex;
///
/// #[derive(Default)]
/// struct Metrics { counts: Mutex<Vec<u64>> }
///
/// let mut builder = RegistryBuilder::new();
/// let metrics = builder
///     .add(Managed::with_close("metrics", Metrics::default(), |metrics| async move {
///         let counts = metrics.counts.lock().map(|c| c.len()).unwrap_or(0);
///         println!("flushing {counts} counters");
///         Ok::<(), std::io::Error>(())
///     }))
///     .dep();
/// metrics.counts.lock().unwrap().push(1); // `Dep<Managed<Metrics>>` derefs to the value
/// ```
pub struct Managed<T> {
    name: ComponentId,
    value: Arc<T>,
    close: CloseFn<T>,
    options: ComponentOptions,
    dependencies: Vec<Dependency>,
}

impl<T: Close + 'static> Managed<T> {
    /// A component that closes `value` with its [`Close`] impl when it stops.
    pub fn new(name: impl Into<ComponentId>, value: T) -> Self {
        Self::with_close(name, value, |value: Arc<T>| async move { value.close().await })
    }
}

impl<T: Send + Sync + 'static> Managed<T> {
    /// A component that runs `close` on `value` when it stops.
    pub fn with_close<F, Fut, E>(name: impl Into<ComponentId>, value: T, close: F) -> Self
    where
        F: Fn(Arc<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let close: CloseFn<T> = Box::new(move |value| {
            let closing = close(value);
            Box::pin(async move { closing.await.map_err(Into::into) })
        });
        Self {
            name: name.into(),
            value: Arc::new(value),
            close,
            options: ComponentOptions::new(),
            dependencies: Vec::new(),
        }
    }

    /// Sets the component's options.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds a dependency: the value is closed before what it depends on.
    #[must_use]
    pub fn depends_on(mut self, dependency: impl Into<Dependency>) -> Self {
        self.dependencies.push(dependency.into());
        self
    }

    /// The shared value.
    pub fn value(&self) -> &Arc<T> {
        &self.value
    }
}

impl<T> Deref for Managed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Send + Sync + 'static> Component for Managed<T> {
    fn name(&self) -> ComponentId {
        self.name.clone()
    }

    fn dependencies(&self) -> Vec<Dependency> {
        self.dependencies.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    fn stop(&self, _ctx: &Context) -> impl Future<Output = Result<(), BoxError>> + Send {
        (self.close)(Arc::clone(&self.value))
    }
}

impl<T> fmt::Debug for Managed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Managed")
            .field("name", &self.name)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

type HookFn = Box<dyn Fn(Context) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// A component made of closures, for glue that does not deserve a type. Each closure gets the
/// component's [`Context`] by value.
///
/// ```
/// use lifecycle_core::{FnComponent, RegistryBuilder};
///
/// let mut builder = RegistryBuilder::new();
/// builder.add(
///     FnComponent::new("heartbeat")
///         .on_start(|ctx| async move {
///             let token = ctx.token().clone();
///             ctx.tasks().spawn("beat", async move { token.cancelled().await });
///             Ok::<(), std::io::Error>(())
///         })
///         .on_stop(|_ctx| async { Ok::<(), std::io::Error>(()) }),
/// );
/// ```
pub struct FnComponent {
    name: ComponentId,
    start: Option<HookFn>,
    drain: Option<HookFn>,
    stop: Option<HookFn>,
    options: ComponentOptions,
    dependencies: Vec<Dependency>,
}

fn hook_fn<F, Fut, E>(hook: F) -> HookFn
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    Box::new(move |ctx| {
        let running = hook(ctx);
        Box::pin(async move { running.await.map_err(Into::into) })
    })
}

impl FnComponent {
    /// A component that does nothing until given closures.
    pub fn new(name: impl Into<ComponentId>) -> Self {
        Self {
            name: name.into(),
            start: None,
            drain: None,
            stop: None,
            options: ComponentOptions::new(),
            dependencies: Vec::new(),
        }
    }

    /// Runs `start` as the start hook.
    #[must_use]
    pub fn on_start<F, Fut, E>(mut self, start: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.start = Some(hook_fn(start));
        self
    }

    /// Runs `drain` as the drain hook.
    #[must_use]
    pub fn on_drain<F, Fut, E>(mut self, drain: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.drain = Some(hook_fn(drain));
        self
    }

    /// Runs `stop` as the stop hook.
    #[must_use]
    pub fn on_stop<F, Fut, E>(mut self, stop: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.stop = Some(hook_fn(stop));
        self
    }

    /// Sets the component's options.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds a dependency.
    #[must_use]
    pub fn depends_on(mut self, dependency: impl Into<Dependency>) -> Self {
        self.dependencies.push(dependency.into());
        self
    }

    fn call(hook: Option<&HookFn>, ctx: &Context) -> BoxFuture<'static, Result<(), BoxError>> {
        match hook {
            Some(hook) => hook(ctx.clone()),
            None => Box::pin(async { Ok(()) }),
        }
    }
}

impl Component for FnComponent {
    fn name(&self) -> ComponentId {
        self.name.clone()
    }

    fn dependencies(&self) -> Vec<Dependency> {
        self.dependencies.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    fn start(&self, ctx: &Context) -> impl Future<Output = Result<(), BoxError>> + Send {
        Self::call(self.start.as_ref(), ctx)
    }

    fn drain(&self, ctx: &Context) -> impl Future<Output = Result<(), BoxError>> + Send {
        Self::call(self.drain.as_ref(), ctx)
    }

    fn stop(&self, ctx: &Context) -> impl Future<Output = Result<(), BoxError>> + Send {
        Self::call(self.stop.as_ref(), ctx)
    }
}

impl fmt::Debug for FnComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnComponent")
            .field("name", &self.name)
            .field("start", &self.start.is_some())
            .field("drain", &self.drain.is_some())
            .field("stop", &self.stop.is_some())
            .finish()
    }
}
