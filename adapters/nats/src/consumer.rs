//! The JetStream consumer component: a durable pull consumer whose messages run through a
//! [`MessageHandler`], `concurrency` at a time, each acknowledged only after its handler
//! succeeded.
//!
//! At drain the consumer stops fetching; a message the server sends after that (the pull
//! request in flight) is nak'ed at once, so another instance gets it without waiting for the
//! ack wait. At stop the handlers in flight get half the time left to finish and ack; then their
//! tokens are cancelled, and a handler still running just before the stop deadline is dropped.
//! Either way its message is nak'ed, never acked: the server redelivers it. Then the connection
//! is flushed (the acks and naks go out) and closed.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, Consumer, pull};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, HeaderMap};
use futures_util::StreamExt;
use lifecycle_core::{
    BoxError, CancellationToken, Component, ComponentId, ComponentOptions, Context, Health, Retry,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::NatsError;
use crate::connection::{self, MARGIN, Server};

/// Handles messages. Return `Ok` once the message's effects are durable: the consumer acks it
/// then. An error (or giving up when `cancel` fires at stop) leaves it to be delivered again,
/// so make the effects idempotent (a unique key on the message id).
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one message.
    fn handle<'a>(
        &'a self,
        delivery: &'a Delivery,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'a;
}

/// A message as the handler sees it, with what JetStream says about its delivery.
pub struct Delivery {
    message: jetstream::Message,
    delivered: u64,
    stream_sequence: u64,
}

impl Delivery {
    /// The subject it was published on.
    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    /// Its payload.
    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    /// Its headers, if it has any.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.message.headers.as_ref()
    }

    /// The publisher's id for it (the `Nats-Msg-Id` header, which the stream deduplicates on).
    pub fn message_id(&self) -> Option<&str> {
        self.headers()?.get(async_nats::header::NATS_MESSAGE_ID).map(|value| value.as_str())
    }

    /// Which delivery this is: 1 the first time, more when it is redelivered.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Its sequence number in the stream: unique within the stream.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    /// The whole client message.
    pub fn message(&self) -> &async_nats::Message {
        &self.message.message
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject())
            .field("stream_sequence", &self.stream_sequence)
            .field("delivered", &self.delivered)
            .field("bytes", &self.payload().len())
            .finish()
    }
}

/// What happens to a message whose handler failed. It is never acked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnError {
    /// Nak it: the server delivers it again after `delay` (at once when `None`), until the
    /// consumer's max deliver.
    Nak {
        /// How long the server waits before delivering it again.
        delay: Option<Duration>,
    },
    /// Terminate it: the server stops delivering it (and publishes a `MSG_TERMINATED` advisory).
    Term,
    /// Publish it (headers and payload, with a `Lifecycle-Error` header) to `subject` through
    /// JetStream, then terminate it. When the publish fails, it is nak'ed instead.
    DeadLetter {
        /// Where failed messages go; a stream must capture it.
        subject: String,
    },
}

/// Counters of a consumer over its whole life (every start): see [`JetStreamConsumer::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Messages whose handler is running now.
    pub in_flight: u64,
    /// Messages handled and acked (the server confirmed the ack).
    pub acked: u64,
    /// Messages nak'ed because their handler failed.
    pub nacked: u64,
    /// Messages terminated (or dead-lettered) because their handler failed.
    pub terminated: u64,
    /// Deliveries that were not the message's first (handled, or given back at once after the
    /// drain).
    pub redelivered: u64,
    /// Messages given back at a stop without being handled: their handler was cancelled at the
    /// stop timeout, or they arrived after the drain. The server delivers them again.
    pub left: u64,
}

#[derive(Debug, Default)]
struct Counters {
    in_flight: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    terminated: AtomicU64,
    redelivered: AtomicU64,
    left: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ConsumerStats {
        ConsumerStats {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            nacked: self.nacked.load(Ordering::Relaxed),
            terminated: self.terminated.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            left: self.left.load(Ordering::Relaxed),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Fetch errors in a row after which the fetch loop of a consumer with a restart policy fails,
/// so the supervisor restarts the consumer (a new connection, the consumer bound again).
pub const ESCALATE_AFTER: u32 = 5;

/// Empty fetches in a row after which the fetch loop asks the server whether the consumer still
/// exists: a deleted one counts as a fetch error (and so, with a restart policy, is created again
/// by the restart), which the fetches themselves do not show.
const CHECK_AFTER_EMPTY: u32 = 5;

/// What one start set up, and its stop takes apart.
struct Running {
    client: Client,
    /// Cancelled at drain: no new fetch.
    fetching: CancellationToken,
    /// Parent of every handler's token: cancelled when the stop runs out of patience.
    handlers: CancellationToken,
    /// Cancelled just before the stop deadline: handlers still running are dropped.
    abandon: CancellationToken,
    /// The counters at the start, for the stop's note.
    since: ConsumerStats,
}

/// A JetStream pull consumer as a component.
pub struct JetStreamConsumer<H> {
    server: Server,
    stream: String,
    durable: String,
    filter_subject: Option<String>,
    concurrency: usize,
    ack_wait: Duration,
    max_deliver: Option<i64>,
    fetch_wait: Duration,
    on_error: OnError,
    options: ComponentOptions,
    handler: Arc<H>,
    counters: Arc<Counters>,
    running: Mutex<Option<Running>>,
}

impl<H: MessageHandler> JetStreamConsumer<H> {
    /// A consumer named `name` of the durable consumer `durable` on `stream`, at `url`; bound
    /// if it exists, created (explicit acks) if not. 4 messages at a time, ack wait 30 s.
    pub fn new(
        name: impl Into<ComponentId>,
        url: impl Into<String>,
        stream: impl Into<String>,
        durable: impl Into<String>,
        handler: H,
    ) -> Self {
        Self {
            server: Server { component: name.into(), url: url.into() },
            stream: stream.into(),
            durable: durable.into(),
            filter_subject: None,
            concurrency: 4,
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            fetch_wait: Duration::from_secs(1),
            on_error: OnError::Nak { delay: None },
            options: ComponentOptions::new(),
            handler: Arc::new(handler),
            counters: Arc::default(),
            running: Mutex::new(None),
        }
    }

    /// Only messages on subjects matching `subject` (when the consumer is created).
    #[must_use]
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = Some(subject.into());
        self
    }

    /// How many messages are handled at once (default 4).
    #[must_use]
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.concurrency = handlers.max(1);
        self
    }

    /// How long the server waits for an ack before delivering a message again (default 30 s;
    /// when the consumer is created). Make it longer than a handler takes.
    #[must_use]
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// How many times a message is delivered at most (default: no limit; when the consumer is
    /// created).
    #[must_use]
    pub fn max_deliver(mut self, deliveries: i64) -> Self {
        self.max_deliver = Some(deliveries);
        self
    }

    /// How long one fetch waits for messages when there are none (default 1 s). The drain
    /// waits for the fetch in flight, at most this long.
    #[must_use]
    pub fn fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait.max(Duration::from_millis(10));
        self
    }

    /// What happens to a message whose handler fails (default: nak, redelivered at once).
    #[must_use]
    pub fn on_error(mut self, policy: OnError) -> Self {
        self.on_error = policy;
        self
    }

    /// The component's timeouts, criticality and restart policy. With a restart policy, a fetch
    /// loop that meets [`ESCALATE_AFTER`] errors in a row fails and the consumer is restarted by
    /// it; without one, the loop keeps retrying while the client reconnects.
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
        self.server.redacted_url()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver.unwrap_or(-1),
            filter_subject: self.filter_subject.clone().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Looks the stream up and binds (or creates) the consumer, retrying timeouts until `until`.
    async fn bind(&self, client: &Client, until: Instant) -> Result<Consumer<pull::Config>, NatsError> {
        let context = jetstream::new(client.clone());
        let bind_error = |reason: String| NatsError::Bind {
            component: self.server.component.clone(),
            stream: self.stream.clone(),
            consumer: self.durable.clone(),
            url: self.redacted_url(),
            reason,
        };
        let attempt = |_| {
            let context = &context;
            async move {
                let stream = context.get_stream(&self.stream).await.map_err(|error| match error.kind() {
                    GetStreamErrorKind::JetStream(inner)
                        if inner.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Step::NotFound
                    }
                    // A request that got no answer: the server is busy, or JetStream is off.
                    GetStreamErrorKind::Request => Step::Transient(self.server.scrub(&error)),
                    _ => Step::Permanent(self.server.scrub(&error)),
                })?;
                stream.get_or_create_consumer(&self.durable, self.config()).await.map_err(|error| {
                    let transient = matches!(
                        error.kind(),
                        jetstream::stream::ConsumerErrorKind::TimedOut
                            | jetstream::stream::ConsumerErrorKind::Request
                    );
                    let reason = self.server.scrub(&error);
                    if transient { Step::Transient(reason) } else { Step::Permanent(reason) }
                })
            }
        };
        match Retry::until(until).run(attempt, |step| matches!(step, Step::Transient(_))).await {
            Ok(consumer) => Ok(consumer),
            Err(failure) => Err(match failure.last_error {
                Some(Step::NotFound) => NatsError::StreamNotFound {
                    component: self.server.component.clone(),
                    stream: self.stream.clone(),
                    url: self.redacted_url(),
                },
                Some(Step::Transient(reason) | Step::Permanent(reason)) => bind_error(reason),
                None => bind_error("no answer before the start deadline".to_owned()),
            }),
        }
    }
}

/// Why a bind attempt failed.
enum Step {
    NotFound,
    Transient(String),
    Permanent(String),
}

impl<H: MessageHandler> Component for JetStreamConsumer<H> {
    fn name(&self) -> ComponentId {
        self.server.component.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let until = ctx.give_up_at(MARGIN, Duration::from_secs(15));
        let client = self.server.connect(until).await?;
        let consumer = match self.bind(&client, until).await {
            Ok(consumer) => consumer,
            Err(error) => {
                let _ = client.drain().await;
                return Err(error.into());
            }
        };
        let running = Running {
            client,
            fetching: ctx.token().child_token(),
            handlers: CancellationToken::new(),
            abandon: CancellationToken::new(),
            since: self.counters.snapshot(),
        };
        let fetch = FetchLoop {
            component: self.server.component.clone(),
            consumer,
            slots: Arc::new(Semaphore::new(self.concurrency)),
            fetch_wait: self.fetch_wait,
            escalate_after: ctx.restarts_on_failure().then_some(ESCALATE_AFTER),
            fetching: running.fetching.clone(),
            work: Work {
                component: self.server.component.clone(),
                handler: Arc::clone(&self.handler),
                on_error: self.on_error.clone(),
                counters: Arc::clone(&self.counters),
                handlers: running.handlers.clone(),
                abandon: running.abandon.clone(),
                pull_open_until: Arc::default(),
            },
            ctx: ctx.clone(),
        };
        if let Some(previous) = self.running().replace(running) {
            // A restart's stop already took the last run out; one left is cancelled anyway.
            previous.fetching.cancel();
            previous.abandon.cancel();
        }
        ctx.tasks().spawn("nats_fetch", fetch.run());
        Ok(())
    }

    async fn drain(&self, _ctx: &Context) -> Result<(), BoxError> {
        if let Some(running) = self.running().as_ref() {
            running.fetching.cancel();
        }
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        let Some(running) = self.running().take() else { return Ok(()) };
        running.fetching.cancel();
        let tasks = ctx.tasks();
        tasks.close();
        let deadline = ctx.deadline().unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
        // Half the time left to finish and ack; then the handlers are told to give up, and just
        // before the deadline (keeping some for the flush) the ones still running are dropped.
        let patience = deadline.saturating_duration_since(Instant::now()) / 2;
        let mut cut = 0;
        if tokio::time::timeout(patience, tasks.wait()).await.is_err() {
            cut = self.counters.in_flight.load(Ordering::Relaxed);
            tracing::warn!(component = %self.server.component, running = cut, "handlers still running at the stop timeout; cancelling them");
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
        let closed =
            self.server.close(running.client, ctx.give_up_at(MARGIN / 2, Duration::from_secs(1))).await;
        let now = self.counters.snapshot();
        let since = running.since;
        let mut note = format!(
            "acked {}, nacked {}, redelivered {}; {} left for redelivery",
            now.acked - since.acked,
            now.nacked - since.nacked,
            now.redelivered - since.redelivered,
            now.left - since.left,
        );
        if now.terminated > since.terminated {
            note.push_str(&format!("; {} terminated", now.terminated - since.terminated));
        }
        if cut > 0 {
            note.push_str(&format!("; {cut} handler(s) cancelled at the stop timeout"));
        }
        ctx.note(note);
        closed.map_err(|error| {
            format!(
                "component `{}`: {error}; the server redelivers what was not acked",
                self.server.component
            )
            .into()
        })
    }

    async fn health(&self) -> Health {
        connection::health(self.running().as_ref().map(|running| &running.client), &self.server.component)
    }
}

impl<H> fmt::Debug for JetStreamConsumer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamConsumer")
            .field("name", &self.server.component)
            .field("url", &self.server.redacted_url())
            .field("stream", &self.stream)
            .field("durable", &self.durable)
            .field("concurrency", &self.concurrency)
            .field("stats", &self.counters.snapshot())
            .finish()
    }
}

/// The task that pulls messages, as many as there are free handler slots.
struct FetchLoop<H> {
    component: ComponentId,
    consumer: Consumer<pull::Config>,
    slots: Arc<Semaphore>,
    fetch_wait: Duration,
    escalate_after: Option<u32>,
    fetching: CancellationToken,
    work: Work<H>,
    ctx: Context,
}

impl<H: MessageHandler> FetchLoop<H> {
    async fn run(self) -> Result<(), String> {
        let mut errors_in_a_row = 0;
        let mut empty_in_a_row: u32 = 0;
        loop {
            // One free slot at least, then every other free one: a fetch asks for no more
            // messages than can be handled at once, so none waits in a buffer while its ack wait
            // runs out.
            let first = tokio::select! {
                _ = self.fetching.cancelled() => return Ok(()),
                permit = Arc::clone(&self.slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return Ok(()),
                },
            };
            let mut permits = vec![first];
            while let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
                permits.push(permit);
            }
            let fetched = match self.fetch(permits).await {
                // Empty batches: an idle stream, or a consumer that is gone (deleted by an
                // operator, or by a server that lost its state), which fetches do not tell.
                Ok(0) => {
                    empty_in_a_row += 1;
                    if empty_in_a_row % CHECK_AFTER_EMPTY != 0 {
                        continue;
                    }
                    let checked = self.check_consumer().await;
                    if checked.is_err() {
                        // The server's own word, not a blip: asking again changes nothing.
                        errors_in_a_row = errors_in_a_row.max(ESCALATE_AFTER - 1);
                    }
                    checked
                }
                Ok(_) => {
                    empty_in_a_row = 0;
                    Ok(())
                }
                Err(error) => Err(error),
            };
            match fetched {
                Ok(()) => errors_in_a_row = 0,
                Err(error) => {
                    if self.fetching.is_cancelled() {
                        return Ok(());
                    }
                    errors_in_a_row += 1;
                    let error = format!("component `{}`: fetching failed: {error}", self.component);
                    if self.escalate_after.is_some_and(|limit| errors_in_a_row >= limit) {
                        // Let it crash: the restart policy connects and binds afresh.
                        return Err(format!("{error} ({errors_in_a_row} times in a row)"));
                    }
                    tracing::warn!(component = %self.component, %error, "NATS fetch failed; retrying");
                    let pause = Duration::from_millis(100) * errors_in_a_row.min(20);
                    tokio::select! {
                        _ = self.fetching.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// Whether the server still has the consumer. Failing only when it says it has not: a
    /// server that does not answer (disconnected, the client reconnecting) is no news.
    async fn check_consumer(&self) -> Result<(), BoxError> {
        match self.consumer.get_info().await {
            Err(error)
                if matches!(
                    error.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                Err(error.into())
            }
            _ => Ok(()),
        }
    }

    /// One pull request for `permits.len()` messages, each run in a task of its own: how many
    /// came.
    async fn fetch(&self, permits: Vec<OwnedSemaphorePermit>) -> Result<usize, BoxError> {
        let expires = Instant::now() + self.fetch_wait;
        self.work.pull_open(Some(expires));
        let fetched = self.take(permits, expires).await;
        self.work.pull_open(None);
        fetched
    }

    async fn take(
        &self,
        mut permits: Vec<OwnedSemaphorePermit>,
        expires: Instant,
    ) -> Result<usize, BoxError> {
        let mut batch =
            self.consumer.fetch().max_messages(permits.len()).expires(self.fetch_wait).messages().await?;
        // The server ends the batch when it is full or at `expires`; a little more, in case its
        // end-of-batch status is lost.
        let until = expires + Duration::from_secs(1);
        let mut received = 0;
        loop {
            let next = tokio::time::timeout_at(until, batch.next()).await;
            let message = match next {
                Err(_) | Ok(None) => return Ok(received),
                Ok(Some(message)) => message?,
            };
            received += 1;
            match permits.pop() {
                Some(permit) if !self.fetching.is_cancelled() => {
                    let work = self.work.clone();
                    self.ctx.tasks().spawn("nats_message", work.process(message, permit));
                }
                // After the drain (or if the server sent more than asked): back to the server
                // now, for another instance, rather than after the ack wait.
                _ => {
                    self.work.delivered(&message);
                    self.work.give_back(&message).await;
                }
            }
        }
    }
}

/// What a message's task needs.
struct Work<H> {
    component: ComponentId,
    handler: Arc<H>,
    on_error: OnError,
    counters: Arc<Counters>,
    handlers: CancellationToken,
    abandon: CancellationToken,
    /// When the pull request in flight expires: a message nak'ed before then would be sent
    /// straight back to it.
    pull_open_until: Arc<Mutex<Option<Instant>>>,
}

impl<H> Clone for Work<H> {
    fn clone(&self) -> Self {
        Self {
            component: self.component.clone(),
            handler: Arc::clone(&self.handler),
            on_error: self.on_error.clone(),
            counters: Arc::clone(&self.counters),
            handlers: self.handlers.clone(),
            abandon: self.abandon.clone(),
            pull_open_until: Arc::clone(&self.pull_open_until),
        }
    }
}

/// Counts a message in flight while it lives.
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
    fn pull_open(&self, until: Option<Instant>) {
        *self.pull_open_until.lock().unwrap_or_else(PoisonError::into_inner) = until;
    }

    async fn process(self, message: jetstream::Message, permit: OwnedSemaphorePermit) {
        let _slot = permit;
        let _in_flight = InFlight::new(&self.counters.in_flight);
        let (delivered, stream_sequence) = self.delivered(&message);
        let delivery = Delivery { message, delivered, stream_sequence };
        let cancel = self.handlers.child_token();
        let outcome = tokio::select! {
            biased;
            result = self.handler.handle(&delivery, cancel.clone()) => Some(result),
            _ = self.abandon.cancelled() => None,
        };
        match outcome {
            Some(Ok(())) => self.ack(&delivery).await,
            Some(Err(_)) | None if cancel.is_cancelled() => self.give_back(&delivery.message).await,
            Some(Err(error)) => self.failed(&delivery, &error).await,
            None => self.give_back(&delivery.message).await,
        }
    }

    /// Which delivery of its message `message` is, and the message's place in the stream;
    /// counts it when it is not the first.
    fn delivered(&self, message: &jetstream::Message) -> (u64, u64) {
        let (delivered, stream_sequence) = match message.info() {
            Ok(info) => (u64::try_from(info.delivered).unwrap_or(1), info.stream_sequence),
            Err(_) => (1, 0),
        };
        if delivered > 1 {
            Counters::bump(&self.counters.redelivered);
        }
        (delivered, stream_sequence)
    }

    async fn ack(&self, delivery: &Delivery) {
        // Confirmed by the server: the count is of acks that landed. One that did not is
        // redelivered after the ack wait, and the handler's effect must absorb it.
        match delivery.message.double_ack().await {
            Ok(()) => Counters::bump(&self.counters.acked),
            Err(error) => {
                tracing::warn!(component = %self.component, sequence = delivery.stream_sequence, %error, "ack not confirmed; the message may be delivered again")
            }
        }
    }

    /// Naks a message that was not handled, so that it is delivered again soon: once this
    /// instance's pull request in flight has expired (it would get it back, and give it back,
    /// over and over), at once when there is none.
    async fn give_back(&self, message: &jetstream::Message) {
        Counters::bump(&self.counters.left);
        let open_until = *self.pull_open_until.lock().unwrap_or_else(PoisonError::into_inner);
        let delay = open_until
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
            .map(|left| left + Duration::from_millis(50));
        if let Err(error) = message.ack_with(AckKind::Nak(delay)).await {
            tracing::debug!(component = %self.component, %error, "nak not sent; the message is delivered again after the ack wait");
        }
    }

    async fn failed(&self, delivery: &Delivery, error: &BoxError) {
        tracing::warn!(component = %self.component, subject = delivery.subject(), sequence = delivery.stream_sequence, delivered = delivery.delivered, %error, "message handler failed");
        let kind = match &self.on_error {
            OnError::Nak { delay } => AckKind::Nak(*delay),
            OnError::Term => AckKind::Term,
            OnError::DeadLetter { subject } => match self.dead_letter(delivery, subject, error).await {
                Ok(()) => AckKind::Term,
                Err(publish) => {
                    tracing::warn!(component = %self.component, subject, error = %publish, "dead-lettering failed; nak instead");
                    AckKind::Nak(None)
                }
            },
        };
        let counter =
            if matches!(kind, AckKind::Term) { &self.counters.terminated } else { &self.counters.nacked };
        match delivery.message.ack_with(kind).await {
            Ok(()) => Counters::bump(counter),
            Err(error) => {
                tracing::warn!(component = %self.component, %error, "nak not sent; the message is delivered again after the ack wait")
            }
        }
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        subject: &str,
        error: &BoxError,
    ) -> Result<(), BoxError> {
        let mut headers = delivery.headers().cloned().unwrap_or_default();
        // Why and from where, for whoever looks at the dead letters.
        headers.insert("Lifecycle-Error", error.to_string().replace(['\r', '\n'], " ").as_str());
        headers.insert("Lifecycle-Subject", delivery.subject());
        let context = delivery.message.context.clone();
        context
            .publish_with_headers(subject.to_owned(), headers, delivery.message.payload.clone())
            .await?
            .await?;
        Ok(())
    }
}
