//! Errors of the JetStream set-up a consumer does at start, each naming the component.

use lifecycle_core::ComponentId;

/// What went wrong binding a consumer, after the connection itself worked. Connection errors
/// are [`lifecycle_core::ResourceError`]s, like every other adapter's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The stream is not on the server: not retried, someone has to create it.
    #[error("component `{component}`: stream `{stream}` does not exist on {url}")]
    StreamNotFound {
        /// The component.
        component: ComponentId,
        /// The stream it was configured with.
        stream: String,
        /// The server's URL, password hidden.
        url: String,
    },
    /// The stream could not be looked up, or the consumer bound or created.
    #[error(
        "component `{component}`: cannot bind consumer `{consumer}` of stream `{stream}` on {url}: {reason}"
    )]
    Bind {
        /// The component.
        component: ComponentId,
        /// The stream.
        stream: String,
        /// The durable consumer's name.
        consumer: String,
        /// The server's URL, password hidden.
        url: String,
        /// What the server or client said, password hidden.
        reason: String,
    },
}
