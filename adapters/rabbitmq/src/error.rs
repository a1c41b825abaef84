//! Errors of what the components do after connecting, each naming the component.

use lifecycle_core::ComponentId;

/// What went wrong setting up a consumer or publisher on its connection, or publishing.
/// Connection errors are [`lifecycle_core::ResourceError`]s, like every other adapter's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitError {
    /// The queue is not on the broker: not retried, someone has to declare it.
    #[error("component `{component}`: queue `{queue}` does not exist on {url}")]
    QueueNotFound {
        /// The component.
        component: ComponentId,
        /// The queue it was configured with.
        queue: String,
        /// The broker's URL, password hidden.
        url: String,
    },
    /// A step after connecting (opening the channel, qos, consume, confirm mode) failed.
    #[error("component `{component}`: {step} failed on {url}: {reason}")]
    Setup {
        /// The component.
        component: ComponentId,
        /// What it was doing.
        step: &'static str,
        /// The broker's URL, password hidden.
        url: String,
        /// What the broker or client said, password hidden.
        reason: String,
    },
    /// The publisher was used before its start, or after its stop.
    #[error("component `{component}` is not running: its channel exists between its start and its stop")]
    NotRunning {
        /// The component.
        component: ComponentId,
    },
    /// A publish could not be sent, or its confirm did not come (the channel or connection
    /// closed first).
    #[error("component `{component}`: publish failed: {reason}")]
    Publish {
        /// The component.
        component: ComponentId,
        /// What the broker or client said, password hidden.
        reason: String,
    },
}
