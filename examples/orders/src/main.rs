//! Run with `cargo run -p orders`: an order service on http://127.0.0.1:8080, on SQLite
//! (`orders.db`) with no server needed. With `DATABASE_URL=postgres://...` it uses PostgreSQL and
//! its job queue; with `REDIS_URL=redis://...` a Redis cache in front of reads. Ctrl-C or SIGTERM
//! drains and stops it; SIGUSR2 upgrades it without refusing a connection to the binary now on
//! disk; SIGHUP reloads what can change without a restart (the TLS certificate); `deploy/` has
//! the Kubernetes and systemd files.
//!
//! ```text
//! curl -s -XPOST localhost:8080/api/orders -H 'content-type: application/json' -d '{"item":"tea","quantity":2}'
//! curl -s localhost:8080/api/orders/1
//! websocat ws://localhost:8080/api/orders/feed   # each new order, as it is created
//! curl -s localhost:8080/readyz
//! curl -s localhost:8080/metrics
//! ```

mod config;
mod store;

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use lifecycle_core::{
    BoxError, Component, ComponentOptions, Context, Dep, Dependency, ErrorChain, FnComponent,
    RegistryBuilder, RestartPolicy,
};
use lifecycle_handoff::{ControlSocket, Listeners, Upgrade};
use lifecycle_http::websocket::{Message, WebSocket, WebSocketUpgrade};
use lifecycle_http::{HealthPaths, HttpServer, TlsConfig};
use lifecycle_redis::{RedisPool, redis};
use lifecycle_sqlx::jobs::JobWorker;
use lifecycle_sqlx::{PgPool, SqlitePool};
use serde::Deserialize;
use store::{Order, ProcessOrder, Store};

#[derive(Clone)]
struct App {
    store: Store,
    cache: Option<Dep<RedisPool>>,
    /// Where this deployment's keys live in the cache (`orders:<namespace>:`): two deployments
    /// sharing one Redis must not serve each other's orders.
    cache_prefix: std::sync::Arc<str>,
    /// New orders, for the WebSocket feed.
    created: tokio::sync::broadcast::Sender<String>,
}

#[derive(Deserialize)]
struct NewOrder {
    item: String,
    quantity: i64,
}

type Reply<T> = Result<T, (StatusCode, String)>;

fn internal(error: BoxError) -> (StatusCode, String) {
    tracing::error!(%error, "request failed");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into())
}

/// `POST /api/orders`. With an `Idempotency-Key` header (1 to 255 visible characters, unique
/// per order the client means), sending the same request again, because its answer was lost,
/// returns the first order's id instead of writing a second order: the pattern for any write
/// endpoint. The key identifies the request: a different body under a used key still gets the
/// first order.
async fn create_order(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    Json(order): Json<NewOrder>,
) -> Reply<(StatusCode, Json<serde_json::Value>)> {
    if order.item.trim().is_empty() || order.quantity <= 0 {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "`item` must be non-empty and `quantity` positive\n".into(),
        ));
    }
    let key = match headers.get("idempotency-key").map(|key| key.to_str()) {
        None => None,
        Some(Ok(key)) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Some(key)
        }
        Some(_) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "`Idempotency-Key` must be 1 to 255 visible ASCII characters\n".into(),
            ));
        }
    };
    let id = app.store.create(&order.item, order.quantity, key).await.map_err(internal)?;
    // Nobody listening is fine.
    let _ = app
        .created
        .send(serde_json::json!({ "id": id, "item": order.item, "quantity": order.quantity }).to_string());
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

/// `GET /api/orders/feed` (WebSocket): each new order as JSON text, as it is created. At a stop
/// or an upgrade the server closes it with 1001 (going away), and the client reconnects (to the
/// new process, after an upgrade).
async fn order_feed(State(app): State<App>, upgrade: WebSocketUpgrade) -> axum::response::Response {
    let mut created = app.created.subscribe();
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        loop {
            tokio::select! {
                order = created.recv() => match order {
                    Ok(order) => if socket.send(Message::Text(order.into())).await.is_err() { break },
                    // A client too slow to keep up misses some; the feed goes on.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                // The client closed, or the server is going away.
                message = socket.recv() => if message.is_none() { break },
            }
        }
    })
}

async fn get_order(State(app): State<App>, Path(id): Path<i64>) -> Reply<Json<Order>> {
    let key = format!("{}{id}", app.cache_prefix);
    if let Some(order) = match &app.cache {
        Some(cache) => cache_get(cache, &key).await,
        None => None,
    } {
        return Ok(Json(order));
    }
    let order = app
        .store
        .get(id)
        .await
        .map_err(internal)?
        .ok_or((StatusCode::NOT_FOUND, "no such order\n".into()))?;
    // Only processed orders are cached: a new one still changes.
    if let (Some(cache), "processed") = (&app.cache, order.status.as_str()) {
        cache_put(cache, &key, &order).await;
    }
    Ok(Json(order))
}

/// The most a request waits for the cache: a cache that is slow (or frozen) is a miss.
const CACHE_TIMEOUT: Duration = Duration::from_millis(100);

/// A cached order; a cache that is down, restarting or slow is a miss, not an error.
async fn cache_get(cache: &Dep<RedisPool>, key: &str) -> Option<Order> {
    if !cache.is_up() {
        return None;
    }
    let lookup = async {
        let mut connection = cache.pool().ok()?.get().await.ok()?;
        let json: Option<String> = redis::cmd("GET").arg(key).query_async(&mut *connection).await.ok()?;
        serde_json::from_str(&json?).ok()
    };
    tokio::time::timeout(CACHE_TIMEOUT, lookup).await.ok().flatten()
}

async fn cache_put(cache: &Dep<RedisPool>, key: &str, order: &Order) {
    let (true, Ok(pool), Ok(json)) = (cache.is_up(), cache.pool(), serde_json::to_string(order)) else {
        return;
    };
    let store = async {
        let mut connection = pool.get().await.map_err(|error| error.to_string())?;
        redis::cmd("SET")
            .arg(key)
            .arg(json)
            .arg("EX")
            .arg(60)
            .query_async::<()>(&mut *connection)
            .await
            .map_err(|error| error.to_string())
    };
    // Debug, not warn: while Redis is down every read would say so; its health check and
    // `/readyz` already do, once.
    match tokio::time::timeout(CACHE_TIMEOUT, store).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "cache write failed"),
        Err(_) => tracing::debug!("cache write timed out"),
    }
}

/// Restarts after a failure: quickly at first, at most 10 times a minute.
fn restart_policy() -> RestartPolicy {
    RestartPolicy::on_failure()
        .backoff(Duration::from_millis(100), Duration::from_secs(5))
        .max_restarts(10, Duration::from_secs(60))
}

/// SQLite has no `SKIP LOCKED` queue: one task processes new orders every 100 ms instead. A
/// database error (`database is locked` while an operator holds a lock) fails the task, and the
/// worker is restarted by its policy while the service serves on.
struct SqliteProcessor {
    store: Store,
    migrations: Dep<FnComponent>,
}

impl Component for SqliteProcessor {
    fn name(&self) -> lifecycle_core::ComponentId {
        "worker".into()
    }

    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::from(&self.migrations)]
    }

    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().restart(restart_policy())
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let (store, token) = (self.store.clone(), ctx.token().clone());
        ctx.tasks().spawn("process_orders", async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return Ok::<(), BoxError>(()),
                    _ = tick.tick() => { store.process_new(100).await?; }
                }
            }
        });
        Ok(())
    }
}

/// Runs before the runtime starts its threads: taking the sockets a previous generation (or
/// systemd) passed clears environment variables, which is only sound while the process has one
/// thread. Logging is set up first, so that what the inheriting logs is seen.
fn setup() -> Result<Listeners, String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // The listener of the previous generation during an upgrade, systemd's with socket
    // activation, else none (bound below).
    Listeners::inherit().map_err(|error| error.to_string())
}

#[lifecycle_core::main(report = "always", setup = setup)]
async fn main(listeners: Listeners) -> Result<RegistryBuilder, String> {
    let config = config::Config::load()?;
    let listener = if config.reuse_port {
        listeners.tcp_reuse_port("http", config.listen)
    } else {
        listeners.tcp("http", config.listen)
    }
    .map_err(|error| format!("{error} (LISTEN_ADDR or --listen)"))?;
    let admin_listener = match config.admin_listen {
        Some(address) => {
            Some(listeners.tcp("admin", address).map_err(|error| format!("{error} (ADMIN_LISTEN_ADDR)"))?)
        }
        None => None,
    };
    // Inherited by a successor like the other listeners, so commands reach whichever process serves.
    let control = match &config.control_socket {
        Some(path) => {
            Some(listeners.unix("control", path).map_err(|error| format!("{error} (CONTROL_SOCKET)"))?)
        }
        None => None,
    };
    let mut upgrade = Upgrade::new(&listeners);
    if let Some(path) = &config.pid_file {
        upgrade = upgrade.pid_file(path);
    }
    if !config.secret_flags.is_empty() {
        tracing::warn!(
            flags = ?config.secret_flags,
            "a secret on the command line can be read by every local user (ps): prefer DATABASE_URL_FILE or the \
             environment; upgrades pass it to the new process in its environment, not its arguments"
        );
        upgrade = upgrade.args(&config.successor_args);
        if config.secret_flags.contains(&"--database-url") {
            upgrade = upgrade.env("DATABASE_URL", &config.database_url).env("DATABASE_URL_FILE", "");
        }
        if let (true, Some(url)) = (config.secret_flags.contains(&"--redis-url"), &config.redis_url) {
            upgrade = upgrade.env("REDIS_URL", url);
        }
    }

    let mut builder = RegistryBuilder::new();
    builder.drain_delay(config.drain_delay).shutdown_deadline(config.shutdown_deadline);
    // READY=1, WATCHDOG=1, STOPPING=1 for a `Type=notify` unit, in the right order across an
    // upgrade; nothing outside systemd.
    builder.add(upgrade.systemd_notify());
    let store = if config.postgres {
        Store::Postgres(
            builder
                .add(
                    PgPool::new("orders_db", config.database_url.clone())
                        .max_connections(20)
                        .min_connections(config.warm_connections),
                )
                .dep(),
        )
    } else {
        Store::Sqlite(
            builder.add(SqlitePool::new("orders_db", config.database_url.clone()).max_connections(8)).dep(),
        )
    };
    let migrating = store.clone();
    // Dependencies by handle, not by name: a renamed component cannot leave one pointing nowhere.
    let migrations = builder
        .add(FnComponent::new("migrations").depends_on(store.dependency()).on_start(move |_ctx| {
            let store = migrating.clone();
            async move { store.migrate().await }
        }))
        .dep();
    // The cache is optional: the service starts, and serves from the database, while Redis is
    // down; the cache comes up in the background when Redis does.
    let cache = config.redis_url.as_ref().map(|url| {
        let options = ComponentOptions::new().critical(false).start_timeout(Duration::from_secs(1)).restart(
            RestartPolicy::on_failure()
                .backoff(Duration::from_millis(200), Duration::from_secs(10))
                .max_restarts(1_000, Duration::from_secs(60)),
        );
        builder.add(RedisPool::new("cache", url.clone()).options(options)).dep()
    });
    match &store {
        Store::Postgres(db) => {
            builder
                .add(
                    JobWorker::new("worker", db.clone(), store::QUEUE, ProcessOrder)
                        .concurrency(4)
                        .options(ComponentOptions::new().restart(restart_policy())),
                )
                .depends_on(&migrations);
        }
        Store::Sqlite(_) => {
            builder.add(SqliteProcessor { store: store.clone(), migrations: migrations.clone() });
        }
    }

    let app = Router::new()
        .route("/api/orders", post(create_order))
        .route("/api/orders/feed", get(order_feed))
        .route("/api/orders/{id}", get(get_order))
        .with_state(App {
            store,
            cache: cache.clone(),
            cache_prefix: format!("orders:{}:", config.cache_namespace).into(),
            created: tokio::sync::broadcast::channel(256).0,
        });
    let stop_timeout = config.shutdown_deadline.mul_f64(0.8);
    let mut server =
        HttpServer::new("http", listener, app).options(ComponentOptions::new().stop_timeout(stop_timeout));
    match admin_listener {
        // Probes and metrics on their own port: a flood of clients on the public one (up to its
        // connection limit) leaves them answering.
        Some(admin) => {
            builder.add(
                HttpServer::new("admin", admin, Router::new())
                    .with_health(HealthPaths::default())
                    .with_metrics("/metrics")
                    .options(ComponentOptions::new().stop_timeout(stop_timeout)),
            );
        }
        None => server = server.with_health(HealthPaths::default()).with_metrics("/metrics"),
    }
    if let Some(max) = config.max_connections {
        server = server.max_connections(max);
    }
    if let Some((cert, key)) = &config.tls {
        // Read and checked now: a bad file is an error at start, naming it. A renewed
        // certificate written over the files is served to new connections after a SIGHUP (the
        // server's reload hook), and within `TLS_WATCH` seconds without one.
        let mut tls = TlsConfig::from_pem_files(cert, key).map_err(|error| ErrorChain(&error).to_string())?;
        if let Some(interval) = config.tls_watch {
            tls = tls.watch(interval);
        }
        server = server.with_tls(tls);
    }
    let http = builder.add(server).depends_on(&migrations);
    if let Some(cache) = &cache {
        http.depends_on(cache.dependency().optional());
    }
    if !config.etcd_endpoints.is_empty() {
        // The key is the advertised address: an upgraded process registering the same address
        // takes the key over with its own lease, so the old one's revoke cannot delete it; and
        // two hosts listening on 0.0.0.0:8080 advertise (and own) different keys.
        let address = config.advertise.clone();
        builder.add(
            lifecycle_etcd::EtcdRegistration::new(
                config.etcd_endpoints.clone(),
                "/services/orders",
                "orders",
                &address,
                &address,
            )
            .options(ComponentOptions::new().critical(false)),
        );
    }
    if let Some(control) = control {
        builder.add(ControlSocket::new(control).upgrade(upgrade.handle()));
    }
    builder.add(upgrade);
    tracing::info!(listen = %config.listen, database = %lifecycle_core::redact_url(&config.database_url), "orders configured");
    Ok(builder)
}
