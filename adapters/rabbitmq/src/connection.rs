//! What the consumer and the publisher share: connecting with backoff until the start deadline
//! under a connection name the broker shows, health from the connection state, and a clean close.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use lifecycle_core::{ComponentId, Health, ResourceError, Retry, redact_url, scrub_password};
use tokio::time::Instant;

/// How long before its deadline a hook gives up, so that its own error reaches the report.
pub(crate) const MARGIN: Duration = Duration::from_millis(100);

/// The reply code of a normal close (AMQP `reply-success`).
const REPLY_SUCCESS: u16 = 200;

/// One component's broker: its name and its URL, never shown with the password.
#[derive(Clone)]
pub(crate) struct Broker {
    pub(crate) component: ComponentId,
    pub(crate) url: String,
}

/// A connection and the name the broker knows it by.
pub(crate) struct Connected {
    pub(crate) connection: Connection,
    pub(crate) name: String,
}

impl Broker {
    pub(crate) fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// `text` (a client or broker error) with the password hidden: errors may quote the URL.
    pub(crate) fn scrub(&self, text: &dyn std::fmt::Display) -> String {
        scrub_password(&text.to_string(), &self.url)
    }

    /// Connects, retrying while the broker is unreachable, until `until`. Wrong credentials, a
    /// missing virtual host or a malformed URL fail at once: no retry changes them.
    pub(crate) async fn connect(&self, until: Instant) -> Result<Connected, ResourceError> {
        let uri = self.url.parse::<AMQPUri>().map_err(|reason| ResourceError::InvalidUrl {
            component: self.component.clone(),
            url: self.redacted_url(),
            reason: self.scrub(&reason),
        })?;
        // The component's name and a random suffix: `rabbitmqctl list_connections name` tells
        // whose connection it is, and one start's connection from the next one's.
        let name = format!("{}-{:08x}", self.component, random_suffix());
        let uri = &uri;
        let name_ref = name.as_str();
        let attempt = |attempt| async move {
            // Each attempt bounded, so a broker that accepts and never answers is tried again.
            let left = until.saturating_duration_since(Instant::now());
            let bound = left.clamp(Duration::from_millis(10), Duration::from_secs(5));
            let properties = ConnectionProperties::default().with_connection_name(name_ref.into());
            let result =
                match tokio::time::timeout(bound, Connection::connect_uri(uri.clone(), properties)).await {
                    Ok(Ok(connection)) => Ok(connection),
                    Ok(Err(error)) => Err(Failure::Client(error)),
                    Err(_) => Err(Failure::TimedOut(bound)),
                };
            if let Err(error) = &result {
                tracing::warn!(component = %self.component, url = %self.redacted_url(), error = %self.describe(error), attempt, "RabbitMQ not reachable");
            }
            result
        };
        match Retry::until(until).run(attempt, Failure::is_transient).await {
            Ok(connection) => {
                tracing::info!(component = %self.component, url = %self.redacted_url(), connection = %name, "connected to RabbitMQ");
                Ok(Connected { connection, name })
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

    fn describe(&self, failure: &Failure) -> String {
        match failure {
            Failure::Client(error) => self.scrub(error),
            Failure::TimedOut(bound) => format!("no answer within {bound:.1?}"),
        }
    }

    /// Closes `connection` with a normal `connection.close` (the broker logs a client that
    /// closed, not one that vanished), waiting for the broker's answer until `until`.
    pub(crate) async fn close(&self, connection: &Connection, until: Instant) -> Result<(), String> {
        if !connection.status().connected() {
            return Ok(());
        }
        match tokio::time::timeout_at(until, connection.close(REPLY_SUCCESS, "OK".into())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if !connection.status().connected() => {
                // Closed meanwhile (by the broker, or a race with its own close): nothing to do.
                tracing::debug!(component = %self.component, error = %self.scrub(&error), "RabbitMQ connection already closed");
                Ok(())
            }
            Ok(Err(error)) => Err(format!("closing the connection failed: {}", self.scrub(&error))),
            Err(_) => {
                Err("the broker did not answer the connection close before the stop deadline".to_owned())
            }
        }
    }
}

/// Why a connection attempt failed.
enum Failure {
    Client(lapin::Error),
    TimedOut(Duration),
}

impl Failure {
    /// Whether retrying can help: the broker is not reachable (yet), or is starting, rather than
    /// refusing us.
    fn is_transient(&self) -> bool {
        let Self::Client(error) = self else { return true };
        match error.kind() {
            ErrorKind::IOError(_) | ErrorKind::MissingHeartbeatError => true,
            ErrorKind::ProtocolError(error) => match error.kind() {
                // A broker shutting down or still booting closes with 320 (or 541).
                AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED | AMQPHardError::INTERNALERROR) => true,
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::NOTFOUND) => false,
                _ => false,
            },
            _ => false,
        }
    }
}

/// A random 32-bit value: the standard library's per-process random hash keys, mixed with the
/// clock, so that two components (or two starts) of one process get different suffixes.
fn random_suffix() -> u32 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    // Truncation intended: 32 random bits are plenty to tell connections apart.
    hasher.finish() as u32
}

/// Health from the connection state. The adapter does not reconnect in place: a lost
/// connection fails the component's task, and its restart policy starts it afresh (without one,
/// a critical component's failure stops the service). Until then it is degraded, not unhealthy:
/// every instance shares the broker, and taking them all out of their balancer at once turns a
/// blip into an outage.
pub(crate) fn health(connection: Option<&Connection>, component: &ComponentId) -> Health {
    let Some(connection) = connection else {
        return Health::Unhealthy(ResourceError::NotRunning { component: component.clone() }.to_string());
    };
    let status = connection.status();
    if status.connected() && status.blocked() {
        Health::Degraded("RabbitMQ blocked the connection (a resource alarm): publishes wait".to_owned())
    } else if status.connected() {
        Health::Healthy
    } else if status.connecting() || status.reconnecting() {
        Health::Degraded("RabbitMQ connection being established".to_owned())
    } else {
        Health::Degraded(
            "RabbitMQ connection lost; the component fails so that its restart policy connects again"
                .to_owned(),
        )
    }
}
