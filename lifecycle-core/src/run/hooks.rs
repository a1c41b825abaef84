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
use std::pin::Pin;

use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use crate::failure::{Failure, HookName, Stage};
use crate::panic::CatchUnwind;
use crate::watchdog::AbandonedHook;
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

struct Slot {
    abort: AbortHandle,
    began: Instant,
    limit: Instant,
}

/// Hooks in flight, by component index.
pub(super) struct HookSet {
    running: JoinSet<(usize, HookResult)>,
    slots: Vec<Option<Slot>>,
    in_flight: usize,
    limits: BinaryHeap<Reverse<(Instant, usize)>>,
    /// One timer for the earliest limit. It is re-armed only when it fired or a limit earlier
    /// than it appeared: firing early is harmless (the limits are checked), while re-arming a
    /// timer for every hook that ends would cost a timer-wheel update each.
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    stage: Stage,
    /// Component index and abort handle of every hook given up on.
    abandoned: Vec<(usize, AbortHandle)>,
}

impl HookSet {
    pub(super) fn new(components: usize, stage: Stage) -> Self {
        Self {
            running: JoinSet::new(),
            slots: (0..components).map(|_| None).collect(),
            in_flight: 0,
            limits: BinaryHeap::new(),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            timer_at: None,
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
        let replaced = self.slots[index].replace(Slot { abort, began: Instant::now(), limit });
        if replaced.is_none() {
            self.in_flight += 1;
        }
        self.limits.push(Reverse((limit, index)));
    }

    /// Whether no hook is in flight.
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight == 0
    }

    /// Takes the slot of `index`, if its hook is still in flight.
    fn take(&mut self, index: usize) -> Option<Slot> {
        let slot = self.slots[index].take();
        if slot.is_some() {
            self.in_flight -= 1;
        }
        slot
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
            if self.in_flight == 0 {
                return None;
            }
            let next_limit = self.limits.peek().map(|&Reverse((limit, _))| limit);
            if let Some(limit) = next_limit.filter(|&limit| self.timer_at.is_none_or(|at| limit < at)) {
                self.timer.as_mut().reset(limit);
                self.timer_at = Some(limit);
            }
            let timer_armed = self.timer_at.is_some();
            let joined = tokio::select! {
                biased;
                joined = self.running.join_next() => joined,
                () = &mut self.timer, if timer_armed => {
                    self.timer_at = None;
                    match self.limits.peek() {
                        Some(&Reverse((limit, index))) if limit <= Instant::now() => {
                            self.limits.pop();
                            return Some((index, self.give_up(index)));
                        }
                        _ => continue,
                    }
                }
            };
            match joined {
                Some(Ok((index, result))) => {
                    if self.take(index).is_none() {
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
                        self.take(index);
                        return Some((index, HookEnd::Cancelled));
                    }
                }
                None => return None,
            }
        }
    }

    /// Aborts the hook of `index` at its limit and remembers it as abandoned.
    fn give_up(&mut self, index: usize) -> HookEnd {
        let Some(slot) = self.take(index) else { return HookEnd::Cancelled };
        let after = slot.began.elapsed();
        self.forget(index, slot);
        HookEnd::Failed(Failure::TimedOut(after))
    }

    fn forget(&mut self, index: usize, slot: Slot) {
        slot.abort.abort();
        self.abandoned.push((index, slot.abort));
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
            if let Some(slot) = self.take(index) {
                self.forget(index, slot);
                left.push(index);
            }
        }
        left
    }

    /// Hooks given up on (at their limit, or abandoned), for the end of the run to check: each
    /// one's abort handle says whether it has ended since.
    pub(super) fn into_abandoned(mut self, names: &[ComponentId]) -> Vec<AbandonedHook> {
        self.abandon();
        self.running.detach_all();
        let stage = self.stage;
        self.abandoned
            .drain(..)
            .map(|(index, handle)| AbandonedHook { component: names[index].clone(), stage, handle })
            .collect()
    }
}
