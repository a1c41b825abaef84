//! The `events` example as a real process consuming a real JetStream stream into PostgreSQL:
//! stopped by SIGTERM at random points and started again, then upgraded 20 times with SIGUSR2
//! while messages keep arriving. Every message's effect (a row keyed by its id) exists exactly
//! once, the server's consumer has nothing pending nor waiting for an ack, and the reports
//! account for every ack and redelivery.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

mod events_support;

use events_support::{DURABLE, Database, start_events};
use lifecycle_nats::async_nats;
use lifecycle_tests::nats::{Stream, nats_url, unique};
use lifecycle_tests::{load, pid_in, upgrade, wait_exited};
use rand::{Rng, SeedableRng};

const MESSAGES: i64 = 10_000;

/// The consumer's stop notes in a service's standard error: `(acked, redelivered, left)` summed
/// over every report in it (a process and its successors write to the same pipe).
fn consumer_notes(stderr: &str) -> (u64, u64, u64) {
    let mut sums = (0, 0, 0);
    let mut reports = 0;
    for line in stderr.lines() {
        let Some(note) = line.trim_start().strip_prefix("`consumer`: acked ") else { continue };
        reports += 1;
        let number = |text: &str| -> u64 {
            text.trim().split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
        };
        let (acked, rest) = note.split_once(", nacked ").unwrap_or_else(|| panic!("{line}"));
        let (_, rest) = rest.split_once(", redelivered ").unwrap_or_else(|| panic!("{line}"));
        let (redelivered, left) = rest.split_once("; ").unwrap_or_else(|| panic!("{line}"));
        sums.0 += number(acked);
        sums.1 += number(redelivered);
        sums.2 += number(left);
    }
    assert!(reports > 0, "no consumer note in:\n{stderr}");
    sums
}

/// Waits until every message has its row and the server has nothing pending nor unacknowledged.
async fn wait_all_recorded(stream: &Stream, database: &Database, limit: Duration) {
    let until = Instant::now() + limit;
    loop {
        let (pending, ack_pending, _) = stream.consumer_counts(DURABLE).await;
        let rows = database.rows().await;
        if rows == MESSAGES && pending == 0 && ack_pending == 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "after {limit:?}: {rows} rows, {pending} pending, {ack_pending} unacked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_exactly_once(stream: &Stream, database: &Database) {
    assert_eq!(database.rows().await, MESSAGES, "one row per message");
    assert_eq!(database.distinct_expected_ids().await, MESSAGES, "every message id m-0..m-9999");
    let (pending, ack_pending, _) = stream.consumer_counts(DURABLE).await;
    assert_eq!((pending, ack_pending), (0, 0), "nothing pending or unacknowledged on the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_random_points_then_a_restart_records_every_event_once() {
    let stream = Stream::create(&unique("EVENTS_SIGTERM")).await;
    let database = Database::create("events_sigterm").await;
    stream.publish(MESSAGES as usize).await;
    // Seeded from the clock, and printed: a failure can be run again with the same points.
    let seed = std::env::var("EVENTS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    println!("EVENTS_TEST_SEED={seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let (mut acked, mut redelivered, mut left) = (0, 0, 0);
    for run in 1..=3 {
        let events = start_events(&stream, &database, None).await;
        let service = events.service;
        let mut scraped = None;
        if run < 3 {
            // A random point of what is left: handlers are in flight when SIGTERM comes.
            let done = database.rows().await;
            let target = rng.random_range(done + 1..done + (MESSAGES - done) / 2 + 2);
            let until = Instant::now() + Duration::from_secs(60);
            while database.rows().await < target {
                assert!(Instant::now() < until, "{target} rows not reached:\n{}", service.stderr());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else {
            wait_all_recorded(&stream, &database, Duration::from_secs(60)).await;
            let (status, text) = load::get(events.admin, "/metrics").await.expect("/metrics answers");
            assert_eq!(status, 200, "{text}");
            scraped = Some(text);
        }
        service.signal("TERM").expect("SIGTERM");
        let (status, stderr, _) = service.wait(Duration::from_secs(20)).expect("exits after SIGTERM");
        assert_eq!(status.code(), Some(0), "{stderr}");
        let (run_acked, run_redelivered, run_left) = consumer_notes(&stderr);
        println!(
            "run {run}: {} rows; acked {run_acked}, redelivered {run_redelivered}, given back {run_left}",
            database.rows().await
        );
        if let Some(text) = scraped {
            // The consumer's own counters on /metrics agree with its report.
            let value = |name: &str| -> u64 {
                text.lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            };
            assert_eq!(value("events_consumer_acked_total"), run_acked, "{text}");
            assert_eq!(value("events_consumer_in_flight"), 0, "{text}");
            assert_eq!(value("events_consumer_left_total"), 0, "{text}");
            assert!(text.contains("lifecycle_phase{phase=\"ready\"} 1"), "{text}");
        }
        acked += run_acked;
        redelivered += run_redelivered;
        left += run_left;
    }
    assert_exactly_once(&stream, &database).await;
    // Each message acked once; each one given back at a stop delivered again. The server may
    // also redeliver a message whose ack it had not processed when the connection closed: at
    // least the given-back ones.
    assert_eq!(acked, MESSAGES as u64, "acks the server confirmed, summed over the runs' reports");
    assert!(redelivered >= left, "redelivered {redelivered} < given back {left}");
    println!(
        "{MESSAGES} events over 3 runs (2 SIGTERMs): {MESSAGES} rows; redelivered {redelivered}, given back at stops {left}"
    );
    stream.delete().await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_upgrades_while_events_arrive_record_every_event_once() {
    const UPGRADES: usize = 20;
    let stream = Stream::create(&unique("EVENTS_UPGRADE")).await;
    let database = Database::create("events_upgrade").await;
    let dir = std::env::temp_dir().join(unique("events_upgrade"));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let pid_file = dir.join("events.pid");
    let first = start_events(&stream, &database, Some(&pid_file)).await.service;

    // Messages keep arriving during the upgrades: about 400 a second, each stored by the server.
    let publisher = {
        let context = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("NATS"));
        let subject = stream.subject("signup");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            for batch in 0..MESSAGES / 10 {
                tick.tick().await;
                let mut acks = Vec::with_capacity(10);
                for i in batch * 10..batch * 10 + 10 {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("m-{i}").as_str());
                    acks.push(
                        context
                            .publish_with_headers(subject.clone(), headers, format!("event {i}").into())
                            .await
                            .expect("published"),
                    );
                }
                for ack in acks {
                    ack.await.expect("stored");
                }
            }
        })
    };

    let mut pid = pid_in(&pid_file);
    for round in 1..=UPGRADES {
        pid = upgrade(&pid_file, pid, Duration::from_secs(30)).await;
        // The successor consumes before the next upgrade (while messages are still coming).
        let before = database.rows().await;
        let until = Instant::now() + Duration::from_secs(30);
        while database.rows().await <= before && !publisher.is_finished() {
            assert!(Instant::now() < until, "upgrade {round}: process {pid} records nothing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    publisher.await.expect("every message published");
    wait_all_recorded(&stream, &database, Duration::from_secs(60)).await;
    lifecycle_tests::kill("TERM", pid);
    wait_exited(pid, Duration::from_secs(20)).await;
    let (status, stderr, _) = first.wait(Duration::from_secs(20)).expect("the first process exited");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.matches("lifecycle report: handed over to process").count(), UPGRADES, "{stderr}");
    assert_exactly_once(&stream, &database).await;
    let (acked, redelivered, left) = consumer_notes(&stderr);
    assert_eq!(acked, MESSAGES as u64, "acks the server confirmed, summed over the {} reports", UPGRADES + 1);
    assert!(redelivered >= left, "redelivered {redelivered} < given back {left}");
    println!(
        "{MESSAGES} events during {UPGRADES} upgrades: {MESSAGES} rows; redelivered {redelivered}, given back at stops {left}"
    );
    stream.delete().await;
    database.drop_now().await;
    let _ = std::fs::remove_dir_all(&dir);
}
