//! The registration component: lease, key, keep-alive, revoke at drain.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, PutOptions};
use lifecycle_core::{
    BoxError, CancellationToken, Component, ComponentId, ComponentOptions, Context, Health, ResourceError,
    Retry,
};

/// Give up this long before a hook's deadline, so the component's own error reaches the report.
const MARGIN: Duration = Duration::from_millis(100);

/// Registers this instance under a prefix in etcd for as long as the service is ready.
pub struct EtcdRegistration {
    name: ComponentId,
    endpoints: Vec<String>,
    key: String,
    value: String,
    ttl: Duration,
    options: ComponentOptions,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    held: AtomicBool,
    lease: AtomicI64,
    revoked: AtomicBool,
    /// Cancelled when the instance deregisters: the keep-alive ends then, and never registers
    /// again (it would put a leaving instance back in every balancer).
    deregistered: CancellationToken,
}

impl EtcdRegistration {
    /// Registers `instance` of service `service` at `address`, as the key `{prefix}/{instance}`
    /// whose value is `{"service":…,"instance":…,"address":…,"metadata":{…}}`.
    pub fn new(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        prefix: &str,
        service: &str,
        instance: &str,
        address: &str,
    ) -> Self {
        let key = format!("{}/{instance}", prefix.trim_end_matches('/'));
        Self {
            name: "registration".into(),
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            value: format!(
                "{{\"service\":{},\"instance\":{},\"address\":{},\"metadata\":{{}}}}",
                json(service),
                json(instance),
                json(address)
            ),
            key,
            ttl: Duration::from_secs(10),
            options: ComponentOptions::new(),
            state: Arc::default(),
        }
    }

    /// Adds a metadata entry to the registered value.
    #[must_use]
    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        let entry = format!("{}:{}", json(key), json(value));
        let open = self.value.trim_end_matches("}}").to_owned();
        self.value =
            if open.ends_with('{') { format!("{open}{entry}}}}}") } else { format!("{open},{entry}}}}}") };
        self
    }

    /// How long the key outlives a crashed process (default 10 s). Whole seconds, at least 1.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The component's name (default `registration`).
    #[must_use]
    pub fn named(mut self, name: impl Into<ComponentId>) -> Self {
        self.name = name.into();
        self
    }

    /// The component's timeouts and criticality. A non-critical registration that cannot reach
    /// etcd at start lets the service start unregistered.
    #[must_use]
    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    /// The key this instance is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the key is held now.
    pub fn is_registered(&self) -> bool {
        self.state.held.load(Ordering::Acquire)
    }

    async fn connect(endpoints: &[String], timeout: Duration) -> Result<Client, etcd_client::Error> {
        let options = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
        Client::connect(endpoints, Some(options)).await
    }

    /// A fresh lease and the key written with it.
    async fn register(
        client: &mut Client,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<i64, etcd_client::Error> {
        let lease = client.lease_grant(ttl.as_secs() as i64, None).await?.id();
        client.put(key, value, Some(PutOptions::new().with_lease(lease))).await?;
        Ok(lease)
    }
}

fn json(text: &str) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

/// Keeps the lease alive; re-registers with backoff when the stream breaks. Ends with `stop`.
async fn keep_alive(
    mut client: Client,
    key: String,
    value: String,
    ttl: Duration,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() && !state.revoked.load(Ordering::Acquire) {
        let lease = state.lease.load(Ordering::Acquire);
        let kept = async {
            let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
            let mut tick = tokio::time::interval(ttl / 3);
            loop {
                tick.tick().await;
                keeper.keep_alive().await?;
                match responses.message().await? {
                    // A TTL of 0 means the lease is gone (expired while we were cut off).
                    Some(response) if response.ttl() > 0 => {}
                    _ => return Ok::<(), etcd_client::Error>(()),
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            // The drain revoked the lease: that is why it is gone, not an outage.
            _ = state.deregistered.cancelled() => return,
            result = kept => {
                if state.deregistered.is_cancelled() {
                    return;
                }
                state.held.store(false, Ordering::Release);
                tracing::warn!(%key, error = ?result.err(), "etcd keep-alive ended; registering again");
            }
        }
        // Re-register: a new lease, the key written again.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = state.deregistered.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            match EtcdRegistration::register(&mut client, &key, &value, ttl).await {
                // Deregistered while this registration was on its way: take it back.
                Ok(lease) if state.deregistered.is_cancelled() => {
                    let _ = client.lease_revoke(lease).await;
                    return;
                }
                Ok(lease) => {
                    state.lease.store(lease, Ordering::Release);
                    state.held.store(true, Ordering::Release);
                    backoff = Duration::from_millis(100);
                    tracing::info!(%key, lease, "registered in etcd again");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%key, %error, "etcd not reachable; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

impl EtcdRegistration {
    /// Revokes the lease (deleting the key at once) within the hook's deadline, or notes that
    /// the key will expire with its TTL.
    async fn deregister(&self, ctx: &Context) {
        if self.state.revoked.swap(true, Ordering::AcqRel) {
            return;
        }
        self.state.deregistered.cancel();
        self.state.held.store(false, Ordering::Release);
        let lease = self.state.lease.load(Ordering::Acquire);
        let give_up = ctx.give_up_at(MARGIN, Duration::from_secs(5));
        let revoked = tokio::time::timeout_at(give_up, async {
            let timeout = give_up.saturating_duration_since(tokio::time::Instant::now());
            let mut client = Self::connect(&self.endpoints, timeout).await?;
            client.lease_revoke(lease).await
        })
        .await;
        match revoked {
            Ok(Ok(_)) => tracing::info!(component = %self.name, key = %self.key, "deregistered from etcd"),
            Ok(Err(error)) => ctx.note(format!(
                "could not revoke the etcd lease ({error}): key {} expires with its TTL of {}s",
                self.key,
                self.ttl.as_secs()
            )),
            Err(_) => ctx.note(format!(
                "etcd did not answer the revoke in time: key {} expires with its TTL of {}s",
                self.key,
                self.ttl.as_secs()
            )),
        }
    }
}

impl Component for EtcdRegistration {
    fn name(&self) -> ComponentId {
        self.name.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    /// Not yet: its lease state is not reset between starts.
    fn restartable(&self) -> bool {
        false
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let give_up = ctx.give_up_at(MARGIN, Duration::from_secs(15));
        let url = self.endpoints.join(",");
        let attempt = |_| async {
            let timeout =
                give_up.saturating_duration_since(tokio::time::Instant::now()).min(Duration::from_secs(2));
            let mut client = Self::connect(&self.endpoints, timeout).await?;
            let lease = Self::register(&mut client, &self.key, &self.value, self.ttl).await?;
            Ok::<_, etcd_client::Error>((client, lease))
        };
        let (client, lease) =
            Retry::until(give_up).run(attempt, |_| true).await.map_err(|failure| ResourceError::Connect {
                component: self.name.clone(),
                url: url.clone(),
                attempts: failure.attempts,
                elapsed: failure.elapsed,
                last_error: failure
                    .last_error
                    .map_or_else(|| "no answer before the start deadline".to_owned(), |e| e.to_string()),
            })?;
        self.state.lease.store(lease, Ordering::Release);
        self.state.held.store(true, Ordering::Release);
        tracing::info!(component = %self.name, key = %self.key, lease, "registered in etcd");
        ctx.tasks().spawn(
            "etcd_keep_alive",
            keep_alive(
                client,
                self.key.clone(),
                self.value.clone(),
                self.ttl,
                Arc::clone(&self.state),
                ctx.token().clone(),
            ),
        );
        Ok(())
    }

    async fn drain(&self, ctx: &Context) -> Result<(), BoxError> {
        self.deregister(ctx).await;
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        // Reached without a drain when the shutdown came during start.
        self.deregister(ctx).await;
        Ok(())
    }

    async fn health(&self) -> Health {
        if self.is_registered() {
            Health::Healthy
        } else {
            Health::Unhealthy(format!("not registered in etcd (key {})", self.key))
        }
    }
}

impl fmt::Debug for EtcdRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistration")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("registered", &self.is_registered())
            .finish()
    }
}
