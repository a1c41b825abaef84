//! Start and stop of each data adapter against using its driver directly, in the same process,
//! interleaved. Needs PostgreSQL and Redis on 127.0.0.1 (`scripts/test` starts them).
//!
//! - start: from nothing to a pool that has answered one check query (`SELECT 1` / `PING`);
//!   lifecycle: from `run()` to the `Ready` phase, for a registry holding only that pool.
//! - stop: from asking to a closed pool with every connection released; lifecycle: from the
//!   shutdown request to the run's return (drain, stop, report).
//!
//! `cargo run --release -p lifecycle-benches --bin adapters [-- --quick]`

use std::time::{Duration, Instant};

use lifecycle_benches::{human, median, runtime};
use lifecycle_core::{Component, Phase, Registry, Signals};
use lifecycle_redis::deadpool_redis;
use lifecycle_redis::redis;
use lifecycle_sqlx::sqlx;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS_URL: &str = "redis://127.0.0.1:6379";

async fn lifecycle<C: Component>(component: C) -> (Duration, Duration) {
    let mut builder = Registry::builder();
    builder.signals(Signals::none());
    builder.add(component);
    let registry = match builder.build() {
        Ok(registry) => registry,
        Err(error) => panic!("{error}"),
    };
    let handle = registry.handle();
    let began = Instant::now();
    let mut ready_at = None;
    let stop_requested_at = async {
        handle.reached(Phase::Ready).await;
        ready_at = Some(began.elapsed());
        let requested = Instant::now();
        handle.shutdown().request("bench", 0);
        requested
    };
    let (report, requested) = tokio::join!(registry.run(), stop_requested_at);
    assert!(report.is_success(), "{report}");
    (ready_at.unwrap_or_default(), requested.elapsed())
}

async fn postgres_direct() -> (Duration, Duration) {
    let began = Instant::now();
    let pool = match sqlx::postgres::PgPoolOptions::new().max_connections(10).connect(PG_URL).await {
        Ok(pool) => pool,
        Err(error) => panic!("PostgreSQL at {PG_URL}: {error}"),
    };
    if let Err(error) = sqlx::query("SELECT 1").execute(&pool).await {
        panic!("{error}");
    }
    let start = began.elapsed();
    let stopping = Instant::now();
    pool.close().await;
    (start, stopping.elapsed())
}

async fn sqlite_direct(url: &str) -> (Duration, Duration) {
    let began = Instant::now();
    let options = match url.parse::<sqlx::sqlite::SqliteConnectOptions>() {
        Ok(options) => options.create_if_missing(true),
        Err(error) => panic!("{error}"),
    };
    let pool = match sqlx::sqlite::SqlitePoolOptions::new().max_connections(10).connect_with(options).await {
        Ok(pool) => pool,
        Err(error) => panic!("{error}"),
    };
    if let Err(error) = sqlx::query("SELECT 1").execute(&pool).await {
        panic!("{error}");
    }
    let start = began.elapsed();
    let stopping = Instant::now();
    pool.close().await;
    (start, stopping.elapsed())
}

async fn redis_direct() -> (Duration, Duration) {
    let began = Instant::now();
    let pool = match deadpool_redis::Config::from_url(REDIS_URL)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
    {
        Ok(pool) => pool,
        Err(error) => panic!("{error}"),
    };
    match pool.get().await {
        Ok(mut connection) => {
            if let Err(error) = redis::cmd("PING").query_async::<()>(&mut *connection).await {
                panic!("{error}");
            }
        }
        Err(error) => panic!("Redis at {REDIS_URL}: {error}"),
    }
    let start = began.elapsed();
    let stopping = Instant::now();
    pool.close();
    while pool.status().size > 0 {
        tokio::task::yield_now().await;
    }
    (start, stopping.elapsed())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 31 };
    let dir = std::env::temp_dir().join(format!("lifecycle-bench-{}", std::process::id()));
    if let Err(error) = std::fs::create_dir_all(&dir) {
        panic!("{error}");
    }
    let sqlite_url = format!("sqlite://{}", dir.join("bench.db").display());
    // [adapter][direct, lifecycle][start, stop]
    let mut samples: Vec<[[Vec<f64>; 2]; 2]> =
        vec![Default::default(), Default::default(), Default::default()];
    let runtime = runtime();
    for round in 0..=rounds {
        let results = runtime.block_on(async {
            [
                (postgres_direct().await, lifecycle(lifecycle_sqlx::PgPool::new("bench_pg", PG_URL)).await),
                (
                    sqlite_direct(&sqlite_url).await,
                    lifecycle(lifecycle_sqlx::SqlitePool::new("bench_sqlite", sqlite_url.clone())).await,
                ),
                (
                    redis_direct().await,
                    lifecycle(lifecycle_redis::RedisPool::new("bench_redis", REDIS_URL)).await,
                ),
            ]
        });
        if round == 0 {
            continue; // warm-up
        }
        for (adapter, (direct, ours)) in results.into_iter().enumerate() {
            for (variant, (start, stop)) in [direct, ours].into_iter().enumerate() {
                samples[adapter][variant][0].push(start.as_secs_f64());
                samples[adapter][variant][1].push(stop.as_secs_f64());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("| adapter | phase | driver directly (median) | lifecycle component (median) | ratio | added |");
    println!("|---|---|---:|---:|---:|---:|");
    for (adapter, name) in ["PostgreSQL (sqlx)", "SQLite (sqlx)", "Redis (deadpool-redis)"].iter().enumerate()
    {
        for (phase, phase_name) in ["start", "stop"].iter().enumerate() {
            let direct = median(samples[adapter][0][phase].clone());
            let ours = median(samples[adapter][1][phase].clone());
            println!(
                "| {name} | {phase_name} | {} | {} | {:.2}x | {} |",
                human(direct),
                human(ours),
                ours / direct,
                human(ours - direct)
            );
        }
    }
}
