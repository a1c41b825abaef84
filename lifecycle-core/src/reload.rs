//! Reloading a running service: every running component's `reload` hook, in dependency order,
//! on a reload signal (`SIGHUP` by default) or [`LifecycleHandle::reload`](crate::LifecycleHandle::reload).
//!
//! A reload changes nothing about the run: a component whose reload fails keeps running as it
//! was (its failure is logged, counted, noted in the final report and returned to the caller),
//! and a shutdown request cancels a reload in progress. Requests that arrive while one waits to
//! run join it, so a burst of signals reloads once.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::signal::Signal;
use crate::{ComponentId, Failure};

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadCause {
    /// A reload signal.
    Signal(Signal),
    /// [`LifecycleHandle::reload`](crate::LifecycleHandle::reload).
    Requested,
}

impl fmt::Display for ReloadCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadCause::Signal(signal) => write!(f, "{signal}"),
            ReloadCause::Requested => f.write_str("request"),
        }
    }
}

/// How one component's reload ended.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// Its reload hook returned `Ok`.
    Reloaded,
    /// Its reload hook failed, panicked or ran past the component's start timeout; the
    /// component runs on as it was.
    Failed(Failure),
    /// A shutdown request cancelled the reload before this component's hook finished.
    Cancelled,
}

/// The outcome of one reload, for every component that was running.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReloadReport {
    /// What asked for it (the first request, when several joined).
    pub cause: ReloadCause,
    /// Each running component, in the order their reloads ended.
    pub components: Vec<(ComponentId, ReloadOutcome)>,
    /// How long the reload took.
    pub took: Duration,
}

impl ReloadReport {
    /// Whether every component reloaded.
    pub fn is_success(&self) -> bool {
        self.components.iter().all(|(_, outcome)| matches!(outcome, ReloadOutcome::Reloaded))
    }

    /// Whether some component's reload failed (not merely cut short by a shutdown).
    pub fn has_failure(&self) -> bool {
        self.components.iter().any(|(_, outcome)| matches!(outcome, ReloadOutcome::Failed(_)))
    }

    /// The components whose reload did not succeed, with how it ended.
    pub fn failures(&self) -> impl Iterator<Item = (&ComponentId, &ReloadOutcome)> {
        self.components
            .iter()
            .filter(|(_, outcome)| !matches!(outcome, ReloadOutcome::Reloaded))
            .map(|(name, outcome)| (name, outcome))
    }
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.failures().count();
        write!(
            f,
            "reload on {} {} in {:.0?}: {} of {} components reloaded",
            self.cause,
            if failed == 0 { "done" } else { "failed" },
            self.took,
            self.components.len() - failed,
            self.components.len()
        )?;
        for (name, outcome) in self.failures() {
            match outcome {
                ReloadOutcome::Failed(failure) => write!(f, "; {name}: {failure}")?,
                _ => write!(f, "; {name}: cancelled by the shutdown")?,
            }
        }
        Ok(())
    }
}

/// Why a reload did not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The service is shutting down (or the shutdown cancelled the reload before it began).
    #[error("the service is shutting down; nothing was reloaded")]
    ShuttingDown,
    /// The run ended (or never ran) before it could reload.
    #[error("the run has ended; nothing was reloaded")]
    Ended,
}

/// One request: its cause, and where the report goes (nowhere for a signal).
pub(crate) struct ReloadRequest {
    pub(crate) cause: ReloadCause,
    pub(crate) reply: Option<oneshot::Sender<Result<ReloadReport, ReloadError>>>,
}

impl ReloadRequest {
    pub(crate) fn answer(self, answer: Result<ReloadReport, ReloadError>) {
        if let Some(reply) = self.reply {
            // The caller may have stopped waiting; that is its choice.
            let _ = reply.send(answer);
        }
    }
}

/// How many reloads ran, and how many of them failed (for a metric).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadCounts {
    /// Reloads that ran.
    pub total: u64,
    /// Reloads in which some component's reload failed (one a shutdown cut short is not).
    pub failed: u64,
}

/// The requesting side, kept by the run's handle.
#[derive(Clone)]
pub(crate) struct Reloads {
    requests: mpsc::UnboundedSender<ReloadRequest>,
    counts: Arc<[AtomicU64; 2]>,
}

impl Reloads {
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<ReloadRequest>) {
        let (requests, receiver) = mpsc::unbounded_channel();
        (Self { requests, counts: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]) }, receiver)
    }

    /// Queues a request; `false` when the run is gone.
    pub(crate) fn request(&self, request: ReloadRequest) -> bool {
        self.requests.send(request).is_ok()
    }

    pub(crate) fn count(&self, report: &ReloadReport) {
        self.counts[0].fetch_add(1, Ordering::AcqRel);
        if report.has_failure() {
            self.counts[1].fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn counts(&self) -> ReloadCounts {
        ReloadCounts {
            total: self.counts[0].load(Ordering::Acquire),
            failed: self.counts[1].load(Ordering::Acquire),
        }
    }
}
