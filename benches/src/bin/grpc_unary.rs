//! Steady-state cost of the lifecycle gRPC server (`GrpcServer`: tonic services served by
//! `lifecycle-http`'s server, with per-call panic isolation and stream tracking) against plain
//! tonic `Server::builder().serve_with_incoming_shutdown`, on the same unary call (the
//! `grpc.health.v1.Health/Check` both serve), in the same process: p50/p99 latency and calls per
//! second seen by tonic clients, and the server's CPU time per call (its one worker thread's,
//! from `/proc`). The servers take turns round after round so drift on the machine spreads over
//! both.
//!
//! `cargo run --release -p lifecycle-benches --bin grpc_unary [-- --quick]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lifecycle_benches::median;
use lifecycle_core::{Registry, Signals};
use lifecycle_grpc::GrpcServer;
use lifecycle_grpc::tonic::transport::{Endpoint, Server as TonicServer};
use lifecycle_grpc::tonic_health::pb::HealthCheckRequest;
use lifecycle_grpc::tonic_health::pb::health_client::HealthClient;

/// Client connections, each sending one call after the other.
const CONNECTIONS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    /// tonic's own server on a tokio listener, nothing else.
    Tonic,
    /// `GrpcServer` with its defaults.
    Lifecycle,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Self::Tonic => "plain tonic `serve_with_incoming_shutdown`",
            Self::Lifecycle => "lifecycle `GrpcServer`",
        }
    }
}

/// Starts `server` on its own one-worker runtime; returns its address and what stops it.
fn start(server: Server) -> (SocketAddr, tokio::runtime::Runtime, tokio_util::sync::CancellationToken) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(thread_name(server))
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("runtime: {error}"));
    let stop = tokio_util::sync::CancellationToken::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|error| panic!("bind: {error}"));
    let address = listener.local_addr().unwrap_or_else(|error| panic!("address: {error}"));
    let stopping = stop.clone();
    match server {
        Server::Tonic => {
            let _ = listener.set_nonblocking(true);
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
                let incoming = lifecycle_grpc::tonic::transport::server::TcpIncoming::from(listener);
                let (_reporter, health) = lifecycle_grpc::tonic_health::server::health_reporter();
                let serving = TonicServer::builder().add_service(health);
                let _ = serving.serve_with_incoming_shutdown(incoming, stopping.cancelled_owned()).await;
            });
        }
        Server::Lifecycle => {
            let mut builder = Registry::builder();
            builder.signals(Signals::none());
            builder.add(GrpcServer::new("grpc", listener));
            let registry = builder.build().unwrap_or_else(|error| panic!("{error}"));
            let handle = registry.handle();
            runtime.spawn(registry.run());
            let shutdown = handle.shutdown().clone();
            runtime.spawn(async move {
                stopping.cancelled().await;
                shutdown.request("bench over", 0);
            });
            runtime.block_on(handle.reached(lifecycle_core::Phase::Ready));
        }
    }
    (address, runtime, stop)
}

/// The name of `server`'s runtime threads, to find them in `/proc` (15 bytes at most).
fn thread_name(server: Server) -> String {
    format!("bench-grpc-{}", server as u8)
}

/// [`CONNECTIONS`] clients calling `Check` one call after the other for `seconds`: calls per
/// second, p50 and p99 latency in seconds, calls in all. Every call must succeed.
fn load(client: &tokio::runtime::Runtime, address: SocketAddr, seconds: f64) -> (f64, f64, f64, f64) {
    client.block_on(async move {
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let endpoint =
                Endpoint::from_shared(format!("http://{address}")).unwrap_or_else(|e| panic!("{e}"));
            let channel = endpoint.connect().await.unwrap_or_else(|e| panic!("connect: {e}"));
            clients.push(tokio::spawn(async move {
                let mut health = HealthClient::new(channel);
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let began = Instant::now();
                    let request = HealthCheckRequest { service: String::new() };
                    if let Err(status) = health.check(request).await {
                        panic!("a call failed: {status:?}");
                    }
                    latencies.push(began.elapsed().as_secs_f64());
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for client in clients {
            all.extend(client.await.unwrap_or_else(|e| panic!("{e}")));
        }
        all.sort_by(f64::total_cmp);
        let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize];
        let total = all.len() as f64;
        (total / seconds, at(0.5), at(0.99), total)
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, seconds) = if quick { (2, 1.0) } else { (11, 2.0) };
    // The clients on one worker, the server on the other core.
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("runtime: {error}"));
    let servers = [Server::Tonic, Server::Lifecycle];
    let mut results: Vec<[Vec<f64>; 4]> = servers.iter().map(|_| Default::default()).collect();
    for round in 0..=rounds {
        for (i, &server) in servers.iter().enumerate() {
            let (address, runtime, stop) = start(server);
            // Warm-up: connections, allocator, caches.
            let _ = load(&client, address, 0.5);
            let cpu_before = lifecycle_benches::cpu_seconds(Some(&thread_name(server)));
            let (rate, p50, p99, total) = load(&client, address, seconds);
            let cpu = lifecycle_benches::cpu_seconds(Some(&thread_name(server))) - cpu_before;
            stop.cancel();
            runtime.shutdown_timeout(Duration::from_secs(5));
            if round > 0 {
                results[i][0].push(rate);
                results[i][1].push(p50);
                results[i][2].push(p99);
                results[i][3].push(cpu / total);
            }
        }
    }
    let medians: Vec<[f64; 4]> = results.into_iter().map(|r| r.map(median)).collect();
    let base = medians[0];
    println!("| server | server CPU per call | ratio | calls/s | ratio | p50 | ratio | p99 | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (server, m) in servers.iter().zip(&medians) {
        println!(
            "| {} | {:.2} µs | {:.3}x | {:.0} | {:.3}x | {:.0} µs | {:.3}x | {:.0} µs | {:.3}x |",
            server.name(),
            m[3] * 1e6,
            m[3] / base[3],
            m[0],
            m[0] / base[0],
            m[1] * 1e6,
            m[1] / base[1],
            m[2] * 1e6,
            m[2] / base[2]
        );
    }
}
