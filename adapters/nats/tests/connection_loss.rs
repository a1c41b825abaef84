//! A server that goes away under a running consumer (a private `nats-server`, killed with
//! SIGKILL and started again on its port with its store): the consumer reports `Degraded` while
//! it is gone, and afterwards every message, sent before and after, is handled (the ones whose
//! acks the killed server forgot, again: at least once); the client reconnects by itself. And
//! a durable consumer deleted on the server: the fetch loop's errors in a row make the
//! supervisor restart the component, which creates the consumer again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lifecycle_core::testing::{self, TestRun};
use lifecycle_core::{BoxError, CancellationToken, ComponentOptions, Health, Phase, RestartPolicy};
use lifecycle_nats::{Delivery, JetStreamConsumer, MessageHandler};
use lifecycle_tests::nats::{PrivateNats, Stream, nats_url, unique};

/// Counts how often each message id was handled.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<HashMap<String, u32>>>);

impl Tally {
    fn handled(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn handled_twice(&self) -> Vec<String> {
        let seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        seen.iter().filter(|(_, count)| **count > 1).map(|(id, _)| id.clone()).collect()
    }
}

impl MessageHandler for Tally {
    async fn handle(&self, delivery: &Delivery, _cancel: CancellationToken) -> Result<(), BoxError> {
        let id = delivery.message_id().ok_or("no message id")?.to_owned();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner).entry(id).or_default() += 1;
        Ok(())
    }
}

async fn consumer_health(run: &TestRun) -> Health {
    let health = run.handle().health().await;
    health
        .into_iter()
        .find(|(id, _)| id.as_str() == "consumer")
        .map(|(_, health)| health)
        .unwrap_or(Health::Healthy)
}

/// Kills the server under a running consumer, checks it turns `Degraded`, starts the server
/// again, publishes more, and checks every message was handled exactly once. The report.
async fn survive_a_lost_server(options: ComponentOptions, outage: Duration) -> lifecycle_core::Report {
    let mut server = PrivateNats::start(&[]).await;
    let stream = Stream::create_on(&server.url(), &unique("LOSS")).await;
    stream.publish(100).await;
    let tally = Tally::default();
    let mut builder = testing::builder();
    let consumer = builder
        .add(
            JetStreamConsumer::new("consumer", server.url(), &stream.name, "survivor", tally.clone())
                .fetch_wait(Duration::from_millis(200))
                // Messages the server sent to a connection that died are delivered again after
                // this, not after the default 30 s.
                .ack_wait(Duration::from_secs(2))
                .options(options),
        )
        .dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("the first 100 handled", Duration::from_secs(20), || tally.handled() == 100).await;

    server.kill();
    testing::within("the consumer degraded while the server is gone", Duration::from_secs(10), async {
        while !matches!(consumer_health(&run).await, Health::Degraded(_)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(run.handle().phase(), Phase::Ready, "the service runs on without its server");
    tokio::time::sleep(outage).await;
    server.restart().await;

    // Sent on a new connection once the server is back; ids m-0.. again would be deduplicated
    // by the stream, so these are published under other ids.
    let stream = Stream::create_on(&server.url(), &stream.name).await;
    stream.publish_from(100, 100).await;
    testing::eventually("all 200 handled after the server came back", Duration::from_secs(60), || {
        tally.handled() == 200
    })
    .await;
    testing::within("the consumer healthy again", Duration::from_secs(10), async {
        while consumer_health(&run).await != Health::Healthy {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    testing::within("nothing pending or unacknowledged on the server", Duration::from_secs(30), async {
        while stream.consumer_counts("survivor").await.0 + stream.consumer_counts("survivor").await.1 as u64
            > 0
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let report = run.stop().await;
    // A server killed with SIGKILL may forget acks it confirmed just before (it writes its
    // consumers' state lazily), and delivers those messages again: at least once, which is
    // what the handler's unique key is for. Nothing sent after the restart comes twice.
    let twice = tally.handled_twice();
    assert!(
        twice.iter().all(|id| id.trim_start_matches("m-").parse::<usize>().is_ok_and(|n| n < 100)),
        "only messages acked before the server was killed come again: {twice:?}"
    );
    assert!(consumer.stats().acked >= 200, "{:?}", consumer.stats());
    println!(
        "{} of the 100 messages acked before the kill delivered again by the restarted server",
        twice.len()
    );
    let (pending, ack_pending, _) = stream.consumer_counts("survivor").await;
    assert_eq!((pending, ack_pending), (0, 0), "nothing pending or unacknowledged on the server");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_degrades_the_consumer_and_it_reconnects_by_itself() {
    let report = survive_a_lost_server(ComponentOptions::new(), Duration::from_millis(500)).await;
    testing::assert_clean(&report);
    assert_eq!(report.component("consumer").map(|c| c.restarts), Some(0));
}

/// The durable consumer deleted on the server under a running consumer (an operator's mistake,
/// a server that lost its state): the fetches fail, and after `ESCALATE_AFTER` failures in a row
/// the consumer fails, so its restart policy starts it again, which creates the consumer anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_server_consumer_makes_the_restart_policy_create_it_again() {
    let stream = Stream::create(&unique("DELETED")).await;
    stream.publish(50).await;
    let tally = Tally::default();
    let restart = RestartPolicy::on_failure()
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .max_restarts(10, Duration::from_secs(60));
    let mut builder = testing::builder();
    let consumer = builder
        .add(
            JetStreamConsumer::new("consumer", nats_url(), &stream.name, "deleted", tally.clone())
                .fetch_wait(Duration::from_millis(200))
                .options(ComponentOptions::new().restart(restart)),
        )
        .dep();
    let mut run = TestRun::start(builder);
    run.ready().await;
    testing::eventually("the first 50 handled", Duration::from_secs(20), || tally.handled() == 50).await;
    stream
        .context
        .get_stream(&stream.name)
        .await
        .expect("stream")
        .delete_consumer("deleted")
        .await
        .expect("deleted");
    testing::within("the consumer restarted by its policy", Duration::from_secs(30), async {
        while run
            .handle()
            .components()
            .iter()
            .find(|c| c.name.as_str() == "consumer")
            .map_or(0, |c| c.restarts)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // The new consumer starts from the stream's beginning: the first 50 come again (a unique
    // key makes that harmless), and the 50 sent now arrive.
    stream.publish_from(50, 50).await;
    testing::eventually("all 100 handled by the new consumer", Duration::from_secs(30), || {
        tally.handled() == 100
    })
    .await;
    let report = run.stop().await;
    let row = report.component("consumer").expect("the consumer's row");
    assert!(row.restarts >= 1, "{report}");
    assert!(consumer.stats().acked >= 100, "{:?}", consumer.stats());
    assert_eq!(report.exit_code, 0, "a restarted component does not fail the run: {report}");
    println!("{report}");
    stream.delete().await;
}
