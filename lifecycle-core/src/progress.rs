//! What each component is doing right now: read by the lifecycle handle, the report and the
//! watchdog, which may need to print it from another thread while the runtime is stuck.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::report::{ComponentReport, Failure, Outcome, Report, Stage};
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
    /// How many of its tasks failed so far.
    pub task_failures: usize,
}

pub(crate) struct Progress {
    names: Vec<ComponentId>,
    critical: Vec<bool>,
    tasks: Vec<Tasks>,
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
    first_failure: Option<Outcome>,
    outcome: Option<Outcome>,
    notes: Vec<String>,
}

impl Progress {
    pub(crate) fn new(names: Vec<ComponentId>, critical: Vec<bool>, tasks: Vec<Tasks>) -> Self {
        let entries = names.iter().map(|_| Entry::default()).collect();
        Self {
            names,
            critical,
            tasks,
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
        let now = Instant::now();
        let mut state = lock(&self.state);
        let entry = &mut state.entries[index];
        entry.stage = Some(stage);
        entry.since = Some(now);
        match stage {
            Stage::Starting => entry.start_began = Some(now),
            Stage::Stopping | Stage::WaitingForTasks => {
                entry.stop_began.get_or_insert(now);
            }
            Stage::Running => {
                // Back to running after a drain hook keeps the start's duration.
                if entry.start_duration.is_none() {
                    entry.start_duration = entry.start_began.map(|began| now - began);
                }
            }
            Stage::Draining => {}
        }
    }

    /// Records a failure that does not end the component's life (its stop still runs).
    pub(crate) fn fail(&self, index: usize, stage: Stage, failure: Failure) {
        lock(&self.state).entries[index].first_failure.get_or_insert(Outcome::Failed { stage, failure });
    }

    /// Records how component `index` ended; an earlier failure takes precedence over `Stopped`.
    pub(crate) fn finish(&self, index: usize, outcome: Outcome) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let entry = &mut state.entries[index];
        entry.stop_duration = entry.stop_began.map(|began| now - began);
        let outcome = match (outcome, entry.first_failure.take()) {
            (Outcome::Stopped, Some(failure)) => failure,
            (outcome, _) => outcome,
        };
        entry.outcome = Some(outcome);
        entry.stage = None;
    }

    pub(crate) fn note(&self, index: usize, note: String) {
        lock(&self.state).entries[index].notes.push(note);
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
                task_failures: self.tasks[i].failure_count(),
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
                let mut outcome = match (&e.outcome, e.stage, e.since) {
                    (Some(outcome), _, _) => outcome.clone(),
                    (None, Some(Stage::Running), _) => Outcome::NotStopped,
                    (None, Some(stage), Some(since)) => Outcome::Abandoned { stage, after: now - since },
                    (None, _, _) => Outcome::NotStarted,
                };
                // The component whose task brought the service down failed while running, even
                // though its own stop went well.
                if let ShutdownReason::ComponentFailed { component, failure, .. } = &reason {
                    if component == &self.names[i] && matches!(outcome, Outcome::Stopped) {
                        outcome = Outcome::Failed { stage: Stage::Running, failure: failure.clone() };
                    }
                }
                ComponentReport {
                    name: self.names[i].clone(),
                    critical: self.critical[i],
                    outcome,
                    start_duration: e.start_duration,
                    stop_duration: e.stop_duration.or_else(|| e.stop_began.map(|began| now - began)),
                    outstanding_tasks: self.tasks[i].outstanding(),
                    task_failures: self.tasks[i].failures(),
                    notes: e.notes.clone(),
                }
            })
            .collect();
        let mut exit_code = forced_by.map_or_else(|| reason.exit_code(), Signal::forced_exit_code);
        if exit_code == 0 && components.iter().any(|c| c.critical && c.outcome.is_failure()) {
            exit_code = crate::report::EXIT_FAILURE;
        }
        Report {
            reason,
            exit_code,
            forced_by,
            deadline_exceeded,
            components,
            total: now - state.run_started,
            shutdown: state.shutdown_started.map_or(Duration::ZERO, |began| now - began),
        }
    }
}
