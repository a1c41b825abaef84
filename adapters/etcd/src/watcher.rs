//! Following the live instances under a prefix, as a client of the registered service would.

use std::collections::BTreeMap;

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchStream};

/// A change to the set of instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An instance registered (or updated its value).
    Put {
        /// Its key.
        key: String,
        /// Its value.
        value: String,
    },
    /// An instance is gone: deregistered, or its lease expired.
    Delete {
        /// Its key.
        key: String,
    },
}

/// The instances under a prefix, kept current from an etcd watch.
pub struct InstanceWatcher {
    instances: BTreeMap<String, String>,
    stream: WatchStream,
    // Kept so the watch is not cancelled.
    _client: Client,
}

impl InstanceWatcher {
    /// Reads the instances under `prefix` and starts watching for changes after that read.
    pub async fn new(endpoints: &[String], prefix: &str) -> Result<Self, etcd_client::Error> {
        let mut client = Client::connect(endpoints, None).await?;
        let current = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
        let mut instances = BTreeMap::new();
        for kv in current.kvs() {
            instances.insert(kv.key_str()?.to_owned(), kv.value_str()?.to_owned());
        }
        let revision = current.header().map_or(0, |h| h.revision());
        let stream = client
            .watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1)))
            .await?;
        Ok(Self { instances, stream, _client: client })
    }

    /// The instances now, by key.
    pub fn instances(&self) -> &BTreeMap<String, String> {
        &self.instances
    }

    /// Waits for the next changes and applies them. `None` when the watch ended.
    pub async fn next_changes(&mut self) -> Result<Option<Vec<Change>>, etcd_client::Error> {
        loop {
            let Some(response) = self.stream.message().await? else { return Ok(None) };
            // The watch's creation and progress notices carry no event.
            let mut changes = Vec::new();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let key = kv.key_str()?.to_owned();
                match event.event_type() {
                    EventType::Put => {
                        let value = kv.value_str()?.to_owned();
                        self.instances.insert(key.clone(), value.clone());
                        changes.push(Change::Put { key, value });
                    }
                    EventType::Delete => {
                        self.instances.remove(&key);
                        changes.push(Change::Delete { key });
                    }
                }
            }
            if !changes.is_empty() {
                return Ok(Some(changes));
            }
        }
    }
}

impl std::fmt::Debug for InstanceWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceWatcher").field("instances", &self.instances).finish()
    }
}
