//! systemd's notification protocol for a lifecycle run, so a `Type=notify` unit knows the
//! service's real state:
//!
//! - `READY=1` and `STATUS=` once every component has started;
//! - `WATCHDOG=1` every half of `WATCHDOG_USEC` when the unit sets `WatchdogSec=`;
//! - `STOPPING=1` the moment shutdown begins, then `EXTEND_TIMEOUT_USEC=` every second while
//!   components are still stopping within the run's own deadline, so a `TimeoutStopSec=` shorter
//!   than the deadline does not kill a stop that is making progress;
//! - during a zero-downtime upgrade (`lifecycle-handoff`), nothing from the retiring process
//!   after it handed over: the successor is the main process then.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) the component does nothing.
//!
//! ```
//! use lifecycle_core::RegistryBuilder;
//! use lifecycle_systemd::SystemdNotify;
//!
//! let mut builder = RegistryBuilder::new();
//! builder.add(SystemdNotify::new());
//! ```
//!
//! Socket activation (`LISTEN_FDS`) feeds the named listeners of `lifecycle-handoff`.

mod gate;

use std::time::Duration;

use tokio::time::Instant;

use lifecycle_core::{BoxError, Component, ComponentId, ComponentOptions, Context, LifecycleHandle, Phase};
use sd_notify::NotifyState;

pub use gate::ReadyGate;
pub use sd_notify;

/// How often `EXTEND_TIMEOUT_USEC=` is sent while the stop goes on.
const EXTEND_EVERY: Duration = Duration::from_secs(1);

/// How much time each `EXTEND_TIMEOUT_USEC=` asks for: a few periods, so one late message does
/// not end the service, while a hung process still meets systemd's timeout soon.
const EXTEND_BY: Duration = Duration::from_secs(3);

/// Tells systemd when the service is ready, that it is alive, and when it begins to stop.
#[derive(Debug, Default)]
pub struct SystemdNotify {
    ready_gate: Option<ReadyGate>,
}

impl SystemdNotify {
    /// The component, named `systemd_notify`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds `READY=1` back until `gate` opens, even once the run is ready. An upgraded process
    /// uses it to announce itself only after its predecessor told systemd the new `MAINPID=`.
    #[must_use]
    pub fn hold_ready_until(mut self, gate: ReadyGate) -> Self {
        self.ready_gate = Some(gate);
        self
    }
}

/// Sends `states` to systemd, logging (not failing) when it cannot: systemd not listening is no
/// reason to stop serving. Does nothing outside systemd.
pub fn notify(component: &ComponentId, states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(component = %component, %error, "sd_notify failed");
    }
}

/// Whether the process was started by systemd with a notification socket.
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

impl Component for SystemdNotify {
    fn name(&self) -> ComponentId {
        "systemd_notify".into()
    }

    fn options(&self) -> ComponentOptions {
        // Failing to notify must not fail the service. The stop lasts as long as the other
        // components' stops (bounded by the run's deadline), to keep extending systemd's timeout.
        ComponentOptions::new().critical(false).stop_timeout(Duration::from_secs(24 * 3600))
    }

    /// One per process: `READY=1` is sent once, when the service first turns ready.
    fn restartable(&self) -> bool {
        false
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        if !under_systemd() {
            tracing::debug!(component = %ctx.name(), "not started by systemd (no NOTIFY_SOCKET); nothing to notify");
            return Ok(());
        }
        let (lifecycle, name, gate) = (ctx.lifecycle().clone(), ctx.name().clone(), self.ready_gate.clone());
        ctx.tasks().spawn("sd_notify", async move {
            lifecycle.reached(Phase::Ready).await;
            // A shutdown during start skips `Ready`; systemd then only hears `STOPPING=1`.
            if lifecycle.phase() == Phase::Ready {
                if let Some(gate) = gate {
                    tokio::select! {
                        _ = gate.opened() => {}
                        _ = lifecycle.shutdown().requested() => {}
                    }
                }
                if !lifecycle.shutdown().is_requested() {
                    notify(&name, &[NotifyState::Ready, NotifyState::Status("ready")]);
                }
            }
        });
        if let Some(interval) = sd_notify::watchdog_enabled() {
            let (lifecycle, name, token) = (ctx.lifecycle().clone(), ctx.name().clone(), ctx.token().clone());
            tracing::info!(component = %ctx.name(), interval_ms = interval.as_millis() as u64, "systemd watchdog enabled");
            ctx.tasks().spawn("watchdog", async move {
                // Half the interval, as systemd recommends: one late tick does not trip it.
                let mut ticks = tokio::time::interval(interval / 2);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = ticks.tick() => {}
                    }
                    // After a hand-over the successor is the main process: only it pings.
                    if lifecycle.shutdown().is_handed_over() {
                        return;
                    }
                    notify(&name, &[NotifyState::Watchdog]);
                }
            });
        }
        Ok(())
    }

    async fn drain(&self, ctx: &Context) -> Result<(), BoxError> {
        if !under_systemd() || ctx.shutdown().is_handed_over() {
            return Ok(());
        }
        notify(ctx.name(), &[NotifyState::Stopping, NotifyState::Status("stopping")]);
        let (lifecycle, name, until) = (ctx.lifecycle().clone(), ctx.name().clone(), ctx.deadline());
        // Not tied to this component's token: it must outlive the other components' stops.
        ctx.tasks().spawn("extend_timeout", extend_timeout(lifecycle, name, until));
        Ok(())
    }
}

/// Sends `EXTEND_TIMEOUT_USEC=` every second until every other component has stopped or the
/// run's deadline (`until`) is reached: never asks for time past it.
async fn extend_timeout(lifecycle: LifecycleHandle, name: ComponentId, until: Option<Instant>) {
    let until = until.unwrap_or_else(|| Instant::now() + EXTEND_BY);
    let others_stopped =
        || lifecycle.components().iter().filter(|c| c.name != name).all(|c| c.outcome.is_some());
    let mut next_extension = Instant::now();
    // Checks for the end more often than it sends.
    while !others_stopped() {
        let now = Instant::now();
        let left = until.saturating_duration_since(now);
        if left.is_zero() {
            return;
        }
        if now >= next_extension {
            let extend = u32::try_from(EXTEND_BY.min(left).as_micros()).unwrap_or(u32::MAX);
            notify(&name, &[NotifyState::ExtendTimeoutUsec(extend)]);
            next_extension = now + EXTEND_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
