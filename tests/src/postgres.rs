//! A PostgreSQL server of the test's own (`initdb` into a temporary directory, `pg_ctl` on a free
//! port), for tests that stop, restart or kill the server: never the shared one.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::free_port;

/// A private PostgreSQL cluster, trust authentication, user `postgres`; stopped (immediately)
/// and removed on drop.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    /// Server settings besides the port and socket directory (`-c name=value` each).
    settings: Vec<String>,
}

impl PrivatePostgres {
    /// Creates a cluster and starts it.
    ///
    /// # Panics
    /// When PostgreSQL's server binaries are missing (scripts/test installs them) or the cluster
    /// cannot be created or started.
    pub fn start() -> Self {
        let postgres = Self::create();
        postgres.start_server();
        postgres
    }

    /// Creates a cluster that serves TLS (and plain connections too) with `leaf`'s certificate,
    /// and starts it.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_with_tls(leaf: &crate::tls::Leaf) -> Self {
        let mut postgres = Self::create();
        let (certificate, key) = (postgres.dir.join("server.crt"), postgres.dir.join("server.key"));
        std::fs::write(&certificate, &leaf.certificate).unwrap_or_else(|e| panic!("server.crt: {e}"));
        std::fs::write(&key, &leaf.key).unwrap_or_else(|e| panic!("server.key: {e}"));
        // The server refuses a key others can read, and must own it.
        postgres.run(Command::new("chmod").arg("600").arg(&key));
        if is_root() {
            postgres.run(Command::new("chown").args(["postgres:postgres"]).arg(&certificate).arg(&key));
        }
        postgres.settings = vec![
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", certificate.display()),
            format!("ssl_key_file={}", key.display()),
        ];
        postgres.start_server();
        postgres
    }

    /// A new cluster, not started.
    fn create() -> Self {
        let bin = server_binaries().unwrap_or_else(|| {
            panic!("PostgreSQL's server is not installed (no pg_config, no /usr/lib/postgresql)")
        });
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("lifecycle-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let postgres = Self { dir, port, bin, settings: Vec::new() };
        // PostgreSQL refuses to run as root: the cluster belongs to `postgres` then.
        if is_root() {
            postgres.run(Command::new("chown").args(["postgres:postgres"]).arg(&postgres.dir));
        }
        let initdb = postgres.bin.join("initdb");
        postgres.run(postgres.as_owner(&initdb).arg("-D").arg(postgres.data()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]));
        postgres
    }

    /// The URL of database `postgres` on this server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    ///
    /// # Panics
    /// When it does not start.
    pub fn start_server(&self) {
        let mut options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        for setting in &self.settings {
            options.push_str(&format!(" -c {setting}"));
        }
        let log = self.dir.join("server.log");
        self.run(
            self.as_owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(&log)
                .args(["-o", &options, "-w", "-t", "30", "start"]),
        );
    }

    /// Stops the server: `fast` (clients disconnected, clean shutdown) or `immediate`.
    ///
    /// # Panics
    /// When `pg_ctl stop` fails.
    pub fn stop_server(&self, mode: &str) {
        self.run(
            self.as_owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", mode, "-w", "stop"]),
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `program` run as the cluster's owner.
    fn as_owner(&self, program: &std::path::Path) -> Command {
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, command: &mut Command) {
        let output = command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
        assert!(
            output.status.success(),
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `initdb` and `pg_ctl` are: `pg_config --bindir`, else Debian's newest version.
fn server_binaries() -> Option<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|bin| bin.join("initdb").exists());
    from_pg_config.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .collect();
        versions.sort_by_key(|bin| {
            bin.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0)
        });
        versions.pop()
    })
}

fn is_root() -> bool {
    // The effective user id, read from /proc: no libc dependency for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
