//! Plain axum `with_graceful_shutdown` against the lifecycle HTTP server, in the same process:
//! 50 keep-alive connections posting to a 5 ms handler, a shutdown in the middle, and a balancer
//! that stops sending 200 ms after the shutdown began (Kubernetes removes endpoints while the pod
//! is already terminating). Counts failed requests by kind (a client whose request failed sends the
//! next one 5 ms later), and the latency under steady load.
//!
//! `cargo run --release -p lifecycle-benches --bin http_drain [-- --quick]`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use lifecycle_benches::{human, runtime};
use lifecycle_core::{Registry, Signals};
use lifecycle_http::HttpServer;
use lifecycle_tests::load::{Mode, Sender, classify, connect, post as post_request};
use tokio_util::sync::CancellationToken;

const CONNECTIONS: usize = 50;
const PROPAGATION: Duration = Duration::from_millis(200);

fn app() -> Router {
    let next = Arc::new(AtomicI64::new(1));
    Router::new().route(
        "/api/orders",
        post(move || {
            let next = Arc::clone(&next);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                (StatusCode::CREATED, format!("{{\"id\":{}}}", next.fetch_add(1, Ordering::Relaxed)))
            }
        }),
    )
}

#[derive(Default)]
struct Round {
    steady_latencies: Vec<f64>,
    ok: u64,
    failures: BTreeMap<&'static str, u64>,
}

/// Runs the load until `sending` is false. Latencies of requests that began before `trigger`
/// are the steady-state sample.
async fn clients(
    address: SocketAddr,
    sending: Arc<AtomicBool>,
    trigger: Arc<std::sync::OnceLock<Instant>>,
) -> Round {
    let mut tasks = Vec::new();
    for n in 0..CONNECTIONS {
        let (sending, trigger) = (Arc::clone(&sending), Arc::clone(&trigger));
        tasks.push(tokio::spawn(async move {
            let mut round = Round::default();
            let mut sender: Option<Box<dyn Sender>> = None;
            let mut i = 0;
            while sending.load(Ordering::Acquire) {
                i += 1;
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    match connect(address, Mode::KeepAlive).await {
                        Ok(s) => sender = Some(s),
                        Err(error) => {
                            // One failed request; the next one comes after a handler's time, as
                            // from a client that does not spin on a closed port.
                            *round.failures.entry(classify(error.as_ref())).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                    }
                }
                let Some(s) = sender.as_mut() else { continue };
                let Ok(request) =
                    post_request(format!("{{\"item\":\"{n}-{i}\",\"quantity\":1}}"), Mode::KeepAlive)
                else {
                    continue;
                };
                let began = Instant::now();
                match s.send(request).await {
                    Ok((201, _)) => {
                        round.ok += 1;
                        if trigger.get().is_none() {
                            round.steady_latencies.push(began.elapsed().as_secs_f64());
                        }
                    }
                    Ok((status, _)) if status >= 500 => *round.failures.entry("5xx").or_default() += 1,
                    Ok(_) => *round.failures.entry("other status").or_default() += 1,
                    Err(error) => {
                        *round.failures.entry(classify(error.as_ref())).or_default() += 1;
                        sender = None;
                    }
                }
            }
            round
        }));
    }
    let mut total = Round::default();
    for task in tasks {
        if let Ok(round) = task.await {
            total.ok += round.ok;
            total.steady_latencies.extend(round.steady_latencies);
            for (kind, count) in round.failures {
                *total.failures.entry(kind).or_default() += count;
            }
        }
    }
    total
}

/// One round: serve, load, shut down in the middle, stop sending after the propagation delay.
async fn round(lifecycle: bool, steady: Duration) -> Round {
    let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(error) => panic!("{error}"),
    };
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let shutdown = CancellationToken::new();
    let server = if lifecycle {
        let mut builder = Registry::builder();
        builder.signals(Signals::none()).drain_delay(PROPAGATION * 2);
        builder.add(HttpServer::new("http", listener, app()));
        let registry = builder.build().unwrap_or_else(|e| panic!("{e}"));
        let handle = registry.handle();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let run = tokio::spawn(registry.run());
            token.cancelled().await;
            handle.shutdown().request("bench", 0);
            let _ = run.await;
        })
    } else {
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) = listener.set_nonblocking(true) {
                panic!("{error}");
            }
            let listener = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
            let _ = axum::serve(listener, app()).with_graceful_shutdown(token.cancelled_owned()).await;
        })
    };
    let sending = Arc::new(AtomicBool::new(true));
    let trigger = Arc::new(std::sync::OnceLock::new());
    let load = tokio::spawn(clients(address, Arc::clone(&sending), Arc::clone(&trigger)));
    tokio::time::sleep(steady).await;
    let _ = trigger.set(Instant::now());
    shutdown.cancel();
    tokio::time::sleep(PROPAGATION).await;
    sending.store(false, Ordering::Release);
    let result = load.await.unwrap_or_default();
    let _ = server.await;
    result
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(((values.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, steady) = if quick { (2, Duration::from_secs(1)) } else { (5, Duration::from_secs(3)) };
    let runtime = runtime();
    let mut totals: [Round; 2] = Default::default();
    let mut failures_per_round: [Vec<u64>; 2] = Default::default();
    for _ in 0..rounds {
        for (variant, lifecycle) in [false, true].into_iter().enumerate() {
            let result = runtime.block_on(round(lifecycle, steady));
            failures_per_round[variant].push(result.failures.values().sum());
            totals[variant].ok += result.ok;
            totals[variant].steady_latencies.extend(result.steady_latencies);
            for (kind, count) in result.failures {
                *totals[variant].failures.entry(kind).or_default() += count;
            }
        }
    }
    println!("| server | requests ok | failed (all rounds) | failed per round | p50 steady | p99 steady |");
    println!("|---|---:|---|---|---:|---:|");
    let mut p = [[0.0; 2]; 2];
    for (variant, name) in ["axum `with_graceful_shutdown`", "lifecycle `HttpServer`"].iter().enumerate() {
        let total = &mut totals[variant];
        p[variant] =
            [percentile(&mut total.steady_latencies, 0.5), percentile(&mut total.steady_latencies, 0.99)];
        let failures: Vec<String> =
            total.failures.iter().map(|(kind, count)| format!("{count} {kind}")).collect();
        println!(
            "| {name} | {} | {} | {:?} | {} | {} |",
            total.ok,
            if failures.is_empty() { "0".to_owned() } else { failures.join(", ") },
            failures_per_round[variant],
            human(p[variant][0]),
            human(p[variant][1]),
        );
    }
    println!(
        "\nadded latency under steady load: p50 {:+.2}x, p99 {:+.2}x",
        p[1][0] / p[0][0] - 1.0,
        p[1][1] / p[0][1] - 1.0
    );
}
