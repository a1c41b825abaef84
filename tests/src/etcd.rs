//! A real etcd server per test, on free ports, with its own data directory.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// An etcd server of the test's own, killed and its data removed on drop.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: std::path::PathBuf,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    ///
    /// # Panics
    /// When etcd is not installed or does not answer within 20 s.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("lifecycle-etcd-{}-{}", std::process::id(), free_port()));
        let mut etcd = Self { child: None, client_port: free_port(), peer_port: free_port(), dir };
        etcd.launch().await;
        etcd
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (again) on the same ports and data directory, and waits until it answers.
    ///
    /// # Panics
    /// When etcd cannot be started or does not answer within 20 s.
    pub async fn launch(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let spawned = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}"), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => self.child = Some(child),
            Err(error) => panic!("cannot start etcd (scripts/test installs etcd-server): {error}"),
        }
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut client) = etcd_client::Client::connect([self.url()], None).await {
                if client.status().await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < until, "etcd did not answer within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
