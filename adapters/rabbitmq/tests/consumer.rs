//! A handler's error never acks its delivery (nack with requeue, or reject to the dead-letter
//! queue); a handler still running at the stop timeout is cancelled and its delivery requeued
//! for the next consumer; the stop closes channel and connection as the broker expects; a
//! connection the broker closes restarts the consumer by its restart policy.

mod support;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lifecycle_core::testing::{self, TestRun};
use lifecycle_core::{BoxError, CancellationToken, ComponentOptions, RestartPolicy};
use lifecycle_rabbitmq::{Delivery, MessageHandler, OnError, RabbitConsumer};
use support::{
    BrokerLog, Queue, amqp_url, close_connection, connection_names, dead_letter_to, queue_counts, unique,
};

/// Fails every first delivery (not flagged redelivered) when `fail_first`, every delivery when
/// `fail_all`; records each delivery's message id and redelivered flag.
#[derive(Clone, Default)]
struct Flaky {
    fail_first: bool,
    fail_all: bool,
    /// Fail by panicking rather than by returning an error.
    panics: bool,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

impl MessageHandler for Flaky {
    async fn handle(&self, delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
        let id = delivery.message_id().unwrap_or_default().to_owned();
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).push((id.clone(), delivery.redelivered()));
        if self.fail_all || (self.fail_first && !delivery.redelivered()) {
            assert!(!self.panics, "malformed order {id}");
            return Err(format!("malformed order {id}").into());
        }
        Ok(())
    }
}

fn seen(handler: &Flaky) -> Vec<(String, bool)> {
    handler.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

#[tokio::test]
async fn a_handler_error_requeues_and_the_message_comes_back_flagged_redelivered() {
    requeues_and_comes_back(false).await;
}

#[tokio::test]
async fn a_handler_that_panics_requeues_like_an_error_and_the_service_carries_on() {
    requeues_and_comes_back(true).await;
}

async fn requeues_and_comes_back(panics: bool) {
    let queue = Queue::create(&unique("requeue")).await;
    queue.publish(1).await;
    let handler = Flaky { fail_first: true, panics, ..Flaky::default() };
    let mut builder = testing::builder();
    let consumer =
        builder.add(RabbitConsumer::new("requeues", amqp_url(), &queue.name, handler.clone())).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("the redelivery acked", Duration::from_secs(10), || consumer.stats().acked == 1)
        .await;
    let report = run.stop().await;
    testing::assert_clean(&report);
    assert_eq!(seen(&handler), [("m-0".to_owned(), false), ("m-0".to_owned(), true)]);
    let stats = consumer.stats();
    assert_eq!((stats.nacked, stats.acked, stats.redelivered, stats.rejected), (1, 1, 1, 0), "{stats:?}");
    let notes = report.component("requeues").map(|component| component.notes.clone()).unwrap_or_default();
    assert_eq!(notes, ["acked 1, nacked 1, redelivered 1; 0 left for redelivery"]);
    assert_eq!(queue_counts(&queue.name).await, (0, 0), "nothing left ready or unacked");
    queue.delete().await;
}

#[tokio::test]
async fn a_handler_error_can_reject_to_the_dead_letter_queue_but_never_acks() {
    // Failed messages go through the default exchange to the dead-letter queue.
    let dead = Queue::create(&unique("dead")).await;
    let queue = Queue::create_with(&unique("rejects"), dead_letter_to("", &dead.name)).await;
    queue.publish(2).await;
    let handler = Flaky { fail_all: true, ..Flaky::default() };
    let mut builder = testing::builder();
    let consumer = builder
        .add(
            RabbitConsumer::new("rejects", amqp_url(), &queue.name, handler.clone())
                .on_error(OnError::Reject),
        )
        .dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("both rejected", Duration::from_secs(10), || consumer.stats().rejected == 2).await;
    // Both dead-lettered: the broker moved them, so nothing can come back to the handler.
    testing::within("the dead letters", Duration::from_secs(10), async {
        while dead.ready().await < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let report = run.stop().await;
    testing::assert_clean(&report);
    let mut ids: Vec<(String, bool)> = seen(&handler);
    ids.sort();
    assert_eq!(ids, [("m-0".to_owned(), false), ("m-1".to_owned(), false)], "each handled once");
    let stats = consumer.stats();
    assert_eq!((stats.acked, stats.nacked, stats.rejected, stats.redelivered), (0, 0, 2, 0), "{stats:?}");
    assert_eq!(
        report.component("rejects").unwrap().notes,
        ["acked 0, nacked 0, redelivered 0; 0 left for redelivery; 2 rejected"]
    );
    assert_eq!(queue_counts(&queue.name).await, (0, 0));
    assert_eq!(queue_counts(&dead.name).await, (2, 0), "both in the dead-letter queue");
    queue.delete().await;
    dead.delete().await;
}

/// Ignores its token on the first delivery (a handler stuck in a call without a timeout).
#[derive(Clone, Default)]
struct Stuck {
    started: Arc<Mutex<Vec<bool>>>,
}

impl MessageHandler for Stuck {
    async fn handle(&self, delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
        self.started.lock().unwrap_or_else(PoisonError::into_inner).push(delivery.redelivered());
        if !delivery.redelivered() {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_handler_still_running_at_the_stop_timeout_leaves_its_message_to_the_next_consumer() {
    let queue = Queue::create(&unique("stuck")).await;
    queue.publish(1).await;
    let handler = Stuck::default();
    let started = || handler.started.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let consumer = || {
        RabbitConsumer::new("stuck", amqp_url(), &queue.name, handler.clone())
            .options(ComponentOptions::new().stop_timeout(Duration::from_secs(1)))
    };

    let mut builder = testing::builder();
    let first = builder.add(consumer()).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("the handler started", Duration::from_secs(10), || started() == [false]).await;
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
    assert_eq!(queue_counts(&queue.name).await, (1, 0), "requeued, not acked");

    let mut builder = testing::builder();
    let second = builder.add(consumer()).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("the message delivered again", Duration::from_secs(10), || second.stats().acked == 1)
        .await;
    testing::assert_clean(&run.stop().await);
    assert_eq!(started(), [false, true], "delivered again, flagged redelivered");
    assert_eq!(second.stats().redelivered, 1);
    assert_eq!(queue_counts(&queue.name).await, (0, 0));
    queue.delete().await;
}

/// Holds every delivery until its token is cancelled or `release` is.
#[derive(Clone, Default)]
struct Slow {
    release: CancellationToken,
}

impl MessageHandler for Slow {
    async fn handle(&self, _delivery: &Delivery, cancel: CancellationToken) -> Result<(), BoxError> {
        tokio::select! {
            _ = cancel.cancelled() => Err("cancelled by the stop".into()),
            _ = self.release.cancelled() => Ok(()),
        }
    }
}

#[tokio::test]
async fn the_drain_gives_back_prefetched_deliveries_and_the_stop_closes_the_connection_cleanly() {
    let queue = Queue::create(&unique("drain")).await;
    queue.publish(20).await;
    let log = BrokerLog::mark();
    let handler = Slow::default();
    let mut builder = testing::builder();
    let name = unique("drains");
    // 2 handlers, 10 prefetched: 8 wait in this process when the drain comes.
    let consumer = builder
        .add(
            RabbitConsumer::new(name.clone(), amqp_url(), &queue.name, handler.clone())
                .concurrency(2)
                .prefetch(10)
                .options(ComponentOptions::new().stop_timeout(Duration::from_secs(10))),
        )
        .dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    let connection = consumer.connection_name().unwrap();
    assert!(connection.starts_with(&format!("{name}-")), "{connection}");
    assert!(connection_names().await.contains(&connection), "the broker lists {connection}");
    testing::eventually("two handlers running", Duration::from_secs(10), || consumer.stats().in_flight == 2)
        .await;
    // Wait until the broker has sent the 10 it may.
    testing::within("10 unacked", Duration::from_secs(10), async {
        while queue_counts(&queue.name).await != (10, 10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // The handlers finish during the stop, after the drain gave the other 8 back.
    let stopping = tokio::spawn({
        let handler = handler.clone();
        let consumer = consumer.clone();
        async move {
            testing::eventually("8 given back", Duration::from_secs(10), || consumer.stats().left == 8).await;
            handler.release.cancel();
        }
    });
    let report = run.stop().await;
    stopping.await.unwrap();
    testing::assert_clean(&report);
    assert_eq!(
        report.component(name.as_str()).unwrap().notes,
        ["acked 2, nacked 0, redelivered 0; 8 left for redelivery"]
    );
    assert_eq!(queue_counts(&queue.name).await, (18, 0), "the 8 given back requeued, the 2 handled acked");
    assert!(!connection_names().await.contains(&connection), "the connection is closed");
    assert!(log.saw(&connection), "the broker logged the connection's name");
    assert_eq!(log.dropped_connections(&connection), Vec::<String>::new(), "closed with connection.close");
    queue.delete().await;
}

#[tokio::test]
async fn a_connection_the_broker_closes_restarts_the_consumer_by_its_restart_policy() {
    let queue = Queue::create(&unique("restart")).await;
    let handler = Flaky::default();
    let mut builder = testing::builder();
    let name = unique("restarts");
    let consumer = builder
        .add(RabbitConsumer::new(name.clone(), amqp_url(), &queue.name, handler.clone()).options(
            ComponentOptions::new().restart(
                RestartPolicy::on_failure().backoff(Duration::from_millis(50), Duration::from_millis(200)),
            ),
        ))
        .dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    queue.publish(1).await;
    testing::eventually("the first acked", Duration::from_secs(10), || consumer.stats().acked == 1).await;
    let first = consumer.connection_name().unwrap();
    close_connection(&first).await;
    // A new start, on a new connection, consumes again.
    testing::eventually("a new connection", Duration::from_secs(20), || {
        consumer.connection_name().is_some_and(|name| name != first)
    })
    .await;
    queue.publish(1).await;
    testing::eventually("the second acked", Duration::from_secs(10), || consumer.stats().acked == 2).await;
    let report = run.stop().await;
    let entry = report.component(name.as_str()).unwrap();
    assert_eq!(entry.failures.count, 1, "{report}");
    assert!(report.is_success(), "{report}");
    assert_eq!(queue_counts(&queue.name).await, (0, 0));
    queue.delete().await;
}
