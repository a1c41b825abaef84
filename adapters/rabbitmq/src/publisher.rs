//! The publisher component: a channel in confirm mode other components publish through
//! (`Dep<RabbitPublisher>`), opened at start; at stop the confirms still outstanding are waited
//! for, then channel and connection are closed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use lifecycle_core::{BoxError, Component, ComponentId, ComponentOptions, Context, Health};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::RabbitError;
use crate::connection::{self, Broker, MARGIN};

/// A RabbitMQ channel with publisher confirms, as a component: publish through
/// [`publish`](RabbitPublisher::publish) and await the [`Confirm`] for the broker's answer.
/// Components that publish depend on it, so they stop (and stop publishing) before it does;
/// its stop then waits for every confirm still outstanding, within its stop timeout.
pub struct RabbitPublisher {
    broker: Broker,
    options: ComponentOptions,
    counters: Arc<Counters>,
    /// The channel of the current start; a restart puts a new one in.
    open: RwLock<Option<Open>>,
}

/// Counters of a publisher over its whole life (every start): see [`RabbitPublisher::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherStats {
    /// Messages sent to the broker.
    pub published: u64,
    /// Messages the broker confirmed (`basic.ack`): it has taken responsibility for them.
    pub confirmed: u64,
    /// Messages the broker refused (`basic.nack`).
    pub nacked: u64,
    /// Messages whose confirm has not come yet.
    pub outstanding: u64,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
}

/// One start's connection and channel.
struct Open {
    connection: Connection,
    channel: Channel,
    name: String,
    pending: Arc<Pending>,
}

/// The confirms of one channel not yet answered.
#[derive(Default)]
struct Pending {
    /// Published and not yet confirmed (nor failed).
    count: AtomicU64,
    /// Confirms whose [`Confirm`] was dropped before the answer came: the stop waits for them.
    orphans: Mutex<Vec<PublisherConfirm>>,
    /// Woken when `count` falls or an orphan is added.
    changed: Notify,
}

impl Pending {
    fn settled(&self, counters: &Counters, outcome: &Result<Confirmation, lapin::Error>) {
        match outcome {
            Ok(Confirmation::Ack(_)) => Counters::bump(&counters.confirmed),
            Ok(Confirmation::Nack(_)) => Counters::bump(&counters.nacked),
            Ok(Confirmation::NotRequested) | Err(_) => {}
        }
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Waits until every confirm is answered, or `until`; returns how many were not.
    async fn settle(&self, counters: &Counters, until: Instant) -> u64 {
        let mut orphans = FuturesUnordered::new();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the checks, so a change between them and the wait is not missed.
            changed.as_mut().enable();
            orphans.extend(std::mem::take(&mut *self.orphans.lock().unwrap_or_else(PoisonError::into_inner)));
            let left = self.count.load(Ordering::Acquire);
            if left == 0 {
                return 0;
            }
            tokio::select! {
                _ = changed => {}
                Some(outcome) = orphans.next(), if !orphans.is_empty() => self.settled(counters, &outcome),
                _ = tokio::time::sleep_until(until) => return left,
            }
        }
    }
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl RabbitPublisher {
    /// A publisher for `url` (`amqp://user:password@host:5672/%2f`), registered as `name`.
    pub fn new(name: impl Into<ComponentId>, url: impl Into<String>) -> Self {
        Self {
            broker: Broker { component: name.into(), url: url.into() },
            options: ComponentOptions::new(),
            counters: Arc::default(),
            open: RwLock::new(None),
        }
    }

    /// The component's timeouts, criticality and restart policy.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    /// Publishes `payload` to `exchange` (`""`: the default exchange, which routes to the queue
    /// named `routing_key`). Returns once the message is sent; await the [`Confirm`] for the
    /// broker's answer. A `Confirm` dropped unanswered is still waited for at stop.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirm, RabbitError> {
        self.publish_with(exchange, routing_key, BasicPublishOptions::default(), payload, properties).await
    }

    /// [`publish`](RabbitPublisher::publish) with `basic.publish` options (`mandatory`: an
    /// unroutable message comes back in the confirmation).
    pub async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirm, RabbitError> {
        let (channel, pending) = {
            let open = self.slot();
            let open = open
                .as_ref()
                .ok_or_else(|| RabbitError::NotRunning { component: self.broker.component.clone() })?;
            (open.channel.clone(), Arc::clone(&open.pending))
        };
        // Counted before it is sent, so that a stop racing this publish waits for it.
        pending.count.fetch_add(1, Ordering::AcqRel);
        match channel.basic_publish(exchange.into(), routing_key.into(), options, payload, properties).await {
            Ok(confirm) => {
                Counters::bump(&self.counters.published);
                Ok(Confirm {
                    inner: Some(confirm),
                    pending,
                    counters: Arc::clone(&self.counters),
                    component: self.broker.component.clone(),
                })
            }
            Err(error) => {
                pending.count.fetch_sub(1, Ordering::AcqRel);
                pending.changed.notify_waiters();
                Err(RabbitError::Publish {
                    component: self.broker.component.clone(),
                    reason: self.broker.scrub(&error),
                })
            }
        }
    }

    /// The counters, over the component's whole life.
    pub fn stats(&self) -> PublisherStats {
        PublisherStats {
            published: self.counters.published.load(Ordering::Relaxed),
            confirmed: self.counters.confirmed.load(Ordering::Relaxed),
            nacked: self.counters.nacked.load(Ordering::Relaxed),
            outstanding: self.slot().as_ref().map_or(0, |open| open.pending.count.load(Ordering::Relaxed)),
        }
    }

    /// The name of the current start's connection, as the broker shows it; `None` when it is
    /// not running.
    pub fn connection_name(&self) -> Option<String> {
        self.slot().as_ref().map(|open| open.name.clone())
    }

    /// The URL with its password hidden.
    pub fn redacted_url(&self) -> String {
        self.broker.redacted_url()
    }

    fn slot(&self) -> std::sync::RwLockReadGuard<'_, Option<Open>> {
        self.open.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn replace(&self, open: Option<Open>) -> Option<Open> {
        std::mem::replace(&mut *self.open.write().unwrap_or_else(PoisonError::into_inner), open)
    }

    async fn close(&self, open: &Open, until: Instant) -> Result<(), String> {
        if open.channel.status().connected()
            && let Ok(Err(error)) = tokio::time::timeout_at(until, open.channel.close(200, "OK".into())).await
        {
            tracing::debug!(component = %self.broker.component, error = %self.broker.scrub(&error), "RabbitMQ channel already closed");
        }
        self.broker.close(&open.connection, until).await
    }
}

impl Component for RabbitPublisher {
    fn name(&self) -> ComponentId {
        self.broker.component.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let until = ctx.give_up_at(MARGIN, Duration::from_secs(15));
        let connected = self.broker.connect(until).await?;
        let setup = async {
            let channel =
                connected.connection.create_channel().await.map_err(|e| ("opening a channel", e))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| ("enabling publisher confirms (confirm.select)", e))?;
            Ok::<_, (&'static str, lapin::Error)>(channel)
        };
        let channel = match setup.await {
            Ok(channel) => channel,
            Err((step, error)) => {
                let _ = self.broker.close(&connected.connection, until).await;
                return Err(RabbitError::Setup {
                    component: self.broker.component.clone(),
                    step,
                    url: self.redacted_url(),
                    reason: self.broker.scrub(&error),
                }
                .into());
            }
        };
        let watch = Watch {
            component: self.broker.component.clone(),
            events: connected.connection.events_listener(),
            status: connected.connection.status().clone(),
            channel: channel.clone(),
            token: ctx.token().clone(),
        };
        let open =
            Open { connection: connected.connection, channel, name: connected.name, pending: Arc::default() };
        // A restart's stop already took the last channel out; one left is closed anyway.
        if let Some(previous) = self.replace(Some(open)) {
            let _ = self.close(&previous, until).await;
        }
        ctx.tasks().spawn("rabbitmq_connection", watch.run());
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        let Some(open) = self.replace(None) else { return Ok(()) };
        let deadline = ctx.deadline().unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
        // Most of the time left for the confirms, some for the close.
        let keep = (deadline.saturating_duration_since(Instant::now()) / 5).max(MARGIN);
        let before = self.stats();
        let unconfirmed =
            open.pending.settle(&self.counters, deadline.checked_sub(keep).unwrap_or(deadline)).await;
        let closed = self.close(&open, ctx.give_up_at(MARGIN / 2, Duration::from_secs(1))).await;
        let after = self.stats();
        let mut note = format!(
            "confirms waited for at stop: {} confirmed, {} nacked",
            after.confirmed - before.confirmed,
            after.nacked - before.nacked
        );
        if unconfirmed > 0 {
            note.push_str(&format!("; {unconfirmed} unconfirmed at the stop deadline"));
        }
        ctx.note(note);
        if unconfirmed > 0 {
            return Err(format!(
                "component `{}`: gave up waiting for {unconfirmed} publisher confirm(s) at the stop deadline; those messages may be lost",
                self.broker.component
            )
            .into());
        }
        closed.map_err(|error| format!("component `{}`: {error}", self.broker.component).into())
    }

    async fn health(&self) -> Health {
        connection::health(self.slot().as_ref().map(|open| &open.connection), &self.broker.component)
    }
}

impl fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisher")
            .field("name", &self.broker.component)
            .field("url", &self.redacted_url())
            .field("connection", &self.connection_name())
            .field("stats", &self.stats())
            .finish()
    }
}

/// The task that fails when the connection or the channel is lost (a broker restart, or a
/// publish to an exchange that does not exist, which closes the channel): with a restart policy
/// the publisher then starts again on a new connection.
struct Watch<E> {
    component: ComponentId,
    events: E,
    status: lapin::ConnectionStatus,
    channel: Channel,
    token: lifecycle_core::CancellationToken,
}

impl<E: futures_util::Stream<Item = lapin::Event> + Unpin> Watch<E> {
    async fn run(mut self) -> Result<(), String> {
        loop {
            // Woken by the connection's events, and once a second anyway: not every way a
            // connection ends is sent as an event.
            let event = tokio::select! {
                _ = self.token.cancelled() => return Ok(()),
                event = self.events.next() => event,
                _ = tokio::time::sleep(Duration::from_secs(1)) => None,
            };
            if self.token.is_cancelled() {
                return Ok(());
            }
            let lost = if !self.status.connected() {
                Some("the connection")
            } else if !self.channel.status().connected() && !self.channel.status().closing() {
                Some("the channel")
            } else {
                None
            };
            if let Some(what) = lost {
                let cause = match event {
                    Some(lapin::Event::Error(error)) => format!(": {error}"),
                    _ => String::new(),
                };
                return Err(format!("component `{}`: {what} was lost{cause}", self.component));
            }
        }
    }
}

/// The broker's answer to one publish: [`Confirmation::Ack`] once it took the message,
/// [`Confirmation::Nack`] when it refused it. Dropped unanswered, the publisher's stop still
/// waits for it.
#[must_use = "a confirm says whether the broker took the message"]
pub struct Confirm {
    inner: Option<PublisherConfirm>,
    pending: Arc<Pending>,
    counters: Arc<Counters>,
    component: ComponentId,
}

impl Future for Confirm {
    type Output = Result<Confirmation, RabbitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(RabbitError::Publish {
                component: self.component.clone(),
                reason: "confirm polled after it completed".to_owned(),
            }));
        };
        let outcome = match inner.poll_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(outcome) => outcome,
        };
        self.inner = None;
        self.pending.settled(&self.counters, &outcome);
        Poll::Ready(outcome.map_err(|error| RabbitError::Publish {
            component: self.component.clone(),
            reason: format!("no confirm: {error}"),
        }))
    }
}

impl Drop for Confirm {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            self.pending.orphans.lock().unwrap_or_else(PoisonError::into_inner).push(inner);
            self.pending.changed.notify_waiters();
        }
    }
}

impl fmt::Debug for Confirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Confirm")
            .field("component", &self.component)
            .field("done", &self.inner.is_none())
            .finish()
    }
}
