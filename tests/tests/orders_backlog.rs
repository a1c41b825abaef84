//! A SIGTERM with no balancer in front: the `orders` example, with its default drain delay of 0,
//! stops under keep-alive and `Connection: close` clients that keep connecting. Every client
//! sees its request served or its connection refused: never a reset or an early close after
//! its request was sent (the kernel had accepted the connection into the listen backlog, and
//! the socket closed with it still there).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lifecycle::testing::{eventually, within};
use lifecycle_tests::Orders;
use lifecycle_tests::load::{Clients, Mode};

/// Rounds of start, load, SIGTERM: a reset in the backlog is a race, so it takes several.
const ROUNDS: usize = 20;
const CLIENTS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigterm_without_a_balancer_refuses_new_connections_and_resets_none() {
    let dir = std::env::temp_dir().join(format!("orders_backlog_{}", std::process::id()));
    let mut served = 0;
    let mut refused = 0;
    for round in 0..ROUNDS {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let orders = Orders::start(&dir, &[]).await;
        let address = orders.address();
        let keep_alive = Clients::start(address, Mode::KeepAlive, CLIENTS);
        let close = Clients::start(address, Mode::ConnectionClose, CLIENTS);
        // SIGTERM in the middle of real load, on both kinds of client.
        eventually("load on both kinds of client", Duration::from_secs(20), || {
            keep_alive.ok() > 50 && close.ok() > 50
        })
        .await;
        let (code, stderr) = within(
            "orders to stop",
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || orders.stop()),
        )
        .await
        .unwrap();
        assert_eq!(code, Some(0), "round {round}: exit code\n{stderr}");
        // Clients whose connection attempt the stopping server let go unanswered learn that it
        // is refused when they try again (1 s later, TCP's first retransmission).
        let tallies = within("the clients to stop", Duration::from_secs(30), async {
            [keep_alive.stop().await, close.stop().await]
        })
        .await;
        for (tally, mode) in tallies.iter().zip([Mode::KeepAlive, Mode::ConnectionClose]) {
            let other: Vec<_> = tally.failures.iter().filter(|(kind, _)| **kind != "refused").collect();
            assert!(
                other.is_empty(),
                "round {round}, {mode:?}: failures other than refused: {other:?} ({} ok, {} unsent); first errors: {:?}\n{stderr}",
                tally.ok,
                tally.unsent,
                tally.errors
            );
            served += tally.ok;
            refused += tally.failures.get("refused").copied().unwrap_or(0);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{ROUNDS} SIGTERMs: {served} requests served, {refused} connections refused, 0 reset");
}
