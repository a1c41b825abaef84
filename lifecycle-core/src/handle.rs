//! A cheap handle on a registry's run: phase, readiness, component states, health and shutdown.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::component::ErasedComponent;
use crate::panic::CatchUnwind;
use crate::progress::{ComponentStatus, Progress};
use crate::reload::{ReloadCause, ReloadCounts, ReloadError, ReloadReport, ReloadRequest, Reloads};
use crate::scope::{ScopeBuilder, ScopeStatus};
use crate::{CancellationToken, ComponentId, Health, Phase, Readiness, Shutdown, Tasks, lock};

/// Observes and steers one run from anywhere: an HTTP readiness endpoint, a signal handler of
/// your own, a test. Cloning is cheap.
#[derive(Clone)]
pub struct LifecycleHandle {
    inner: Arc<Inner>,
}

struct Inner {
    phase: watch::Sender<Phase>,
    shutdown: Shutdown,
    progress: Arc<Progress>,
    // Weak: a component that keeps its context (and so this handle) must not keep itself alive.
    components: Vec<(ComponentId, Weak<dyn ErasedComponent>)>,
    health_timeout: Duration,
    /// Where this run sits: empty for the service, `owner/scope` for a scope.
    path: String,
    /// Scopes that components of this run opened and that are still open.
    scopes: Mutex<Vec<OpenScope>>,
    /// Whether a scope was ever opened: the stop of every component asks for its scopes, and
    /// most runs have none.
    any_scope: AtomicBool,
    /// The run's root token and the task set of the scopes opened through the handle.
    root: CancellationToken,
    tasks: Tasks,
    reloads: Reloads,
}

/// A scope still open, as its owner's run knows it.
#[derive(Clone)]
pub(crate) struct OpenScope {
    /// The owner's component index in this run.
    pub(crate) owner: usize,
    pub(crate) id: u64,
    pub(crate) path: String,
    pub(crate) handle: LifecycleHandle,
    /// Cancelled when the scope's task has ended, however it ended (aborted with its owner too).
    pub(crate) ended: CancellationToken,
}

impl LifecycleHandle {
    pub(crate) fn new(
        shutdown: Shutdown,
        progress: Arc<Progress>,
        components: Vec<(ComponentId, Weak<dyn ErasedComponent>)>,
        health_timeout: Duration,
        path: String,
        (root, tasks): (CancellationToken, Tasks),
        reloads: Reloads,
    ) -> Self {
        let (phase, _) = watch::channel(Phase::Starting);
        let (scopes, any_scope) = (Mutex::new(Vec::new()), AtomicBool::new(false));
        let inner = Inner {
            phase,
            shutdown,
            progress,
            components,
            health_timeout,
            path,
            scopes,
            any_scope,
            root,
            tasks,
            reloads,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Components to start while the service runs, owned by the service itself rather than by
    /// a component: see [`ScopeBuilder`]. Its path is `name`. The run stops such scopes after
    /// the drain, before any component stops.
    pub fn scope(&self, name: &str) -> ScopeBuilder {
        ScopeBuilder::owned_by_run(self, name)
    }

    /// The run's root token, and the task set of the scopes opened through the handle.
    pub(crate) fn run_owner(&self) -> (&CancellationToken, &Tasks) {
        (&self.inner.root, &self.inner.tasks)
    }

    /// Where this run sits: empty for the service, `owner/scope` for a scope (nested scopes add
    /// to it: `tenants/acme/sessions/42`).
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The scopes open now, opened by this run's components (each one's handle shows its own,
    /// nested ones).
    pub fn scopes(&self) -> Vec<ScopeStatus> {
        let open = lock(&self.inner.scopes).clone();
        open.into_iter()
            .map(|scope| ScopeStatus {
                path: scope.path,
                phase: scope.handle.phase(),
                components: scope.handle.components(),
                handle: scope.handle,
            })
            .collect()
    }

    pub(crate) fn add_scope(&self, scope: OpenScope) {
        self.inner.any_scope.store(true, Ordering::Release);
        lock(&self.inner.scopes).push(scope);
    }

    pub(crate) fn remove_scope(&self, id: u64) {
        lock(&self.inner.scopes).retain(|scope| scope.id != id);
    }

    /// The open scopes of component `owner`.
    /// Whether a scope was ever opened in this run.
    pub(crate) fn has_scopes(&self) -> bool {
        self.inner.any_scope.load(Ordering::Acquire)
    }

    pub(crate) fn scopes_of(&self, owner: usize) -> Vec<OpenScope> {
        if !self.has_scopes() {
            return Vec::new();
        }
        lock(&self.inner.scopes).iter().filter(|scope| scope.owner == owner).cloned().collect()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.inner.phase.borrow()
    }

    /// A receiver that sees every phase change.
    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.inner.phase.subscribe()
    }

    /// Completes once the service has reached `phase` (or a later one).
    pub async fn reached(&self, phase: Phase) {
        let mut receiver = self.watch_phase();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|current| *current >= phase).await;
    }

    /// Whether the service is in [`Phase::Ready`]: false before, and first thing when shutdown
    /// begins. [`readiness`](LifecycleHandle::readiness) says whether it is degraded too.
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Ready
    }

    /// Ready, degraded or unready, with what is wrong: the phase, every component's stage and
    /// the health of the running ones (checked at once, each within the health timeout). A
    /// component restarting by its policy, or an optional one down or unhealthy, makes the
    /// service degraded (still ready); a critical one unhealthy or down for good makes it
    /// unready. What a readiness endpoint answers.
    pub async fn readiness(&self) -> Readiness {
        let phase = self.phase();
        if phase != Phase::Ready {
            return Readiness::judge(phase, self.components(), Vec::new());
        }
        let statuses = self.components();
        let health = self.health().await;
        Readiness::judge(phase, statuses, health)
    }

    /// [`readiness`](LifecycleHandle::readiness) from the phase and the components' stages
    /// alone, without asking for their health: cheap enough for every metrics scrape.
    pub fn readiness_by_stage(&self) -> Readiness {
        Readiness::judge(self.phase(), self.components(), Vec::new())
    }

    /// The handle that requests a shutdown.
    pub fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }

    /// What every component is doing, in registration order.
    pub fn components(&self) -> Vec<ComponentStatus> {
        self.inner.progress.statuses()
    }

    /// Asks every component for its health at once, each bounded by the health timeout (a check
    /// that takes longer is unhealthy). Components that are not running are reported unhealthy.
    pub async fn health(&self) -> Vec<(ComponentId, Health)> {
        let statuses = self.components();
        let mut results: Vec<(ComponentId, Health)> = self
            .inner
            .components
            .iter()
            .map(|(id, _)| (id.clone(), Health::Unhealthy("not running".into())))
            .collect();
        let mut checks = JoinSet::new();
        for (index, (_, component)) in self.inner.components.iter().enumerate() {
            let running = statuses[index].stage.is_some_and(|s| s == crate::Stage::Running);
            let Some(component) = component.upgrade().filter(|_| running) else { continue };
            let timeout = self.inner.health_timeout;
            let name = self.inner.components[index].0.clone();
            checks.spawn(async move {
                let health = match tokio::time::timeout(timeout, CatchUnwind::new(component.health())).await {
                    Ok(Ok(health)) => health,
                    // A panicking check is a broken check: unhealthy, and said why.
                    Ok(Err(panic)) => {
                        tracing::error!(component = %name, %panic, "health check panicked");
                        Health::Unhealthy(format!("health check panicked: {panic}"))
                    }
                    Err(_) => Health::Unhealthy(format!("health check took over {timeout:?}")),
                };
                (index, health)
            });
        }
        while let Some(joined) = checks.join_next().await {
            match joined {
                Ok((index, health)) => results[index].1 = health,
                // Checks catch their panics; only a runtime shutting down cancels one.
                Err(error) => tracing::warn!(%error, "health check did not finish"),
            }
        }
        results
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.inner.phase.send_if_modified(|current| {
            let changed = *current != phase;
            *current = phase;
            changed
        });
        tracing::debug!(%phase, "lifecycle phase");
    }

    pub(crate) fn progress(&self) -> &Arc<Progress> {
        &self.inner.progress
    }

    /// Runs the [`reload`](crate::Component::reload) hook of every running component, each after
    /// the components it depends on, each within its start timeout; returns once all ended. A
    /// request made while the service starts waits for it to be ready; requests made while one
    /// waits to run join it.
    ///
    /// A failed reload leaves its component running as it was; the report says which failed.
    /// Scopes opened while the service runs are not part of it: their own handles reload them
    /// (a component can do so in its reload hook).
    ///
    /// # Errors
    /// [`ReloadError::ShuttingDown`] once a shutdown was requested (it also cancels a reload in
    /// progress); [`ReloadError::Ended`] when the run is over.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        if self.inner.shutdown.is_requested() {
            return Err(ReloadError::ShuttingDown);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !self.inner.reloads.request(ReloadRequest { cause: ReloadCause::Requested, reply: Some(reply) }) {
            // The run stopped taking requests: at its shutdown, or at its end.
            return Err(if self.inner.shutdown.is_requested() {
                ReloadError::ShuttingDown
            } else {
                ReloadError::Ended
            });
        }
        answer.await.unwrap_or(Err(ReloadError::Ended))
    }

    /// How many reloads ran so far, and how many failed in part.
    pub fn reload_counts(&self) -> ReloadCounts {
        self.inner.reloads.counts()
    }

    pub(crate) fn reloads(&self) -> &Reloads {
        &self.inner.reloads
    }
}

impl fmt::Debug for LifecycleHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleHandle")
            .field("phase", &self.phase())
            .field("shutdown", &self.inner.shutdown)
            .field("components", &self.inner.components.len())
            .finish()
    }
}
