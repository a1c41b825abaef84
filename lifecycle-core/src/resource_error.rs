//! The errors every connection-pool adapter reports, in one shape: each names the component and
//! shows its URL without the password.

use std::time::Duration;

use crate::ComponentId;

/// What went wrong with a pool-like component (database, cache, broker).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The URL cannot be used: not retried.
    #[error("component `{component}`: invalid URL {url}: {reason}")]
    InvalidUrl {
        /// The component.
        component: ComponentId,
        /// The URL, password hidden.
        url: String,
        /// What is wrong with it, password hidden.
        reason: String,
    },
    /// No working connection before the start deadline, or an error retrying cannot fix.
    #[error(
        "component `{component}` could not connect to {url} ({attempts} attempts in {elapsed:.1?}): {last_error}"
    )]
    Connect {
        /// The component.
        component: ComponentId,
        /// The URL, password hidden.
        url: String,
        /// How many times it tried.
        attempts: u32,
        /// For how long.
        elapsed: Duration,
        /// The last error, password hidden.
        last_error: String,
    },
    /// The resource was used before its component started, or after it stopped.
    #[error("component `{component}` is not running: its pool exists between its start and its stop")]
    NotRunning {
        /// The component.
        component: ComponentId,
    },
    /// The stop gave up waiting for connections in use.
    #[error("component `{component}` stopped waiting after {waited:.1?}: {out} connection(s) still in use")]
    StillInUse {
        /// The component.
        component: ComponentId,
        /// Connections not returned.
        out: usize,
        /// How long it waited.
        waited: Duration,
    },
}
