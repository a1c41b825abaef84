//! The drain and the stop, within one global deadline.
//!
//! A hung component cannot starve what it depends on: each component keeps a reserve for its
//! own stop, the smaller of its stop timeout and a tenth of the shutdown deadline. A hook's limit
//! is its own timeout, cut so that the reserves of the longest chain of components still to stop
//! after it fit before the deadline, but never below half of the time left. Every dependency of
//! a hung component therefore still gets its stop hook, with time to run it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::hooks::{HookEnd, HookSet};
use super::{Limits, Run, Started};
use crate::failure::{Failure, Stage};
use crate::graph::Graph;
use crate::panic::CatchUnwind;
use crate::report::Outcome;

/// The time a component's own stop is guaranteed, whatever hangs above it.
pub(crate) fn reserve(limits: &Limits, shutdown_deadline: Duration) -> Duration {
    limits.stop_timeout.min(shutdown_deadline / 10)
}

/// For each component, the longest chain of reserves among what it depends on, directly or not:
/// the time kept for its dependencies once it has stopped.
pub(crate) fn reserve_below(graph: &Graph, limits: &[Limits], shutdown_deadline: Duration) -> Vec<Duration> {
    let count = graph.len();
    let mut below = vec![Duration::ZERO; count];
    let mut unresolved: Vec<usize> = (0..count).map(|i| graph.dependencies(i).len()).collect();
    let mut order: Vec<usize> = (0..count).filter(|&i| unresolved[i] == 0).collect();
    let mut next = 0;
    while let Some(&index) = order.get(next) {
        next += 1;
        let chain = reserve(&limits[index], shutdown_deadline).saturating_add(below[index]);
        for &dependent in graph.dependents(index) {
            below[dependent] = below[dependent].max(chain);
            unresolved[dependent] -= 1;
            if unresolved[dependent] == 0 {
                order.push(dependent);
            }
        }
    }
    below
}

/// The limit of a hook with timeout `own`, begun `now`, when `after` is kept for what comes
/// after it before `deadline`.
fn share(now: Instant, deadline: Instant, own: Duration, after: Duration) -> Instant {
    let left = deadline.saturating_duration_since(now);
    now + own.min(left.saturating_sub(after).max(left / 2))
}

impl Run {
    /// Runs every started component's drain hook at once. Returns true when forced to stop
    /// waiting.
    pub(super) async fn drain_all(&mut self, started: &[Started], deadline: Instant) -> bool {
        let count = self.components.len();
        let below = &self.reserve_below;
        // The drain comes before the drain delay and every stop chain: keep their reserves.
        let deadline_length = self.config.shutdown_deadline;
        let after = (0..count)
            .filter(|&i| started[i] == Started::Yes)
            .map(|i| reserve(&self.limits[i], deadline_length).saturating_add(below[i]))
            .max()
            .unwrap_or_default()
            .saturating_add(self.config.drain_delay);
        let mut hooks = HookSet::new(count, Stage::Draining);
        // A drain hook not written has nothing to do: no task, and no stage to go through.
        let drains = |i: usize| started[i] == Started::Yes && self.components[i].written.drain;
        for index in (0..count).filter(|&i| drains(i)) {
            self.progress.enter(index, Stage::Draining);
            let component = Arc::clone(&self.components[index].hooks);
            let ctx = self.contexts[index].clone();
            let limit = share(Instant::now(), deadline, self.limits[index].stop_timeout, after);
            let hook_ctx = ctx.clone();
            hooks.launch(index, &ctx, limit, async move { component.drain(&hook_ctx).await });
        }
        // One waiter for the whole phase, rather than one registered and dropped per hook.
        let shutdown = self.shutdown.clone();
        let mut forced_now = std::pin::pin!(shutdown.forced());
        let forced = loop {
            let ended = tokio::select! {
                biased;
                _ = &mut forced_now => break true,
                ended = hooks.next() => ended,
            };
            let Some((index, end)) = ended else { break false };
            if let HookEnd::Failed(failure) = end {
                tracing::warn!(component = %self.contexts[index].name(), %failure, "drain hook failed");
                self.progress.fail(index, Stage::Draining, failure);
            }
            self.progress.enter(index, Stage::Running);
        };
        self.abandoned.extend(hooks.into_abandoned(&self.names));
        forced
    }

    /// Stops every component the start touched, each once all its dependents are done, within
    /// its share of the time left. Returns whether the global deadline cut anything short.
    /// With `for_restart`, each component that stopped is marked as restarting at once, so that
    /// readiness never reads it as down for good in the middle of a restart.
    pub(super) async fn stop_all(
        &mut self,
        started: &[Started],
        deadline: Instant,
        for_restart: bool,
    ) -> bool {
        let count = self.components.len();
        let below = self.reserve_below.clone();
        let touched = |i: usize| started[i] != Started::No;
        let mut dependents_left: Vec<usize> =
            (0..count).map(|i| self.graph.dependents(i).iter().filter(|&&d| touched(d)).count()).collect();
        let mut hooks = HookSet::new(count, Stage::Stopping);
        let mut cut_at_deadline = vec![false; count];
        let mut deadline_exceeded = false;

        // Reverse registration order among the ready ones, so a chain registered in dependency
        // order reads naturally in the logs; correctness comes from the counts alone.
        let mut ready: Vec<usize> =
            (0..count).rev().filter(|&i| touched(i) && dependents_left[i] == 0).collect();
        // Stops that had nothing to run or wait for, done as they were launched.
        let mut stopped_at_once = Vec::new();
        let shutdown = self.shutdown.clone();
        let mut forced_now = std::pin::pin!(shutdown.forced());
        loop {
            while let Some(index) = ready.pop() {
                let now = Instant::now();
                if now < deadline {
                    let limit = share(now, deadline, self.limits[index].stop_timeout, below[index]);
                    cut_at_deadline[index] = limit >= deadline;
                    if self.launch_stop(index, started[index], limit, &mut hooks) {
                        stopped_at_once.push(index);
                    }
                    continue;
                }
                // Out of time before its turn came: cancel what it runs and report it as it is.
                deadline_exceeded = true;
                self.contexts[index].token().cancel();
                let outcome = match self.progress.stage(index) {
                    // Still inside a start hook that ignored its cancellation.
                    Some((Stage::Starting, since)) => {
                        Outcome::Abandoned { stage: Stage::Starting, after: since.elapsed() }
                    }
                    _ => Outcome::NotStopped,
                };
                self.progress.finish(index, outcome);
                self.release_dependencies(index, started, &mut dependents_left, &mut ready);
            }
            let ended = match stopped_at_once.pop() {
                Some(index) => Some((index, HookEnd::Done)),
                None => tokio::select! {
                    biased;
                    _ = &mut forced_now => break,
                    ended = hooks.next() => ended,
                },
            };
            let Some((index, end)) = ended else { break };
            let name = self.contexts[index].name();
            let outcome = match end {
                HookEnd::Done | HookEnd::Cancelled => match started[index] {
                    Started::Cancelled => Outcome::StartCancelled,
                    // A failed start was recorded as the component's failure; `finish` keeps it.
                    Started::Yes | Started::Failed | Started::Restarting | Started::No => Outcome::Stopped,
                },
                HookEnd::Failed(failure) => {
                    deadline_exceeded |= cut_at_deadline[index] && matches!(failure, Failure::TimedOut(_));
                    let stage = self.progress.stage(index).map_or(Stage::Stopping, |(stage, _)| stage);
                    Outcome::Failed { stage, failure }
                }
            };
            if outcome.is_failure() {
                tracing::error!(component = %name, %outcome, "stop failed");
            } else {
                tracing::info!(component = %name, "stopped");
            }
            self.progress.finish(index, outcome);
            if for_restart {
                self.progress.restarting(index, None);
            }
            self.release_dependencies(index, started, &mut dependents_left, &mut ready);
        }
        self.abandoned.extend(hooks.into_abandoned(&self.names));
        deadline_exceeded
    }

    fn release_dependencies(
        &self,
        index: usize,
        started: &[Started],
        dependents_left: &mut [usize],
        ready: &mut Vec<usize>,
    ) {
        for &dependency in self.graph.dependencies(index) {
            if started[dependency] == Started::No {
                continue;
            }
            dependents_left[dependency] -= 1;
            if dependents_left[dependency] == 0 {
                ready.push(dependency);
            }
        }
    }

    /// The stop of one component: its stop hook if it started, then waiting for its tasks.
    /// Returns true when that was done at once: no stop hook written, no scope open and no task
    /// left, so there was nothing to launch.
    fn launch_stop(&self, index: usize, started: Started, limit: Instant, hooks: &mut HookSet) -> bool {
        let ctx = &self.contexts[index];
        // Its open scopes, taken before its token is cancelled: told by the token, a scope may
        // end (and leave the list) before the hook below runs, and its end would go unreported.
        let scopes = self.handle.scopes_of(index);
        // Cancelled here rather than inside the hook's task: tokio queues the tasks this wakes on
        // the current worker, which must not be the one a blocking stop hook is about to hold.
        ctx.token().cancel();
        let hook_written = started == Started::Yes && self.components[index].written.stop;
        if !hook_written && scopes.is_empty() && ctx.tasks().is_empty() {
            ctx.tasks().close();
            // The stage the hook's task would have entered, which starts the stop's clock.
            let stage = if started == Started::Yes { Stage::Stopping } else { Stage::WaitingForTasks };
            self.progress.enter(index, stage);
            return true;
        }
        let component = Arc::clone(&self.components[index].hooks);
        let ctx = ctx.clone();
        let progress = Arc::clone(&self.progress);
        let hook_ctx = ctx.clone();
        hooks.launch(index, &ctx, limit, async move {
            // The scopes it opened stop before it does: they may use what it is about to release.
            // Boxed, and only when there are scopes: it would otherwise make every stop task
            // larger, for something most components never have.
            if !scopes.is_empty() {
                for line in Box::pin(crate::scope::stop_scopes(scopes)).await {
                    hook_ctx.note(line);
                }
            }
            if started == Started::Yes {
                progress.enter(index, Stage::Stopping);
                // A failed stop hook is recorded, and its tasks are still waited for.
                match CatchUnwind::new(component.stop(&hook_ctx)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => progress.fail(index, Stage::Stopping, Failure::Error(error.into())),
                    Err(panic) => progress.fail(index, Stage::Stopping, Failure::Panic(panic)),
                }
            }
            let tasks = hook_ctx.tasks();
            tasks.close();
            // With nothing to wait for, the stage (and its lock) is skipped; a stop hook already
            // marked when the stop began.
            if !tasks.is_empty() || started != Started::Yes {
                progress.enter(index, Stage::WaitingForTasks);
                tasks.wait().await;
            }
            Ok(())
        });
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_keeps_its_own_timeout_when_everything_fits() {
        let now = Instant::now();
        let limit = share(now, now + Duration::from_secs(10), Duration::from_secs(2), Duration::from_secs(5));
        assert_eq!(limit - now, Duration::from_secs(2));
    }

    #[test]
    fn a_hook_that_would_starve_its_dependencies_gets_its_share() {
        let now = Instant::now();
        // 10 s own, 10 s below, 1 s left: half for each.
        let limit =
            share(now, now + Duration::from_secs(1), Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(limit - now, Duration::from_millis(500));
        // Nothing below: all of what is left, up to the deadline.
        let last = share(now, now + Duration::from_secs(1), Duration::from_secs(10), Duration::ZERO);
        assert_eq!(last - now, Duration::from_secs(1));
    }
}
