//! Scopes: components and tasks a component starts while the service runs (a pool per tenant,
//! a session per connection, a batch), as a run of their own nested in the owner's.
//!
//! A scope is a registry run inside a task of its owner: its components start in dependency
//! order, drain and stop in reverse, get their own deadline and report. Its root token is a
//! child of the owner's, so cancelling the owner reaches it; the owner's stop stops its open
//! scopes (gracefully, in order) before the owner's own stop hook. How a scope ended comes
//! back to the owner as a value, its [`Report`]; a scope whose handle was dropped and that
//! failed is a failure of the owner's task instead, so that no failure goes unheard.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::handle::OpenScope;
use crate::{
    BuildError, Component, ComponentStatus, Context, LifecycleHandle, Phase, Registration, RegistryBuilder,
    Report, Signals, Tasks,
};

/// Components to start as a scope of a component: from [`Context::scope`].
///
/// ```
/// # async fn example(ctx: lifecycle_core::Context) -> Result<(), lifecycle_core::ScopeError> {
/// use lifecycle_core::FnComponent;
/// let mut tenant = ctx.scope("acme");
/// tenant.add(FnComponent::new("pool"));
/// let scope = tenant.start().await?; // ready: every component in it started
/// let report = scope.stop().await; // drained and stopped, in reverse order
/// assert!(report.is_success());
/// # Ok(()) }
/// ```
#[must_use = "a scope does nothing until it is started"]
pub struct ScopeBuilder {
    owner: Owner,
    path: String,
    builder: RegistryBuilder,
}

/// What owns a scope: a component, or the run itself (through its handle).
struct Owner {
    /// The owner's token: the scope's root is its child, and the scope stops when it is cancelled.
    token: CancellationToken,
    /// Where the scope's run is a task.
    tasks: Tasks,
    /// The owner's component index, or [`RUN_OWNER`].
    index: usize,
    /// The run the owner belongs to, which lists the scope while it is open.
    run: LifecycleHandle,
}

/// The owner index of scopes opened through a run's handle.
pub(crate) const RUN_OWNER: usize = usize::MAX;

impl std::fmt::Debug for ScopeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeBuilder").field("path", &self.path).field("components", &self.builder).finish()
    }
}

impl ScopeBuilder {
    pub(crate) fn new(owner: &Context, name: &str) -> Self {
        let owner_of = Owner {
            token: owner.token().clone(),
            tasks: owner.tasks().clone(),
            index: owner.index(),
            run: owner.lifecycle().clone(),
        };
        Self::with_owner(owner_of, format!("{}/{name}", owner.path()))
    }

    pub(crate) fn owned_by_run(run: &LifecycleHandle, name: &str) -> Self {
        let (token, tasks) = run.run_owner();
        let path = match run.path() {
            "" => name.to_owned(),
            prefix => format!("{prefix}/{name}"),
        };
        let owner = Owner { token: token.clone(), tasks: tasks.clone(), index: RUN_OWNER, run: run.clone() };
        Self::with_owner(owner, path)
    }

    fn with_owner(owner: Owner, path: String) -> Self {
        let mut builder = RegistryBuilder::new();
        // The process's signals and watchdog are the service's; a scope ends with its owner.
        builder.signals(Signals::none()).watchdog(false).shutdown_deadline(Duration::from_secs(10));
        builder.parent = Some((owner.token.clone(), path.clone()));
        Self { owner, path, builder }
    }

    /// Adds a component to the scope.
    pub fn add<T: Component>(&mut self, component: T) -> Registration<'_, T> {
        self.builder.add(component)
    }

    /// The scope's own shutdown deadline (default 10 s): what its stop may take in all.
    pub fn shutdown_deadline(&mut self, deadline: Duration) -> &mut Self {
        self.builder.shutdown_deadline(deadline);
        self
    }

    /// The start timeout of components in the scope that set none.
    pub fn default_start_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.builder.default_start_timeout(timeout);
        self
    }

    /// The stop timeout of components in the scope that set none.
    pub fn default_stop_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.builder.default_stop_timeout(timeout);
        self
    }

    /// Checks the components, starts them (in a task of the owner) and returns once every one
    /// started.
    ///
    /// # Errors
    /// [`ScopeError::Build`] when the components do not fit together, [`ScopeError::Start`]
    /// with the scope's report when a critical start failed (what started was stopped again),
    /// [`ScopeError::OwnerStopping`] when the owner is stopping already.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn start(self) -> Result<Scope, ScopeError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let Self { owner, path, builder } = self;
        if owner.token.is_cancelled() || owner.run.shutdown().is_requested() && owner.index == RUN_OWNER {
            return Err(ScopeError::OwnerStopping { path });
        }
        let registry = builder.build().map_err(ScopeError::Build)?;
        let handle = registry.handle();
        let root = registry.root_token().clone();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let owner_run = owner.run.clone();
        let ended = CancellationToken::new();
        owner_run.add_scope(OpenScope {
            owner: owner.index,
            id,
            path: path.clone(),
            handle: handle.clone(),
            ended: ended.clone(),
        });
        // Off the list when the task ends, however it ends: aborted with its owner too.
        let listed = Listed { run: owner_run, id, ended };

        let (report_sender, report) = oneshot::channel();
        let (watch_owner, scope_shutdown) = (owner.token.clone(), handle.shutdown().clone());
        let task_path = path.clone();
        owner.tasks.spawn(format!("scope {}", path.rsplit('/').next().unwrap_or(&path)), async move {
            let run = registry.run();
            tokio::pin!(run);
            let report = tokio::select! {
                report = &mut run => report,
                // The owner stops: so does the scope, gracefully, as the owner's stop waits.
                () = watch_owner.cancelled() => {
                    scope_shutdown.request("its owner is stopping", 0);
                    run.await
                }
            };
            drop(listed);
            match report_sender.send(report) {
                Ok(()) => Ok(()),
                // Nobody holds the scope to hear of it: its failure is the owner's task's.
                Err(report) => report.into_result().map(drop).map_err(|error| {
                    tracing::error!(scope = %task_path, %error, "a scope nobody waits for failed");
                    error
                }),
            }
        });

        let mut scope = Scope { path, handle, root, report, ended: None };
        tokio::select! {
            () = scope.handle.reached(Phase::Ready) => {}
            report = &mut scope.report => {
                let report = report.map_err(|_| ScopeError::OwnerStopping { path: scope.path.clone() })?;
                return Err(ScopeError::Start { path: scope.path.clone(), report: Box::new(report) });
            }
        }
        if scope.handle.phase() != Phase::Ready {
            // It went past ready without being ready: its start failed or was stopped.
            let path = scope.path.clone();
            let report = scope.join().await;
            return Err(if report.is_success() {
                ScopeError::OwnerStopping { path }
            } else {
                ScopeError::Start { path, report: Box::new(report) }
            });
        }
        Ok(scope)
    }
}

/// A scope's place in its owner's run: taken off the list, and its end announced, when the
/// scope's task ends or is dropped.
struct Listed {
    run: LifecycleHandle,
    id: u64,
    ended: CancellationToken,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.run.remove_scope(self.id);
        self.ended.cancel();
    }
}

/// An open scope. Dropping it leaves the scope running until it ends by itself or its owner
/// stops; a failure then is the owner's task's.
#[derive(Debug)]
pub struct Scope {
    path: String,
    handle: LifecycleHandle,
    root: CancellationToken,
    report: oneshot::Receiver<Report>,
    ended: Option<Report>,
}

impl Scope {
    /// Where it sits: `owner/name` (nested: `owner/name/inner_owner/inner_name`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The scope's own run: phase, components, health, readiness, shutdown.
    pub fn handle(&self) -> &LifecycleHandle {
        &self.handle
    }

    /// The scope's root token, a child of its owner's: every component in it has a child of it.
    pub fn token(&self) -> &CancellationToken {
        &self.root
    }

    /// Drains and stops the scope, in reverse dependency order within its deadline, and
    /// returns its report.
    pub async fn stop(mut self) -> Report {
        self.handle.shutdown().request("stopped by its owner", 0);
        self.join().await
    }

    /// Ends the scope at once: every token in it cancelled, nothing waited for; its report says
    /// exit code 1 and what was not stopped. [`join`](Scope::join) returns it.
    pub fn abort(&self) {
        self.root.cancel();
        self.handle.shutdown().abort("aborted by its owner");
    }

    /// Waits until the scope has ended (by itself, when its components run to completion or a
    /// critical one failed; or stopped), and returns its report.
    pub async fn join(&mut self) -> Report {
        if let Some(report) = &self.ended {
            return report.clone();
        }
        let report = match (&mut self.report).await {
            Ok(report) => report,
            // The owner's task set aborted the scope's task (the owner was abandoned).
            Err(_) => return self.lost(),
        };
        self.ended = Some(report.clone());
        report
    }

    fn lost(&mut self) -> Report {
        let report = self.handle.progress().report(
            crate::ShutdownReason::Requested { message: "the scope's task was aborted".into(), exit_code: 1 },
            None,
            false,
        );
        self.ended = Some(report.clone());
        report
    }
}

/// Why a scope did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// Its components do not fit together.
    #[error("scope components are refused: {0}")]
    Build(#[source] BuildError),
    /// A critical start in it failed; what had started was stopped again.
    #[error("scope `{path}` did not start: {}", .report.reason)]
    Start {
        /// Where it would have sat.
        path: String,
        /// Its report.
        report: Box<Report>,
    },
    /// Its owner is stopping (or stopped it before it was ready).
    #[error("scope `{path}` was not started: its owner is stopping")]
    OwnerStopping {
        /// Where it would have sat.
        path: String,
    },
}

impl ScopeError {
    /// The scope's report, when it got far enough to have one.
    pub fn report(&self) -> Option<&Report> {
        match self {
            ScopeError::Start { report, .. } => Some(report),
            ScopeError::Build(_) | ScopeError::OwnerStopping { .. } => None,
        }
    }
}

/// A scope open now, as [`LifecycleHandle::scopes`] lists it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ScopeStatus {
    /// Where it sits: `owner/name`.
    pub path: String,
    /// Its phase.
    pub phase: Phase,
    /// Its components.
    pub components: Vec<ComponentStatus>,
    /// Its run's handle (for its health, readiness and own scopes).
    pub handle: LifecycleHandle,
}

/// The stop of a component's scopes, before its own stop hook: each is asked to stop, and all
/// are waited for. Returns the lines for the owner's entry in the report: each scope's
/// components and how they ended, the first few scopes in full and a count of the rest.
pub(crate) async fn stop_scopes(open: Vec<OpenScope>) -> Vec<String> {
    /// Scopes written out in full in the owner's report; the rest are counted.
    const LISTED: usize = 8;
    for scope in &open {
        scope.handle.shutdown().request("its owner is stopping", 0);
    }
    let mut lines = Vec::new();
    let (mut unlisted, mut unlisted_failed) = (0, 0);
    for scope in &open {
        // Its task's end, not its phase: a task aborted mid-stop never reaches `Stopped`.
        scope.ended.cancelled().await;
        let components = scope.handle.components();
        let failed = components.iter().any(|c| c.outcome.as_ref().is_some_and(crate::Outcome::is_failure));
        if lines.len() < LISTED {
            let ended: Vec<String> = components
                .iter()
                .map(|c| match &c.outcome {
                    Some(outcome) => format!("`{}` {outcome}", c.name),
                    None => format!("`{}` not started", c.name),
                })
                .collect();
            lines.push(format!("scope `{}` stopped with it: {}", scope.path, ended.join(", ")));
        } else {
            unlisted += 1;
            unlisted_failed += usize::from(failed);
        }
    }
    if unlisted > 0 {
        lines.push(format!(
            "{unlisted} more scopes stopped with it, {unlisted_failed} of them with a failure"
        ));
    }
    lines
}
