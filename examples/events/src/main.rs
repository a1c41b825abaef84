//! Run with `cargo run -p events` (NATS with JetStream on 127.0.0.1:4222, PostgreSQL on
//! 127.0.0.1:5432): records every message published on `events.>` in the `events` table, once,
//! whatever stops or upgrades the service in between, and serves them over gRPC
//! (`proto/events.proto`: `Get`, `Count`, and `Follow`, a stream of new events). A message is acknowledged only after its
//! row is committed, and the row is keyed by the message's id, so a message delivered again
//! (after a crash, a stop that cut its handler, an upgrade) changes nothing. Ctrl-C or SIGTERM
//! drains and stops it (gRPC health says `NOT_SERVING` first, calls in flight finish, `Follow`
//! streams end with `UNAVAILABLE`); SIGUSR2 upgrades it to the binary now on disk, the
//! successor consuming and serving before this process stops.
//!
//! ```text
//! nats pub events.signup '{"user":1}' -H Nats-Msg-Id:signup-1   # the id makes a retry harmless
//! psql postgres://postgres@127.0.0.1/test -c 'SELECT id, subject FROM events'
//! grpcurl -plaintext -import-path examples/events/proto -proto events.proto localhost:50051 events.v1.Events/Count
//! grpcurl -plaintext localhost:50051 grpc.health.v1.Health/Check
//! curl -s localhost:8081/readyz
//! curl -s localhost:8081/metrics    # events_consumer_acked_total and the rest, with lifecycle_*
//! ```

mod api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use clap::Parser;
use events::proto::Event;
use events::proto::events_server::EventsServer;
use lifecycle_core::{
    BoxError, CancellationToken, ComponentOptions, Dep, Dependency, FnComponent, RegistryBuilder,
    RestartPolicy, redact_url,
};
use lifecycle_grpc::GrpcServer;
use lifecycle_handoff::{Listeners, Upgrade};
use lifecycle_http::prometheus_client::metrics::counter::Counter;
use lifecycle_http::prometheus_client::metrics::gauge::Gauge;
use lifecycle_http::prometheus_client::registry::Registry;
use lifecycle_http::{HealthPaths, HttpServer};
use lifecycle_nats::async_nats::jetstream;
use lifecycle_nats::{ConsumerStats, Delivery, JetStreamConsumer, MessageHandler, NatsPublisher};
use lifecycle_sqlx::PgPool;
use lifecycle_sqlx::sqlx;

/// The command line and the environment; a flag wins over its variable. The URLs may hold
/// passwords: give them in the environment, which other local users cannot read (ps).
#[derive(Parser, Debug)]
#[command(
    name = "events",
    about = "Records every NATS JetStream message on a subject in PostgreSQL, exactly once by its id",
    after_help = "Signals: SIGTERM or SIGINT drain and stop it (a second one stops at once); SIGUSR2 upgrades it \
                  to the binary now on disk."
)]
struct Config {
    /// The NATS server.
    #[arg(
        long,
        env = "NATS_URL",
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    nats_url: String,
    /// The JetStream stream read from; created (capturing SUBJECTS) when missing.
    #[arg(long, env = "STREAM", default_value = "EVENTS")]
    stream: String,
    /// The subjects the stream captures, when this service creates it.
    #[arg(long, env = "SUBJECTS", default_value = "events.>")]
    subjects: String,
    /// The durable consumer: every instance (and an upgrade's successor) shares it, so each
    /// message goes to one of them.
    #[arg(long, env = "CONSUMER", default_value = "recorder")]
    consumer: String,
    /// PostgreSQL, where the `events` table is.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    database_url: String,
    /// Where the gRPC API (and its `grpc.health.v1` service) is served.
    #[arg(
        long = "grpc-listen",
        env = "GRPC_LISTEN_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:50051"
    )]
    grpc_listen: SocketAddr,
    /// Where `/livez`, `/readyz` and `/metrics` are served.
    #[arg(long = "listen", env = "LISTEN_ADDR", value_name = "ADDR", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Messages handled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Where the serving process writes its id (rewritten by each upgrade).
    #[arg(long, env = "PID_FILE", value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Seconds between turning unready (`/readyz` 503, gRPC health `NOT_SERVING`) and stopping:
    /// time for load balancers and health-checking clients to stop sending new work.
    #[arg(long, env = "DRAIN_DELAY", value_name = "SECONDS", default_value = "0", value_parser = delay)]
    drain_delay: Duration,
    /// Seconds a stop may take in all; handlers still running after 80% of it are cancelled and
    /// their messages given back.
    #[arg(long, env = "SHUTDOWN_DEADLINE", value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    shutdown_deadline: Duration,
}

fn delay(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=300.0).contains(&value) => Ok(Duration::from_secs_f64(value)),
        _ => Err(format!("`{text}` is not a number of seconds from 0 to 300")),
    }
}

fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.1..=3600.0).contains(&value) => Ok(Duration::from_secs_f64(value)),
        _ => Err(format!("`{text}` is not a number of seconds from 0.1 to 3600")),
    }
}

const MIGRATION: &str = "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, subject TEXT NOT NULL, \
                         payload BYTEA NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())";

/// Writes each message as a row keyed by its id (`Nats-Msg-Id`, else its place in the stream).
struct Record {
    db: Dep<PgPool>,
    /// Where new rows are announced (to `Follow` calls).
    recorded: tokio::sync::broadcast::Sender<Event>,
}

impl MessageHandler for Record {
    async fn handle(&self, delivery: &Delivery, cancel: CancellationToken) -> Result<(), BoxError> {
        let id = match delivery.message_id() {
            Some(id) => id.to_owned(),
            None => format!("seq-{}", delivery.stream_sequence()),
        };
        let insert = sqlx::query(
            "INSERT INTO events (id, subject, payload) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(delivery.subject())
        .bind(delivery.payload())
        .execute(self.db.pool()?);
        // Cut at the stop timeout: the row may or may not be committed; either way the message
        // is not acked, comes back, and its second insert changes nothing.
        let inserted = tokio::select! {
            inserted = insert => inserted?,
            () = cancel.cancelled() => return Err("cancelled by the stop".into()),
        };
        if inserted.rows_affected() == 1 {
            let event =
                Event { id, subject: delivery.subject().to_owned(), payload: delivery.payload().to_vec() };
            // Nobody following is fine.
            let _ = self.recorded.send(event);
        }
        Ok(())
    }
}

/// Runs before the runtime starts its threads: taking the sockets a previous generation passed
/// clears environment variables, which is only sound while the process has one thread.
fn setup() -> Result<Listeners, String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    Listeners::inherit().map_err(|error| error.to_string())
}

#[lifecycle_core::main(report = "always", setup = setup)]
async fn main(listeners: Listeners) -> Result<RegistryBuilder, String> {
    let config = Config::parse();
    let admin = listeners
        .tcp("admin", config.listen)
        .map_err(|error| format!("{error} (LISTEN_ADDR or --listen)"))?;
    let grpc = listeners
        .tcp("grpc", config.grpc_listen)
        .map_err(|error| format!("{error} (GRPC_LISTEN_ADDR or --grpc-listen)"))?;
    let mut upgrade = Upgrade::new(&listeners);
    if let Some(path) = &config.pid_file {
        upgrade = upgrade.pid_file(path);
    }

    let mut builder = RegistryBuilder::new();
    builder.drain_delay(config.drain_delay).shutdown_deadline(config.shutdown_deadline);
    builder.add(upgrade.systemd_notify());
    let db = builder
        .add(
            PgPool::new("events_db", config.database_url.clone())
                .max_connections(u32::from(config.concurrency) + 2),
        )
        .dep();
    let migrating = db.clone();
    let migrations = builder
        .add(FnComponent::new("migrations").depends_on(Dependency::from(&db)).on_start(move |_ctx| {
            let db = migrating.clone();
            async move {
                sqlx::query(MIGRATION).execute(db.pool()?).await?;
                Ok::<(), BoxError>(())
            }
        }))
        .dep();
    // The client other components would publish with; here it also makes sure the stream exists.
    let nats = builder.add(NatsPublisher::new("nats", config.nats_url.clone())).dep();
    let stream_config = jetstream::stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.subjects.clone()],
        ..Default::default()
    };
    let creating = nats.clone();
    let stream = builder
        .add(FnComponent::new("stream").depends_on(Dependency::from(&nats)).on_start(move |_ctx| {
            let (nats, stream_config) = (creating.clone(), stream_config.clone());
            async move {
                nats.jetstream()?.get_or_create_stream(stream_config).await?;
                Ok::<(), BoxError>(())
            }
        }))
        .dep();
    let recorded = tokio::sync::broadcast::channel(1024).0;
    let stop_timeout = config.shutdown_deadline.mul_f64(0.8);
    // A consumer whose connection keeps failing is started again, with a new connection.
    let restart = RestartPolicy::on_failure()
        .backoff(Duration::from_millis(200), Duration::from_secs(10))
        .max_restarts(100, Duration::from_secs(60));
    let consumer = builder
        .add(
            JetStreamConsumer::new(
                "consumer",
                config.nats_url.clone(),
                &config.stream,
                &config.consumer,
                Record { db: db.clone(), recorded: recorded.clone() },
            )
            .concurrency(usize::from(config.concurrency))
            .options(ComponentOptions::new().stop_timeout(stop_timeout).restart(restart)),
        )
        .depends_on(&migrations)
        .depends_on(&stream)
        .depends_on(&db)
        .dep();
    builder
        .add(
            GrpcServer::new("grpc", grpc)
                .add_service(EventsServer::new(api::Api { db: db.clone(), recorded }))
                .options(ComponentOptions::new().stop_timeout(stop_timeout)),
        )
        .depends_on(&migrations);
    builder.add(
        HttpServer::new("admin", admin, Router::new())
            .with_health(HealthPaths::default())
            .with_metrics("/metrics")
            .with_metrics_from(move |registry| consumer_metrics(registry, consumer.stats())),
    );
    builder.add(upgrade);
    tracing::info!(
        nats = %redact_url(&config.nats_url),
        database = %redact_url(&config.database_url),
        stream = %config.stream,
        consumer = %config.consumer,
        "events configured"
    );
    Ok(builder)
}

/// The consumer's counters on `/metrics` (`events_consumer_*`), read at each scrape.
fn consumer_metrics(registry: &mut Registry, stats: ConsumerStats) {
    let registry = registry.sub_registry_with_prefix("events_consumer");
    let in_flight = Gauge::<i64>::default();
    in_flight.set(i64::try_from(stats.in_flight).unwrap_or(i64::MAX));
    registry.register("in_flight", "Messages whose handler is running", in_flight);
    for (name, help, value) in [
        ("acked", "Messages handled and acked (the server confirmed the ack)", stats.acked),
        ("nacked", "Messages nak'ed because their handler failed", stats.nacked),
        ("terminated", "Messages terminated or dead-lettered because their handler failed", stats.terminated),
        ("redelivered", "Deliveries that were not their message's first", stats.redelivered),
        ("left", "Messages given back at a stop without being handled", stats.left),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
}
