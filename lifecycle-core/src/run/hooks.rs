//! The one hook launcher: every start, drain and stop runs through it.
//!
//! A hook runs in its own task, inside its component's span, with its panic caught and its
//! deadline set on the context. The run's own task awaits the set and gives up on a hook at its
//! limit: a hook that blocks its thread cannot stop that clock, because the run's task is free to
//! move to another worker. A hook given up on is aborted (which takes effect at its next await,
//! if ever) and remembered, so the end of the run can say what is still holding the process.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;

use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::failure::{Failure, HookName, Stage};
use crate::panic::CatchUnwind;
use crate::{BoxError, ComponentId, Context};

/// What a hook's task returns: the hook's result, or its panic's message.
type HookResult = Result<Result<(), BoxError>, String>;

/// How a launched hook ended.
pub(super) enum HookEnd {
    /// It returned `Ok`.
    Done,
    /// It failed, panicked or ran past its limit.
    Failed(Failure),
    /// It was cancelled before it finished (a shutdown during start).
    Cancelled,
}

/// A hook the run gave up on, still running as far as anyone knows.
#[derive(Clone, Debug)]
pub(crate) struct AbandonedHook {
    pub(crate) component: ComponentId,
    pub(crate) stage: Stage,
    pub(crate) handle: AbortHandle,
}

struct Slot {
    component: ComponentId,
    abort: AbortHandle,
    began: Instant,
    limit: Instant,
}

/// Hooks in flight, by component index.
pub(super) struct HookSet {
    running: JoinSet<(usize, HookResult)>,
    slots: Vec<Option<Slot>>,
    limits: BinaryHeap<Reverse<(Instant, usize)>>,
    stage: Stage,
    abandoned: Vec<AbandonedHook>,
}

impl HookSet {
    pub(super) fn new(components: usize, stage: Stage) -> Self {
        Self {
            running: JoinSet::new(),
            slots: (0..components).map(|_| None).collect(),
            limits: BinaryHeap::new(),
            stage,
            abandoned: Vec::new(),
        }
    }

    /// Runs `hook` for component `index` (whose context is `ctx`) until `limit`.
    pub(super) fn launch<F>(&mut self, index: usize, ctx: &Context, limit: Instant, hook: F)
    where
        F: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        ctx.set_deadline(limit);
        let span = tracing::info_span!("lifecycle", component = %ctx.name(), hook = %HookName(self.stage));
        let abort = self.running.spawn(async move { (index, CatchUnwind::new(hook).await) }.instrument(span));
        self.slots[index] = Some(Slot { component: ctx.name().clone(), abort, began: Instant::now(), limit });
        self.limits.push(Reverse((limit, index)));
    }

    /// Whether no hook is in flight.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// The next hook to end, and how; `None` when none is in flight.
    pub(super) async fn next(&mut self) -> Option<(usize, HookEnd)> {
        loop {
            // Limits of hooks that already ended are skipped here, lazily.
            while let Some(&Reverse((limit, index))) = self.limits.peek() {
                if self.slots[index].as_ref().is_some_and(|slot| slot.limit == limit) {
                    break;
                }
                self.limits.pop();
            }
            let next_limit = self.limits.peek().map(|&Reverse((limit, _))| limit);
            if self.is_empty() {
                return None;
            }
            let joined = tokio::select! {
                biased;
                joined = self.running.join_next() => joined,
                () = sleep_until(next_limit) => {
                    let Some(Reverse((_, index))) = self.limits.pop() else { continue };
                    return Some((index, self.give_up(index)));
                }
            };
            match joined {
                Some(Ok((index, result))) => {
                    if self.slots[index].take().is_none() {
                        continue; // given up on already
                    }
                    return Some((
                        index,
                        match result {
                            Ok(Ok(())) => HookEnd::Done,
                            Ok(Err(error)) => HookEnd::Failed(Failure::Error(error.into())),
                            Err(panic) => HookEnd::Failed(Failure::Panic(panic)),
                        },
                    ));
                }
                Some(Err(error)) => {
                    let id = error.id();
                    let found =
                        self.slots.iter().position(|s| s.as_ref().is_some_and(|s| s.abort.id() == id));
                    if let Some(index) = found {
                        self.slots[index] = None;
                        return Some((index, HookEnd::Cancelled));
                    }
                }
                None => return None,
            }
        }
    }

    /// Aborts the hook of `index` at its limit and remembers it as abandoned.
    fn give_up(&mut self, index: usize) -> HookEnd {
        let Some(slot) = self.slots[index].take() else { return HookEnd::Cancelled };
        let after = slot.began.elapsed();
        self.forget(slot);
        HookEnd::Failed(Failure::TimedOut(after))
    }

    fn forget(&mut self, slot: Slot) {
        slot.abort.abort();
        self.abandoned.push(AbandonedHook {
            component: slot.component,
            stage: self.stage,
            handle: slot.abort,
        });
    }

    /// Cancels every hook in flight; each then ends as it can (cancelled, or done if it finished
    /// in the same instant).
    pub(super) fn cancel_all(&self) {
        for slot in self.slots.iter().flatten() {
            slot.abort.abort();
        }
    }

    /// Stops waiting for what is still in flight: returns their indices, remembering each as
    /// abandoned.
    pub(super) fn abandon(&mut self) -> Vec<usize> {
        let mut left = Vec::new();
        for index in 0..self.slots.len() {
            if let Some(slot) = self.slots[index].take() {
                self.forget(slot);
                left.push(index);
            }
        }
        left
    }

    /// Hooks given up on (at their limit, or abandoned), for the end of the run to check: each
    /// one's abort handle says whether it has ended since.
    pub(super) fn into_abandoned(mut self) -> Vec<AbandonedHook> {
        self.abandon();
        self.running.detach_all();
        std::mem::take(&mut self.abandoned)
    }
}

async fn sleep_until(limit: Option<Instant>) {
    match limit {
        Some(limit) => tokio::time::sleep_until(limit).await,
        None => std::future::pending().await,
    }
}
