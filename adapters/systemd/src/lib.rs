//! systemd's readiness protocol for a lifecycle run: `READY=1` when every component has started,
//! `STOPPING=1` the moment shutdown begins, and `STATUS=` lines along the way, so a
//! `Type=notify` unit knows the service's real state.
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
//! Socket activation, `MAINPID=` during upgrades, the watchdog and `EXTEND_TIMEOUT_USEC=` come with
//! the zero-downtime upgrade work.

use lifecycle_core::{BoxError, Component, ComponentId, ComponentOptions, Context, Phase};
use sd_notify::NotifyState;

/// Tells systemd when the service is ready and when it begins to stop.
#[derive(Debug, Default)]
pub struct SystemdNotify {
    _private: (),
}

impl SystemdNotify {
    /// The component, named `systemd_notify`.
    pub fn new() -> Self {
        Self::default()
    }
}

fn notify(name: &ComponentId, states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        // systemd not listening is no reason to stop serving.
        tracing::warn!(component = %name, %error, "sd_notify failed");
    }
}

impl Component for SystemdNotify {
    fn name(&self) -> ComponentId {
        "systemd_notify".into()
    }

    fn options(&self) -> ComponentOptions {
        // Failing to notify must not fail the service.
        ComponentOptions::new().critical(false)
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            tracing::debug!(component = %ctx.name(), "not started by systemd (no NOTIFY_SOCKET); nothing to notify");
            return Ok(());
        }
        let (lifecycle, name) = (ctx.lifecycle().clone(), ctx.name().clone());
        ctx.tasks().spawn("sd_notify", async move {
            lifecycle.reached(Phase::Ready).await;
            // A shutdown during start skips `Ready`; systemd then only hears `STOPPING=1`.
            if lifecycle.phase() == Phase::Ready {
                notify(&name, &[NotifyState::Ready, NotifyState::Status("ready")]);
            }
            lifecycle.reached(Phase::Draining).await;
            notify(&name, &[NotifyState::Stopping, NotifyState::Status("draining")]);
        });
        Ok(())
    }
}
