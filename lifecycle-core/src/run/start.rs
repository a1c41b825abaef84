//! The start: components start as soon as everything they depend on has, each within its start
//! timeout; a critical failure, or a shutdown request, ends it.

use std::sync::Arc;

use tokio::time::{Instant, timeout_at};

use super::hooks::{HookEnd, HookSet};
use super::{Run, Started};
use crate::ShutdownReason;
use crate::failure::Stage;

impl Run {
    /// Starts components as their dependencies become ready. Returns how far each got, and the
    /// reason to stop if a critical start failed.
    pub(super) async fn start_all(&mut self) -> (Vec<Started>, Option<ShutdownReason>) {
        let count = self.components.len();
        let mut started = vec![Started::No; count];
        let mut waiting_on: Vec<usize> = (0..count).map(|i| self.graph.dependencies(i).len()).collect();
        let mut hooks = HookSet::new(count, Stage::Starting);
        let mut failure = None;

        let mut ready: Vec<usize> = (0..count).filter(|&i| waiting_on[i] == 0).collect();
        // One waiter for the whole start, rather than one registered and dropped per hook.
        let shutdown = self.shutdown.clone();
        let mut requested = std::pin::pin!(shutdown.requested());
        loop {
            if self.shutdown.is_requested() {
                tracing::info!("shutdown requested during start; cancelling the starts in flight");
                break;
            }
            for index in ready.drain(..) {
                self.launch_start(index, &mut hooks);
            }
            let ended = tokio::select! {
                biased;
                _ = &mut requested => continue, // the check above ends the start
                ended = hooks.next() => ended,
            };
            let Some((index, end)) = ended else { break };
            started[index] = self.record_start(index, end);
            if started[index] == Started::Failed && self.limits[index].critical {
                let Some(first) = self.progress.first_failure(index) else { continue };
                let component = self.contexts[index].name().clone();
                tracing::error!(component = %component, failure = %first, "start failed; rolling back");
                failure = Some(ShutdownReason::StartFailed { component, failure: first.failure });
                break;
            }
            // A non-critical failure releases its dependents too: they were told it may be absent.
            for &dependent in self.graph.dependents(index) {
                waiting_on[dependent] -= 1;
                if waiting_on[dependent] == 0 {
                    ready.push(dependent);
                }
            }
        }

        // Starts still in flight are cancelled, and each then says how it ended: one that
        // completed in the same instant is started (and gets its stop hook). A hook that ignores
        // the cancellation (it blocks its thread) is not waited for past the deadline.
        hooks.cancel_all();
        let deadline = self.deadline();
        while let Ok(Some((index, end))) = timeout_at(deadline, hooks.next()).await {
            started[index] = self.record_start(index, end);
        }
        for index in hooks.abandon() {
            started[index] = Started::Cancelled;
        }
        self.abandoned.extend(hooks.into_abandoned(&self.names));
        (started, failure)
    }

    fn launch_start(&self, index: usize, hooks: &mut HookSet) {
        self.progress.enter(index, Stage::Starting);
        let component = Arc::clone(&self.components[index].hooks);
        let ctx = self.contexts[index].clone();
        let limit = Instant::now() + self.limits[index].start_timeout;
        let hook_ctx = ctx.clone();
        hooks.launch(index, &ctx, limit, async move { component.start(&hook_ctx).await });
    }

    /// Records how a start ended.
    fn record_start(&self, index: usize, end: HookEnd) -> Started {
        let name = self.contexts[index].name();
        match end {
            HookEnd::Done => {
                self.progress.enter(index, Stage::Running);
                tracing::info!(component = %name, "started");
                Started::Yes
            }
            HookEnd::Cancelled => Started::Cancelled,
            HookEnd::Failed(failure) => {
                if !self.limits[index].critical {
                    tracing::warn!(component = %name, %failure, "non-critical component failed to start; continuing without it");
                }
                self.progress.fail(index, Stage::Starting, failure);
                Started::Failed
            }
        }
    }
}
