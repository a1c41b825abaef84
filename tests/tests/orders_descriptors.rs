//! The `orders` example out of file descriptors: accepting fails with EMFILE while clients hold
//! every descriptor. The server backs off and says so once for the whole burst (not a line per
//! failure), the connections it holds are still served, and once the clients leave it accepts
//! again and says for how long it could not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::time::Duration;

use lifecycle::testing::{eventually, within};
use lifecycle_tests::load::{Mode, connect, get};
use lifecycle_tests::{kill, orders_command};

/// The descriptor limit the test gives the running service: well under what the clients open.
const DESCRIPTORS: u32 = 128;
const CLIENTS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_backs_off_logs_once_and_recovers() {
    let dir = std::env::temp_dir().join(format!("orders_descriptors_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = orders_command(&dir, address, &[]).env("RUST_LOG", "info").spawn().unwrap();
    // Its log, line by line as it comes.
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (lines, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if lines.send(without_colours(&line)).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    eventually_ready(address).await;
    // A connection opened before, kept: still served while the server cannot accept.
    let mut kept = connect(address, Mode::KeepAlive).await.unwrap();
    let status = std::process::Command::new("prlimit")
        .args([format!("--pid={}", child.id()), format!("--nofile={DESCRIPTORS}:{DESCRIPTORS}")])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit");

    // More clients than descriptors: the kernel queues them, the server accepts until EMFILE.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    let out_of_descriptors = tokio::task::block_in_place(|| {
        while let Ok(line) = log.recv_timeout(Duration::from_secs(10)) {
            let failed = line.contains("accept failed");
            seen.push(line);
            if failed {
                return true;
            }
        }
        false
    });
    assert!(out_of_descriptors, "accepting failed with EMFILE:\n{}", seen.join("\n"));
    let request = |path: &str| {
        hyper::Request::get(path).header("host", "orders").body(http_body_util::Full::default()).unwrap()
    };
    let (status, _) =
        within("the kept connection served", Duration::from_secs(5), kept.send(request("/livez")))
            .await
            .unwrap();
    assert_eq!(status, 200);

    drop(clients);
    let (status, _) = within("a new connection served again", Duration::from_secs(10), async {
        loop {
            if let Some(answer) = get(address, "/livez").await {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(status, 200);
    kill("TERM", child.id());
    let exit =
        within("orders to stop", Duration::from_secs(20), tokio::task::spawn_blocking(move || child.wait()))
            .await
            .unwrap()
            .unwrap();
    seen.extend(log.iter());
    let stderr = seen.join("\n");
    assert_eq!(exit.code(), Some(0), "{stderr}");
    // One line for the trouble, not one per failure (a failure soon after a recovery is the
    // same trouble).
    let announced = stderr.lines().filter(|l| l.contains("accept failed")).count();
    assert_eq!(announced, 1, "lines for failed accepts:\n{stderr}");
    assert!(stderr.lines().any(|l| l.contains("accepting again") && l.contains("failures=")), "{stderr}");
    assert!(stderr.contains("Too many open files"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn eventually_ready(address: std::net::SocketAddr) {
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let ready = std::sync::Arc::clone(&ready);
        tokio::spawn(async move {
            while get(address, "/readyz").await.is_none_or(|(status, _)| status != 200) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ready.store(true, std::sync::atomic::Ordering::Release);
        })
    };
    eventually("orders ready", Duration::from_secs(20), || ready.load(std::sync::atomic::Ordering::Acquire))
        .await;
    probe.await.unwrap();
}

/// `text` without the terminal colour sequences of the log (ESC, `[`, parameters, `m`).
fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
