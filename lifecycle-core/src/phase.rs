//! The phase of the whole service, from starting to stopped.

use std::fmt;

/// Where the service is in its life. Phases only move forward, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Components are starting.
    Starting,
    /// Every component started; the service is ready for traffic.
    Ready,
    /// Shutdown began: the service is unready, drain hooks run and the drain delay passes,
    /// while it keeps serving.
    Draining,
    /// Components are stopping in reverse dependency order.
    Stopping,
    /// The run is over.
    Stopped,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        })
    }
}
