//! Registration against a real etcd started by each test on free ports: the key is there while
//! the service runs, deleted before the HTTP server stops, written again after etcd restarts,
//! and left to its TTL (with a note) when etcd is gone at shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifecycle_core::testing::{self, TestRun, builder};
use lifecycle_core::{BoxError, ComponentOptions, FnComponent};
use lifecycle_etcd::{Change, EtcdRegistration, InstanceWatcher};
use lifecycle_tests::etcd::Etcd;
use lifecycle_tests::free_port;

/// How long a watcher waits for the change it expects.
const CHANGE_WITHIN: Duration = Duration::from_secs(10);

fn registration(etcd: &Etcd, prefix: &str) -> EtcdRegistration {
    EtcdRegistration::new([etcd.url()], prefix, "orders", "instance-1", "127.0.0.1:8080")
        .metadata("zone", "a")
        .ttl(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_deleted_before_the_http_server_stops() {
    let etcd = Etcd::start().await;
    let prefix = "/services/orders";
    let mut watcher = InstanceWatcher::new(&[etcd.url()], prefix).await.unwrap();
    let http_stopping = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&http_stopping);

    let mut b = builder();
    b.drain_delay(Duration::from_millis(300));
    b.add(registration(&etcd, prefix));
    b.add(FnComponent::new("http").on_stop(move |_ctx| {
        let seen = Arc::clone(&seen);
        async move {
            *seen.lock().unwrap() = Some(Instant::now());
            Ok::<(), BoxError>(())
        }
    }));
    let mut run = TestRun::start(b);

    let changes =
        testing::within("the key's Put", CHANGE_WITHIN, watcher.next_changes()).await.unwrap().unwrap();
    assert_eq!(
        changes,
        vec![Change::Put {
            key: "/services/orders/instance-1".into(),
            value: "{\"service\":\"orders\",\"instance\":\"instance-1\",\"address\":\"127.0.0.1:8080\",\"metadata\":{\"zone\":\"a\"}}".into()
        }]
    );
    run.ready().await;
    assert_eq!(run.handle().health().await[0].1, lifecycle_core::Health::Healthy);

    run.handle().shutdown().request("test over", 0);
    let changes =
        testing::within("the key's Delete", CHANGE_WITHIN, watcher.next_changes()).await.unwrap().unwrap();
    let deleted_at = Instant::now();
    assert_eq!(changes, vec![Change::Delete { key: "/services/orders/instance-1".into() }]);
    let report = run.finished().await;
    assert!(report.is_success(), "{report}");
    let http_stopping = http_stopping.lock().unwrap().expect("the http component stopped");
    assert!(
        deleted_at < http_stopping,
        "clients learn of the deregistration before the server stops accepting"
    );
    assert!(watcher.instances().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_etcd_restart_the_key_is_written_again() {
    let mut etcd = Etcd::start().await;
    let prefix = "/services/restart";
    let mut b = builder();
    let registered = b.add(registration(&etcd, prefix)).dep();
    let mut run = TestRun::start(b);
    run.ready().await;
    assert!(registered.is_registered());

    etcd.kill();
    // The lease runs out while etcd is down (TTL 2 s); etcd expires it when it comes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.launch().await;
    // Boxed: an etcd client's connect is a large future.
    let written_again = Box::pin(async {
        loop {
            let watcher = InstanceWatcher::new(&[etcd.url()], prefix).await.unwrap();
            if registered.is_registered() && watcher.instances().contains_key("/services/restart/instance-1")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    testing::within("the key written again after etcd's return", Duration::from_secs(20), written_again)
        .await;
    assert!(run.stop().await.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_gone_at_shutdown_is_noted_and_the_key_left_to_its_ttl() {
    let mut etcd = Etcd::start().await;
    let mut b = builder();
    b.add(
        registration(&etcd, "/services/gone")
            .options(ComponentOptions::new().stop_timeout(Duration::from_millis(800))),
    );
    let mut run = TestRun::start(b);
    run.ready().await;
    etcd.kill();
    let began = Instant::now();
    let report = run.stop().await;
    assert!(began.elapsed() < Duration::from_secs(3), "the revoke gave up within its timeout");
    let notes = report.component("registration").unwrap().notes.join("; ");
    assert!(notes.contains("key /services/gone/instance-1 expires with its TTL of 2s"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_at_start_is_an_error_naming_the_component() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let mut b = builder();
    b.add(
        EtcdRegistration::new([endpoint.clone()], "/services/x", "orders", "i1", "127.0.0.1:1")
            .options(ComponentOptions::new().start_timeout(Duration::from_secs(1))),
    );
    let report = b.build().unwrap().run().await;
    assert_eq!(report.exit_code, 1);
    let text = report.component("registration").unwrap().outcome.to_string();
    assert!(text.contains(&format!("component `registration` could not connect to {endpoint}")), "{text}");
}

/// The upgrade hand-over this crate chooses: the new process registers the same key with a lease
/// of its own, which takes the key over; the old process's revoke then deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_with_the_same_key_keeps_it_when_the_predecessor_revokes() {
    let etcd = Etcd::start().await;
    let prefix = "/services/handover";
    let key = "/services/handover/instance-1";
    let start = |registration: EtcdRegistration| async move {
        let mut b = builder();
        b.add(registration);
        let mut run = TestRun::start(b);
        run.ready().await;
        run
    };
    let old = start(registration(&etcd, prefix)).await;
    let new = start(registration(&etcd, prefix).metadata("generation", "2")).await;

    let mut watcher = InstanceWatcher::new(&[etcd.url()], prefix).await.unwrap();
    assert!(watcher.instances()[key].contains("\"generation\":\"2\""), "the successor's value");
    old.handle().shutdown().request("upgraded", 0);
    assert!(old.finished().await.is_success());
    // Still there after the old lease is revoked (and after its TTL would have passed).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let current = InstanceWatcher::new(&[etcd.url()], prefix).await.unwrap();
    assert!(current.instances().contains_key(key), "the key outlived its first owner");

    assert!(new.stop().await.is_success());
    let changes =
        testing::within("the key's Delete", CHANGE_WITHIN, watcher.next_changes()).await.unwrap().unwrap();
    assert_eq!(changes, vec![Change::Delete { key: key.into() }]);
}

/// The drain revokes the lease; the keep-alive task, finding its lease gone on its next tick,
/// must not register again (it did: the instance reappeared in etcd about a TTL after it left,
/// and stayed there, and in the balancers, after the process exited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_instance_never_registers_again() {
    let etcd = Etcd::start().await;
    let prefix = "/services/drained";
    let mut watcher = InstanceWatcher::new(&[etcd.url()], prefix).await.unwrap();
    let mut b = builder();
    // Longer than the keep-alive's tick (a third of the 2 s TTL): it ticks during the drain.
    b.drain_delay(Duration::from_secs(3));
    b.add(registration(&etcd, prefix));
    let mut run = TestRun::start(b);
    run.ready().await;
    testing::within("the key's Put", CHANGE_WITHIN, watcher.next_changes()).await.unwrap().unwrap();
    run.handle().shutdown().request("test over", 0);
    let changes =
        testing::within("the key's Delete", CHANGE_WITHIN, watcher.next_changes()).await.unwrap().unwrap();
    assert_eq!(changes, vec![Change::Delete { key: format!("{prefix}/instance-1") }]);
    // Through the rest of the drain and past the end of the run: nothing more.
    let later = tokio::time::timeout(Duration::from_secs(4), watcher.next_changes()).await;
    assert!(later.is_err(), "the key changed again after the deregistration: {later:?}");
    let report = run.finished().await;
    assert!(report.is_success(), "{report}");
}
