//! RabbitMQ as lifecycle components: a [`RabbitConsumer`] that hands each delivery of a queue
//! to a [`MessageHandler`] and acks it only once the handler succeeded, and a
//! [`RabbitPublisher`] with publisher confirms whose outstanding confirms are waited for at stop.
//!
//! Both connect at start with backoff until the start deadline (an unreachable broker is
//! retried, wrong credentials are not), name their connection after the component (with a
//! random suffix, as `rabbitmqctl list_connections name` shows it), show their URL without its
//! password everywhere, and close channel and connection with a normal close at stop. A lost
//! connection fails the component's task: give it a restart policy to connect again.
//!
//! `lapin` is re-exported, so its version is pinned once.
//!
//! ```
//! use lifecycle_core::{BoxError, CancellationToken, RegistryBuilder};
//! use lifecycle_rabbitmq::{Delivery, MessageHandler, RabbitConsumer, RabbitPublisher};
//!
//! struct Print;
//!
//! impl MessageHandler for Print {
//!     async fn handle(&self, delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
//!         println!("{}: {} bytes", delivery.routing_key(), delivery.body().len());
//!         Ok(())
//!     }
//! }
//!
//! let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
//! let mut builder = RegistryBuilder::new();
//! let events = builder.add(RabbitPublisher::new("events", url)).dep();
//! builder.add(RabbitConsumer::new("orders_consumer", url, "orders", Print).concurrency(8).prefetch(32));
//! // Components holding `events` publish with `events.publish("", "orders", b"..", Default::default())`.
//! # let _ = events;
//! ```

mod connection;
mod consumer;
mod error;
mod publisher;

pub use consumer::{ConsumerStats, Delivery, MessageHandler, OnError, RabbitConsumer};
pub use error::RabbitError;
pub use lapin;
pub use publisher::{Confirm, PublisherStats, RabbitPublisher};
