//! What the NATS tests share (the adapter's and the `events` example's): unique names, streams
//! on the shared server, a private server for the tests that need credentials or kill it, and
//! the PostgreSQL they write to.

// Test helpers: a failed set-up is the test's failure, with the reason.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lifecycle_nats::async_nats::{self, jetstream};

use crate::free_port;

/// The shared NATS server with JetStream (`scripts/test` starts it when it is down).
pub fn nats_url() -> String {
    std::env::var("LIFECYCLE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The PostgreSQL the tests use: `LIFECYCLE_TEST_POSTGRES_URL`, or the local server with trust auth.
pub fn postgres_url() -> String {
    std::env::var("LIFECYCLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A name no other test (nor an earlier run) uses: stream and consumer names must not collide
/// between tests running in parallel.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{nanos}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A stream named `name` on the shared server capturing `name.>`, deleted when dropped... by
/// the test, with [`Stream::delete`].
#[derive(Debug)]
pub struct Stream {
    pub name: String,
    pub context: jetstream::Context,
}

impl Stream {
    pub async fn create(name: &str) -> Self {
        Self::create_on(&nats_url(), name).await
    }

    /// A stream named `name` on the server at `url` (a private one, say).
    pub async fn create_on(url: &str, name: &str) -> Self {
        let client = async_nats::connect(url).await.expect("the NATS server is up");
        let context = jetstream::new(client);
        context
            .create_stream(jetstream::stream::Config {
                name: name.to_owned(),
                subjects: vec![format!("{name}.>")],
                ..Default::default()
            })
            .await
            .expect("stream created");
        Self { name: name.to_owned(), context }
    }

    pub fn subject(&self, leaf: &str) -> String {
        format!("{}.{leaf}", self.name)
    }

    /// Publishes `count` messages with ids `m-0`.. and waits for every ack from the stream.
    pub async fn publish(&self, count: usize) {
        self.publish_from(0, count).await;
    }

    /// Publishes `count` messages with ids `m-<first>`.. and waits for every ack from the stream.
    pub async fn publish_from(&self, first: usize, count: usize) {
        let mut acks = Vec::with_capacity(1000);
        for i in first..first + count {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("m-{i}").as_str());
            let ack = self
                .context
                .publish_with_headers(self.subject("orders"), headers, format!("order {i}").into())
                .await
                .expect("published");
            acks.push(ack);
            if acks.len() == 1000 {
                for ack in acks.drain(..) {
                    ack.await.expect("stored");
                }
            }
        }
        for ack in acks {
            ack.await.expect("stored");
        }
    }

    /// The consumer's `(pending, ack pending, redelivered)` as the server counts them.
    pub async fn consumer_counts(&self, durable: &str) -> (u64, usize, usize) {
        let stream = self.context.get_stream(&self.name).await.expect("stream");
        let info = stream.consumer_info(durable).await.expect("consumer info");
        (info.num_pending, info.num_ack_pending, info.num_redelivered)
    }

    pub async fn delete(self) {
        let _ = self.context.delete_stream(&self.name).await;
    }
}

/// A private `nats-server`, killed when dropped: for tests that need credentials or kill it.
#[derive(Debug)]
pub struct PrivateNats {
    child: Option<std::process::Child>,
    pub port: u16,
    extra: Vec<String>,
    dir: TempDir,
}

impl PrivateNats {
    /// Starts one on a free port, with `extra` arguments (credentials, say).
    pub async fn start(extra: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            dir: TempDir::new(),
        };
        server.launch().await;
        server
    }

    /// Its URL, without credentials.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: clients see their connection drop) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store: its streams and consumers are back.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    async fn launch(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
                self.dir.0.to_str().expect("utf-8"),
            ])
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        // Waited for by `kill` (and `Drop`).
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the private nats-server did not listen on {}", self.port);
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scratch directory, removed when dropped.
#[derive(Debug)]
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("lifecycle_nats"));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
