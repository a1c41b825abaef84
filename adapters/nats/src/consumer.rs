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
use async_nats::{Client, HeaderMap, StatusCode};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lifecycle_core::{
    BoxError, CancellationToken, CatchUnwind, Component, ComponentId, ComponentOptions, Context, Health,
    Retry,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::NatsError;
use crate::connection::{self, MARGIN, Server};
use crate::pulls::{Ended, Pulls};

/// Handles messages. Return `Ok` once the message's effects are durable: the consumer acks it
/// then. An error (or giving up when `cancel` fires at stop) leaves it to be delivered again,
/// so make the effects idempotent (a unique key on the message id). A panic counts as an error:
/// the message goes by [`OnError`], and the consumer and the service carry on.
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
    prefetch: Option<usize>,
    spawn_handlers: bool,
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
            prefetch: None,
            spawn_handlers: false,
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

    /// How many messages beyond `concurrency` may wait here for a free handler (default: as many
    /// as `concurrency`). They are asked for ahead, so a handler that finishes finds its next
    /// message here rather than a round trip away; their ack wait runs while they wait, and at
    /// the drain they are given back. With 0, a pull asks only for handlers that are free.
    #[must_use]
    pub fn prefetch(mut self, messages: usize) -> Self {
        self.prefetch = Some(messages);
        self
    }

    /// Runs each message's handler in a task of its own, so that handlers run on every worker
    /// thread at once: for handlers that spend long stretches on the CPU between awaits.
    ///
    /// By default (false) the handlers in flight run concurrently inside the consumer's fetch
    /// task, as `for_each_concurrent` would run them: a message costs no task hand-off (with a
    /// handler that does nothing, about a fifth more messages per second; docs/BENCHMARKS.md),
    /// but the handlers share one thread at a time, so one that blocks its thread stalls the
    /// others and the fetching until it returns. Either way a panic is the handler's failure
    /// alone, and the stop waits for every handler.
    #[must_use]
    pub fn spawn_handlers(mut self, spawn: bool) -> Self {
        self.spawn_handlers = spawn;
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

    /// How long one pull request waits on the server for messages when there are none (default
    /// 1 s). The drain waits for the pulls in flight, at most this long.
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

    /// The credit for messages asked for, waiting or being handled, and how much of it must be
    /// free before a pull is sent.
    fn credits(&self) -> (Arc<Semaphore>, u32) {
        let prefetch = self.prefetch.unwrap_or(self.concurrency);
        let total = self.concurrency.saturating_add(prefetch).min(Semaphore::MAX_PERMITS);
        // Without a prefetch a free handler waits for its pull: ask for it at once.
        let pull_at = if prefetch == 0 { 1 } else { (total / 2).max(1) };
        (Arc::new(Semaphore::new(total)), u32::try_from(pull_at).unwrap_or(u32::MAX))
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
        let (credits, pull_at) = self.credits();
        let fetch = FetchLoop {
            component: self.server.component.clone(),
            client: running.client.clone(),
            consumer,
            credits,
            pull_at,
            fetch_wait: self.fetch_wait,
            spawn_handlers: self.spawn_handlers,
            escalate_after: ctx.restarts_on_failure().then_some(ESCALATE_AFTER),
            fetching: running.fetching.clone(),
            work: Arc::new(Work {
                component: self.server.component.clone(),
                handler: Arc::clone(&self.handler),
                on_error: self.on_error.clone(),
                counters: Arc::clone(&self.counters),
                slots: Arc::new(Semaphore::new(self.concurrency)),
                fetching: running.fetching.clone(),
                handlers: running.handlers.clone(),
                abandon: running.abandon.clone(),
                pull_open_until: Mutex::default(),
            }),
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
            .field("spawn_handlers", &self.spawn_handlers)
            .field("stats", &self.counters.snapshot())
            .finish()
    }
}

/// The task that keeps pull requests open for as many messages as the handlers and the prefetch
/// can hold, and runs the handler of each message that comes (or hands it to a task of its own).
struct FetchLoop<H> {
    component: ComponentId,
    client: Client,
    consumer: Consumer<pull::Config>,
    /// One permit for each message asked for, waiting for a handler or being handled.
    credits: Arc<Semaphore>,
    /// A pull is sent once this many credits are free: pulls of a few messages each would cost a
    /// request per message.
    pull_at: u32,
    fetch_wait: Duration,
    /// Whether each message's handler gets a task of its own, rather than running in this one.
    spawn_handlers: bool,
    escalate_after: Option<u32>,
    fetching: CancellationToken,
    /// Shared by every message's handling: one count more per message rather than a copy.
    work: Arc<Work<H>>,
    ctx: Context,
}

/// What woke the fetch loop.
enum Event {
    Drained,
    /// `None`: the subscription ended (the client closed).
    Answer(Option<async_nats::Message>),
    Overdue,
    /// Credit for a pull is free.
    Credit(OwnedSemaphorePermit),
}

/// What came on the pull inbox.
enum Answer {
    Message(async_nats::Message),
    /// The server ended a pull, with this many messages not brought.
    Ended(usize),
    /// The server refused or ended a pull for a reason worth reporting.
    Failed(String),
    /// The consumer is gone: asking again changes nothing.
    Gone(String),
    Heartbeat,
}

impl Answer {
    fn of(message: async_nats::Message) -> Self {
        let Some(status) = message.status.filter(|status| *status != StatusCode::OK) else {
            return Self::Message(message);
        };
        let description = message.description.clone().unwrap_or_default();
        let pending = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Pending-Messages"))
            .and_then(|value| value.as_str().parse().ok())
            .unwrap_or(usize::MAX);
        match status {
            StatusCode::IDLE_HEARTBEAT => Self::Heartbeat,
            StatusCode::TIMEOUT => Self::Ended(pending),
            StatusCode::REQUEST_TERMINATED
                if description == "Consumer Deleted" || description == "Consumer is push based" =>
            {
                Self::Gone(description)
            }
            StatusCode::NO_RESPONDERS => {
                Self::Failed("no responders (JetStream is not enabled, or the stream is gone)".to_owned())
            }
            status => Self::Failed(format!("the server ended a pull: {status} {description}")),
        }
    }
}

impl<H: MessageHandler> FetchLoop<H> {
    async fn run(self) -> Result<(), String> {
        let inbox = async_nats::Subject::from(self.client.new_inbox());
        let mut answers = self.client.subscribe(inbox.clone()).await.map_err(|error| {
            format!("component `{}`: subscribing to its pull inbox failed: {error}", self.component)
        })?;
        let context = jetstream::new(self.client.clone());
        let mut pulls = Pulls::default();
        let mut errors_in_a_row = 0;
        let mut empty_in_a_row: u32 = 0;
        let mut paused_until: Option<Instant> = None;
        // Made once: a timer made afresh for each message would cost a timer-wheel entry each.
        let overdue_timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(overdue_timer);
        let mut timer_set_for = None;
        let mut published_open_until = None;
        let drained = self.fetching.cancelled();
        tokio::pin!(drained);
        // Answers that were already there when the last one was handled, taken without a select.
        let mut ready = None;
        // Handlers in flight here, when they are not spawned one task each.
        let mut handling = FuturesUnordered::new();
        let ended = loop {
            let draining = self.fetching.is_cancelled();
            if draining && pulls.is_empty() {
                break Ok(());
            }
            // Published only when it changes: it is read by a message given back, not per message.
            if pulls.open_until() != published_open_until {
                published_open_until = pulls.open_until();
                self.work.pull_open(published_open_until);
            }
            let overdue = pulls.next_overdue();
            if overdue != timer_set_for {
                if let Some(at) = overdue {
                    overdue_timer.as_mut().reset(at);
                }
                timer_set_for = overdue;
            }
            let event = match ready.take() {
                Some(answer) => Event::Answer(answer),
                None => tokio::select! {
                    biased;
                    _ = &mut drained, if !draining => Event::Drained,
                    Some(()) = handling.next(), if !handling.is_empty() => continue,
                    answer = answers.next() => Event::Answer(answer),
                    // A pull whose end never came: lost with a connection, most likely.
                    _ = &mut overdue_timer, if overdue.is_some() => Event::Overdue,
                    credit = async {
                        if let Some(until) = paused_until {
                            tokio::time::sleep_until(until).await;
                        }
                        Arc::clone(&self.credits).acquire_many_owned(self.pull_at).await
                    }, if !draining => match credit {
                        Ok(credit) => Event::Credit(credit),
                        Err(_) => break Ok(()),
                    },
                },
            };
            let mut failure = None;
            let mut empty = false;
            match event {
                Event::Drained => {}
                Event::Answer(answer) => match answer.map(Answer::of) {
                    // The client closed under the loop: only the stop does that.
                    None if draining => break Ok(()),
                    None => break Err(format!("component `{}`: the NATS client closed", self.component)),
                    Some(Answer::Message(message)) => {
                        let message = jetstream::Message { message, context: context.clone() };
                        (errors_in_a_row, empty_in_a_row) = (0, 0);
                        match pulls.delivered() {
                            Some(credit) if !draining && !self.spawn_handlers => {
                                handling.push(Arc::clone(&self.work).process(message, credit));
                            }
                            Some(credit) if !draining => {
                                self.ctx
                                    .tasks()
                                    .spawn("nats_message", Arc::clone(&self.work).process(message, credit));
                            }
                            // After the drain (or more than was asked for): back to the server
                            // now, for another instance, rather than after the ack wait.
                            _ => {
                                self.work.delivered(&message);
                                self.work.give_back(&message).await;
                            }
                        }
                        ready = answers.next().now_or_never();
                    }
                    Some(Answer::Ended(pending)) => {
                        errors_in_a_row = 0;
                        empty = pulls.expired(pending) == Ended::Empty;
                    }
                    Some(Answer::Failed(reason)) => {
                        pulls.expired(usize::MAX);
                        failure = Some(reason);
                    }
                    Some(Answer::Gone(reason)) => {
                        pulls.expired(usize::MAX);
                        // The server's own word, not a blip.
                        errors_in_a_row = errors_in_a_row.max(ESCALATE_AFTER - 1);
                        failure = Some(reason);
                    }
                    Some(Answer::Heartbeat) => {}
                },
                Event::Overdue => {
                    timer_set_for = None;
                    empty = pulls.drop_overdue(Instant::now()) > 0;
                }
                Event::Credit(mut credit) => {
                    let free = u32::try_from(self.credits.available_permits()).unwrap_or(u32::MAX);
                    if let Ok(more) = Arc::clone(&self.credits).try_acquire_many_owned(free) {
                        credit.merge(more);
                    }
                    let request = pull::BatchConfig {
                        batch: credit.num_permits(),
                        expires: Some(self.fetch_wait),
                        ..Default::default()
                    };
                    let expires = Instant::now() + self.fetch_wait;
                    match self.consumer.request_batch(request, inbox.clone()).await {
                        Ok(()) => {
                            pulls.opened(credit, expires);
                            paused_until = None;
                        }
                        Err(error) => failure = Some(error.to_string()),
                    }
                }
            }
            // Empty pulls: an idle stream, or a consumer that is gone (deleted by an operator, or
            // by a server that lost its state), which a pull does not always tell.
            if empty {
                empty_in_a_row += 1;
                if empty_in_a_row % CHECK_AFTER_EMPTY == 0
                    && let Err(error) = self.check_consumer().await
                {
                    errors_in_a_row = errors_in_a_row.max(ESCALATE_AFTER - 1);
                    failure = Some(error.to_string());
                }
            }
            if let Some(error) = failure {
                if self.fetching.is_cancelled() {
                    continue;
                }
                errors_in_a_row += 1;
                let error = format!("component `{}`: fetching failed: {error}", self.component);
                if self.escalate_after.is_some_and(|limit| errors_in_a_row >= limit) {
                    // Let it crash: the restart policy connects and binds afresh.
                    break Err(format!("{error} ({errors_in_a_row} times in a row)"));
                }
                tracing::warn!(component = %self.component, %error, "NATS fetch failed; retrying");
                paused_until = Some(Instant::now() + Duration::from_millis(100) * errors_in_a_row.min(20));
            }
        };
        // Handlers in flight finish (or give up, told by the stop) before the task ends: ending
        // with them would leave their messages unacked until the ack wait.
        while handling.next().await.is_some() {}
        ended
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
}

/// What handling a message needs, shared by all of them.
struct Work<H> {
    component: ComponentId,
    handler: Arc<H>,
    on_error: OnError,
    counters: Arc<Counters>,
    /// One per handler running.
    slots: Arc<Semaphore>,
    /// Cancelled at drain: a message still waiting for a handler is given back.
    fetching: CancellationToken,
    handlers: CancellationToken,
    abandon: CancellationToken,
    /// When the pull request in flight expires: a message nak'ed before then would be sent
    /// straight back to it.
    pull_open_until: Mutex<Option<Instant>>,
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

    /// Waits for a free handler (a prefetched message), then handles the message.
    async fn process(self: Arc<Self>, message: jetstream::Message, credit: OwnedSemaphorePermit) {
        let _credit = credit;
        // A free handler is taken at once: waiting on the drain token registers a waiter under a
        // lock that every message's task shares, so it is done only when there is a wait.
        let free = if self.fetching.is_cancelled() {
            None
        } else {
            Arc::clone(&self.slots).try_acquire_owned().ok()
        };
        let slot = match free {
            Some(slot) => Some(slot),
            None => tokio::select! {
                biased;
                _ = self.fetching.cancelled() => None,
                slot = Arc::clone(&self.slots).acquire_owned() => slot.ok(),
            },
        };
        let Some(_slot) = slot else {
            self.delivered(&message);
            self.give_back(&message).await;
            return;
        };
        let _in_flight = InFlight::new(&self.counters.in_flight);
        let (delivered, stream_sequence) = self.delivered(&message);
        let delivery = Delivery { message, delivered, stream_sequence };
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
