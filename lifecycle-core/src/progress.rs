//! What each component is doing right now: read by the lifecycle handle, the report and the
//! watchdog, which may need to print it from another thread while the runtime is stuck.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::component::Up;
use crate::exit::ExitCause;
use crate::failure::{Failure, FailureLog, FailureRecord, Stage};
use crate::report::{ComponentReport, Outcome, Report};
use crate::signal::Signal;
use crate::{ComponentId, ShutdownReason, Tasks, lock};

/// A snapshot of one component, as [`LifecycleHandle::components`](crate::LifecycleHandle::components)
/// returns it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ComponentStatus {
    /// Its name.
    pub name: ComponentId,
    /// Whether it is critical.
    pub critical: bool,
    /// What it is doing; `None` before its start and after its end.
    pub stage: Option<Stage>,
    /// How it ended, once it has.
    pub outcome: Option<Outcome>,
    /// How long its start took, once it finished.
    pub start_duration: Option<Duration>,
    /// How long its stop took, once it finished.
    pub stop_duration: Option<Duration>,
    /// How many times it failed so far (hooks and tasks); the report lists them.
    pub failures: u64,
    /// How many times its restart policy started it again.
    pub restarts: u32,
    /// How many times its supervised tasks were started again.
    pub task_restarts: u64,
    /// When its next start is due, while it waits to restart after a failure.
    pub next_restart: Option<Instant>,
    /// Its most recent failure.
    pub last_failure: Option<FailureRecord>,
}

/// How many notes a component keeps, the most recent.
const NOTES_KEPT: usize = 32;

pub(crate) struct Progress {
    names: Vec<ComponentId>,
    critical: Vec<bool>,
    tasks: Vec<Tasks>,
    failures: Vec<FailureLog>,
    /// Whether each is running, as its typed handles see it.
    up: Vec<Up>,
    state: Mutex<State>,
}

struct State {
    run_started: Instant,
    shutdown_started: Option<Instant>,
    entries: Vec<Entry>,
}

#[derive(Default)]
struct Entry {
    stage: Option<Stage>,
    since: Option<Instant>,
    start_began: Option<Instant>,
    start_duration: Option<Duration>,
    stop_began: Option<Instant>,
    stop_duration: Option<Duration>,
    outcome: Option<Outcome>,
    notes: Vec<String>,
    restarts: u32,
    next_restart: Option<Instant>,
}

impl Progress {
    pub(crate) fn new(
        names: Vec<ComponentId>,
        critical: Vec<bool>,
        tasks: Vec<Tasks>,
        failures: Vec<FailureLog>,
        up: Vec<Up>,
    ) -> Self {
        let entries = names.iter().map(|_| Entry::default()).collect();
        Self {
            names,
            critical,
            tasks,
            failures,
            up,
            state: Mutex::new(State { run_started: Instant::now(), shutdown_started: None, entries }),
        }
    }

    pub(crate) fn run_started(&self) {
        lock(&self.state).run_started = Instant::now();
    }

    pub(crate) fn shutdown_started(&self, at: Instant) {
        lock(&self.state).shutdown_started.get_or_insert(at);
    }

    /// Records that component `index` entered `stage`.
    pub(crate) fn enter(&self, index: usize, stage: Stage) {
        // A component serves while it reloads.
        self.up[index].set(matches!(stage, Stage::Running | Stage::Reloading));
        let now = Instant::now();
        let mut state = lock(&self.state);
        let entry = &mut state.entries[index];
        entry.stage = Some(stage);
        entry.since = Some(now);
        match stage {
            Stage::Starting => {
                // A start (the first, or a restart) begins a new life: nothing of the last one's end.
                entry.start_began = Some(now);
                entry.start_duration = None;
                entry.stop_began = None;
                entry.stop_duration = None;
                entry.outcome = None;
                entry.next_restart = None;
            }
            Stage::Stopping | Stage::WaitingForTasks => {
                entry.stop_began.get_or_insert(now);
            }
            Stage::Running => {
                // Back to running after a drain hook keeps the start's duration.
                if entry.start_duration.is_none() {
                    entry.start_duration = entry.start_began.map(|began| now - began);
                }
            }
            Stage::Draining | Stage::Restarting | Stage::Reloading => {}
        }
    }

    /// Records that component `index` failed to start for good while the run goes on without
    /// it: it is down with its failure (the stop at the end still cleans up after it).
    pub(crate) fn down(&self, index: usize) {
        self.up[index].set(false);
        let outcome = self.failures[index]
            .current()
            .map(|first| Outcome::Failed { stage: first.stage, failure: first.failure });
        let mut state = lock(&self.state);
        let entry = &mut state.entries[index];
        entry.stage = None;
        entry.next_restart = None;
        entry.outcome = outcome;
    }

    /// Records that component `index` stopped to start again: at `next` if its own restart was
    /// granted (counted), or once what it depends on is back (`None`).
    pub(crate) fn restarting(&self, index: usize, next: Option<Instant>) {
        self.up[index].set(false);
        let now = Instant::now();
        let mut state = lock(&self.state);
        let entry = &mut state.entries[index];
        entry.stage = Some(Stage::Restarting);
        entry.since = Some(now);
        if next.is_some() {
            entry.restarts = entry.restarts.saturating_add(1);
        }
        entry.next_restart = next;
    }

    /// Records a failure of a hook; the component goes on (its stop still runs).
    pub(crate) fn fail(&self, index: usize, stage: Stage, failure: Failure) {
        self.failures[index].record(FailureRecord { stage, task: None, failure });
    }

    /// The first failure of component `index` since it last started, if it had one.
    pub(crate) fn current_failure(&self, index: usize) -> Option<FailureRecord> {
        self.failures[index].current()
    }

    /// Component `index` is about to start again: its earlier failures no longer decide its
    /// outcome.
    pub(crate) fn renewed(&self, index: usize) {
        self.failures[index].restarted();
    }

    /// Records how component `index` ended. A component that failed since it last started, and
    /// then stopped (or failed again), ends with that first failure.
    pub(crate) fn finish(&self, index: usize, outcome: Outcome) {
        if let Outcome::Failed { stage, failure } = &outcome {
            self.fail(index, *stage, failure.clone());
        }
        let outcome = match (outcome, self.failures[index].current()) {
            (Outcome::Stopped | Outcome::Failed { .. }, Some(first)) => {
                Outcome::Failed { stage: first.stage, failure: first.failure }
            }
            (outcome, _) => outcome,
        };
        self.up[index].set(false);
        let now = Instant::now();
        let mut state = lock(&self.state);
        let entry = &mut state.entries[index];
        entry.stop_duration = entry.stop_began.map(|began| now - began);
        entry.outcome = Some(outcome);
        entry.stage = None;
    }

    /// Adds a line to component `index`'s notes; the oldest go once there are
    /// [`NOTES_KEPT`] (a component that restarts adds its stop's notes each time).
    pub(crate) fn note(&self, index: usize, note: String) {
        let mut state = lock(&self.state);
        let notes = &mut state.entries[index].notes;
        if notes.len() >= NOTES_KEPT {
            notes.remove(0);
        }
        notes.push(note);
    }

    /// The stage component `index` is in and since when.
    pub(crate) fn stage(&self, index: usize) -> Option<(Stage, Instant)> {
        let state = lock(&self.state);
        let entry = &state.entries[index];
        entry.stage.zip(entry.since)
    }

    pub(crate) fn statuses(&self) -> Vec<ComponentStatus> {
        let state = lock(&self.state);
        state
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| ComponentStatus {
                name: self.names[i].clone(),
                critical: self.critical[i],
                stage: e.stage,
                outcome: e.outcome.clone(),
                start_duration: e.start_duration,
                stop_duration: e.stop_duration,
                failures: self.failures[i].count(),
                restarts: e.restarts,
                task_restarts: self.tasks[i].task_restarts(),
                next_restart: e.next_restart,
                last_failure: self.failures[i].last(),
            })
            .collect()
    }

    /// The report as things stand: a component that has not finished is reported abandoned in
    /// the stage it is in.
    pub(crate) fn report(
        &self,
        reason: ShutdownReason,
        forced_by: Option<Signal>,
        deadline_exceeded: bool,
    ) -> Report {
        let now = Instant::now();
        let state = lock(&self.state);
        let components: Vec<ComponentReport> = state
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let outcome = match (&e.outcome, e.stage, e.since) {
                    (Some(outcome), _, _) => outcome.clone(),
                    (None, Some(Stage::Running), _) => Outcome::NotStopped,
                    (None, Some(stage), Some(since)) => Outcome::Abandoned { stage, after: now - since },
                    (None, _, _) => Outcome::NotStarted,
                };
                ComponentReport {
                    name: self.names[i].clone(),
                    critical: self.critical[i],
                    outcome,
                    start_duration: e.start_duration,
                    stop_duration: e.stop_duration.or_else(|| e.stop_began.map(|began| now - began)),
                    outstanding_tasks: self.tasks[i].outstanding(),
                    failures: self.failures[i].snapshot(),
                    restarts: e.restarts,
                    task_restarts: self.tasks[i].task_restarts(),
                    notes: e.notes.clone(),
                }
            })
            .collect();
        let requested = match &reason {
            ShutdownReason::Requested { exit_code, .. } => Some(*exit_code),
            _ => None,
        };
        // The failure that stopped the service comes first; then any other critical one.
        let failed_critical = reason
            .failure()
            .map(|(component, _)| component)
            .or_else(|| components.iter().find(|c| c.critical && c.outcome.is_failure()).map(|c| &c.name));
        let exit_cause = ExitCause::decide(forced_by, deadline_exceeded, requested, failed_critical);
        Report {
            reason,
            exit_code: exit_cause.code(),
            exit_cause,
            forced_by,
            deadline_exceeded,
            components,
            total: now - state.run_started,
            shutdown: state.shutdown_started.map_or(Duration::ZERO, |began| now - began),
        }
    }
}
