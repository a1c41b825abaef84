//! What the RabbitMQ tests share: unique names, queues on the shared broker, what the broker
//! says about its connections (`rabbitmqctl`, its log), and the PostgreSQL they write to.

// Test helpers: a failed set-up is the test's failure, with the reason.
#![allow(dead_code, unreachable_pub, clippy::expect_used, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};

use lifecycle_rabbitmq::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lifecycle_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use lifecycle_rabbitmq::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// The shared broker (`scripts/test` starts it when it is down).
pub fn amqp_url() -> String {
    std::env::var("LIFECYCLE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The PostgreSQL the tests use: `LIFECYCLE_TEST_POSTGRES_URL`, or the local server with trust auth.
pub fn postgres_url() -> String {
    std::env::var("LIFECYCLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A name no other test (nor an earlier run) uses: queue names must not collide between tests
/// running in parallel.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{nanos}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A queue on the shared broker, with the test's own connection; [`Queue::delete`] removes it.
pub struct Queue {
    pub name: String,
    pub connection: Connection,
    pub channel: Channel,
}

impl Queue {
    /// A durable queue named `name`.
    pub async fn create(name: &str) -> Self {
        Self::create_with(name, FieldTable::default()).await
    }

    /// A durable queue with `arguments` (`x-dead-letter-exchange`..).
    pub async fn create_with(name: &str, arguments: FieldTable) -> Self {
        let connection = Connection::connect(
            &amqp_url(),
            ConnectionProperties::default().with_connection_name(format!("test-{name}").into()),
        )
        .await
        .expect("the shared RabbitMQ is up");
        let channel = connection.create_channel().await.expect("channel");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
        channel
            .queue_declare(name.into(), QueueDeclareOptions::durable(), arguments)
            .await
            .expect("queue declared");
        Self { name: name.to_owned(), connection, channel }
    }

    /// Publishes `count` persistent messages with ids `m-0`.. and waits for every confirm.
    pub async fn publish(&self, count: usize) {
        let mut confirms = Vec::with_capacity(1000);
        for i in 0..count {
            let properties =
                BasicProperties::default().with_message_id(format!("m-{i}").into()).with_delivery_mode(2);
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.name.as_str().into(),
                    BasicPublishOptions::default(),
                    format!("order {i}").as_bytes(),
                    properties,
                )
                .await
                .expect("published");
            confirms.push(confirm);
            if confirms.len() == 1000 {
                for confirm in confirms.drain(..) {
                    assert!(confirm.await.expect("confirmed").is_ack());
                }
            }
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirmed").is_ack());
        }
    }

    /// Messages ready in the queue (a passive declare's count).
    pub async fn ready(&self) -> u32 {
        message_count(&self.channel, &self.name).await
    }

    pub async fn delete(self) {
        let _ = self.channel.queue_delete(self.name.as_str().into(), QueueDeleteOptions::default()).await;
        let _ = self.connection.close(200, "OK".into()).await;
    }
}

/// Messages ready in `queue`.
pub async fn message_count(channel: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .expect("queue exists")
        .message_count()
}

/// `x-dead-letter-exchange` (and routing key) arguments for a queue.
pub fn dead_letter_to(exchange: &str, routing_key: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(exchange.into()));
    arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(routing_key.into()));
    arguments
}

fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl on PATH");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The broker's open connections: `(pid, client-provided name)`, from `rabbitmqctl
/// list_connections pid client_properties` (its `name` column is the peer's address).
pub async fn connections() -> Vec<(String, String)> {
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["list_connections", "pid", "client_properties", "--quiet", "--no-table-headers"])
            .lines()
            .filter_map(|line| {
                let (pid, properties) = line.trim().split_once('\t')?;
                let (_, rest) = properties.split_once("{\"connection_name\",\"")?;
                let (name, _) = rest.split_once('"')?;
                Some((pid.to_owned(), name.to_owned()))
            })
            .collect()
    })
    .await
    .expect("rabbitmqctl ran")
}

/// The client-provided names of the broker's open connections.
pub async fn connection_names() -> Vec<String> {
    connections().await.into_iter().map(|(_, name)| name).collect()
}

/// Closes the connection named `name` from the broker's side (`rabbitmqctl close_connection`).
pub async fn close_connection(name: &str) {
    let pid = connections()
        .await
        .into_iter()
        .find(|(_, listed)| listed == name)
        .map(|(pid, _)| pid)
        .unwrap_or_else(|| panic!("no connection named {name}"));
    tokio::task::spawn_blocking(move || rabbitmqctl(&["close_connection", &pid, "closed by the test"]))
        .await
        .expect("rabbitmqctl ran");
}

/// `(ready, unacknowledged)` of `queue`, as `rabbitmqctl list_queues` shows them.
pub async fn queue_counts(queue: &str) -> (u64, u64) {
    let queue = queue.to_owned();
    tokio::task::spawn_blocking(move || {
        let listing = rabbitmqctl(&[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "--quiet",
            "--no-table-headers",
        ]);
        for line in listing.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [name, ready, unacked] = fields.as_slice()
                && *name == queue
            {
                return (ready.parse().expect("a count"), unacked.parse().expect("a count"));
            }
        }
        panic!("queue {queue} not listed:\n{listing}");
    })
    .await
    .expect("rabbitmqctl ran")
}

/// The broker's log, read from where it ended when the test began.
pub struct BrokerLog {
    path: std::path::PathBuf,
    from: u64,
}

impl BrokerLog {
    pub fn mark() -> Self {
        let path = std::path::PathBuf::from(
            std::env::var("LIFECYCLE_TEST_RABBITMQ_LOG")
                .unwrap_or_else(|_| "/var/log/rabbitmq/rabbit@localhost.log".to_owned()),
        );
        let from = std::fs::metadata(&path).expect("the broker's log is readable").len();
        Self { path, from }
    }

    /// What the broker logged since the mark.
    pub fn appended(&self) -> String {
        let all = std::fs::read(&self.path).expect("the broker's log");
        let from = usize::try_from(self.from).unwrap().min(all.len());
        String::from_utf8_lossy(&all[from..]).into_owned()
    }

    /// Whether the broker logged the connection named `name` since the mark.
    pub fn saw(&self, name: &str) -> bool {
        self.appended().contains(&format!("has a client-provided name: {name}"))
    }

    /// The broker's lines about connections named `name*` that it saw vanish without a
    /// `connection.close`, since the mark ("closing AMQP connection <..> (address - NAME, ..):"
    /// followed by "client unexpectedly closed TCP connection").
    pub fn dropped_connections(&self, name_prefix: &str) -> Vec<String> {
        let appended = self.appended();
        let lines: Vec<&str> = appended.lines().collect();
        lines
            .windows(2)
            .filter(|pair| {
                pair[0].contains("closing AMQP connection")
                    && pair[0].contains(&format!(" - {name_prefix}"))
                    && pair[1].contains("client unexpectedly closed TCP connection")
            })
            .map(|pair| pair[0].to_owned())
            .collect()
    }
}
