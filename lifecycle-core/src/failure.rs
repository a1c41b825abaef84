//! How hooks and tasks fail, where in a component's life, and the bounded record of every failure
//! a component had.

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lock;

/// An error shared between the report, logs and the shutdown reason.
pub type SharedError = Arc<dyn Error + Send + Sync + 'static>;

/// Where in its life a component was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// In its start hook.
    Starting,
    /// Started; its tasks run.
    Running,
    /// In its drain hook.
    Draining,
    /// In its stop hook.
    Stopping,
    /// Stop hook done; waiting for its tasks to end.
    WaitingForTasks,
    /// Stopped after a failure (its own or a dependency's), waiting to start again.
    Restarting,
    /// Running, and in its reload hook.
    Reloading,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Starting => "starting",
            Stage::Running => "running",
            Stage::Draining => "draining",
            Stage::Stopping => "stopping",
            Stage::WaitingForTasks => "waiting for tasks",
            Stage::Restarting => "restarting",
            Stage::Reloading => "reloading",
        })
    }
}

/// How a hook or task failed.
///
/// Its `Display` says what happened at this level only (`connection refused`, `panicked: ...`,
/// `timed out after 2.00s`); the error's causes are in [`source`](Error::source), and the report
/// writes the whole chain.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Failure {
    /// It returned an error.
    Error(SharedError),
    /// It panicked, with this message.
    Panic(String),
    /// It did not finish within its timeout.
    TimedOut(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(error) => write!(f, "{error}"),
            Failure::Panic(message) => write!(f, "panicked: {message}"),
            Failure::TimedOut(after) => write!(f, "timed out after {}", Elapsed(*after)),
        }
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Failure::Error(error) => error.source(),
            Failure::Panic(_) | Failure::TimedOut(_) => None,
        }
    }
}

/// One failure of a component: where it happened, in which task (for a task), and how.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FailureRecord {
    /// The stage the component was in.
    pub stage: Stage,
    /// The task that failed, or `None` for a hook.
    pub task: Option<String>,
    /// How it failed.
    pub failure: Failure,
}

impl fmt::Display for FailureRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.task {
            Some(task) => write!(f, "task `{task}` ")?,
            None => write!(f, "{} hook ", HookName(self.stage))?,
        }
        match &self.failure {
            Failure::Error(_) => write!(f, "failed: {}", ErrorChain(&self.failure))?,
            other => write!(f, "{other}")?,
        }
        write!(f, " ({})", self.stage)
    }
}

/// The hook that runs in a stage.
pub(crate) struct HookName(pub(crate) Stage);

impl fmt::Display for HookName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Stage::Starting => "start",
            Stage::Draining => "drain",
            Stage::Stopping | Stage::WaitingForTasks => "stop",
            Stage::Running => "health",
            Stage::Restarting => "restart",
            Stage::Reloading => "reload",
        })
    }
}

/// Every failure of one component, in bounded memory: the first (which is the component's
/// outcome), how many there were, and the last few.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Failures {
    /// How many failures there were in all.
    pub count: u64,
    /// The first one.
    pub first: Option<FailureRecord>,
    /// The most recent ones after the first, oldest first, at most [`Failures::KEPT`].
    pub recent: Vec<FailureRecord>,
}

impl Failures {
    /// How many failures after the first are kept.
    pub const KEPT: usize = 8;

    /// Whether the component never failed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The kept failures, first one first.
    pub fn iter(&self) -> impl Iterator<Item = &FailureRecord> {
        self.first.iter().chain(&self.recent)
    }

    /// How many failures were counted but not kept.
    pub fn dropped(&self) -> u64 {
        self.count.saturating_sub(self.first.iter().len() as u64 + self.recent.len() as u64)
    }
}

/// The failure record of one component, shared by its tasks and the run. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct FailureLog {
    inner: Arc<Mutex<Log>>,
}

#[derive(Default)]
struct Log {
    count: u64,
    first: Option<FailureRecord>,
    recent: VecDeque<FailureRecord>,
    /// The first failure since the component last started: the outcome of this start.
    current: Option<FailureRecord>,
}

impl Log {
    /// Counts `record` and keeps it, as the first or among the last few; returns whether it
    /// was the first.
    fn keep(&mut self, record: FailureRecord) -> bool {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(record);
            return true;
        }
        if self.recent.len() == Failures::KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(record);
        false
    }
}

impl FailureLog {
    /// Records a failure; returns whether it was the component's first.
    pub(crate) fn record(&self, record: FailureRecord) -> bool {
        let mut log = lock(&self.inner);
        if log.current.is_none() {
            log.current = Some(record.clone());
        }
        log.keep(record)
    }

    /// Records a failure that was recovered from where it happened (a supervised task made
    /// again): counted and kept, but not the component's outcome.
    pub(crate) fn record_recovered(&self, record: FailureRecord) {
        lock(&self.inner).keep(record);
    }

    pub(crate) fn count(&self) -> u64 {
        lock(&self.inner).count
    }

    /// The first failure since [`restarted`](FailureLog::restarted) was last called.
    pub(crate) fn current(&self) -> Option<FailureRecord> {
        lock(&self.inner).current.clone()
    }

    /// The most recent failure.
    pub(crate) fn last(&self) -> Option<FailureRecord> {
        let log = lock(&self.inner);
        log.recent.back().or(log.first.as_ref()).cloned()
    }

    /// A new start of the component begins: its earlier failures stay in the record, but no
    /// longer decide its outcome.
    pub(crate) fn restarted(&self) {
        lock(&self.inner).current = None;
    }

    pub(crate) fn snapshot(&self) -> Failures {
        let log = lock(&self.inner);
        Failures { count: log.count, first: log.first.clone(), recent: log.recent.iter().cloned().collect() }
    }
}

/// Displays an error followed by its causes (its `source()` chain), for a log line or a
/// message: `cannot connect: connection refused (os error 111)`. Errors keep their causes out
/// of their own `Display`; this puts them back in one line.
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a dyn Error);

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A duration written for people: `850µs`, `12.3ms`, `4.02s`.
pub(crate) struct Elapsed(pub(crate) Duration);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_micros();
        if micros < 1_000 {
            write!(f, "{micros}µs")
        } else if micros < 1_000_000 {
            write!(f, "{:.1}ms", self.0.as_secs_f64() * 1e3)
        } else {
            write!(f, "{:.2}s", self.0.as_secs_f64())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> FailureRecord {
        FailureRecord {
            stage: Stage::Running,
            task: Some(format!("t{n}")),
            failure: Failure::Panic(n.to_string()),
        }
    }

    #[test]
    fn the_log_keeps_the_first_a_count_and_the_last_few() {
        let log = FailureLog::default();
        assert!(log.record(record(0)));
        for n in 1..100 {
            assert!(!log.record(record(n)));
        }
        let failures = log.snapshot();
        assert_eq!(failures.count, 100);
        assert_eq!(failures.first.as_ref().and_then(|r| r.task.as_deref()), Some("t0"));
        let recent: Vec<_> = failures.recent.iter().filter_map(|r| r.task.clone()).collect();
        assert_eq!(recent, (92..100).map(|n| format!("t{n}")).collect::<Vec<_>>());
        assert_eq!(failures.dropped(), 91);
    }

    #[test]
    fn an_error_is_written_once_with_its_causes() {
        let io = std::io::Error::other("connection refused");
        let outer: Box<dyn Error + Send + Sync> = Box::new(Wrapped(io));
        let record =
            FailureRecord { stage: Stage::Starting, task: None, failure: Failure::Error(Arc::from(outer)) };
        assert_eq!(record.to_string(), "start hook failed: cannot connect: connection refused (starting)");
        assert_eq!(record.failure.to_string(), "cannot connect");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot connect")
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }
}
