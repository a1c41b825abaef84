//! A service killed with SIGKILL cannot deregister: its etcd key must disappear with its lease's
//! TTL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use lifecycle_etcd::{Change, InstanceWatcher};
use lifecycle_tests::Service;
use lifecycle_tests::etcd::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_the_key_disappears_within_the_ttl() {
    let etcd = Etcd::start().await;
    let mut watcher = InstanceWatcher::new(&[etcd.url()], "/services/fixture").await.unwrap();
    let service = Service::spawn(env!("CARGO_BIN_EXE_fixture"), &["--etcd", &etcd.url()]).unwrap();
    let key = format!("/services/fixture/{}", service.pid());
    service.wait_for_line("ready", Duration::from_secs(10)).unwrap();
    assert!(
        matches!(watcher.next_changes().await.unwrap().unwrap().as_slice(), [Change::Put { key: k, .. }] if *k == key)
    );

    service.signal("KILL").unwrap();
    let killed = Instant::now();
    let changes =
        tokio::time::timeout(Duration::from_secs(6), watcher.next_changes()).await.expect("deleted in time");
    let gone_after = killed.elapsed();
    assert_eq!(changes.unwrap().unwrap(), vec![Change::Delete { key }]);
    // TTL 2 s; etcd checks expiry about every 500 ms.
    assert!(gone_after < Duration::from_secs(4), "gone {gone_after:?} after the kill");
    let _ = service.wait(Duration::from_secs(5));
}
