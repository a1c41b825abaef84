//! Steady-state cost of the lifecycle HTTP server's protections (panic isolation on every
//! request, connection limit, header-read and idle timeouts, request timeout, request tracking)
//! against plain axum `serve`, on the same tiny handler, in the same process: throughput and
//! p50/p99 latency measured by `wrk` (an external load generator), and the server's own CPU
//! time per request (its worker thread's, from `/proc`), which moves far less than throughput
//! on a shared machine. The three servers take turns round after round (in the reverse order
//! every other round), and each ratio is the median of the rounds' ratios to plain axum, so
//! drift on the machine between rounds cancels out.
//!
//! `cargo run --release -p lifecycle-benches --bin http_steady [-- --quick]` (needs `wrk`)
//!
//! `http_steady --serve axum|lifecycle|timeout` serves one of them only, prints its address and
//! stops when its standard input ends; `http_steady --load ADDRESS REQUESTS CONNECTIONS` sends a
//! counted keep-alive load. Together, for a count of instructions per request under
//! `valgrind --tool=callgrind`, which does not move with the machine's load
//! (`scripts/http-instructions` runs them).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use lifecycle_benches::median;
use lifecycle_core::{Registry, Signals};
use lifecycle_http::HttpServer;

/// Connections `wrk` keeps busy, on one thread (the machine has two cores: one for the server,
/// one for `wrk`).
const CONNECTIONS: &str = "32";

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    /// `axum::serve` on a tokio listener, nothing else.
    Axum,
    /// `HttpServer` with its defaults: panic isolation, limits, header-read and idle timeouts.
    Lifecycle,
    /// The same, with a request timeout too.
    LifecycleWithRequestTimeout,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Self::Axum => "plain axum `serve`",
            Self::Lifecycle => "lifecycle `HttpServer`, defaults",
            Self::LifecycleWithRequestTimeout => "lifecycle `HttpServer`, defaults + request timeout",
        }
    }
}

/// Starts `server` on its own runtime thread; returns its address and what stops it.
fn start(server: Server) -> (SocketAddr, tokio::runtime::Runtime, tokio_util::sync::CancellationToken) {
    let thread = thread_name(server);
    // One worker: the server on one core, `wrk` on the other, rather than three threads
    // fighting over two cores (which moved results by 10% between runs).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(thread)
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("runtime: {error}"));
    let stop = tokio_util::sync::CancellationToken::new();
    let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(error) => panic!("bind: {error}"),
    };
    let address = listener.local_addr().unwrap_or_else(|error| panic!("address: {error}"));
    let stopping = stop.clone();
    match server {
        Server::Axum => {
            let _ = listener.set_nonblocking(true);
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
                let _ = axum::serve(listener, app()).with_graceful_shutdown(stopping.cancelled_owned()).await;
            });
        }
        Server::Lifecycle | Server::LifecycleWithRequestTimeout => {
            let mut builder = Registry::builder();
            builder.signals(Signals::none());
            let mut http = HttpServer::new("http", listener, app());
            if server == Server::LifecycleWithRequestTimeout {
                http = http.request_timeout(Duration::from_secs(30));
            }
            builder.add(http);
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
    format!("bench-server-{}", server as u8)
}

/// One `wrk` run: requests per second, p50 and p99 latency in seconds, requests in all.
fn wrk(address: SocketAddr, seconds: u32) -> (f64, f64, f64, f64) {
    let output = std::process::Command::new("wrk")
        .args(["-t1", "-c", CONNECTIONS, "-d", &format!("{seconds}s"), "--latency"])
        .arg(format!("http://{address}/"))
        .output()
        .unwrap_or_else(|error| panic!("cannot run wrk (apt-get install wrk): {error}"));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("Non-2xx") && !text.contains("Socket errors"), "wrk saw errors:\n{text}");
    let field = |prefix: &str| -> &str {
        text.lines()
            .find_map(|line| line.trim_start().strip_prefix(prefix))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no `{prefix}` in wrk's output:\n{text}"))
    };
    let rate: f64 = field("Requests/sec:").parse().unwrap_or_else(|e| panic!("{e}: {text}"));
    let total: f64 = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in ").map(|(n, _)| n.to_owned()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{text}"));
    (rate, duration(field("50%")), duration(field("99%")), total)
}

/// `wrk`'s `812.00us`, `1.20ms`, `1.02s`, in seconds.
fn duration(text: &str) -> f64 {
    let split = text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or_else(|e| panic!("{e}: {text}"));
    number
        * match unit {
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            other => panic!("unit {other} in {text}"),
        }
}

/// `requests` keep-alive `GET /` requests to `address` over `connections` connections, each
/// answered `200` (a load with a count, where `wrk` runs for a time).
fn load(address: &str, requests: usize, connections: usize) {
    use std::io::{BufRead, BufReader, Read, Write};
    let each = requests / connections;
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let address = address.to_owned();
            std::thread::spawn(move || {
                let stream =
                    std::net::TcpStream::connect(&address).unwrap_or_else(|e| panic!("{address}: {e}"));
                let _ = stream.set_nodelay(true);
                let mut writer = stream.try_clone().unwrap_or_else(|e| panic!("{e}"));
                let mut reader = BufReader::new(stream);
                for _ in 0..each {
                    writer
                        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                        .unwrap_or_else(|e| panic!("{e}"));
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap_or_else(|e| panic!("{e}"));
                    assert!(line.starts_with("HTTP/1.1 200"), "answered {line:?}");
                    let mut length = 0;
                    loop {
                        line.clear();
                        reader.read_line(&mut line).unwrap_or_else(|e| panic!("{e}"));
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or_else(|e| panic!("{e}: {line}"));
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap_or_else(|e| panic!("{e}"));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap_or_else(|_| panic!("a client failed"));
    }
}

/// Serves `kind` until standard input ends.
fn serve_alone(kind: &str) {
    let server = match kind {
        "axum" => Server::Axum,
        "lifecycle" => Server::Lifecycle,
        "timeout" => Server::LifecycleWithRequestTimeout,
        other => panic!("--serve axum|lifecycle|timeout, not {other}"),
    };
    let (address, runtime, stop) = start(server);
    println!("{address}");
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    stop.cancel();
    runtime.shutdown_timeout(Duration::from_secs(5));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--serve") {
        return serve_alone(args.get(at + 1).map_or("", String::as_str));
    }
    if let Some(at) = args.iter().position(|a| a == "--load") {
        let number = |i: usize| {
            args.get(at + i)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("--load ADDRESS REQUESTS CONNECTIONS"))
        };
        return load(args.get(at + 1).map_or("", String::as_str), number(2), number(3));
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (rounds, seconds) = if quick { (2, 1) } else { (15, 2) };
    let servers = [Server::Axum, Server::Lifecycle, Server::LifecycleWithRequestTimeout];
    let mut results: Vec<[Vec<f64>; 4]> = servers.iter().map(|_| Default::default()).collect();
    for round in 0..=rounds {
        // Every other round in the reverse order, so that no server always comes first.
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let server = servers[i];
            let (address, runtime, stop) = start(server);
            // Warm-up: connections, allocator, caches.
            let _ = wrk(address, 1);
            let cpu_before = lifecycle_benches::cpu_seconds(Some(&thread_name(server)));
            let (rate, p50, p99, total) = wrk(address, seconds);
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
    // Ratios are the median of each round's ratio to plain axum: a round's servers ran within
    // seconds of each other, so drift on the machine between rounds cancels out.
    let ratio = |i: usize, field: usize| {
        median(results[i][field].iter().zip(&results[0][field]).map(|(ours, axum)| ours / axum).collect())
    };
    println!("| server | server CPU per request | ratio | requests/s | ratio | p50 | ratio | p99 | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, server) in servers.iter().enumerate() {
        let m = results[i].clone().map(median);
        println!(
            "| {} | {:.2} µs | {:.3}x | {:.0} | {:.3}x | {:.0} µs | {:.3}x | {:.0} µs | {:.3}x |",
            server.name(),
            m[3] * 1e6,
            ratio(i, 3),
            m[0],
            ratio(i, 0),
            m[1] * 1e6,
            ratio(i, 1),
            m[2] * 1e6,
            ratio(i, 2)
        );
    }
}
