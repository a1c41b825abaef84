//! Bad set-ups fail the start with an error naming the component and without the password: an
//! unreachable broker after retrying until the start deadline, wrong credentials at once, a
//! missing queue naming it. The publisher's stop waits for every confirm, and a lost connection
//! restarts it by its restart policy.

mod support;

use std::time::Duration;

use lifecycle_core::testing::{self, TestRun};
use lifecycle_core::{BoxError, CancellationToken, ComponentOptions, RestartPolicy};
use lifecycle_rabbitmq::lapin::BasicProperties;
use lifecycle_rabbitmq::{Delivery, MessageHandler, RabbitConsumer, RabbitPublisher};
use support::{
    BrokerLog, Queue, amqp_url, close_connection, connection_names, free_port, queue_counts, unique,
};

struct Nothing;

impl MessageHandler for Nothing {
    async fn handle(&self, _delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
        Ok(())
    }
}

/// The start's error, as the report shows it.
async fn start_failure(builder: lifecycle_core::RegistryBuilder) -> String {
    let report = TestRun::start(builder).finished().await;
    assert!(!report.is_success(), "{report}");
    format!("{report}\n{report:?}")
}

#[tokio::test]
async fn an_unreachable_broker_fails_the_start_at_its_deadline_with_the_password_hidden() {
    let url = format!("amqp://app:s3cret@127.0.0.1:{}/%2f", free_port());
    let mut builder = testing::builder();
    let consumer = RabbitConsumer::new("orders_in", url.as_str(), "orders", Nothing)
        .options(ComponentOptions::new().start_timeout(Duration::from_secs(1)));
    assert!(format!("{consumer:?}").contains("app:***@"), "{consumer:?}");
    builder.add(consumer);
    builder.add(
        RabbitPublisher::new("orders_out", url.as_str())
            .options(ComponentOptions::new().start_timeout(Duration::from_secs(1)).critical(false)),
    );
    let began = tokio::time::Instant::now();
    let shown = start_failure(builder).await;
    assert!(
        began.elapsed() >= Duration::from_millis(500),
        "retried until the deadline: {:?}",
        began.elapsed()
    );
    assert!(shown.contains("component `orders_in` could not connect to amqp://app:***@127.0.0.1"), "{shown}");
    assert!(!shown.contains("(1 attempts"), "retried: {shown}");
    assert!(shown.to_lowercase().contains("connection refused"), "{shown}");
    assert!(!shown.contains("s3cret"), "the password shown:\n{shown}");
}

#[tokio::test]
async fn wrong_credentials_fail_the_start_at_once_with_the_password_hidden() {
    let url = amqp_url().replacen("guest:guest@", "guest:hunter2@", 1);
    assert!(url.contains("hunter2"), "the test URL has guest's credentials: {url}");
    let mut builder = testing::builder();
    builder.add(
        RabbitConsumer::new("orders_in", url.as_str(), "orders", Nothing)
            .options(ComponentOptions::new().start_timeout(Duration::from_secs(10))),
    );
    let began = tokio::time::Instant::now();
    let shown = start_failure(builder).await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "not retried until the deadline: {:?}",
        began.elapsed()
    );
    assert!(
        shown.contains("component `orders_in` could not connect to amqp://guest:***@127.0.0.1"),
        "{shown}"
    );
    assert!(shown.contains("(1 attempts"), "{shown}");
    assert!(shown.contains("ACCESS_REFUSED") || shown.contains("ACCESS-REFUSED"), "{shown}");
    assert!(!shown.contains("hunter2"), "the password shown:\n{shown}");
}

#[tokio::test]
async fn a_missing_queue_fails_the_start_naming_it_and_closes_the_connection() {
    let missing = unique("missing");
    let log = BrokerLog::mark();
    let name = unique("orders_in");
    let mut builder = testing::builder();
    builder.add(
        RabbitConsumer::new(name.clone(), amqp_url(), &missing, Nothing)
            .options(ComponentOptions::new().start_timeout(Duration::from_secs(10))),
    );
    let began = tokio::time::Instant::now();
    let shown = start_failure(builder).await;
    assert!(began.elapsed() < Duration::from_secs(5), "not retried: {:?}", began.elapsed());
    assert!(
        shown.contains(&format!("component `{name}`: queue `{missing}` does not exist on amqp://")),
        "{shown}"
    );
    // guest's password is its user name: both hidden.
    assert!(shown.contains("amqp://***:***@127.0.0.1"), "{shown}");
    assert!(
        !connection_names().await.iter().any(|listed| listed.starts_with(&name)),
        "the connection closed"
    );
    assert!(log.saw(&format!("{name}-")), "the broker logged the connection");
    assert_eq!(log.dropped_connections(&name), Vec::<String>::new(), "closed with connection.close");
}

#[tokio::test]
async fn the_publisher_waits_for_every_confirm_at_stop() {
    const MESSAGES: usize = 2000;
    let queue = Queue::create(&unique("published")).await;
    let log = BrokerLog::mark();
    let name = unique("events");
    let mut builder = testing::builder();
    let publisher = builder.add(RabbitPublisher::new(name.clone(), amqp_url())).dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    let connection = publisher.connection_name().unwrap();
    // Half awaited, half dropped unanswered: the stop waits for those too.
    let mut awaited = Vec::new();
    for i in 0..MESSAGES {
        let properties =
            BasicProperties::default().with_message_id(format!("e-{i}").into()).with_delivery_mode(2);
        let confirm =
            publisher.publish("", &queue.name, format!("event {i}").as_bytes(), properties).await.unwrap();
        if i % 2 == 0 {
            awaited.push(confirm);
        }
    }
    for confirm in awaited {
        assert!(confirm.await.unwrap().is_ack());
    }
    let report = run.stop().await;
    testing::assert_clean(&report);
    let stats = publisher.stats();
    assert_eq!(
        (stats.published, stats.confirmed, stats.nacked),
        (MESSAGES as u64, MESSAGES as u64, 0),
        "{stats:?}"
    );
    let note = &report.component(name.as_str()).unwrap().notes;
    assert_eq!(note.len(), 1, "{note:?}");
    assert!(
        note[0].starts_with("confirms waited for at stop: ") && note[0].ends_with(" confirmed, 0 nacked"),
        "{note:?}"
    );
    assert_eq!(queue.ready().await, MESSAGES as u32, "every message in the queue");
    assert_eq!(queue_counts(&queue.name).await, (MESSAGES as u64, 0));
    assert!(!connection_names().await.contains(&connection), "the connection is closed");
    assert!(publisher.publish("", &queue.name, b"late", BasicProperties::default()).await.is_err());
    assert_eq!(log.dropped_connections(&connection), Vec::<String>::new(), "closed with connection.close");
    queue.delete().await;
}

#[tokio::test]
async fn a_publisher_whose_connection_is_closed_restarts_by_its_restart_policy() {
    let queue = Queue::create(&unique("republished")).await;
    let name = unique("events");
    let mut builder = testing::builder();
    let publisher = builder
        .add(RabbitPublisher::new(name.clone(), amqp_url()).options(ComponentOptions::new().restart(
            RestartPolicy::on_failure().backoff(Duration::from_millis(50), Duration::from_millis(200)),
        )))
        .dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    let first = publisher.connection_name().unwrap();
    close_connection(&first).await;
    testing::eventually("a new connection", Duration::from_secs(20), || {
        publisher.connection_name().is_some_and(|name| name != first)
    })
    .await;
    let confirm = publisher.publish("", &queue.name, b"after the restart", BasicProperties::default()).await;
    assert!(confirm.unwrap().await.unwrap().is_ack());
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    assert_eq!(report.component(name.as_str()).unwrap().failures.count, 1, "{report}");
    assert_eq!(queue.ready().await, 1);
    queue.delete().await;
}
