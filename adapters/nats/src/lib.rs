//! NATS as lifecycle components: a [`JetStreamConsumer`] that hands each message of a durable
//! pull consumer to a [`MessageHandler`] and acknowledges it only once the handler succeeded, and
//! a [`NatsPublisher`] whose client other components use and whose buffered messages are flushed
//! at stop.
//!
//! Both connect at start with backoff until the start deadline (an unreachable server is retried,
//! wrong credentials are not), show their URL without its password everywhere, and report
//! `Degraded` while the client reconnects by itself.
//!
//! `async_nats` is re-exported, so its version is pinned once.
//!
//! ```
//! use lifecycle_core::{BoxError, CancellationToken, RegistryBuilder};
//! use lifecycle_nats::{Delivery, JetStreamConsumer, MessageHandler, NatsPublisher};
//!
//! struct Print;
//!
//! impl MessageHandler for Print {
//!     async fn handle(&self, delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
//!         println!("{}: {} bytes", delivery.subject(), delivery.payload().len());
//!         Ok(())
//!     }
//! }
//!
//! let mut builder = RegistryBuilder::new();
//! let events = builder.add(NatsPublisher::new("events", "nats://127.0.0.1:4222")).dep();
//! builder.add(JetStreamConsumer::new("orders_consumer", "nats://127.0.0.1:4222", "ORDERS", "billing", Print).concurrency(8));
//! // Components holding `events` publish with `events.jetstream()?.publish(..)`.
//! # let _ = events;
//! ```

mod connection;
mod consumer;
mod error;
mod publisher;
mod pulls;

pub use async_nats;
pub use consumer::{ConsumerStats, Delivery, ESCALATE_AFTER, JetStreamConsumer, MessageHandler, OnError};
pub use error::NatsError;
pub use publisher::NatsPublisher;
