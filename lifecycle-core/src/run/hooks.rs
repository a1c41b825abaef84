//! The one hook launcher: every start, drain and stop runs through it.
//!
//! A hook runs in its own task, inside its component's span, with its panic caught and its
//! deadline set on the context. The run's own task awaits the set and gives up on a hook at its
//! limit: a hook that blocks its thread cannot stop that clock, because the run's task is free to
//! move to another worker. A hook given up on is aborted (which takes effect at its next await,
//! if ever) and remembered, so the end of the run can say what is still holding the process.
//! A hook the component did not write (the trait's default, which does nothing) is not launched
//! at all: the start and the stop count it done at once.

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
    /// One timer, at the earliest limit of the hooks in flight when it was armed. A hook
    /// launched with an earlier limit pulls it in; a hook that ends leaves it (firing early is
    /// harmless: the slots are then scanned for what ran out and for the next limit). Hooks
    /// nearly always end long before their limit, so that scan is rare, while keeping the
    /// limits in order (a heap) would cost every hook a push and a pop, and re-arming the timer
    /// at every end a timer-wheel update.
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
        let task = async move { (index, CatchUnwind::new(hook).await) };
        // Without a subscriber that takes the span, entering it at every poll is work for nothing.
        let abort = if span.is_disabled() {
            self.running.spawn(task)
        } else {
            self.running.spawn(task.instrument(span))
        };
        let replaced = self.slots[index].replace(Slot { abort, began: Instant::now(), limit });
        if replaced.is_none() {
            self.in_flight += 1;
        }
        if self.timer_at.is_none_or(|at| limit < at) {
            self.arm(limit);
        }
    }

    fn arm(&mut self, at: Instant) {
        self.timer.as_mut().reset(at);
        self.timer_at = Some(at);
    }

    /// The hook in flight with the earliest limit, and that limit.
    fn earliest(&self) -> Option<(usize, Instant)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.as_ref().map(|slot| (index, slot.limit)))
            .min_by_key(|&(_, limit)| limit)
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
            if self.in_flight == 0 {
                return None;
            }
            let timer_armed = self.timer_at.is_some();
            let joined = tokio::select! {
                biased;
                joined = self.running.join_next() => joined,
                () = &mut self.timer, if timer_armed => {
                    self.timer_at = None;
                    let Some((index, limit)) = self.earliest() else { continue };
                    if limit > Instant::now() {
                        self.arm(limit);
                        continue;
                    }
                    let end = self.give_up(index);
                    // Others may have run out at the same time: the timer fires again at once.
                    if let Some((_, next)) = self.earliest() {
                        self.arm(next);
                    }
                    return Some((index, end));
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
