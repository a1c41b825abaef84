//! The consumer component: a `basic.consume` on an existing queue whose deliveries run through a
//! [`MessageHandler`], `concurrency` at a time, each acked only after its handler succeeded.
//!
//! At drain the consumer is cancelled (`basic.cancel`): the broker sends nothing more, and what
//! it had already sent but no handler took is nack'ed with requeue at once, for another
//! instance. At stop the handlers in flight get half the time left to finish and ack; then their
//! tokens are cancelled, and a handler still running just before the stop deadline is dropped.
//! Either way its delivery is nack'ed with requeue, never acked. Then the channel and the
//! connection are closed with a normal close (which requeues anything still unacked).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{DeliveryTag, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ErrorKind};
use lifecycle_core::{
    BoxError, CancellationToken, CatchUnwind, Component, ComponentId, ComponentOptions, Context, Health,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::RabbitError;
use crate::connection::{self, Broker, Connected, MARGIN};

/// Handles deliveries. Return `Ok` once the message's effects are durable: the consumer acks it
/// then. An error (or giving up when `cancel` fires at stop) leaves it to be delivered again
/// (or dead-lettered, by [`OnError::Reject`]), so make the effects idempotent (a unique key on
/// the message id). A panic counts as an error: the delivery goes by [`OnError`], and the
/// consumer and the service carry on.
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one delivery.
    fn handle<'a>(
        &'a self,
        delivery: &'a Delivery,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'a;
}

/// A message as the handler sees it, with what the broker says about its delivery.
pub struct Delivery {
    inner: lapin::message::Delivery,
}

impl Delivery {
    /// Its body.
    pub fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.inner.routing_key.as_str()
    }

    /// The exchange it was published to (empty for the default exchange).
    pub fn exchange(&self) -> &str {
        self.inner.exchange.as_str()
    }

    /// The publisher's id for it (the `message-id` property), if it set one.
    pub fn message_id(&self) -> Option<&str> {
        self.inner.properties.message_id().as_ref().map(|id| id.as_str())
    }

    /// Whether the broker delivered it before (to this consumer or another) without an ack.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// Its delivery tag on the consumer's channel.
    pub fn delivery_tag(&self) -> DeliveryTag {
        self.inner.delivery_tag
    }

    /// Its headers, if it has any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.inner.properties.headers().as_ref()
    }

    /// All its properties (content type, correlation id, timestamp..).
    pub fn properties(&self) -> &BasicProperties {
        &self.inner.properties
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("routing_key", &self.routing_key())
            .field("delivery_tag", &self.delivery_tag())
            .field("message_id", &self.message_id())
            .field("redelivered", &self.redelivered())
            .field("bytes", &self.body().len())
            .finish()
    }
}

/// What happens to a delivery whose handler failed. It is never acked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnError {
    /// `basic.nack` with requeue: the broker delivers it again (to this consumer or another).
    #[default]
    Requeue,
    /// `basic.reject` without requeue: the broker dead-letters it to the queue's dead-letter
    /// exchange (`x-dead-letter-exchange`), or drops it when the queue has none.
    Reject,
}

/// Counters of a consumer over its whole life (every start): see [`RabbitConsumer::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Deliveries whose handler is running now.
    pub in_flight: u64,
    /// Deliveries handled and acked.
    pub acked: u64,
    /// Deliveries nack'ed with requeue because their handler failed.
    pub nacked: u64,
    /// Deliveries rejected without requeue (dead-lettered) because their handler failed.
    pub rejected: u64,
    /// Deliveries the broker flagged as redelivered, handed to a handler.
    pub redelivered: u64,
    /// Deliveries given back at a drain or stop without being handled: their handler was
    /// cancelled at the stop timeout, or no handler had taken them yet. The broker delivers
    /// them again.
    pub left: u64,
}

#[derive(Debug, Default)]
struct Counters {
    in_flight: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    rejected: AtomicU64,
    redelivered: AtomicU64,
    left: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ConsumerStats {
        ConsumerStats {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            nacked: self.nacked.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            left: self.left.load(Ordering::Relaxed),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one start set up, and its stop takes apart. A restart's start puts a new one in.
struct Running {
    connection: Connection,
    subscription: Subscription,
    /// Parent of every handler's token: cancelled when the stop runs out of patience.
    handlers: CancellationToken,
    /// Cancelled just before the stop deadline: handlers still running are dropped.
    abandon: CancellationToken,
    /// The counters at the start, for the stop's note.
    since: ConsumerStats,
}

/// The consumer on its channel: what the drain needs, cloned out of the lock.
#[derive(Clone)]
struct Subscription {
    channel: Channel,
    /// The consumer tag, which is also the connection's name.
    tag: String,
    /// Cancelled at drain: no delivery handed to a handler after it.
    consuming: CancellationToken,
    /// Whether `basic.cancel` was sent (at drain, or by the stop).
    cancel_sent: Arc<AtomicBool>,
}

impl Subscription {
    /// Sends `basic.cancel` once, waiting for its `cancel-ok` until `until`: the broker sends no
    /// delivery after it.
    async fn cancel(&self, broker: &Broker, until: Instant) {
        self.consuming.cancel();
        if self.cancel_sent.swap(true, Ordering::AcqRel) || !self.channel.status().connected() {
            return;
        }
        let cancel = self.channel.basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
        match tokio::time::timeout_at(until, cancel).await {
            Ok(Ok(())) => tracing::debug!(component = %broker.component, "RabbitMQ consumer cancelled"),
            Ok(Err(error)) => {
                tracing::warn!(component = %broker.component, error = %broker.scrub(&error), "basic.cancel failed")
            }
            Err(_) => tracing::warn!(component = %broker.component, "basic.cancel not answered in time"),
        }
    }
}

/// A RabbitMQ queue consumer as a component.
pub struct RabbitConsumer<H> {
    broker: Broker,
    queue: String,
    concurrency: usize,
    prefetch: u16,
    on_error: OnError,
    options: ComponentOptions,
    handler: Arc<H>,
    counters: Arc<Counters>,
    running: Mutex<Option<Running>>,
}

impl<H: MessageHandler> RabbitConsumer<H> {
    /// A consumer named `name` of the existing queue `queue` at `url`
    /// (`amqp://user:password@host:5672/%2f`). 4 deliveries handled at a time, 16 prefetched.
    pub fn new(
        name: impl Into<ComponentId>,
        url: impl Into<String>,
        queue: impl Into<String>,
        handler: H,
    ) -> Self {
        Self {
            broker: Broker { component: name.into(), url: url.into() },
            queue: queue.into(),
            concurrency: 4,
            prefetch: 16,
            on_error: OnError::Requeue,
            options: ComponentOptions::new(),
            handler: Arc::new(handler),
            counters: Arc::default(),
            running: Mutex::new(None),
        }
    }

    /// How many deliveries are handled at once (default 4).
    #[must_use]
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.concurrency = handlers.max(1);
        self
    }

    /// How many unacked deliveries the broker sends ahead (`basic.qos` prefetch count; default
    /// 16). At least the concurrency, or handlers wait for deliveries; the ones beyond it wait in
    /// this process and are given back at drain.
    #[must_use]
    pub fn prefetch(mut self, count: u16) -> Self {
        self.prefetch = count.max(1);
        self
    }

    /// What happens to a delivery whose handler fails (default: requeued).
    #[must_use]
    pub fn on_error(mut self, policy: OnError) -> Self {
        self.on_error = policy;
        self
    }

    /// The component's timeouts, criticality and restart policy. A lost connection (or a
    /// consumer the broker cancelled) fails the component's task: with a restart policy the
    /// consumer is started again on a new connection; without one, a critical consumer stops
    /// the service.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    /// The counters, over the component's whole life.
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// The URL with its password hidden.
    pub fn redacted_url(&self) -> String {
        self.broker.redacted_url()
    }

    /// The name of the current start's connection (also its consumer tag), as the broker
    /// shows it; `None` when it is not running.
    pub fn connection_name(&self) -> Option<String> {
        self.running().as_ref().map(|running| running.subscription.tag.clone())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn setup_error(&self, step: &'static str, error: &lapin::Error) -> RabbitError {
        RabbitError::Setup {
            component: self.broker.component.clone(),
            step,
            url: self.redacted_url(),
            reason: self.broker.scrub(error),
        }
    }

    /// Opens the channel, checks the queue exists, sets the prefetch and starts consuming.
    async fn subscribe(&self, connected: &Connected) -> Result<(Channel, lapin::Consumer), RabbitError> {
        let channel = connected
            .connection
            .create_channel()
            .await
            .map_err(|e| self.setup_error("opening a channel", &e))?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        if let Err(error) =
            channel.queue_declare(self.queue.as_str().into(), passive, FieldTable::default()).await
        {
            return Err(match error.kind() {
                ErrorKind::ProtocolError(amqp)
                    if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) =>
                {
                    RabbitError::QueueNotFound {
                        component: self.broker.component.clone(),
                        queue: self.queue.clone(),
                        url: self.redacted_url(),
                    }
                }
                _ => self.setup_error("checking the queue", &error),
            });
        }
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| self.setup_error("setting the prefetch (basic.qos)", &e))?;
        let consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                connected.name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.setup_error("starting the consumer (basic.consume)", &e))?;
        Ok((channel, consumer))
    }
}

impl<H: MessageHandler> Component for RabbitConsumer<H> {
    fn name(&self) -> ComponentId {
        self.broker.component.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let until = ctx.give_up_at(MARGIN, Duration::from_secs(15));
        let connected = self.broker.connect(until).await?;
        let (channel, consumer) = match self.subscribe(&connected).await {
            Ok(subscribed) => subscribed,
            Err(error) => {
                let _ = self.broker.close(&connected.connection, until).await;
                return Err(error.into());
            }
        };
        let running = Running {
            connection: connected.connection,
            subscription: Subscription {
                channel,
                tag: connected.name,
                consuming: ctx.token().child_token(),
                cancel_sent: Arc::default(),
            },
            handlers: CancellationToken::new(),
            abandon: CancellationToken::new(),
            since: self.counters.snapshot(),
        };
        let deliveries = DeliveryLoop {
            component: self.broker.component.clone(),
            consumer,
            slots: Arc::new(Semaphore::new(self.concurrency)),
            consuming: running.subscription.consuming.clone(),
            work: Work {
                component: self.broker.component.clone(),
                handler: Arc::clone(&self.handler),
                on_error: self.on_error,
                counters: Arc::clone(&self.counters),
                handlers: running.handlers.clone(),
                abandon: running.abandon.clone(),
            },
            ctx: ctx.clone(),
        };
        if let Some(previous) = self.running().replace(running) {
            // A restart's stop already took the last run out; one left is cancelled anyway.
            previous.subscription.consuming.cancel();
            previous.abandon.cancel();
        }
        ctx.tasks().spawn("rabbitmq_deliveries", deliveries.run());
        Ok(())
    }

    async fn drain(&self, ctx: &Context) -> Result<(), BoxError> {
        let subscription = self.running().as_ref().map(|running| running.subscription.clone());
        if let Some(subscription) = subscription {
            subscription.cancel(&self.broker, ctx.give_up_at(MARGIN, Duration::from_secs(5))).await;
        }
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        let Some(running) = self.running().take() else { return Ok(()) };
        let deadline = ctx.deadline().unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
        // Not drained (a restart, or a stop after a failure): no new delivery from here on.
        running.subscription.cancel(&self.broker, deadline.checked_sub(MARGIN).unwrap_or(deadline)).await;
        let tasks = ctx.tasks();
        tasks.close();
        // Half the time left to finish and ack; then the handlers are told to give up, and just
        // before the deadline (keeping some for the close) the ones still running are dropped.
        let patience = deadline.saturating_duration_since(Instant::now()) / 2;
        let mut cut = 0;
        if tokio::time::timeout(patience, tasks.wait()).await.is_err() {
            cut = self.counters.in_flight.load(Ordering::Relaxed);
            tracing::warn!(component = %self.broker.component, running = cut, "handlers still running at the stop timeout; cancelling them");
            running.handlers.cancel();
            let keep = deadline.saturating_duration_since(Instant::now()) / 4;
            let abandon_at = deadline.checked_sub(keep.max(MARGIN)).unwrap_or(deadline);
            if tokio::time::timeout_at(abandon_at, tasks.wait()).await.is_err() {
                running.abandon.cancel();
                let _ =
                    tokio::time::timeout_at(deadline.checked_sub(MARGIN).unwrap_or(deadline), tasks.wait())
                        .await;
            }
        }
        let closed = self.close(&running, ctx.give_up_at(MARGIN / 2, Duration::from_secs(1))).await;
        let now = self.counters.snapshot();
        let since = running.since;
        let mut note = format!(
            "acked {}, nacked {}, redelivered {}; {} left for redelivery",
            now.acked - since.acked,
            now.nacked - since.nacked,
            now.redelivered - since.redelivered,
            now.left - since.left,
        );
        if now.rejected > since.rejected {
            note.push_str(&format!("; {} rejected", now.rejected - since.rejected));
        }
        if cut > 0 {
            note.push_str(&format!("; {cut} handler(s) cancelled at the stop timeout"));
        }
        ctx.note(note);
        closed.map_err(|error| {
            format!("component `{}`: {error}; the broker requeues what was not acked", self.broker.component)
                .into()
        })
    }

    async fn health(&self) -> Health {
        connection::health(self.running().as_ref().map(|running| &running.connection), &self.broker.component)
    }
}

impl<H: MessageHandler> RabbitConsumer<H> {
    /// Closes the channel (acks and nacks sent before it are processed first; anything still
    /// unacked is requeued), then the connection, both with a normal close.
    async fn close(&self, running: &Running, until: Instant) -> Result<(), String> {
        let channel = &running.subscription.channel;
        if channel.status().connected() {
            match tokio::time::timeout_at(until, channel.close(200, "OK".into())).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(component = %self.broker.component, error = %self.broker.scrub(&error), "RabbitMQ channel already closed")
                }
                Err(_) => {
                    return Err(
                        "the broker did not answer the channel close before the stop deadline".to_owned()
                    );
                }
            }
        }
        self.broker.close(&running.connection, until).await
    }
}

impl<H> fmt::Debug for RabbitConsumer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("name", &self.broker.component)
            .field("url", &self.broker.redacted_url())
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("stats", &self.counters.snapshot())
            .finish()
    }
}

/// The task that takes deliveries from the consumer, one per free handler slot.
struct DeliveryLoop<H> {
    component: ComponentId,
    consumer: lapin::Consumer,
    slots: Arc<Semaphore>,
    consuming: CancellationToken,
    work: Work<H>,
    ctx: Context,
}

impl<H: MessageHandler> DeliveryLoop<H> {
    async fn run(mut self) -> Result<(), String> {
        loop {
            let permit = tokio::select! {
                _ = self.consuming.cancelled() => break,
                permit = Arc::clone(&self.slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let next = tokio::select! {
                _ = self.consuming.cancelled() => break,
                next = self.consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let work = self.work.clone();
                    self.ctx.tasks().spawn("rabbitmq_delivery", work.process(delivery, permit));
                }
                // The channel or the connection is gone: let it crash, so the restart policy
                // (if any) connects afresh. What was not acked is requeued by the broker.
                Some(Err(error)) if !self.consuming.is_cancelled() => {
                    return Err(format!("component `{}`: consuming failed: {error}", self.component));
                }
                Some(Err(_)) => break,
                // The broker cancelled the consumer (the queue was deleted), unasked.
                None if !self.consuming.is_cancelled() => {
                    return Err(format!("component `{}`: the broker cancelled the consumer", self.component));
                }
                None => return Ok(()),
            }
        }
        self.give_back_prefetched().await;
        Ok(())
    }

    /// After the drain: what the broker had already sent goes back to it now, for another
    /// instance, rather than when the channel closes. The consumer's stream ends at the
    /// broker's `cancel-ok` (after the last delivery it sent), or when the channel closes.
    async fn give_back_prefetched(&mut self) {
        loop {
            let next = tokio::select! {
                _ = self.work.abandon.cancelled() => return,
                next = self.consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => self.work.give_back(&delivery).await,
                Some(Err(_)) | None => return,
            }
        }
    }
}

/// What a delivery's task needs.
struct Work<H> {
    component: ComponentId,
    handler: Arc<H>,
    on_error: OnError,
    counters: Arc<Counters>,
    handlers: CancellationToken,
    abandon: CancellationToken,
}

impl<H> Clone for Work<H> {
    fn clone(&self) -> Self {
        Self {
            component: self.component.clone(),
            handler: Arc::clone(&self.handler),
            on_error: self.on_error,
            counters: Arc::clone(&self.counters),
            handlers: self.handlers.clone(),
            abandon: self.abandon.clone(),
        }
    }
}

/// Counts a delivery in flight while it lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<H: MessageHandler> Work<H> {
    async fn process(self, delivery: lapin::message::Delivery, permit: OwnedSemaphorePermit) {
        let _slot = permit;
        let _in_flight = InFlight::new(&self.counters.in_flight);
        if delivery.redelivered {
            Counters::bump(&self.counters.redelivered);
        }
        let delivery = Delivery { inner: delivery };
        let cancel = self.handlers.child_token();
        let outcome = tokio::select! {
            biased;
            // A panic is the handler's failure like an error: its message goes by `on_error`,
            // and the consumer (a task of a critical component) carries on.
            result = CatchUnwind::new(self.handler.handle(&delivery, cancel.clone())) => {
                Some(result.unwrap_or_else(|panic| Err(format!("the handler panicked: {panic}").into())))
            }
            _ = self.abandon.cancelled() => None,
        };
        match outcome {
            Some(Ok(())) => self.ack(&delivery).await,
            Some(Err(_)) | None if cancel.is_cancelled() => self.give_back(&delivery.inner).await,
            Some(Err(error)) => self.failed(&delivery, &error).await,
            None => self.give_back(&delivery.inner).await,
        }
    }

    async fn ack(&self, delivery: &Delivery) {
        // Counted once sent on the channel: the broker does not answer acks. One lost with the
        // connection is redelivered, and the handler's effect must absorb it.
        match delivery.inner.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Counters::bump(&self.counters.acked),
            Ok(false) => {
                tracing::warn!(component = %self.component, tag = delivery.delivery_tag(), "ack not sent: the channel is closed; the broker delivers the message again")
            }
            Err(error) => {
                tracing::warn!(component = %self.component, tag = delivery.delivery_tag(), %error, "ack failed; the broker delivers the message again")
            }
        }
    }

    /// Nacks with requeue a delivery that was not handled, so that it is delivered again now.
    async fn give_back(&self, delivery: &lapin::message::Delivery) {
        Counters::bump(&self.counters.left);
        let requeue = BasicNackOptions { requeue: true, multiple: false };
        if let Err(error) = delivery.acker.nack(requeue).await {
            tracing::debug!(component = %self.component, %error, "nack not sent; the broker requeues the message when the channel closes");
        }
    }

    async fn failed(&self, delivery: &Delivery, error: &BoxError) {
        tracing::warn!(component = %self.component, routing_key = delivery.routing_key(), message_id = delivery.message_id(), redelivered = delivery.redelivered(), %error, "message handler failed");
        let (sent, counter) = match self.on_error {
            OnError::Requeue => (
                delivery.inner.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await,
                &self.counters.nacked,
            ),
            OnError::Reject => (
                delivery.inner.acker.reject(BasicRejectOptions { requeue: false }).await,
                &self.counters.rejected,
            ),
        };
        match sent {
            Ok(true) => Counters::bump(counter),
            Ok(false) => {
                tracing::warn!(component = %self.component, "nack not sent: the channel is closed; the broker delivers the message again")
            }
            Err(error) => {
                tracing::warn!(component = %self.component, %error, "nack failed; the broker delivers the message again")
            }
        }
    }
}
