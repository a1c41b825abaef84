//! Service registration in etcd as a lifecycle component.
//!
//! At start the component grants a lease with a TTL, writes the instance's key under a prefix with
//! that lease, and keeps the lease alive in a tracked task; when the keep-alive stream ends (a
//! leader change, an etcd restart) it grants a new lease and writes the key again, with backoff.
//! Its health follows whether the key is held. At shutdown its **drain** hook revokes the lease:
//! that happens when the service turns unready, before the HTTP server stops accepting, so
//! clients watching the prefix stop dialing before any connection is refused. If etcd is
//! unreachable then, the revoke gives up within the hook's timeout and the report notes that the
//! key expires with its TTL. [`InstanceWatcher`] is what clients use to follow the live instances.
//!
//! **Zero-downtime upgrades** hand the key over by writing it again: the new process registers the
//! same key (same instance id, e.g. its address) with a lease of its own, which takes the key
//! over, so the old process's revoke deletes nothing and the key never disappears. No lease id has
//! to travel between the processes, and a successor that dies leaves the key to expire with *its*
//! TTL.
//!
//! `etcd_client` is re-exported. Building it needs `protoc` (Debian's `protobuf-compiler`).

mod registration;
mod watcher;

pub use etcd_client;
pub use registration::EtcdRegistration;
pub use watcher::{Change, InstanceWatcher};
