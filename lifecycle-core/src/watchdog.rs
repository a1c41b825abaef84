//! The watchdog: an OS thread that ends the process at the shutdown deadline plus a grace,
//! whatever the runtime is doing. A hook stuck in blocking code, or a `spawn_blocking` that never
//! returns, can stall every runtime thread; it cannot stall this one.
//!
//! It is the one part of the crate on the real clock: it must fire even when tokio's clock is
//! paused or its timers are never driven.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::exit::EXIT_DEADLINE;
use crate::failure::HookName;
use tokio::task::AbortHandle;

use crate::failure::Stage;
use crate::progress::Progress;
use crate::{ComponentId, Shutdown, ShutdownReason, Tasks, lock};

pub(crate) struct Watchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
    grace: Duration,
}

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    disarmed: bool,
    /// Set once the run returned: its exit code, and what it gave up on.
    ended: Option<(i32, LeftBehind)>,
}

/// A hook the run gave up on, still running as far as anyone knows.
#[derive(Clone, Debug)]
pub(crate) struct AbandonedHook {
    pub(crate) component: ComponentId,
    pub(crate) stage: Stage,
    pub(crate) handle: AbortHandle,
}

/// What a run gave up on and could not abort: hooks and blocking tasks that may still hold a
/// thread, and so the process.
#[derive(Default)]
pub(crate) struct LeftBehind {
    hooks: Vec<AbandonedHook>,
    tasks: Vec<(ComponentId, Tasks)>,
}

impl LeftBehind {
    pub(crate) fn new(hooks: Vec<AbandonedHook>, tasks: Vec<(ComponentId, Tasks)>) -> Self {
        Self { hooks, tasks }
    }

    /// What is still running now, described; empty when nothing is.
    fn still_running(&self) -> Vec<String> {
        let hooks = self
            .hooks
            .iter()
            .filter(|hook| !hook.handle.is_finished())
            .map(|hook| format!("the {} hook of `{}`", HookName(hook.stage), hook.component));
        let tasks = self.tasks.iter().flat_map(|(component, tasks)| {
            tasks.outstanding().into_iter().map(move |task| format!("task `{}` of `{component}`", task.name))
        });
        hooks.chain(tasks).collect()
    }
}

impl Watchdog {
    /// Starts the thread, unarmed. Without a thread (the OS refused one) there is no watchdog;
    /// that is logged, and the run goes on.
    pub(crate) fn start(progress: Arc<Progress>, shutdown: Shutdown, grace: Duration) -> Option<Self> {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let watched = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("lifecycle-watchdog".into())
            .spawn(move || watch(&watched, &progress, &shutdown));
        match spawned {
            Ok(_) => Some(Self { shared, grace }),
            Err(error) => {
                tracing::error!(%error, "cannot start the watchdog thread; the shutdown deadline is not enforced");
                None
            }
        }
    }

    /// Ends the process at `deadline` plus the grace, unless the run ends first.
    pub(crate) fn arm(&self, deadline: tokio::time::Instant) {
        // Tokio's clock may be paused (tests); the watchdog counts real time from now.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        lock(&self.shared.0).deadline = Some(Instant::now() + left + self.grace);
        self.shared.1.notify_all();
    }

    /// The run returned with `exit_code`. If what it left behind still runs at the deadline,
    /// the process ends then with that code and a one-line note; if nothing does (or nothing
    /// was left), the process lives on.
    pub(crate) fn run_ended(self, exit_code: i32, left: LeftBehind) {
        let nothing_left = left.still_running().is_empty();
        let mut state = lock(&self.shared.0);
        if nothing_left {
            state.disarmed = true;
        } else {
            state.ended = Some((exit_code, left));
        }
        drop(state);
        self.shared.1.notify_all();
    }
}

impl Drop for Watchdog {
    /// A run dropped before it ended (its future was cancelled) leaves nothing to watch.
    fn drop(&mut self) {
        let mut state = lock(&self.shared.0);
        if state.ended.is_none() {
            state.disarmed = true;
        }
        drop(state);
        self.shared.1.notify_all();
    }
}

fn watch(shared: &(Mutex<State>, Condvar), progress: &Progress, shutdown: &Shutdown) {
    let (state, wake) = shared;
    let mut guard = lock(state);
    loop {
        if guard.disarmed {
            return;
        }
        guard = match guard.deadline {
            None => wake.wait(guard).unwrap_or_else(std::sync::PoisonError::into_inner),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                wake.wait_timeout(guard, deadline - now).unwrap_or_else(std::sync::PoisonError::into_inner).0
            }
        };
    }
    if let Some((exit_code, left)) = guard.ended.take() {
        drop(guard);
        // The run's report stands; only say what kept the process alive past it.
        let running = left.still_running();
        if running.is_empty() {
            return;
        }
        eprintln!(
            "lifecycle: the run ended with exit code {exit_code}, but {} still held the process at the deadline; ending it with exit code {exit_code}",
            running.join(", ")
        );
        std::process::exit(exit_code);
    }
    drop(guard);
    let reason = shutdown.reason().unwrap_or_else(|| ShutdownReason::Requested {
        message: "the watchdog found no recorded reason".into(),
        exit_code: EXIT_DEADLINE,
    });
    let report = progress.report(reason, shutdown.forced_by(), true);
    eprintln!("lifecycle: shutdown deadline passed; ending the process now");
    report.print();
    std::process::exit(report.exit_code);
}
