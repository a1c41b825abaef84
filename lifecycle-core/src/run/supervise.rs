//! While the service runs: a failure of a component with a restart policy stops that component
//! and everything that depends on it (drain, then stop in reverse order), and starts them again
//! in order after the backoff, while the rest of the service carries on untouched. Failures are
//! handled one at a time, as an OTP supervisor does, but a backoff holds nothing up: components
//! waiting to start again wait in [`Pending`]; a shutdown request ends every wait at once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::start::StartMode;
use super::{Run, Started};
use crate::{ShutdownReason, Tasks};

/// The components that run to completion: which are done, and word of their tasks' end.
pub(super) struct Completion {
    completes: Vec<bool>,
    done: Vec<bool>,
    ended: (UnboundedSender<Ended>, UnboundedReceiver<Ended>),
}

/// A component's task set ended: its index and incarnation.
type Ended = (usize, u64);

impl Completion {
    pub(super) fn new(completes: &[bool]) -> Self {
        Self { completes: completes.to_vec(), done: vec![false; completes.len()], ended: unbounded_channel() }
    }

    /// Whether any component runs to completion.
    fn any(&self) -> bool {
        self.completes.contains(&true)
    }

    /// Watches the tasks of component `index`, just started, for their end: the set is closed,
    /// so it is done once its last task ended. The watcher ends with the run's helpers.
    pub(super) fn watch(&self, index: usize, tasks: &Tasks, stop: &CancellationToken, helpers: &TaskTracker) {
        if !self.completes[index] {
            return;
        }
        let (tasks, stop, ended) = (tasks.clone(), stop.clone(), self.ended.0.clone());
        let incarnation = tasks.incarnation();
        tasks.close();
        helpers.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = tasks.wait() => {
                    // The run reads this until it ends; after that, nobody needs to know.
                    let _ = ended.send((index, incarnation));
                }
            }
        });
    }

    /// Marks `index` done; returns every component that runs to completion once all are.
    fn done(&mut self, index: usize, names: &[crate::ComponentId]) -> Option<Vec<crate::ComponentId>> {
        self.done[index] = true;
        let all = (0..self.done.len()).all(|i| !self.completes[i] || self.done[i]);
        all.then(|| (0..names.len()).filter(|&i| self.completes[i]).map(|i| names[i].clone()).collect())
    }
}

/// Components waiting for their backoff before they start again, earliest first.
pub(super) struct Pending {
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    waiting: Vec<bool>,
}

impl Pending {
    pub(super) fn new(components: usize) -> Self {
        Self { due: BinaryHeap::new(), waiting: vec![false; components] }
    }

    pub(super) fn add(&mut self, at: Instant, index: usize) {
        if !std::mem::replace(&mut self.waiting[index], true) {
            self.due.push(Reverse((at, index)));
        }
    }

    pub(super) fn contains(&self, index: usize) -> bool {
        self.waiting[index]
    }

    /// When the next one is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes every one due at `now`.
    pub(super) fn take_due(&mut self, now: Instant) -> impl Iterator<Item = usize> + use<> {
        let mut taken = Vec::new();
        while let Some(&Reverse((at, index))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            self.waiting[index] = false;
            taken.push(index);
        }
        taken.into_iter()
    }
}

impl Run {
    /// Handles failures, and starts what waited for its backoff, until a shutdown is requested.
    pub(super) async fn supervise(&mut self) {
        let shutdown = self.shutdown.clone();
        let mut requested = std::pin::pin!(shutdown.requested());
        // Closed from the start when no component has a restart policy (no task set holds a
        // sender then).
        let mut troubles_open = true;
        loop {
            // Starts already due (a zero backoff) go at once: a timer would round up to its
            // next tick.
            for index in self.pending.take_due(Instant::now()) {
                self.bring_back(index).await;
            }
            if self.shutdown.is_requested() {
                return;
            }
            let next_due = self.pending.next_due();
            let trouble = tokio::select! {
                biased;
                _ = &mut requested => return,
                () = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    for index in self.pending.take_due(Instant::now()) {
                        self.bring_back(index).await;
                    }
                    continue;
                }
                ended = self.completion.ended.1.recv(), if self.completion.any() => {
                    if let Some((index, incarnation)) = ended {
                        self.task_set_ended(index, incarnation);
                    }
                    continue;
                }
                request = self.reload_requests.recv() => {
                    if let Some(request) = request {
                        self.reload(request).await;
                    }
                    continue;
                }
                trouble = self.troubles.recv(), if troubles_open => trouble,
            };
            match trouble {
                Some(trouble) if self.is_current(trouble.index, trouble.incarnation) => {
                    self.restart(trouble.index).await;
                }
                Some(_) => {}
                None => troubles_open = false,
            }
        }
    }

    /// The tasks of a component that runs to completion ended: done, unless they failed (a
    /// failure is handled as any other, by the restart policy or the criticality).
    fn task_set_ended(&mut self, index: usize, incarnation: u64) {
        if !self.is_current(index, incarnation) {
            return;
        }
        // A failed one is restarted by its policy, or (critical) stops the service, or
        // (optional, no restart) is over: that is done too, failed.
        if self.progress.current_failure(index).is_some() && self.limits[index].restart.restarts() {
            return;
        }
        self.completed(index);
    }

    /// Component `index`, which runs to completion, is over; the run ends once all such are.
    pub(super) fn completed(&mut self, index: usize) {
        if !self.limits[index].completes_run {
            return;
        }
        tracing::info!(component = %self.names[index], "done");
        if let Some(components) = self.completion.done(index, &self.names) {
            self.shutdown.trigger(ShutdownReason::Completed { components });
        }
    }

    /// Whether a failure of this incarnation of component `index` is news: a failure of an
    /// incarnation already replaced, or of a component already stopped, restarts nothing.
    fn is_current(&self, index: usize, incarnation: u64) -> bool {
        self.started[index] == Started::Yes && self.contexts[index].tasks().incarnation() == incarnation
    }

    /// Restarts component `index` with its dependents, or escalates once its budget is spent.
    async fn restart(&mut self, index: usize) {
        let due = self.grant_restart(index);
        let critical = self.limits[index].critical;
        if due.is_none() && critical {
            let component = self.contexts[index].name().clone();
            let failure = self.progress.current_failure(index);
            tracing::error!(component = %component, restarts = self.budgets[index].total(), "restart budget spent; stopping the service");
            if let Some(record) = failure {
                self.shutdown.trigger(ShutdownReason::ComponentFailed {
                    component,
                    task: record.task.unwrap_or_default(),
                    failure: record.failure,
                });
            }
            return;
        }
        let members = self.with_dependents(index);
        let dependents: Vec<String> = (0..members.len())
            .filter(|&i| members[i] && i != index)
            .map(|i| self.names[i].to_string())
            .collect();
        if due.is_none() {
            tracing::warn!(component = %self.names[index], restarts = self.budgets[index].total(), ?dependents, "restart budget spent; carrying on without it");
        } else {
            tracing::info!(component = %self.names[index], ?dependents, "stopping for a restart");
        }

        let started: Vec<Started> =
            members.iter().map(|&member| if member { Started::Yes } else { Started::No }).collect();
        let deadline = Instant::now() + self.config.shutdown_deadline;
        if self.drain_all(&started, deadline).await || self.stop_all(&started, deadline, true).await {
            tracing::warn!(component = %self.names[index], "a stop for the restart was cut short");
        }
        for member in (0..members.len()).filter(|&i| members[i]) {
            self.started[member] = Started::Restarting;
            if member != index {
                self.progress.restarting(member, None);
            }
        }
        match due {
            Some(at) => {
                self.progress.restarting(index, Some(at));
                self.pending.add(at, index);
            }
            None => {
                // An optional component out of restarts stays down; what depends on it was told
                // it may be absent, and starts again without it.
                self.started[index] = Started::Failed;
                self.progress.down(index);
                self.completed(index);
                for dependent in self.graph.dependents(index).to_vec() {
                    if self.started[dependent] == Started::Restarting {
                        self.bring_back(dependent).await;
                    }
                }
            }
        }
    }

    /// Starts component `index` again, with what waits for it and for nothing else.
    async fn bring_back(&mut self, index: usize) {
        // Already back with another (or never stopped), or the service is stopping.
        if matches!(self.started[index], Started::Yes | Started::Cancelled) || self.shutdown.is_requested() {
            return;
        }
        // A hard dependency still down (restarting itself): wait for it; its own return
        // brings this one back with it.
        let waits = self.graph.dependencies(index).iter().any(|&d| {
            !self.graph.is_optional(index, d)
                && self.started[d] != Started::Yes
                && !(self.started[d] == Started::Failed
                    && !self.pending.contains(d)
                    && !self.limits[d].critical)
        });
        if waits {
            self.started[index] = Started::Restarting;
            self.progress.restarting(index, None);
            return;
        }
        let members = self.waiting_on(index);
        if let Some(reason) = self.start_set(&members, StartMode::Restart).await {
            self.shutdown.trigger(reason);
        } else if self.started[index] == Started::Yes {
            tracing::info!(component = %self.names[index], "restart complete");
        }
    }

    /// Component `index` with every component not running that (through hard dependencies)
    /// waits on it and on nothing else that is down.
    fn waiting_on(&self, index: usize) -> Vec<bool> {
        let count = self.components.len();
        let mut members = vec![false; count];
        members[index] = true;
        let satisfied = |members: &[bool], d: usize| {
            members[d]
                || self.started[d] == Started::Yes
                || (self.started[d] == Started::Failed
                    && !self.pending.contains(d)
                    && !self.limits[d].critical)
        };
        // Registration order is not dependency order: repeat until nothing more joins.
        let mut grew = true;
        while grew {
            grew = false;
            for candidate in 0..count {
                let waiting = matches!(self.started[candidate], Started::No | Started::Restarting);
                if members[candidate]
                    || !waiting
                    || !self.graph.dependencies(candidate).iter().any(|&d| members[d])
                {
                    continue;
                }
                let ready = self
                    .graph
                    .dependencies(candidate)
                    .iter()
                    .all(|&d| satisfied(&members, d) || self.graph.is_optional(candidate, d));
                if ready {
                    members[candidate] = true;
                    grew = true;
                }
            }
        }
        members
    }

    /// Component `index` and everything that depends on it, directly or not, that is running;
    /// not through optional dependencies, whose dependents carry on without it.
    fn with_dependents(&self, index: usize) -> Vec<bool> {
        let mut members = vec![false; self.components.len()];
        members[index] = true;
        let mut stack = vec![index];
        while let Some(current) = stack.pop() {
            for &dependent in self.graph.dependents(current) {
                if !members[dependent]
                    && self.started[dependent] == Started::Yes
                    && !self.graph.is_optional(dependent, current)
                {
                    members[dependent] = true;
                    stack.push(dependent);
                }
            }
        }
        members
    }
}
