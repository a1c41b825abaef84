//! The `orders` example serves every request while its Redis cache is killed, then frozen: the
//! cache is optional and each cache call is bounded by 100 ms, so a Redis that is down or frozen
//! is a cache miss, reads come from the database, and `/readyz` says `degraded` (200), never
//! 503. The Redis is the test's own (`redis-server` on a free port), killed (SIGKILL) and started
//! again, then frozen (SIGSTOP) and thawed (SIGCONT), under load from keep-alive clients that
//! create orders and a reader that reads processed orders back and times every read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lifecycle::testing::within;
use lifecycle_tests::load::{Clients, Mode, connect, get, post};
use lifecycle_tests::redis::RedisServer;
use lifecycle_tests::{Orders, report_row};

/// The longest any one wait of the test may take.
const WITHIN: Duration = Duration::from_secs(10);
/// How long Redis stays killed, then frozen, under load, at the least.
const OUTAGE: Duration = Duration::from_secs(3);
/// How many reads the reader finishes while Redis is frozen, at the least: the freeze lasts
/// until it did.
const FROZEN_READS: usize = 10;
/// What the median read must take less than while Redis is frozen. With the cache's 100 ms
/// timeout, on the lookup and on the write-back, a read takes about 200 ms more than its
/// database query; without it, it waits for the Redis client's own timeouts instead (500 ms for
/// a reply, 1 s to connect, twice): some 2 s. Not the slowest read: on its default SQLite store
/// (no WAL), a read under this load waits for the writers' locks for up to seconds now and then,
/// Redis or not.
const FROZEN_MEDIAN_LIMIT: Duration = Duration::from_secs(1);
/// How often the reader creates an order.
const CREATE_EVERY: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_serves_every_request_while_redis_is_killed_then_frozen() {
    let began = Instant::now();
    let mut redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("orders_cache_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let orders = Orders::start(&dir, &[("REDIS_URL", &redis.url())]).await;
    let address = orders.address();
    let up = until_readiness(address, "ready").await;

    let clients = Clients::start(address, Mode::KeepAlive, 4);
    let reader = Reader::start(address);
    let loaded_at = Instant::now();

    // Redis up: reads fill the cache and are answered from it.
    until("reads fill the cache and hit it", || {
        !redis.keys("orders:*").is_empty() && redis.info("keyspace_hits") > 0
    })
    .await;

    // Killed: degraded, naming the cache; every request still served, from the database.
    redis.kill();
    let killed_at = Instant::now();
    let mut killed = until_readiness(address, "degraded").await;
    assert!(killed.last.contains("{\"component\":\"cache\",\"fatal\":false"), "{}", killed.last);
    killed.seen.extend(watch(address, OUTAGE, |_| true).await.seen);
    killed.seen.dedup();

    // Started again (empty): ready, and reads fill the cache again.
    redis.restart();
    let restarted_at = Instant::now();
    let restarted = until_readiness(address, "ready").await;
    until("reads fill the restarted cache", || !redis.keys("orders:*").is_empty()).await;

    // Frozen: nothing answers, so every cache call runs into its timeout.
    redis.freeze();
    let frozen_at = Instant::now();
    let frozen_readiness = watch(address, OUTAGE, |_| reader.reads_since(frozen_at) >= FROZEN_READS).await;
    redis.thaw();
    let thawed_at = Instant::now();

    // Thawed: orders created from now on are cached when read (the SETs sent during the freeze
    // ran at the thaw, and are of older orders).
    let last_before_thaw = reader.last_id();
    until("orders created after the thaw are cached", || {
        redis
            .keys("orders:*")
            .iter()
            .any(|key| key.rsplit(':').next().unwrap().parse::<i64>().unwrap() > last_before_thaw)
    })
    .await;
    let thawed = until_readiness(address, "ready").await;
    let hits = redis.info("keyspace_hits");
    let thaw_checked_at = Instant::now();

    let tally = clients.stop().await;
    let log = reader.stop().await;
    let (code, stderr) = orders.stop();
    let phases = [
        ("up", loaded_at, killed_at, up.seen),
        ("killed", killed_at, restarted_at, killed.seen),
        ("restarted", restarted_at, frozen_at, restarted.seen),
        ("frozen", frozen_at, thawed_at, frozen_readiness.seen),
        ("thawed", thawed_at, thaw_checked_at, thawed.seen),
    ];
    println!(
        "{} orders by the clients, {} by the reader (slowest {:.1?}), {} reads ({} cache hits), none \
         failed; took {:.1?}",
        tally.ok,
        log.ids.len(),
        log.slowest_create,
        log.reads.len(),
        hits,
        began.elapsed()
    );
    for (phase, from, to, readiness) in &phases {
        println!(
            "{phase:>9} {:>6.1?}: {}; /readyz {readiness:?}",
            *to - *from,
            Stats::of(&log.reads, *from, *to)
        );
    }

    tally.assert_no_failures("4 keep-alive clients while Redis was killed, then frozen", &stderr);
    assert!(log.failures.is_empty(), "the reader's failed requests: {:#?}\n{stderr}", log.failures);
    let frozen = Stats::of(&log.reads, frozen_at, thawed_at);
    assert!(
        frozen.median < FROZEN_MEDIAN_LIMIT && frozen.count >= FROZEN_READS,
        "while Redis was frozen: {frozen}: reads wait for Redis longer than the cache's timeout"
    );
    assert_eq!(code, Some(0), "{stderr}");
    let cache = report_row(&stderr, "cache");
    assert!(cache.starts_with("cache (non-critical) stopped"), "{cache}\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The reads in flight at some point between two instants.
struct Stats {
    count: usize,
    median: Duration,
    slowest: Duration,
}

impl Stats {
    fn of(reads: &[Read], from: Instant, to: Instant) -> Self {
        let mut took: Vec<Duration> =
            reads.iter().filter(|r| r.at < to && r.at + r.took > from).map(|r| r.took).collect();
        took.sort();
        let at = |i: usize| took.get(i).copied().unwrap_or_default();
        Self { count: took.len(), median: at(took.len() / 2), slowest: at(took.len().wrapping_sub(1)) }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} reads, median {:.1?}, slowest {:.1?}", self.count, self.median, self.slowest)
    }
}

/// `/readyz`'s status and body.
async fn readyz(address: SocketAddr) -> (u16, String) {
    within("/readyz answers", WITHIN, get(address, "/readyz")).await.expect("/readyz answers")
}

/// The `"status"` of a `/readyz` body.
fn readiness_status(body: &str) -> &str {
    body.split("\"status\":\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("none")
}

/// What `/readyz` said over a while: its statuses, in order, repeats collapsed, and its last
/// body.
#[derive(Debug, Default)]
struct Readiness {
    seen: Vec<String>,
    last: String,
}

/// Polls `/readyz` until its status is `wanted` (at most [`WITHIN`]), asserting every answer is
/// a 200.
async fn until_readiness(address: SocketAddr, wanted: &str) -> Readiness {
    let readiness = watch(address, Duration::ZERO, |status| status == wanted).await;
    assert_eq!(readiness_status(&readiness.last), wanted, "after {WITHIN:?}: {}", readiness.last);
    readiness
}

/// Polls `/readyz` for `at_least`, then until `enough` holds for its status (at most
/// [`WITHIN`]), asserting every answer is a 200: the cache is optional, never a reason to be
/// unready.
async fn watch(address: SocketAddr, at_least: Duration, mut enough: impl FnMut(&str) -> bool) -> Readiness {
    let began = Instant::now();
    let mut readiness = Readiness::default();
    loop {
        let (status, body) = readyz(address).await;
        assert_eq!(status, 200, "the cache is optional: never unready\n{body}");
        let now = readiness_status(&body);
        if readiness.seen.last().is_none_or(|last| last != now) {
            readiness.seen.push(now.to_owned());
        }
        let done = began.elapsed() >= at_least && enough(now);
        readiness.last = body;
        if done || began.elapsed() >= WITHIN {
            return readiness;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `condition` holds, checking every 50 ms, for at most [`WITHIN`].
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + WITHIN;
    while !condition() {
        assert!(Instant::now() < until, "waited {WITHIN:?} for {what}, in vain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `GET /api/orders/{id}` of the reader.
#[derive(Debug)]
struct Read {
    /// When it was sent.
    at: Instant,
    took: Duration,
}

/// What the reader did.
#[derive(Debug, Default)]
struct ReaderLog {
    /// The orders it created, oldest first (the worker processes them in this order).
    ids: Vec<i64>,
    /// How many of `ids`, from the first, it saw processed.
    processed: usize,
    /// The slowest of its `POST`s.
    slowest_create: Duration,
    reads: Vec<Read>,
    /// Every failed request: not a 201 or a 200, or no answer.
    failures: Vec<String>,
}

/// Two tasks: one creates an order every 100 ms; the other reads, by turns, the oldest of them
/// not yet seen processed (read from the database, and cached once processed), and one of the
/// ten newest processed ones (from the cache while it is up). Each request on a new connection;
/// none retried.
struct Reader {
    reading: Arc<AtomicBool>,
    log: Arc<Mutex<ReaderLog>>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Reader {
    fn start(address: SocketAddr) -> Self {
        let reading = Arc::new(AtomicBool::new(true));
        let log = Arc::new(Mutex::new(ReaderLog::default()));
        let tasks = [
            tokio::spawn(create_loop(address, Arc::clone(&reading), Arc::clone(&log))),
            tokio::spawn(read_loop(address, Arc::clone(&reading), Arc::clone(&log))),
        ];
        Self { reading, log, tasks }
    }

    /// How many reads it finished that it sent after `at`.
    fn reads_since(&self, at: Instant) -> usize {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).reads.iter().filter(|r| r.at >= at).count()
    }

    /// The newest order it created (0 when none).
    fn last_id(&self) -> i64 {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).ids.last().copied().unwrap_or(0)
    }

    async fn stop(self) -> ReaderLog {
        self.reading.store(false, Ordering::Release);
        for task in self.tasks {
            within("the reader stops", WITHIN, task).await.unwrap();
        }
        std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

async fn create_loop(address: SocketAddr, reading: Arc<AtomicBool>, log: Arc<Mutex<ReaderLog>>) {
    let mut tick = tokio::time::interval(CREATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while reading.load(Ordering::Acquire) {
        tick.tick().await;
        let at = Instant::now();
        let created = create(address, "read back").await;
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        log.slowest_create = log.slowest_create.max(at.elapsed());
        match created {
            Ok(id) => log.ids.push(id),
            Err(failure) => log.failures.push(failure),
        }
    }
}

async fn read_loop(address: SocketAddr, reading: Arc<AtomicBool>, log: Arc<Mutex<ReaderLog>>) {
    let lock = || log.lock().unwrap_or_else(PoisonError::into_inner);
    let mut turn = 0;
    while reading.load(Ordering::Acquire) {
        turn += 1;
        let next = {
            let log = lock();
            let (ids, processed) = (&log.ids, log.processed);
            if processed < ids.len() && (turn % 2 == 0 || processed == 0) {
                Some((ids[processed], true))
            } else if processed > 0 {
                Some((ids[processed - 1 - (turn / 2) % processed.min(10)], false))
            } else {
                None
            }
        };
        let Some((id, probe)) = next else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let at = Instant::now();
        let answer = get(address, &format!("/api/orders/{id}")).await;
        let took = at.elapsed();
        match answer {
            Some((200, body)) => {
                let processed = body.contains("\"status\":\"processed\"");
                let mut log = lock();
                if probe && processed {
                    log.processed += 1;
                }
                log.reads.push(Read { at, took });
            }
            Some((status, body)) => lock().failures.push(format!("GET order {id}: {status} {body}")),
            None => lock().failures.push(format!("GET order {id}: no answer after {took:?}")),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `POST /api/orders` of `item` on a new connection: the new order's id.
async fn create(address: SocketAddr, item: &str) -> Result<i64, String> {
    let body = format!("{{\"item\":\"{item}\",\"quantity\":1}}");
    let request = post(body, Mode::ConnectionClose).map_err(|error| error.to_string())?;
    let mut sender = connect(address, Mode::ConnectionClose).await.map_err(|e| format!("POST: {e}"))?;
    match sender.send(request).await {
        Ok((201, body)) => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|order| order["id"].as_i64())
            .ok_or_else(|| format!("POST: no id in {body}")),
        Ok((status, body)) => Err(format!("POST: {status} {body}")),
        Err(error) => Err(format!("POST: {error}")),
    }
}

/// Two deployments (each with its own database) sharing one Redis never serve each other's
/// orders: their cache keys are namespaced by the database they read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_sharing_a_redis_never_serve_each_others_orders() {
    let redis = RedisServer::start();
    let root = std::env::temp_dir().join(format!("orders_namespaces_{}", std::process::id()));
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let a = Orders::start(&dir_a, &[("REDIS_URL", &redis.url())]).await;
    let b = Orders::start(&dir_b, &[("REDIS_URL", &redis.url())]).await;
    // Order 1 of deployment A, processed, then read: now in the cache.
    assert_eq!(create(a.address(), "tea").await, Ok(1));
    within("A's order processed and cached", Duration::from_secs(20), async {
        while !get(a.address(), "/api/orders/1").await.is_some_and(|(_, body)| body.contains("processed")) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Order 1 of deployment B is another order.
    assert_eq!(create(b.address(), "coffee").await, Ok(1));
    for _ in 0..3 {
        let (status, body) = get(b.address(), "/api/orders/1").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("\"item\":\"coffee\""), "B served A's order: {body}");
        let (_, body) = get(a.address(), "/api/orders/1").await.unwrap();
        assert!(body.contains("\"item\":\"tea\""), "{body}");
    }
    drop((a, b));
    std::fs::remove_dir_all(&root).unwrap();
}
