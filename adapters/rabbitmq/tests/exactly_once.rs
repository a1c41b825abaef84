//! 10,000 messages, a consumer service shut down gracefully at random points and started again
//! until every one is handled: each message's effect (a row keyed by its id in PostgreSQL)
//! exists exactly once, the queue ends empty with nothing unacked, and after every stop the
//! broker lists no connection of the service and logged none as dropped without a close.

mod support;

use std::time::Duration;

use lifecycle_core::testing::{self, TestRun};
use lifecycle_core::{BoxError, CancellationToken, ComponentOptions};
use lifecycle_rabbitmq::{Delivery, MessageHandler, RabbitConsumer};
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use support::{BrokerLog, Queue, amqp_url, connection_names, postgres_url, queue_counts, unique};

const MESSAGES: usize = 10_000;

/// Writes the message id into a table with the id as primary key: a redelivered message that
/// was already handled changes nothing.
struct Record {
    pool: sqlx::PgPool,
    table: String,
}

impl MessageHandler for Record {
    async fn handle(&self, delivery: &Delivery, cancel: CancellationToken) -> Result<(), BoxError> {
        let id = delivery.message_id().ok_or("no message id")?.to_owned();
        // A little work, so that handlers are in flight when the shutdown comes.
        let pause = Duration::from_micros(delivery.delivery_tag().wrapping_mul(7919) % 3000);
        tokio::select! {
            _ = cancel.cancelled() => return Err("cancelled by the stop".into()),
            _ = tokio::time::sleep(pause) => {}
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (id) VALUES ($1) ON CONFLICT DO NOTHING",
            self.table
        )))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[allow(clippy::expect_used)] // a test helper: a failed count fails the test
async fn rows(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_has_its_effect_exactly_once_across_random_shutdowns() {
    let queue = Queue::create(&unique("exactly_once")).await;
    let table = unique("rabbitmq_effects");
    let pool =
        PgPoolOptions::new().max_connections(16).connect(&postgres_url()).await.expect("PostgreSQL is up");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE {table} (id TEXT PRIMARY KEY)")))
        .execute(&pool)
        .await
        .expect("table");
    queue.publish(MESSAGES).await;
    let log = BrokerLog::mark();
    let service = unique("recorder");

    // Seeded from the clock, and printed: a failure can be run again with the same points.
    let seed = std::env::var("RABBITMQ_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    println!("RABBITMQ_TEST_SEED={seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut runs = 0;
    let mut redelivered = 0;
    let mut left = 0;
    let mut acked = 0;
    let began = std::time::Instant::now();
    loop {
        runs += 1;
        assert!(runs <= 20, "not done after 19 runs");
        let mut builder = testing::builder();
        let consumer = builder
            .add(
                RabbitConsumer::new(
                    service.clone(),
                    amqp_url(),
                    &queue.name,
                    Record { pool: pool.clone(), table: table.clone() },
                )
                .concurrency(32)
                .prefetch(64)
                .options(ComponentOptions::new().stop_timeout(Duration::from_secs(3))),
            )
            .dep();
        let mut run = TestRun::start(builder);
        run.ready().await;
        let connection = consumer.connection_name().expect("running");
        let done = rows(&pool, &table).await;
        // The first two runs are shut down at a random point of the messages left; the ones
        // after that run until the queue has nothing more for them.
        if runs <= 2 {
            let target = rng.random_range(1..(MESSAGES as u64 - done as u64).max(2));
            testing::eventually("the random shutdown point", Duration::from_secs(120), || {
                consumer.stats().acked >= target
            })
            .await;
        } else {
            let mut idle = 0;
            while idle < 3 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (ready, unacked) = queue_counts(&queue.name).await;
                idle = if ready == 0 && unacked == 0 { idle + 1 } else { 0 };
            }
        }
        // A graceful shutdown through the lifecycle handle.
        let report = run.stop().await;
        testing::assert_clean(&report);
        let stats = consumer.stats();
        let note = report.component(service.as_str()).map(|c| c.notes.join("; ")).unwrap_or_default();
        println!("run {runs}: {stats:?}; report: {note}");
        assert_eq!((stats.nacked, stats.rejected, stats.in_flight), (0, 0, 0), "no handler failed");
        assert!(
            note.starts_with(&format!("acked {}, nacked 0, redelivered {}", stats.acked, stats.redelivered)),
            "{note}"
        );
        // The broker lists no connection of the service, and saw this one closed properly.
        let open: Vec<String> =
            connection_names().await.into_iter().filter(|name| name.starts_with(&service)).collect();
        assert_eq!(open, Vec::<String>::new(), "connections of the service still open after run {runs}");
        assert!(log.saw(&connection), "the broker logged {connection}");
        redelivered += stats.redelivered;
        acked += stats.acked;
        left += stats.left;
        if runs > 2 && rows(&pool, &table).await == MESSAGES as i64 {
            break;
        }
    }

    let distinct: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(DISTINCT id) FROM {table}")))
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(rows(&pool, &table).await, MESSAGES as i64);
    assert_eq!(distinct, MESSAGES as i64);
    assert_eq!(queue_counts(&queue.name).await, (0, 0), "nothing left ready or unacknowledged");
    assert_eq!(queue.ready().await, 0);
    // Every ack counted once per message; every delivery given back at a stop delivered again
    // (flagged redelivered) once.
    assert_eq!(acked, MESSAGES as u64);
    assert_eq!(redelivered, left);
    assert_eq!(
        log.dropped_connections(&service),
        Vec::<String>::new(),
        "the broker saw a connection of the service vanish without a close"
    );
    println!(
        "{MESSAGES} messages, {runs} runs in {:.1?}: {MESSAGES} rows; redelivered {redelivered}, given back at stops {left}",
        began.elapsed()
    );

    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}"))).execute(&pool).await.expect("drop");
    queue.delete().await;
}
