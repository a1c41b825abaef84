//! A reload while the service runs: every running component's reload hook, each once the
//! components it depends on are done with theirs, through the same launcher as every other hook.
//! The supervisor handles a failure that comes meanwhile once the reload is over (each hook is
//! bounded by its component's start timeout), so a restart never races a reload.

use std::sync::Arc;

use tokio::time::{Instant, timeout_at};

use super::hooks::{HookEnd, HookSet};
use super::{Run, Started};
use crate::ComponentId;
use crate::failure::Stage;
use crate::reload::{ReloadCause, ReloadError, ReloadOutcome, ReloadReport, ReloadRequest};

impl Run {
    /// Serves `first` and every request queued behind it with one reload.
    pub(super) async fn reload(&mut self, first: ReloadRequest) {
        let mut requests = vec![first];
        while let Ok(request) = self.reload_requests.try_recv() {
            requests.push(request);
        }
        let cause = requests[0].cause;
        let answer = match self.reload_all(cause).await {
            Some(report) => {
                self.handle.reloads().count(&report);
                if report.is_success() {
                    tracing::info!(%cause, components = report.components.len(), took_ms = report.took.as_millis() as u64, "reloaded");
                } else if report.has_failure() {
                    tracing::warn!(%report, "reload failed");
                } else {
                    tracing::info!(%report, "reload cut short by the shutdown");
                }
                Ok(report)
            }
            None => Err(ReloadError::ShuttingDown),
        };
        for request in requests {
            request.answer(answer.clone());
        }
    }

    /// Takes no more requests, and answers every queued one: the run no longer reloads. Closed
    /// first, so that a request sent at this very moment is either queued (and answered here)
    /// or refused at once, never left waiting through the stop.
    pub(super) fn refuse_reloads(&mut self) {
        self.reload_requests.close();
        while let Ok(request) = self.reload_requests.try_recv() {
            request.answer(Err(ReloadError::ShuttingDown));
        }
    }

    /// Runs the reload; `None` when a shutdown request came before any hook ran.
    async fn reload_all(&mut self, cause: ReloadCause) -> Option<ReloadReport> {
        let began = Instant::now();
        let count = self.components.len();
        let running: Vec<bool> = self.started.iter().map(|&s| s == Started::Yes).collect();
        let mut waiting_on: Vec<usize> =
            (0..count).map(|i| self.graph.dependencies(i).iter().filter(|&&d| running[d]).count()).collect();
        let mut ready: Vec<usize> = (0..count).filter(|&i| running[i] && waiting_on[i] == 0).collect();
        let mut hooks = HookSet::new(count, Stage::Reloading);
        let mut components = Vec::new();
        let shutdown = self.shutdown.clone();
        let mut requested = std::pin::pin!(shutdown.requested());
        if self.shutdown.is_requested() {
            return None;
        }
        tracing::info!(%cause, "reloading");
        loop {
            for index in ready.drain(..) {
                self.progress.enter(index, Stage::Reloading);
                let component = Arc::clone(&self.components[index].hooks);
                let ctx = self.contexts[index].clone();
                let limit = Instant::now() + self.limits[index].start_timeout;
                let hook_ctx = ctx.clone();
                hooks.launch(index, &ctx, limit, async move { component.reload(&hook_ctx).await });
            }
            let ended = tokio::select! {
                biased;
                _ = &mut requested => break,
                ended = hooks.next() => ended,
            };
            let Some((index, end)) = ended else { break };
            components.push(self.reload_ended(index, end, cause));
            for &dependent in self.graph.dependents(index) {
                if running[dependent] {
                    waiting_on[dependent] -= 1;
                    if waiting_on[dependent] == 0 {
                        ready.push(dependent);
                    }
                }
            }
        }
        // A shutdown request: what is still reloading is cancelled and waited for (it ends at its
        // next await), so that the drain and the stop do not run beside it; one that blocks its
        // thread is not waited for past the deadline.
        hooks.cancel_all();
        let deadline = self.deadline();
        while let Ok(Some((index, end))) = timeout_at(deadline, hooks.next()).await {
            components.push(self.reload_ended(index, end, cause));
        }
        for index in hooks.abandon() {
            self.progress.enter(index, Stage::Running);
            components.push((self.names[index].clone(), ReloadOutcome::Cancelled));
        }
        self.abandoned.extend(hooks.into_abandoned(&self.names));
        Some(ReloadReport { cause, components, took: began.elapsed() })
    }

    /// Records how component `index`'s reload hook ended (a failure logged and noted in the
    /// report); it runs on either way.
    fn reload_ended(&self, index: usize, end: HookEnd, cause: ReloadCause) -> (ComponentId, ReloadOutcome) {
        let name = self.names[index].clone();
        let outcome = match end {
            HookEnd::Done => ReloadOutcome::Reloaded,
            HookEnd::Cancelled => ReloadOutcome::Cancelled,
            HookEnd::Failed(failure) => {
                tracing::warn!(component = %name, %failure, "reload failed; running on as it was");
                self.progress.note(index, format!("reload on {cause} failed: {failure}"));
                ReloadOutcome::Failed(failure)
            }
        };
        self.progress.enter(index, Stage::Running);
        (name, outcome)
    }
}
