//! A handler's error never acks its message (nak, term, dead letter); a handler still running at
//! the stop timeout is cancelled and its message given back for the next run; a prefetch asks no
//! further ahead than its bound, and what waits in it is given back at the drain; bad set-ups
//! (unreachable server, wrong credentials, missing stream) fail the start with an error naming
//! the component and without the password; the publisher flushes at stop.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lifecycle_core::testing::{self, TestRun};
use lifecycle_core::{BoxError, CancellationToken, ComponentOptions};
use lifecycle_nats::async_nats::jetstream;
use lifecycle_nats::{Delivery, JetStreamConsumer, MessageHandler, NatsPublisher, OnError};
use lifecycle_tests::free_port;
use lifecycle_tests::nats::{PrivateNats, Stream, nats_url, unique};

/// Fails every delivery numbered `fail_until` or less (by panicking when `panics`); records each
/// delivery's number.
#[derive(Clone, Default)]
struct Flaky {
    fail_until: u64,
    panics: bool,
    seen: Arc<Mutex<Vec<u64>>>,
}

impl MessageHandler for Flaky {
    async fn handle(&self, delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).push(delivery.delivered());
        if delivery.delivered() <= self.fail_until {
            assert!(!self.panics, "malformed order {:?}", delivery.message_id());
            return Err(format!("malformed order {:?}", delivery.message_id()).into());
        }
        Ok(())
    }
}

fn seen(handler: &Flaky) -> Vec<u64> {
    handler.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

#[tokio::test]
async fn a_handler_error_naks_and_the_message_comes_back() {
    naks_and_comes_back(false, false).await;
}

#[tokio::test]
async fn a_handler_that_panics_naks_like_an_error_and_the_service_carries_on() {
    naks_and_comes_back(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_in_a_task_of_its_own_naks_like_an_error_too() {
    naks_and_comes_back(true, true).await;
}

async fn naks_and_comes_back(panics: bool, spawn_handlers: bool) {
    let stream = Stream::create(&unique("NAK")).await;
    stream.publish(1).await;
    let handler = Flaky { fail_until: 1, panics, ..Flaky::default() };
    let mut builder = testing::builder();
    let consumer = builder
        .add(
            JetStreamConsumer::new("naks", nats_url(), &stream.name, "naks", handler.clone())
                .spawn_handlers(spawn_handlers),
        )
        .dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("the redelivery acked", Duration::from_secs(10), || consumer.stats().acked == 1)
        .await;
    let report = run.stop().await;
    testing::assert_clean(&report);
    assert_eq!(seen(&handler), [1, 2], "failed once, delivered again, then handled");
    let stats = consumer.stats();
    assert_eq!((stats.nacked, stats.acked, stats.redelivered, stats.terminated), (1, 1, 1, 0), "{stats:?}");
    let notes = report.component("naks").map(|component| component.notes.clone()).unwrap_or_default();
    assert_eq!(notes, ["acked 1, nacked 1, redelivered 1; 0 left for redelivery"]);
    let (pending, ack_pending, _) = stream.consumer_counts("naks").await;
    assert_eq!((pending, ack_pending), (0, 0), "nothing left on the server");
    stream.delete().await;
}

#[tokio::test]
async fn a_handler_error_can_terminate_or_dead_letter_but_never_acks() {
    let stream = Stream::create(&unique("TERM")).await;
    // The dead letters' own stream.
    let dead = Stream::create(&unique("DEAD")).await;
    stream.publish(2).await;
    let handler = Flaky { fail_until: u64::MAX, ..Flaky::default() };
    let mut builder = testing::builder();
    let terminating = builder
        .add(
            JetStreamConsumer::new("terminates", nats_url(), &stream.name, "terminates", handler.clone())
                .on_error(OnError::Term),
        )
        .dep();
    let dead_letters = Flaky { fail_until: u64::MAX, ..Flaky::default() };
    let dead_lettering = builder
        .add(
            JetStreamConsumer::new(
                "dead_letters",
                nats_url(),
                &stream.name,
                "dead_letters",
                dead_letters.clone(),
            )
            .on_error(OnError::DeadLetter { subject: dead.subject("failed") }),
        )
        .dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("both terminated", Duration::from_secs(10), || {
        terminating.stats().terminated == 2 && dead_lettering.stats().terminated == 2
    })
    .await;
    // Time for a redelivery, which must not come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = run.stop().await;
    testing::assert_clean(&report);
    assert_eq!(seen(&handler), [1, 1], "each handled once, never redelivered");
    assert_eq!(seen(&dead_letters), [1, 1]);
    for consumer in [&*terminating, &*dead_lettering] {
        let stats = consumer.stats();
        assert_eq!((stats.acked, stats.nacked, stats.terminated), (0, 0, 2), "{stats:?}");
    }
    assert_eq!(
        report.component("terminates").unwrap().notes,
        ["acked 0, nacked 0, redelivered 0; 0 left for redelivery; 2 terminated"]
    );
    assert_eq!(stream.consumer_counts("terminates").await.1, 0, "nothing waiting for an ack");

    // The dead letters carry the payload and why they failed.
    let letters = dead.context.get_stream(&dead.name).await.unwrap();
    let reader = letters.create_consumer(jetstream::consumer::pull::Config::default()).await.unwrap();
    let mut batch = reader.fetch().max_messages(2).expires(Duration::from_secs(2)).messages().await.unwrap();
    let mut payloads = Vec::new();
    while let Some(letter) = batch.next().await {
        let letter = letter.unwrap();
        let headers = letter.headers.clone().unwrap();
        assert!(
            headers.get("Lifecycle-Error").unwrap().as_str().starts_with("malformed order"),
            "{headers:?}"
        );
        assert_eq!(headers.get("Lifecycle-Subject").unwrap().as_str(), stream.subject("orders"));
        payloads.push(String::from_utf8(letter.payload.to_vec()).unwrap());
    }
    payloads.sort();
    assert_eq!(payloads, ["order 0", "order 1"]);
    stream.delete().await;
    dead.delete().await;
}

/// Ignores its token on the first delivery (a handler stuck in a call without a timeout).
#[derive(Clone, Default)]
struct Stuck {
    started: Arc<Mutex<Vec<u64>>>,
}

impl MessageHandler for Stuck {
    async fn handle(&self, delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
        self.started.lock().unwrap_or_else(PoisonError::into_inner).push(delivery.delivered());
        if delivery.delivered() == 1 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_handler_still_running_at_the_stop_timeout_leaves_its_message_to_the_next_run() {
    let stream = Stream::create(&unique("STUCK")).await;
    stream.publish(1).await;
    let handler = Stuck::default();
    let started = || handler.started.lock().unwrap_or_else(PoisonError::into_inner).clone();
    // An ack wait far longer than the test: the message can only come back this fast by a nak.
    let consumer = || {
        JetStreamConsumer::new("stuck", nats_url(), &stream.name, "stuck", handler.clone())
            .ack_wait(Duration::from_secs(120))
            .options(ComponentOptions::new().stop_timeout(Duration::from_secs(1)))
    };

    let mut builder = testing::builder();
    let first = builder.add(consumer()).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("the handler started", Duration::from_secs(10), || started() == [1]).await;
    let began = tokio::time::Instant::now();
    let report = run.stop().await;
    assert!(
        began.elapsed() < Duration::from_millis(1500),
        "the stop kept its timeout: {:?}",
        began.elapsed()
    );
    testing::assert_clean(&report);
    assert_eq!(
        report.component("stuck").unwrap().notes,
        [
            "acked 0, nacked 0, redelivered 0; 1 left for redelivery; 1 handler(s) cancelled at the stop timeout"
        ]
    );
    assert_eq!((first.stats().acked, first.stats().left, first.stats().in_flight), (0, 1, 0));

    let mut builder = testing::builder();
    let second = builder.add(consumer()).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("the message delivered again", Duration::from_secs(10), || second.stats().acked == 1)
        .await;
    testing::assert_clean(&run.stop().await);
    assert_eq!(started(), [1, 2]);
    assert_eq!(second.stats().redelivered, 1);
    let (pending, ack_pending, _) = stream.consumer_counts("stuck").await;
    assert_eq!((pending, ack_pending), (0, 0));
    stream.delete().await;
}

/// Takes `pause` over each message; records each delivery's number.
#[derive(Clone, Default)]
struct Slow {
    pause: Duration,
    seen: Arc<Mutex<Vec<u64>>>,
}

impl MessageHandler for Slow {
    async fn handle(&self, delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).push(delivery.delivered());
        tokio::time::sleep(self.pause).await;
        Ok(())
    }
}

#[tokio::test]
async fn a_prefetch_asks_ahead_within_its_bound_and_the_drain_gives_the_waiting_messages_back() {
    let stream = Stream::create(&unique("PREFETCH")).await;
    stream.publish(10).await;
    let slow = Slow { pause: Duration::from_millis(1500), ..Slow::default() };
    // An ack wait far longer than the test: the messages can only come back this fast by a nak.
    let consumer = |handler: Slow| {
        JetStreamConsumer::new("prefetch", nats_url(), &stream.name, "prefetch", handler)
            .concurrency(1)
            .prefetch(3)
            .ack_wait(Duration::from_secs(120))
            .options(ComponentOptions::new().stop_timeout(Duration::from_secs(6)))
    };

    let mut builder = testing::builder();
    let first = builder.add(consumer(slow.clone())).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("the first handler started", Duration::from_secs(10), || {
        slow.seen.lock().unwrap_or_else(PoisonError::into_inner).len() == 1
    })
    .await;
    // One handled, three waiting here: the server has given out four, and no more.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (pending, ack_pending, _) = stream.consumer_counts("prefetch").await;
        assert!(ack_pending <= 4, "{ack_pending} messages out with concurrency 1 and prefetch 3");
        if (pending, ack_pending) == (6, 4) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the prefetch never filled: {pending} pending, {ack_pending} out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = run.stop().await;
    testing::assert_clean(&report);
    assert_eq!(
        report.component("prefetch").unwrap().notes,
        ["acked 1, nacked 0, redelivered 0; 3 left for redelivery"]
    );
    assert_eq!(
        *slow.seen.lock().unwrap_or_else(PoisonError::into_inner),
        [1],
        "a waiting message was handled after the drain"
    );
    assert_eq!((first.stats().acked, first.stats().left, first.stats().in_flight), (1, 3, 0));

    let fast = Slow::default();
    let mut builder = testing::builder();
    let second = builder.add(consumer(fast.clone())).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("the other nine handled", Duration::from_secs(10), || second.stats().acked == 9)
        .await;
    testing::assert_clean(&run.stop().await);
    let mut deliveries = fast.seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
    deliveries.sort_unstable();
    assert_eq!(deliveries, [1, 1, 1, 1, 1, 1, 2, 2, 2], "the three given back came again, once each");
    assert_eq!(second.stats().redelivered, 3);
    let (pending, ack_pending, _) = stream.consumer_counts("prefetch").await;
    assert_eq!((pending, ack_pending), (0, 0));
    stream.delete().await;
}

/// The start's error, as the report shows it.
/// Waits inside the handler until `together` handlers are inside at once.
#[derive(Clone)]
struct Together {
    barrier: Arc<tokio::sync::Barrier>,
}

impl MessageHandler for Together {
    async fn handle(&self, _delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
        match tokio::time::timeout(Duration::from_secs(10), self.barrier.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => Err("the other handlers never came: handlers do not run at once".into()),
        }
    }
}

#[tokio::test]
async fn handlers_run_at_once_up_to_the_concurrency_inside_the_fetch_task() {
    handlers_run_at_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_run_at_once_up_to_the_concurrency_each_in_a_task_of_its_own() {
    handlers_run_at_once(true).await;
}

/// 8 messages, 4 handlers that each wait for all 4 to be inside: every message is acked only if
/// the handlers really run at once, and none fails.
async fn handlers_run_at_once(spawn_handlers: bool) {
    let stream = Stream::create(&unique("TOGETHER")).await;
    stream.publish(8).await;
    let handler = Together { barrier: Arc::new(tokio::sync::Barrier::new(4)) };
    let mut builder = testing::builder();
    let consumer = builder
        .add(
            JetStreamConsumer::new("together", nats_url(), &stream.name, "together", handler)
                .concurrency(4)
                .spawn_handlers(spawn_handlers),
        )
        .dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("8 acked", Duration::from_secs(20), || consumer.stats().acked == 8).await;
    testing::assert_clean(&run.stop().await);
    assert_eq!(consumer.stats().nacked, 0, "no handler gave up waiting for the others");
    stream.delete().await;
}

async fn start_failure(builder: lifecycle_core::RegistryBuilder) -> String {
    let report = TestRun::start(builder).finished().await;
    assert!(!report.is_success(), "{report}");
    format!("{report}\n{report:?}")
}

#[tokio::test]
async fn an_unreachable_server_fails_the_start_after_retrying_with_the_password_hidden() {
    let url = format!("nats://app:s3cret@127.0.0.1:{}", free_port());
    let mut builder = testing::builder();
    let consumer = JetStreamConsumer::new("orders_in", url.as_str(), "ORDERS", "billing", Flaky::default())
        .options(ComponentOptions::new().start_timeout(Duration::from_secs(1)));
    assert!(format!("{consumer:?}").contains("app:***@"), "{consumer:?}");
    builder.add(consumer);
    builder.add(
        NatsPublisher::new("orders_out", url.as_str())
            .options(ComponentOptions::new().start_timeout(Duration::from_secs(1)).critical(false)),
    );
    let shown = start_failure(builder).await;
    assert!(shown.contains("component `orders_in` could not connect to nats://app:***@127.0.0.1"), "{shown}");
    assert!(shown.contains("Connection refused") || shown.contains("connection refused"), "{shown}");
    assert!(!shown.contains("s3cret"), "the password shown:\n{shown}");
}

#[tokio::test]
async fn wrong_credentials_fail_the_start_at_once_with_the_password_hidden() {
    let server = PrivateNats::start(&["--user", "app", "--pass", "right"]).await;
    let url = format!("nats://app:hunter2@127.0.0.1:{}", server.port);
    let mut builder = testing::builder();
    builder.add(
        JetStreamConsumer::new("orders_in", url.as_str(), "ORDERS", "billing", Flaky::default())
            .options(ComponentOptions::new().start_timeout(Duration::from_secs(5))),
    );
    let began = tokio::time::Instant::now();
    let shown = start_failure(builder).await;
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "not retried until the deadline: {:?}",
        began.elapsed()
    );
    assert!(shown.contains("component `orders_in` could not connect to nats://app:***@127.0.0.1"), "{shown}");
    assert!(shown.contains("(1 attempts"), "{shown}");
    assert!(shown.to_lowercase().contains("authorization violation"), "{shown}");
    assert!(!shown.contains("hunter2"), "the password shown:\n{shown}");

    // The right ones work, on the same private server.
    let mut builder = testing::builder();
    let publisher = builder
        .add(NatsPublisher::new("events", format!("nats://app:right@127.0.0.1:{}", server.port)))
        .dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    assert_eq!(run.handle().health().await.len(), 1);
    publisher.client().unwrap().publish("anything", "hello".into()).await.unwrap();
    testing::assert_clean(&run.stop().await);
    assert!(publisher.client().is_err(), "no client after the stop");
}

#[tokio::test]
async fn a_missing_stream_fails_the_start_naming_it() {
    let url = nats_url().replacen("nats://", "nats://app:s3cret@", 1);
    let missing = unique("MISSING");
    let mut builder = testing::builder();
    builder.add(JetStreamConsumer::new("orders_in", url.as_str(), &missing, "billing", Flaky::default()));
    let shown = start_failure(builder).await;
    assert!(
        shown.contains(&format!(
            "component `orders_in`: stream `{missing}` does not exist on nats://app:***@"
        )),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"), "the password shown:\n{shown}");
}

#[tokio::test]
async fn the_publisher_flushes_what_it_buffered_at_stop() {
    let stream = Stream::create(&unique("FLUSH")).await;
    let mut builder = testing::builder();
    let publisher = builder.add(NatsPublisher::new("events", nats_url())).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    // Plain publishes, not awaited by the server: only the flush at stop makes them land.
    let client = publisher.client().unwrap();
    for i in 0..500 {
        client.publish(stream.subject("orders"), format!("{i}").into()).await.unwrap();
    }
    drop(client);
    testing::assert_clean(&run.stop().await);
    // The flush means the server has every message; JetStream then stores them on its own
    // time, so the stream's count is read until it is complete (or the wait is over).
    let mut info = stream.context.get_stream(&stream.name).await.unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut stored = info.info().await.unwrap().state.messages;
    while stored < 500 && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        stored = info.info().await.unwrap().state.messages;
    }
    assert_eq!(stored, 500);
    stream.delete().await;
}
