//! The publisher component: a NATS client other components hold through `Dep<NatsPublisher>`,
//! connected at start and flushed, then closed, at stop.

use std::fmt;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use async_nats::{Client, jetstream};
use lifecycle_core::{BoxError, Component, ComponentId, ComponentOptions, Context, Health, ResourceError};

use crate::connection::{self, MARGIN, Server};

/// A NATS client as a component: publish through [`client`](NatsPublisher::client) or
/// [`jetstream`](NatsPublisher::jetstream); what is still buffered when it stops is flushed.
/// Components that publish depend on it, so they stop (and stop publishing) before it does.
pub struct NatsPublisher {
    server: Server,
    options: ComponentOptions,
    /// The client of the current start; a restart puts a new one in.
    client: RwLock<Option<Client>>,
}

impl NatsPublisher {
    /// A publisher for `url` (`nats://user:password@host:4222`), registered as `name`.
    pub fn new(name: impl Into<ComponentId>, url: impl Into<String>) -> Self {
        Self {
            server: Server { component: name.into(), url: url.into() },
            options: ComponentOptions::new(),
            client: RwLock::new(None),
        }
    }

    /// The component's timeouts, criticality and restart policy.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    /// The client, between the component's start and its stop (a cheap handle: clones share
    /// the connection).
    pub fn client(&self) -> Result<Client, ResourceError> {
        self.slot()
            .clone()
            .ok_or_else(|| ResourceError::NotRunning { component: self.server.component.clone() })
    }

    /// A JetStream context on the client, for publishes the server acknowledges.
    pub fn jetstream(&self) -> Result<jetstream::Context, ResourceError> {
        self.client().map(jetstream::new)
    }

    /// The URL with its password hidden.
    pub fn redacted_url(&self) -> String {
        self.server.redacted_url()
    }

    fn slot(&self) -> std::sync::RwLockReadGuard<'_, Option<Client>> {
        self.client.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn replace(&self, client: Option<Client>) -> Option<Client> {
        std::mem::replace(&mut *self.client.write().unwrap_or_else(PoisonError::into_inner), client)
    }
}

impl Component for NatsPublisher {
    fn name(&self) -> ComponentId {
        self.server.component.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let client = self.server.connect(ctx.give_up_at(MARGIN, Duration::from_secs(15))).await?;
        // A restart's stop already took the last client out; one left is closed anyway.
        if let Some(previous) = self.replace(Some(client)) {
            let _ = previous.drain().await;
        }
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        let Some(client) = self.replace(None) else { return Ok(()) };
        let until = ctx.give_up_at(MARGIN, Duration::from_secs(10));
        self.server.close(client, until).await.map_err(|error| {
            format!(
                "component `{}`: {error}; messages published just before the stop may be lost",
                self.server.component
            )
            .into()
        })
    }

    async fn health(&self) -> Health {
        connection::health(self.slot().as_ref(), &self.server.component)
    }
}

impl fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsPublisher")
            .field("name", &self.server.component)
            .field("url", &self.redacted_url())
            .field("state", &self.slot().as_ref().map(Client::connection_state))
            .finish()
    }
}
