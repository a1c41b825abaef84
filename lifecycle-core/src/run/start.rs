//! The start: components start as soon as everything they depend on has, each within its start
//! timeout; a failed start is tried again while its restart policy allows; a critical failure
//! beyond that, or a shutdown request, ends it. The same code starts the whole service and,
//! after a restart, the part of it that was stopped.

use std::sync::Arc;

use tokio::time::{Instant, sleep_until, timeout_at};

use super::hooks::{HookEnd, HookSet};
use super::{Run, Started};
use crate::ShutdownReason;
use crate::failure::Stage;

/// Whether a start is the service's first (which readiness waits for) or a restart.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum StartMode {
    Boot,
    Restart,
}

/// Which of a component's dependents to release.
#[derive(Clone, Copy)]
enum Edges {
    All,
    /// Those that depend on it optionally.
    Optional,
    /// Those that do not.
    Hard,
}

impl Run {
    /// Starts the `members` as their dependencies become ready (dependencies outside the set
    /// are taken as they are). Records in `self.started` how far each got; returns the reason
    /// to stop if a critical start failed for good.
    ///
    /// A failed start that its policy retries waits in `self.pending`. At `Boot`, the start
    /// waits for those retries while a critical member is not up yet (the service cannot be
    /// ready without it); otherwise it ends, and the supervision loop starts the rest when the
    /// retry is due.
    pub(super) async fn start_set(&mut self, members: &[bool], mode: StartMode) -> Option<ShutdownReason> {
        let count = self.components.len();
        let mut waiting_on: Vec<usize> =
            (0..count).map(|i| self.graph.dependencies(i).iter().filter(|&&d| members[d]).count()).collect();
        let mut hooks = HookSet::new(count, Stage::Starting);
        let mut failure = None;
        let mut ready: Vec<usize> = (0..count).filter(|&i| members[i] && waiting_on[i] == 0).collect();
        // Members whose optional dependents were let go while they wait to start again; local,
        // as `waiting_on` is counted afresh by every call.
        let mut released_optional = vec![false; count];
        // Members with no start hook written, started as they were launched.
        let mut started_at_once = Vec::new();
        // One waiter for the whole start, rather than one registered and dropped per hook.
        let shutdown = self.shutdown.clone();
        let mut requested = std::pin::pin!(shutdown.requested());
        loop {
            if self.shutdown.is_requested() {
                tracing::info!("shutdown requested during start; cancelling the starts in flight");
                break;
            }
            for index in ready.drain(..) {
                if self.launch_start(index, &mut hooks) {
                    started_at_once.push(index);
                }
            }
            let ended = if let Some(index) = started_at_once.pop() {
                Some((index, HookEnd::Done))
            } else {
                // A scan of every member: only when something waits for a retry at all.
                let next_retry = match (mode, self.pending.next_due()) {
                    (StartMode::Boot, Some(due)) if self.critical_member_waiting(members) => Some(due),
                    _ => None,
                };
                if hooks.is_idle() && next_retry.is_none() {
                    break;
                }
                tokio::select! {
                    biased;
                    _ = &mut requested => continue, // the check above ends the start
                    () = sleep_until(next_retry.unwrap_or_else(Instant::now)), if next_retry.is_some() => {
                        ready.extend(self.pending.take_due(Instant::now()).filter(|&i| members[i]));
                        continue;
                    }
                    ended = hooks.next(), if !hooks.is_idle() => ended,
                }
            };
            let Some((index, end)) = ended else { continue };
            self.started[index] = self.record_start(index, end);
            if self.started[index] == Started::Failed {
                if let Some(at) = self.retry_later(index) {
                    self.pending.add(at, index);
                    // Those that depend on it optionally start without it; the others wait.
                    if !std::mem::replace(&mut released_optional[index], true) {
                        self.release(index, members, Edges::Optional, &mut waiting_on, &mut ready);
                    }
                    continue;
                }
                if self.limits[index].restart.restarts() {
                    tracing::error!(component = %self.contexts[index].name(), restarts = self.budgets[index].total(), "restart budget spent");
                }
                self.progress.down(index);
                if !self.limits[index].critical {
                    self.completed(index);
                }
                if self.limits[index].critical {
                    let Some(first) = self.progress.current_failure(index) else { continue };
                    let component = self.contexts[index].name().clone();
                    tracing::error!(component = %component, failure = %first, "start failed; rolling back");
                    failure = Some(ShutdownReason::StartFailed { component, failure: first.failure });
                    break;
                }
            }
            // A non-critical failure releases its dependents too: they were told it may be absent.
            let edges = if released_optional[index] { Edges::Hard } else { Edges::All };
            self.release(index, members, edges, &mut waiting_on, &mut ready);
        }

        // Starts still in flight are cancelled, and each then says how it ended: one that
        // completed in the same instant is started (and gets its stop hook). A hook that ignores
        // the cancellation (it blocks its thread) is not waited for past the deadline.
        for index in started_at_once {
            self.started[index] = self.record_start(index, HookEnd::Done);
        }
        hooks.cancel_all();
        let deadline = self.deadline();
        while let Ok(Some((index, end))) = timeout_at(deadline, hooks.next()).await {
            self.started[index] = self.record_start(index, end);
        }
        for index in hooks.abandon() {
            self.started[index] = Started::Cancelled;
        }
        self.abandoned.extend(hooks.into_abandoned(&self.names));
        failure
    }

    /// Whether a critical member is neither up nor failed for good: waiting for a retry, or for
    /// something that waits for one.
    fn critical_member_waiting(&self, members: &[bool]) -> bool {
        (0..members.len()).any(|i| {
            members[i]
                && self.limits[i].critical
                && match self.started[i] {
                    Started::Yes | Started::Cancelled => false,
                    Started::Failed => self.pending.contains(i),
                    Started::No | Started::Restarting => true,
                }
        })
    }

    /// Counts component `index` as done for its dependents among `members` through `edges`,
    /// and makes ready those that wait for nothing else.
    fn release(
        &self,
        index: usize,
        members: &[bool],
        edges: Edges,
        waiting_on: &mut [usize],
        ready: &mut Vec<usize>,
    ) {
        for &dependent in self.graph.dependents(index) {
            let optional = self.graph.is_optional(dependent, index);
            let counted = match edges {
                Edges::All => true,
                Edges::Optional => optional,
                Edges::Hard => !optional,
            };
            if !members[dependent] || !counted {
                continue;
            }
            waiting_on[dependent] -= 1;
            if waiting_on[dependent] == 0 {
                ready.push(dependent);
            }
        }
    }

    /// Asks component `index`'s restart budget for another start after a failed start: when
    /// granted, returns when it is due, having recorded the wait.
    fn retry_later(&mut self, index: usize) -> Option<Instant> {
        let at = self.grant_restart(index)?;
        self.progress.restarting(index, Some(at));
        Some(at)
    }

    /// Asks component `index`'s restart budget for another start: when it is due, or `None`
    /// when the budget is spent (or there is no policy).
    pub(super) fn grant_restart(&mut self, index: usize) -> Option<Instant> {
        let now = Instant::now();
        let delay = self.budgets[index].grant(now)?;
        tracing::warn!(
            component = %self.contexts[index].name(),
            restart = self.budgets[index].total(),
            delay_ms = delay.as_millis() as u64,
            "restarting by its policy"
        );
        Some(now + delay)
    }

    /// Launches component `index`'s start hook; returns true when it has none written, and so
    /// has started already.
    fn launch_start(&mut self, index: usize, hooks: &mut HookSet) -> bool {
        if std::mem::replace(&mut self.launched[index], true) {
            self.renew(index);
        }
        self.progress.enter(index, Stage::Starting);
        if !self.components[index].written.start {
            return true;
        }
        let component = Arc::clone(&self.components[index].hooks);
        let ctx = self.contexts[index].clone();
        let limit = Instant::now() + self.limits[index].start_timeout;
        let hook_ctx = ctx.clone();
        hooks.launch(index, &ctx, limit, async move { component.start(&hook_ctx).await });
        false
    }

    /// Prepares component `index` for another start: what is left of its last one (tasks a
    /// failed start spawned, tasks that outlived a stop) is cancelled and aborted, and it gets a
    /// fresh token and a new incarnation, so a late failure of the old one restarts nothing.
    fn renew(&mut self, index: usize) {
        let old = &self.contexts[index];
        old.token().cancel();
        let tasks = old.tasks();
        tasks.close();
        tasks.abort_all();
        tasks.reopen();
        self.progress.renewed(index);
        self.contexts[index] = old.renewed(self.root.child_token());
    }

    /// Records how a start ended.
    fn record_start(&self, index: usize, end: HookEnd) -> Started {
        let name = self.contexts[index].name();
        match end {
            HookEnd::Done => {
                self.progress.enter(index, Stage::Running);
                tracing::info!(component = %name, "started");
                let tasks = self.contexts[index].tasks();
                self.completion.watch(index, tasks, &self.background_stop, &self.background);
                Started::Yes
            }
            HookEnd::Cancelled => Started::Cancelled,
            HookEnd::Failed(failure) => {
                if !self.limits[index].critical && !self.limits[index].restart.restarts() {
                    tracing::warn!(component = %name, %failure, "non-critical component failed to start; continuing without it");
                }
                self.progress.fail(index, Stage::Starting, failure);
                Started::Failed
            }
        }
    }
}
