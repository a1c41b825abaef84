//! The watchdog: an OS thread that ends the process at the shutdown deadline, whatever the
//! runtime is doing. A hook stuck in blocking code, or a `spawn_blocking` that never returns,
//! can stall every runtime thread; it cannot stall this one.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::progress::Progress;
use crate::report::EXIT_DEADLINE;
use crate::{Shutdown, ShutdownReason, lock};

pub(crate) struct Watchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
    disarm_on_drop: bool,
}

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    disarmed: bool,
}

impl Watchdog {
    /// Starts the thread, unarmed. Without a thread (the OS refused one) there is no watchdog;
    /// that is logged, and the run goes on.
    pub(crate) fn start(progress: Arc<Progress>, shutdown: Shutdown) -> Option<Self> {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let watched = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("lifecycle-watchdog".into())
            .spawn(move || watch(&watched, &progress, &shutdown));
        match spawned {
            Ok(_) => Some(Self { shared, disarm_on_drop: true }),
            Err(error) => {
                tracing::error!(%error, "cannot start the watchdog thread; the shutdown deadline is not enforced");
                None
            }
        }
    }

    /// Ends the process at `deadline` unless disarmed first.
    pub(crate) fn arm(&self, deadline: Instant) {
        lock(&self.shared.0).deadline = Some(deadline);
        self.shared.1.notify_all();
    }

    /// Leaves the watchdog armed after this value is gone.
    pub(crate) fn keep_armed(mut self) {
        self.disarm_on_drop = false;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.disarm_on_drop {
            lock(&self.shared.0).disarmed = true;
            self.shared.1.notify_all();
        }
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
    drop(guard);
    let reason = shutdown
        .reason()
        .unwrap_or_else(|| ShutdownReason::Requested { message: "unknown".into(), exit_code: EXIT_DEADLINE });
    let mut report = progress.report(reason, shutdown.forced_by(), true);
    report.exit_code = EXIT_DEADLINE;
    eprintln!("lifecycle: shutdown deadline passed; ending the process now");
    report.print();
    std::process::exit(EXIT_DEADLINE);
}
