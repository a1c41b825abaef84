//! Asking the service to stop: who asked, why, and with which exit code.

use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::exit::{EXIT_FAILURE, is_valid_code};
use crate::failure::{ErrorChain, Failure};
use crate::signal::Signal;
use crate::{ComponentId, lock};

/// Why the service stopped. The first request wins; later ones are ignored.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ShutdownReason {
    /// The process received a signal.
    Signal(Signal),
    /// [`Shutdown::request`] was called.
    Requested {
        /// What the caller said.
        message: String,
        /// The exit code the caller asked for.
        exit_code: i32,
    },
    /// A critical component failed while running: one of its tasks returned an error or panicked.
    ComponentFailed {
        /// The component.
        component: ComponentId,
        /// The task that failed.
        task: String,
        /// How it failed.
        failure: Failure,
    },
    /// A critical component failed to start, so the start was rolled back.
    StartFailed {
        /// The component.
        component: ComponentId,
        /// How its start failed.
        failure: Failure,
    },
    /// A new process of this service took over its listeners and is ready (a zero-downtime
    /// upgrade): this one drains and stops. Components that hand state over (a service
    /// registration, a notification socket) leave to the successor what it now owns.
    HandedOver {
        /// The successor's process id.
        successor: u32,
    },
    /// Every component that runs to completion is done: the run ends by itself.
    Completed {
        /// Those components, in registration order.
        components: Vec<ComponentId>,
    },
}

impl ShutdownReason {
    /// The failure behind this reason, if it is one.
    pub fn failure(&self) -> Option<(&ComponentId, &Failure)> {
        match self {
            ShutdownReason::ComponentFailed { component, failure, .. }
            | ShutdownReason::StartFailed { component, failure } => Some((component, failure)),
            ShutdownReason::Signal(_)
            | ShutdownReason::Requested { .. }
            | ShutdownReason::HandedOver { .. }
            | ShutdownReason::Completed { .. } => None,
        }
    }
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShutdownReason::Signal(signal) => write!(f, "{signal} received"),
            // The exit code is the report's to say: the one asked for is not always the one used.
            ShutdownReason::Requested { message, .. } => write!(f, "shutdown requested: {message}"),
            ShutdownReason::ComponentFailed { component, task, failure } => {
                write!(f, "component `{component}` failed while running: task `{task}` ")?;
                match failure {
                    Failure::Error(_) => write!(f, "failed: {}", ErrorChain(failure)),
                    other => write!(f, "{other}"),
                }
            }
            ShutdownReason::StartFailed { component, failure } => {
                write!(f, "component `{component}` failed to start: {}", ErrorChain(failure))
            }
            ShutdownReason::HandedOver { successor } => write!(f, "handed over to process {successor}"),
            ShutdownReason::Completed { components } => {
                f.write_str("run completed: ")?;
                crate::text::joined(f, components, ", ", |f, c| write!(f, "`{c}`"))?;
                f.write_str(" done")
            }
        }
    }
}

/// A cheap, cloneable handle that asks the service to stop, and tells whether it was asked.
///
/// ```
/// # async fn example(handle: lifecycle_core::LifecycleHandle) {
/// let shutdown = handle.shutdown().clone();
/// shutdown.request("configuration reloaded", 0);
/// assert!(shutdown.is_requested());
/// # }
/// ```
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    requested: CancellationToken,
    reason: Mutex<Option<(ShutdownReason, Instant)>>,
    forced: CancellationToken,
    forced_by: Mutex<Option<Signal>>,
    /// Set by a hand-over, even one that lost the race to another shutdown request.
    successor: std::sync::atomic::AtomicBool,
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                requested: CancellationToken::new(),
                reason: Mutex::new(None),
                forced: CancellationToken::new(),
                forced_by: Mutex::new(None),
                successor: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Asks the service to stop gracefully and exit with `exit_code` (0 to 255). Returns false
    /// when a shutdown was already requested, in which case the first reason stands.
    ///
    /// A code outside 0 to 255 cannot be an exit status (Unix keeps its low 8 bits: 256 would
    /// read as success): it is logged as an error and replaced by
    /// [`EXIT_FAILURE`](crate::EXIT_FAILURE). The report's exit code follows
    /// [`ExitCause`](crate::ExitCause): a failure or a missed deadline can override a 0.
    pub fn request(&self, message: impl Into<String>, exit_code: i32) -> bool {
        let message = message.into();
        let exit_code = if is_valid_code(exit_code) {
            exit_code
        } else {
            tracing::error!(exit_code, %message, "Shutdown::request: an exit code is 0 to 255; using 1");
            EXIT_FAILURE
        };
        self.trigger(ShutdownReason::Requested { message, exit_code })
    }

    /// Starts the shutdown of a process whose successor (process `successor`) took over and is
    /// ready. Exit code 0; no drain delay, since nothing needs to notice the change: the
    /// successor accepts on the same sockets. Returns false when a shutdown was already requested.
    pub fn hand_over(&self, successor: u32) -> bool {
        self.inner.successor.store(true, std::sync::atomic::Ordering::Release);
        self.trigger(ShutdownReason::HandedOver { successor })
    }

    /// Whether this process is stopping because a successor took over.
    pub fn is_handed_over(&self) -> bool {
        matches!(self.reason(), Some(ShutdownReason::HandedOver { .. }))
    }

    /// Whether a successor took over this process's listening sockets, whatever the reason this
    /// process stops (a shutdown request may have come first): those sockets, and the
    /// connections queued on them, are the successor's now.
    pub fn has_successor(&self) -> bool {
        self.inner.successor.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records `reason` and starts the shutdown, unless one already started.
    pub(crate) fn trigger(&self, reason: ShutdownReason) -> bool {
        {
            let mut slot = lock(&self.inner.reason);
            if slot.is_some() {
                return false;
            }
            *slot = Some((reason, Instant::now()));
        }
        // Cancelled after the reason is stored, so whoever wakes on it finds the reason.
        self.inner.requested.cancel();
        true
    }

    /// Ends the run at once, without waiting for anything (a scope's owner aborting it): a
    /// shutdown with exit code 1, forced without a signal.
    pub(crate) fn abort(&self, message: &str) {
        self.trigger(ShutdownReason::Requested { message: message.to_owned(), exit_code: EXIT_FAILURE });
        self.inner.forced.cancel();
    }

    /// Stops waiting for anything: the run returns at once with what it knows.
    pub(crate) fn force(&self, signal: Signal) {
        lock(&self.inner.forced_by).get_or_insert(signal);
        self.inner.forced.cancel();
    }

    /// Whether a shutdown was requested.
    pub fn is_requested(&self) -> bool {
        self.inner.requested.is_cancelled()
    }

    /// Completes once a shutdown is requested.
    pub fn requested(&self) -> WaitForCancellationFuture<'_> {
        self.inner.requested.cancelled()
    }

    /// Why the service is stopping, once it is.
    pub fn reason(&self) -> Option<ShutdownReason> {
        lock(&self.inner.reason).as_ref().map(|(reason, _)| reason.clone())
    }

    /// When the shutdown was requested: the global deadline counts from here.
    pub(crate) fn requested_at(&self) -> Option<Instant> {
        lock(&self.inner.reason).as_ref().map(|(_, at)| *at)
    }

    pub(crate) fn forced(&self) -> WaitForCancellationFuture<'_> {
        self.inner.forced.cancelled()
    }

    pub(crate) fn forced_by(&self) -> Option<Signal> {
        *lock(&self.inner.forced_by)
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown").field("reason", &self.reason()).field("forced", &self.forced_by()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_that_loses_the_race_to_a_request_still_leaves_the_sockets_to_the_successor() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.has_successor());
        assert!(shutdown.request("SIGTERM", 0));
        assert!(!shutdown.hand_over(42));
        assert!(!shutdown.is_handed_over(), "the first reason stands");
        assert!(shutdown.has_successor());
    }
}
