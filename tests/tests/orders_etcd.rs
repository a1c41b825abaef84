//! Two `orders` instances on two hosts, both listening on every interface at the same port (as
//! the deploy files do): each registers its own key in etcd, named after its host, and the stop
//! of one deletes its key only. (Two hosts: two UTS namespaces with their own host names; one
//! port: both bind it with SO_REUSEPORT.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lifecycle_etcd::{Change, InstanceWatcher};
use lifecycle_tests::etcd::Etcd;
use lifecycle_tests::free_port;
use lifecycle_tests::{kill, workspace_binary};

const WITHIN: Duration = Duration::from_secs(20);

/// `orders` on host `host` (a UTS namespace of its own), on 0.0.0.0:`port`, registering in etcd.
fn instance(host: &str, port: u16, etcd: &str) -> Child {
    let dir = std::env::temp_dir().join(format!("orders_etcd_{host}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // `unshare` without --fork execs the shell, which execs orders: the child is orders itself.
    Command::new("unshare")
        .args([
            "--uts",
            "sh",
            "-c",
            &format!("hostname {host} && exec \"$0\""),
            workspace_binary("orders").to_str().unwrap(),
        ])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("LISTEN_ADDR", format!("0.0.0.0:{port}"))
        .env("LISTEN_REUSEPORT", "1")
        .env("ETCD_ENDPOINTS", etcd)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for the next change under the prefix.
async fn next(watcher: &mut InstanceWatcher) -> Vec<Change> {
    tokio::time::timeout(WITHIN, watcher.next_changes()).await.expect("a change in time").unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_the_same_address_keep_a_key_each() {
    let etcd = Etcd::start().await;
    let mut watcher = InstanceWatcher::new(&[etcd.url()], "/services/orders").await.unwrap();
    let port = free_port();
    workspace_binary("orders");
    let mut first = instance("web-a", port, &etcd.url());
    let key_a = format!("/services/orders/web-a:{port}");
    assert!(matches!(next(&mut watcher).await.as_slice(), [Change::Put { key, .. }] if *key == key_a));
    let mut second = instance("web-b", port, &etcd.url());
    let key_b = format!("/services/orders/web-b:{port}");
    match next(&mut watcher).await.as_slice() {
        [Change::Put { key, value }] => {
            assert_eq!(*key, key_b);
            assert!(value.contains(&format!("\"address\":\"web-b:{port}\"")), "never 0.0.0.0: {value}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(watcher.instances().len(), 2, "{:?}", watcher.instances());

    // The second stops: its key goes, the first's stays (and nothing is written back).
    kill("TERM", second.id());
    assert_eq!(second.wait().unwrap().code(), Some(0));
    assert_eq!(next(&mut watcher).await, vec![Change::Delete { key: key_b }]);
    let quiet = tokio::time::timeout(Duration::from_secs(3), watcher.next_changes()).await;
    assert!(quiet.is_err(), "no change after the delete: {quiet:?}");
    assert_eq!(watcher.instances().keys().collect::<Vec<_>>(), [&key_a]);

    kill("TERM", first.id());
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert_eq!(next(&mut watcher).await, vec![Change::Delete { key: key_a }]);
}
