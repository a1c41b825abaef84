//! The `orders` example's WebSocket feed (`/api/orders/feed`) across zero-downtime upgrades and
//! a SIGTERM: every connection ends with a close frame 1001 (going away) from the process that
//! served it, none abruptly; the clients reconnect to the new process, which feeds them the
//! orders it creates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lifecycle::testing::{eventually, within};
use lifecycle_tests::load::{Mode, connect, post};
use lifecycle_tests::{Orders, kill, pid_in, upgrade, wait_exited};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const CLIENTS: usize = 200;
const UPGRADES: usize = 10;
const WITHIN: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Counts {
    connected: AtomicU64,
    open: AtomicU64,
    going_away: AtomicU64,
    messages: AtomicU64,
    refused: AtomicU64,
    /// How every other end went: a close with another code, a reset, an end without a close.
    other: Mutex<Vec<String>>,
}

/// A feed client: connects, reads until its connection ends, and (while `reconnect`) connects
/// again.
async fn feed_client(address: SocketAddr, reconnect: Arc<AtomicBool>, counts: Arc<Counts>) {
    loop {
        let connected = tokio_tungstenite::connect_async(format!("ws://{address}/api/orders/feed")).await;
        let mut socket = match connected {
            Ok((socket, _)) => socket,
            Err(error) => {
                counts.refused.fetch_add(1, Ordering::AcqRel);
                counts.other.lock().unwrap().push(format!("connect: {error}"));
                return;
            }
        };
        counts.connected.fetch_add(1, Ordering::AcqRel);
        counts.open.fetch_add(1, Ordering::AcqRel);
        let end = loop {
            match socket.next().await {
                Some(Ok(Message::Text(_))) => {
                    counts.messages.fetch_add(1, Ordering::AcqRel);
                }
                Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Away => break None,
                Some(Ok(Message::Close(frame))) => break Some(format!("closed with {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(error)) => break Some(format!("error: {error}")),
                None => break Some("ended without a close frame".to_owned()),
            }
        };
        // The close handshake's answer (tungstenite sends it while the stream is read to its end).
        while let Some(Ok(_)) = socket.next().await {}
        counts.open.fetch_sub(1, Ordering::AcqRel);
        match end {
            None => counts.going_away.fetch_add(1, Ordering::AcqRel),
            Some(other) => {
                counts.other.lock().unwrap().push(other);
                return;
            }
        };
        if !reconnect.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Creates one order; returns its id.
async fn create_order(address: SocketAddr) -> String {
    let mut sender = connect(address, Mode::ConnectionClose).await.unwrap();
    let (status, body) = sender
        .send(post("{\"item\":\"feed\",\"quantity\":1}".into(), Mode::ConnectionClose).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_clients_hear_going_away_at_every_upgrade_and_at_the_stop_and_reconnect() {
    let dir = std::env::temp_dir().join(format!("orders_websocket_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("orders.pid");
    let orders = Orders::start(&dir, &[("PID_FILE", pid_file.to_str().unwrap())]).await;
    let address = orders.address();
    let reconnect = Arc::new(AtomicBool::new(true));
    let counts = Arc::new(Counts::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(feed_client(address, Arc::clone(&reconnect), Arc::clone(&counts))))
        .collect();
    // A client that ended otherwise than with 1001 never comes back: say how at once.
    let all_open = || {
        let other = counts.other.lock().unwrap();
        assert!(
            other.is_empty(),
            "connections that did not end with 1001: {} {:?}",
            other.len(),
            &other[..other.len().min(5)]
        );
        counts.open.load(Ordering::Acquire) == CLIENTS as u64
    };
    eventually("every client connected", WITHIN, all_open).await;

    // An order created now reaches every client, from whichever process serves them.
    let fed = |what: String| {
        let counts = Arc::clone(&counts);
        async move {
            let before = counts.messages.load(Ordering::Acquire);
            create_order(address).await;
            eventually(&what, WITHIN, || counts.messages.load(Ordering::Acquire) >= before + CLIENTS as u64)
                .await;
        }
    };
    fed("the first process's order to reach every client".into()).await;

    let mut pid = pid_in(&pid_file);
    for round in 1..=UPGRADES {
        pid = upgrade(&pid_file, pid, WITHIN).await;
        let back = tokio::time::timeout(WITHIN, async {
            while !all_open() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(
            back.await.is_ok(),
            "every client back after upgrade {round}: {} open, {} connected, {} going away",
            counts.open.load(Ordering::Acquire),
            counts.connected.load(Ordering::Acquire),
            counts.going_away.load(Ordering::Acquire)
        );
        fed(format!("process {pid}'s order to reach every client")).await;
    }
    let before_stop = counts.going_away.load(Ordering::Acquire);
    reconnect.store(false, Ordering::Release);
    kill("TERM", pid);
    within("the clients to end", WITHIN, async {
        for client in clients {
            client.await.unwrap();
        }
    })
    .await;
    wait_exited(pid, WITHIN).await;
    drop(orders);

    let other = counts.other.lock().unwrap().clone();
    assert!(
        other.is_empty(),
        "connections that did not end with 1001: {} {:?}",
        other.len(),
        &other[..other.len().min(5)]
    );
    let (connected, going_away) =
        (counts.connected.load(Ordering::Acquire), counts.going_away.load(Ordering::Acquire));
    assert_eq!(going_away, connected, "every connection ended with 1001");
    assert_eq!(going_away - before_stop, CLIENTS as u64, "the final stop said goodbye to every client");
    assert!(connected >= (CLIENTS * (UPGRADES + 1)) as u64, "{connected} connections");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{CLIENTS} feed clients, {UPGRADES} upgrades and a SIGTERM: {connected} connections, all closed with 1001, {} messages",
        counts.messages.load(Ordering::Acquire)
    );
}
