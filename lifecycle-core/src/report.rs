//! The value a run returns: why it stopped, what happened to each component, and the exit code.

use std::error::Error;
use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::exit::ExitCause;
use crate::failure::{Elapsed, Failure, Failures, Stage};
use crate::signal::Signal;
use crate::tasks::TaskCount;
use crate::text::joined;
use crate::{ComponentId, ShutdownReason};

/// How a component's life ended.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Started and stopped cleanly.
    Stopped,
    /// Never started: the run stopped before its turn.
    NotStarted,
    /// Its start was cancelled by a shutdown requested during start.
    StartCancelled,
    /// A hook or, for a critical component, a task failed at this stage. After a failure the
    /// component is still stopped as far as it can be.
    Failed {
        /// Where it failed.
        stage: Stage,
        /// How.
        failure: Failure,
    },
    /// Started, but the run ended (second signal or global deadline) before its turn to stop;
    /// its token was cancelled.
    NotStopped,
    /// Still in this stage when the run stopped waiting (second signal or global deadline).
    Abandoned {
        /// Where it was.
        stage: Stage,
        /// How long it had been there.
        after: Duration,
    },
}

impl Outcome {
    /// Whether this outcome, for a critical component, makes the exit code non-zero.
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed { .. } | Outcome::NotStopped | Outcome::Abandoned { .. })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Stopped => f.write_str("stopped"),
            Outcome::NotStarted => f.write_str("not started"),
            Outcome::StartCancelled => f.write_str("start cancelled"),
            Outcome::NotStopped => f.write_str("not stopped: the run ended before its turn"),
            Outcome::Failed { stage, failure: failure @ Failure::Error(_) } => {
                write!(f, "failed: {failure} ({stage})")
            }
            Outcome::Failed { stage, failure } => write!(f, "{failure} ({stage})"),
            Outcome::Abandoned { stage, after } => {
                write!(f, "abandoned while {stage} after {}", Elapsed(*after))
            }
        }
    }
}

/// What happened to one component.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ComponentReport {
    /// Its name.
    pub name: ComponentId,
    /// Whether it was critical.
    pub critical: bool,
    /// How its life ended.
    pub outcome: Outcome,
    /// How long its start hook took, if it finished.
    pub start_duration: Option<Duration>,
    /// How long its stop took (hook and tasks), if it began stopping.
    pub stop_duration: Option<Duration>,
    /// Its tasks still running when the report was made.
    pub outstanding_tasks: Vec<TaskCount>,
    /// Every failure it had, of hooks and tasks: the first, a count, the last few. Its outcome
    /// is the first failure since it last started.
    pub failures: Failures,
    /// How many times its restart policy started it again.
    pub restarts: u32,
    /// How many times its supervised tasks were started again.
    pub task_restarts: u64,
    /// What the component said about its run ([`Context::note`](crate::Context::note)).
    pub notes: Vec<String>,
}

/// The result of a run: returned by [`Registry::run`](crate::Registry::run), printed by its
/// `Display` as a table, and emitted as `tracing` events.
#[derive(Clone, Debug)]
#[non_exhaustive]
#[must_use = "a report says how the run ended: exit with it, print it, or check it"]
pub struct Report {
    /// Why the service stopped.
    pub reason: ShutdownReason,
    /// The exit code the process should end with: [`exit_cause`](Report::exit_cause)'s.
    pub exit_code: i32,
    /// Why the exit code is what it is.
    pub exit_cause: ExitCause,
    /// The second signal that made the run stop waiting, if one came.
    pub forced_by: Option<Signal>,
    /// Whether the global shutdown deadline passed before everything stopped.
    pub deadline_exceeded: bool,
    /// Every component, in registration order.
    pub components: Vec<ComponentReport>,
    /// From the start of the run to the report.
    pub total: Duration,
    /// From the shutdown request to the report.
    pub shutdown: Duration,
}

impl Report {
    /// The report of one component.
    pub fn component(&self, name: &str) -> Option<&ComponentReport> {
        self.components.iter().find(|c| c.name.as_str() == name)
    }

    /// Whether the run ended with exit code 0.
    pub fn is_success(&self) -> bool {
        self.exit_code == 0
    }

    /// `Ok(self)` for exit code 0, otherwise an error that says why and carries the report.
    pub fn into_result(self) -> Result<Report, RunError> {
        if self.is_success() { Ok(self) } else { Err(RunError { report: Box::new(self) }) }
    }

    /// Writes the report to standard error and ends the process with its exit code.
    ///
    /// Exiting here, rather than returning from `main`, does not wait for tasks that were
    /// abandoned: a hung thread cannot keep the process alive.
    pub fn exit(self) -> ! {
        self.print();
        std::process::exit(self.exit_code)
    }

    /// Writes the report to standard error in one write, so that lines other processes write to
    /// the same standard error (an upgrade's successor) cannot land in the middle of it.
    pub fn print(&self) {
        use std::io::Write;
        let text = format!("{self}\n");
        // Nothing better to do when standard error is gone.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    /// Emits one `tracing` event for the run and one per component, with the component's name
    /// as the `component` field.
    pub fn emit(&self) {
        for c in &self.components {
            let start_ms = c.start_duration.map(|d| d.as_secs_f64() * 1e3);
            let stop_ms = c.stop_duration.map(|d| d.as_secs_f64() * 1e3);
            // Formatted only when a subscriber takes the event.
            let outstanding = TaskList(&c.outstanding_tasks);
            let notes = Notes(&c.notes);
            if c.outcome.is_failure() || !c.failures.is_empty() {
                tracing::error!(component = %c.name, outcome = %c.outcome, start_ms, stop_ms, %outstanding, failures = c.failures.count, restarts = c.restarts, task_restarts = c.task_restarts, %notes, "component report");
            } else {
                tracing::info!(component = %c.name, outcome = %c.outcome, start_ms, stop_ms, restarts = c.restarts, task_restarts = c.task_restarts, %notes, "component report");
            }
        }
        let total_ms = self.total.as_secs_f64() * 1e3;
        let shutdown_ms = self.shutdown.as_secs_f64() * 1e3;
        if self.is_success() {
            tracing::info!(reason = %self.reason, exit_code = self.exit_code, exit_cause = %self.exit_cause, total_ms, shutdown_ms, "lifecycle run finished");
        } else {
            tracing::error!(reason = %self.reason, exit_code = self.exit_code, exit_cause = %self.exit_cause, total_ms, shutdown_ms, "lifecycle run failed");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "lifecycle report: {}", self.reason)?;
        write!(
            f,
            "exit code {} ({}), run {}, shutdown {}",
            self.exit_code,
            self.exit_cause,
            Elapsed(self.total),
            Elapsed(self.shutdown)
        )?;
        // Said even when the exit cause is another one, so neither fact is hidden.
        if let Some(signal) = self.forced_by.filter(|_| !matches!(self.exit_cause, ExitCause::Forced(_))) {
            write!(f, ", forced by a second {signal}")?;
        }
        if self.deadline_exceeded && self.exit_cause != ExitCause::DeadlineExceeded {
            f.write_str(", shutdown deadline exceeded")?;
        }
        f.write_char('\n')?;

        let rows: Vec<[String; 5]> = self
            .components
            .iter()
            .map(|c| {
                [
                    if c.critical { c.name.to_string() } else { format!("{} (non-critical)", c.name) },
                    Restarts(c).to_string(),
                    c.start_duration.map_or_else(|| "-".into(), |d| Elapsed(d).to_string()),
                    c.stop_duration.map_or_else(|| "-".into(), |d| Elapsed(d).to_string()),
                    TaskList(&c.outstanding_tasks).to_string(),
                ]
            })
            .collect();
        let header = ["component", "outcome", "start", "stop", "tasks still running"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header.map(String::from)).chain(&rows) {
            let line: Vec<String> =
                row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            writeln!(f, "  {}", line.join("  ").trim_end())?;
        }
        for c in &self.components {
            for note in &c.notes {
                writeln!(f, "  `{}`: {note}", c.name)?;
            }
            for failure in c.failures.iter() {
                writeln!(f, "  `{}`: {failure}", c.name)?;
            }
            if c.failures.dropped() > 0 {
                writeln!(f, "  `{}`: {} more failures not kept", c.name, c.failures.dropped())?;
            }
        }
        Ok(())
    }
}

/// A component's outcome with its restarts: `stopped, restarted twice, 3 task restarts`.
struct Restarts<'a>(&'a ComponentReport);

impl fmt::Display for Restarts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(f, "{}", c.outcome)?;
        match c.restarts {
            0 => {}
            1 => f.write_str(", restarted once")?,
            n => write!(f, ", restarted {n} times")?,
        }
        match c.task_restarts {
            0 => Ok(()),
            1 => f.write_str(", 1 task restart"),
            n => write!(f, ", {n} task restarts"),
        }
    }
}

/// A failed run, carrying its report. Its `Display` is the reason; its source is the failure.
#[derive(Debug)]
pub struct RunError {
    report: Box<Report>,
}

impl RunError {
    /// The full report.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The report, by value.
    pub fn into_report(self) -> Report {
        *self.report
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.report.reason {
            ShutdownReason::StartFailed { component, .. } => {
                write!(f, "component `{component}` failed to start")
            }
            ShutdownReason::ComponentFailed { component, task, .. } => {
                write!(f, "component `{component}` failed while running (task `{task}`)")
            }
            reason => write!(f, "the service stopped with exit code {} ({reason})", self.report.exit_code),
        }
    }
}

impl Error for RunError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.report.reason.failure().map(|(_, failure)| failure as &(dyn Error + 'static))
    }
}

struct Notes<'a>(&'a [String]);

impl fmt::Display for Notes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        joined(f, self.0, "; ", |f, note| f.write_str(note))
    }
}

struct TaskList<'a>(&'a [TaskCount]);

impl fmt::Display for TaskList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        joined(f, self.0, ", ", |f, task| {
            if task.count == 1 {
                write!(f, "{}", task.name)
            } else {
                write!(f, "{} x{}", task.name, task.count)
            }
        })
    }
}
