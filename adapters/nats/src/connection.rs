//! What the consumer and the publisher share: connecting with backoff until the start deadline,
//! health from the client's connection state, and a close that flushes first.

use std::time::Duration;

use async_nats::{Client, ConnectError, ConnectErrorKind, ConnectOptions, ServerAddr, connection::State};
use lifecycle_core::{ComponentId, Health, ResourceError, Retry, redact_url, scrub_password};
use tokio::time::Instant;

/// How long before its deadline a hook gives up, so that its own error reaches the report.
pub(crate) const MARGIN: Duration = Duration::from_millis(100);

/// One component's server: its name (the connection carries it, so the server's `connz` shows
/// whose it is) and its URL, never shown with the password.
#[derive(Clone)]
pub(crate) struct Server {
    pub(crate) component: ComponentId,
    pub(crate) url: String,
}

impl Server {
    pub(crate) fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// `text` (a client or server error) with the password hidden: errors may quote the URL.
    pub(crate) fn scrub(&self, text: &dyn std::fmt::Display) -> String {
        scrub_password(&text.to_string(), &self.url)
    }

    /// Connects, retrying while the server is unreachable, until `until`. Wrong credentials, a
    /// TLS failure or a malformed URL fail at once: no retry changes them.
    pub(crate) async fn connect(&self, until: Instant) -> Result<Client, ResourceError> {
        let credentials = self.credentials()?;
        let credentials = &credentials;
        let attempt = |attempt| async move {
            // Each attempt bounded, so a server that accepts and never answers is tried again.
            let left = until.saturating_duration_since(Instant::now());
            let component = self.component.clone();
            let options = match credentials.clone() {
                Credentials::None => ConnectOptions::new(),
                Credentials::Token(token) => ConnectOptions::with_token(token),
                Credentials::UserPassword(user, password) => {
                    ConnectOptions::with_user_and_password(user, password)
                }
            };
            let result = options
                .name(self.component.as_str())
                .connection_timeout(left.clamp(Duration::from_millis(10), Duration::from_secs(2)))
                .event_callback(move |event| {
                    let component = component.clone();
                    async move { tracing::info!(component = %component, %event, "NATS connection event") }
                })
                .connect(self.url.as_str())
                .await;
            if let Err(error) = &result {
                tracing::warn!(component = %self.component, url = %self.redacted_url(), error = %self.scrub(error), attempt, "NATS not reachable");
            }
            result
        };
        match Retry::until(until).run(attempt, is_transient).await {
            Ok(client) => {
                tracing::info!(component = %self.component, url = %self.redacted_url(), "connected to NATS");
                Ok(client)
            }
            Err(failure) => Err(ResourceError::Connect {
                component: self.component.clone(),
                url: self.redacted_url(),
                attempts: failure.attempts,
                elapsed: failure.elapsed,
                last_error: failure.last_error.map_or_else(
                    || "no answer before the start deadline".to_owned(),
                    |error| self.describe(&error),
                ),
            }),
        }
    }

    /// The credentials in the (first) URL: async-nats parses them but does not send them.
    fn credentials(&self) -> Result<Credentials, ResourceError> {
        let first = self.url.split(',').next().unwrap_or_default().trim();
        let address = first.parse::<ServerAddr>().map_err(|error| ResourceError::InvalidUrl {
            component: self.component.clone(),
            url: self.redacted_url(),
            reason: self.scrub(&error),
        })?;
        Ok(match (address.username(), address.password()) {
            (Some(user), Some(password)) => Credentials::UserPassword(user.to_owned(), password.to_owned()),
            (Some(token), None) => Credentials::Token(token.to_owned()),
            _ => Credentials::None,
        })
    }

    /// The client's error with its cause: async-nats's `Display` is the kind alone ("IO
    /// error"), which does not tell a refused connection from a reset one.
    fn describe(&self, error: &ConnectError) -> String {
        match std::error::Error::source(error) {
            Some(cause) => self.scrub(&format_args!("{error}: {cause}")),
            None => self.scrub(error),
        }
    }

    /// Flushes what is buffered (acks, naks, publishes) until `until`, then closes the
    /// connection. An error when the flush did not complete: the messages may be lost.
    pub(crate) async fn close(&self, client: Client, until: Instant) -> Result<(), String> {
        let flushed = match tokio::time::timeout_at(until, client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("flush failed: {}", self.scrub(&error))),
            Err(_) => Err("flush did not complete before the stop deadline".to_owned()),
        };
        // `drain` unsubscribes, flushes again and closes; the connection's own task ends then.
        if let Err(error) = client.drain().await {
            tracing::debug!(component = %self.component, error = %self.scrub(&error), "NATS connection already closed");
        }
        flushed
    }
}

/// How the client proves who it is: what the URL's user info says.
#[derive(Clone)]
enum Credentials {
    None,
    /// `nats://token@host`.
    Token(String),
    /// `nats://user:password@host`.
    UserPassword(String, String),
}

/// Whether retrying can help: the server is not reachable (yet), rather than refusing us.
fn is_transient(error: &ConnectError) -> bool {
    matches!(error.kind(), ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns)
}

/// Health from the connection state: a client that lost its server reconnects by itself, so it
/// is degraded, not unhealthy (every instance shares the server: taking them all out of their
/// balancer at once turns a blip into an outage).
pub(crate) fn health(client: Option<&Client>, component: &ComponentId) -> Health {
    match client.map(Client::connection_state) {
        Some(State::Connected) => Health::Healthy,
        Some(State::Disconnected | State::Pending) => {
            Health::Degraded("NATS connection lost; the client is reconnecting".to_owned())
        }
        None => Health::Unhealthy(ResourceError::NotRunning { component: component.clone() }.to_string()),
    }
}
