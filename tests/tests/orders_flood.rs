//! The `orders` example under a flood of idle connections: 20,000 of them on its public port,
//! with its limit set to exactly that. Its probes, on their own port (ADMIN_LISTEN_ADDR), still
//! answer within a second; a client beyond the limit is turned away at once with a 503, not left
//! waiting; and once the flood leaves, the service serves again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lifecycle::testing::within;
use lifecycle_tests::load::get;
use lifecycle_tests::{kill, orders_command};

const FLOOD: usize = 20_000;

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The descriptor limit of this process, raised to what the flood needs where allowed.
fn raise_descriptor_limit(wanted: u64) -> u64 {
    let _ = std::process::Command::new("prlimit")
        .args([format!("--pid={}", std::process::id()), format!("--nofile={wanted}:{wanted}")])
        .status();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_leaves_the_probes_answering_and_turns_the_next_client_away() {
    let limit = raise_descriptor_limit(65_536);
    // Where raising is not allowed: as many as the limit leaves room for, with a margin (the
    // service inherits the same limit).
    let flood = FLOOD.min(usize::try_from(limit).unwrap().saturating_sub(1_024));
    let dir = std::env::temp_dir().join(format!("orders_flood_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (public, admin) = (free_address(), free_address());
    let env = [("ADMIN_LISTEN_ADDR", admin.to_string()), ("MAX_CONNECTIONS", flood.to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut child = orders_command(&dir, public, &env).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    within("orders ready on its admin port", Duration::from_secs(20), async {
        while get(admin, "/readyz").await.is_none_or(|(status, _)| status != 200) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        get(public, "/readyz").await.map(|(status, _)| status),
        Some(404),
        "probes only on the admin port"
    );

    let began = Instant::now();
    // In batches opened at once: quicker than one by one, and well inside the server's
    // header-read timeout (5 s), after which it would close them itself.
    let mut idle = Vec::with_capacity(flood);
    while idle.len() < flood {
        let batch = (flood - idle.len()).min(500);
        let opened =
            futures_util::future::join_all((0..batch).map(|_| tokio::net::TcpStream::connect(public))).await;
        idle.extend(opened.into_iter().map(Result::unwrap));
    }
    let opened = began.elapsed();
    // The probes answer at once while the public port is full.
    for _ in 0..5 {
        let asked = Instant::now();
        let answer = within("/livez on the admin port", Duration::from_secs(1), get(admin, "/livez")).await;
        assert_eq!(answer.map(|(status, _)| status), Some(200));
        assert!(asked.elapsed() < Duration::from_secs(1));
    }
    // One more client is told so at once: a 503, not a wait in the queue. (The server may still
    // be accepting the last of the flood: the answer comes once it reaches this one.)
    let turned_away =
        within("the client beyond the limit answered", Duration::from_secs(5), get(public, "/api/orders/1"))
            .await;
    assert_eq!(turned_away, Some((503, "too many connections\r\n".to_owned())));
    drop(idle);
    within("served again once the flood left", Duration::from_secs(10), async {
        loop {
            if get(public, "/api/orders/1").await.is_some_and(|(status, _)| status == 404) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    kill("TERM", child.id());
    let status =
        within("orders to stop", Duration::from_secs(20), tokio::task::spawn_blocking(move || child.wait()))
            .await
            .unwrap()
            .unwrap();
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{flood} idle connections opened in {opened:?}: probes answered, the next client turned away, served again"
    );
}
