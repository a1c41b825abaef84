//! Start, run and stop a tokio service as a set of named components, without losing a request.
//!
//! A service registers its resources (pools, caches, servers, workers, registry entries) as
//! [`Component`]s with dependencies. [`Registry::run`] then:
//!
//! 1. starts them in dependency order, independent ones in parallel, each within its start
//!    timeout, and rolls back (stops what started, in reverse) if a critical one fails;
//! 2. turns ready, and waits for a shutdown request: `SIGTERM` or `SIGINT`, a call to
//!    [`Shutdown::request`], or a critical component's task failing (beyond its restart policy);
//! 3. turns unready first, runs every [`drain`](Component::drain) hook, and waits the drain delay
//!    while still serving;
//! 4. stops components in reverse dependency order, independent ones in parallel, each within its
//!    stop timeout and all within one global deadline; a component that hangs is abandoned and
//!    reported while everything that does not depend on it still stops;
//! 5. returns a [`Report`] with the reason, every component's outcome and failures, and the exit
//!    code; aborts the async tasks it gave up on.
//!
//! While it runs, a component with a [`RestartPolicy`] whose task fails is restarted instead: the
//! components that depend on it drain and stop in reverse order, it stops and starts again after
//! its backoff, and they start again in order; nothing else is touched (OTP's "rest for one",
//! over the dependency graph). A failed start is tried again the same way. Once its budget of
//! restarts is spent, a critical component stops the service, and an optional one stays down.
//!
//! A component [may depend on another optionally](Dependency::optional): it starts without it,
//! keeps running through its restarts, and asks [`Dep::is_up`]; the service is then
//! [degraded](ReadinessStatus::Degraded), not unready. A run can also end by itself, with exit
//! code 0, once every component marked [`run_to_completion`](ComponentOptions::run_to_completion)
//! is done (a migration runner, a batch job): still with the drain, the reverse stop and the
//! report.
//!
//! A component can open [scopes](Context::scope) while the service runs: components of their
//! own (a pool per tenant, a session per connection) started in order, stopped in reverse, with
//! their own deadline and report, nested, stopped before their owner; how one ended comes back
//! to its owner as a value.
//!
//! A second signal ends the wait at once, still with a report; a watchdog thread ends the process
//! at the deadline plus a grace even if every runtime thread is stuck.
//!
//! # Time
//!
//! Every stop hook has its own timeout, and all of them one global deadline. A hung component
//! cannot starve what it depends on: each component keeps a reserve for its own stop, the
//! smaller of its stop timeout and a tenth of the shutdown deadline, and a hook is cut short so
//! that the reserves of the longest chain of components still to stop after it fit before the
//! deadline (but never below half of the time left). [`RegistryBuilder::build`] warns when a stop
//! timeout is at or above the deadline.
//!
//! The process ends at the latest at the shutdown deadline plus the
//! [watchdog grace](RegistryBuilder::watchdog_grace) (500 ms by default): keep that sum below
//! the platform's own limit (Kubernetes' `terminationGracePeriodSeconds` after preStop,
//! systemd's `TimeoutStopSec=`). Deadlines and durations use tokio's clock, so tests with
//! paused time ([`testing`], feature `test-util`) see them move; the watchdog alone runs on the
//! real clock, on its own thread.
//!
//! # Exit code
//!
//! One rule, applied by the run and by the watchdog alike ([`ExitCause`]); the first that
//! applies wins:
//!
//! | cause | exit code | the report's second line says |
//! |---|---|---|
//! | a second signal ended the wait | 128 + its number (143 for `SIGTERM`, 130 for `SIGINT`) | `forced by a second SIGTERM` |
//! | the global shutdown deadline passed before everything stopped (the run gave up at the deadline, or the watchdog ended the process) | [`EXIT_DEADLINE`] (124) | `shutdown deadline exceeded` |
//! | [`Shutdown::request`] asked for a non-zero code | that code | `exit code N requested` |
//! | a critical component failed: its start, a task while running, or its drain or stop (error, panic, timeout), and did not recover by its restart policy | [`EXIT_FAILURE`] (1) | ``critical component `name` failed`` |
//! | anything else: a signal, a hand-over, a request with code 0, a run that completed | 0 | `stopped cleanly` |
//!
//! A non-critical component's failures are reported, never the exit code. When the run has
//! returned but an abandoned hook or blocking task still holds the process at the deadline, the
//! watchdog ends it with the run's own exit code and one line naming what held it. Before a run
//! exists, `#[lifecycle_core::main]` exits with 1 when the setup fails, the function returns an
//! error, or [`RegistryBuilder::build`] refuses the components.
//!
//! ```no_run
//! use lifecycle_core::{BoxError, Component, Context, Dep, Dependency, Registry};
//!
//! struct Database;
//! impl Component for Database {
//!     async fn start(&self, _ctx: &Context) -> Result<(), BoxError> {
//!         Ok(()) // connect
//!     }
//! }
//!
//! struct Worker {
//!     db: Dep<Database>,
//! }
//! impl Component for Worker {
//!     fn dependencies(&self) -> Vec<Dependency> {
//!         vec![self.db.dependency()]
//!     }
//!     async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
//!         let token = ctx.token().clone();
//!         ctx.tasks().spawn("poll", async move { token.cancelled().await });
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() {
//!     let mut builder = Registry::builder();
//!     let db = builder.add(Database).dep();
//!     builder.add(Worker { db });
//!     let registry = builder.build().unwrap_or_else(|error| panic!("{error}"));
//!     registry.run().await.exit();
//! }
//! ```

mod adapter;
mod close;
mod component;
mod context;
mod dependency;
mod error;
mod exit;
mod failure;
mod graph;
mod handle;
mod panic;
mod phase;
mod progress;
mod readiness;
mod redact;
mod registry;
mod reload;
mod report;
mod resource_error;
mod restart;
mod retry;
mod run;
mod scope;
mod shutdown;
mod signal;
mod tasks;
mod text;
mod watchdog;

#[cfg(feature = "macros")]
#[doc(hidden)]
pub mod macro_support;

#[cfg(feature = "test-util")]
pub mod testing;

pub use adapter::{FnComponent, Managed};
pub use close::{Close, CloseError};
pub use component::{BoxError, Component, ComponentId, ComponentOptions, Health};
pub use context::Context;
pub use dependency::{Dep, Dependency};
pub use error::{BuildError, DependencyError};
pub use exit::{EXIT_DEADLINE, EXIT_FAILURE, ExitCause};
pub use failure::{ErrorChain, Failure, FailureRecord, Failures, SharedError, Stage};
pub use handle::LifecycleHandle;
pub use panic::{CatchUnwind, panic_message};
pub use phase::Phase;
pub use progress::ComponentStatus;
pub use readiness::{Problem, Readiness, ReadinessStatus};
pub use redact::{redact_url, scrub_password};
pub use registry::{Registration, Registry, RegistryBuilder};
pub use reload::{ReloadCause, ReloadCounts, ReloadError, ReloadOutcome, ReloadReport};
pub use report::{ComponentReport, Outcome, Report, RunError};
pub use resource_error::ResourceError;
pub use restart::{Restart, RestartPolicy};
pub use retry::{Retry, RetryFailure};
pub use scope::{Scope, ScopeBuilder, ScopeError, ScopeStatus};
pub use shutdown::{Shutdown, ShutdownReason};
pub use signal::{Signal, SignalListener, Signals};
pub use tasks::{TaskCount, TaskOutput, Tasks};

pub use tokio_util::sync::CancellationToken;

#[cfg(feature = "macros")]
pub use lifecycle_macros::{Component, main};

/// The README's example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The adapter guide's examples, run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/ADAPTERS.md")]
struct AdapterGuideDoctests;

/// Locks a mutex, ignoring poisoning: every value behind these locks stays valid if a holder
/// panicked, because none is left half-updated across a call that could panic.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
