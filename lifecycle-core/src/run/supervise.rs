//! While the service runs: a failure of a component with a restart policy stops that component
//! and everything that depends on it (drain, then stop in reverse order), and starts them again
//! in order after the backoff, while the rest of the service carries on untouched. Failures are
//! handled one at a time, as an OTP supervisor does; a shutdown request ends the wait at once.

use tokio::time::Instant;

use super::{Run, Started};
use crate::ShutdownReason;

impl Run {
    /// Handles failures until a shutdown is requested.
    pub(super) async fn supervise(&mut self) {
        let shutdown = self.shutdown.clone();
        let mut requested = std::pin::pin!(shutdown.requested());
        loop {
            let trouble = tokio::select! {
                biased;
                _ = &mut requested => return,
                trouble = self.troubles.recv() => trouble,
            };
            match trouble {
                Some(trouble) if self.is_current(trouble.index, trouble.incarnation) => {
                    self.restart(trouble.index).await;
                }
                Some(_) => {}
                // Every task set holds a sender, and the contexts outlive this loop.
                None => return requested.await,
            }
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
        if self.drain_all(&started, deadline).await || self.stop_all(&started, deadline).await {
            tracing::warn!(component = %self.names[index], "a stop for the restart was cut short");
        }
        for member in (0..members.len()).filter(|&i| members[i]) {
            self.started[member] = Started::Restarting;
            if member != index {
                self.progress.restarting(member, None);
            }
        }
        let mut to_start = members;
        match due {
            Some(at) => self.progress.restarting(index, Some(at)),
            None => {
                // An optional component out of restarts stays down; what depends on it was told
                // it may be absent, and starts again without it.
                self.started[index] = Started::Failed;
                to_start[index] = false;
            }
        }
        if let Some(reason) = self.start_set(&to_start, due.map(|at| (index, at))).await {
            self.shutdown.trigger(reason);
        } else if !self.shutdown.is_requested() {
            tracing::info!(component = %self.names[index], "restart complete");
        }
    }

    /// Component `index` and everything that depends on it, directly or not, that is running.
    fn with_dependents(&self, index: usize) -> Vec<bool> {
        let mut members = vec![false; self.components.len()];
        members[index] = true;
        let mut stack = vec![index];
        while let Some(current) = stack.pop() {
            for &dependent in self.graph.dependents(current) {
                if !members[dependent] && self.started[dependent] == Started::Yes {
                    members[dependent] = true;
                    stack.push(dependent);
                }
            }
        }
        members
    }
}
