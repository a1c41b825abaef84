//! Helpers for tests that run a service as a real child process and signal it, and the load
//! generator they share with the benchmarks.

pub mod etcd;
pub mod grpc;
pub mod load;
pub mod nats;
pub mod postgres;
pub mod redis;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A child process whose standard output is read line by line and whose standard error is
/// collected whole. Processes it starts (an upgrade's successors) write to the same pipes.
#[derive(Debug)]
pub struct Service {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: JoinHandle<()>,
    started: Instant,
}

impl Service {
    /// Starts `program` with `args`, standard output and error piped.
    pub fn spawn(program: &str, args: &[&str]) -> std::io::Result<Self> {
        Self::spawn_with_env(program, args, &[])
    }

    /// Starts `program` with `args` and extra environment variables.
    pub fn spawn_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> std::io::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
        let stderr_pipe = child.stderr.take().ok_or_else(|| std::io::Error::other("no stderr"))?;
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut text = collected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                text.push_str(&line);
                text.push('\n');
            }
        });
        Ok(Self { child, lines, stderr, stderr_reader, started: Instant::now() })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Standard error so far, of this process and of those it started.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The next line of standard output, up to `limit`.
    pub fn next_line(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Waits until the child prints `wanted` on a line of its own, up to `limit`.
    pub fn wait_for_line(&self, wanted: &str, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim() == wanted => return Ok(()),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return Err(format!("no `{wanted}` line within {limit:?}")),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("stdout closed before `{wanted}`"));
                }
            }
        }
    }

    /// Sends a real signal with the `kill` command (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) -> Result<(), String> {
        send_signal(name, self.pid())
    }

    /// Waits for the child to exit, up to `limit` (then kills it and fails). Returns its status,
    /// its whole standard error, and how long after `spawn` it exited.
    pub fn wait(mut self, limit: Duration) -> Result<(ExitStatus, String, Duration), String> {
        let until = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait().map_err(|e| e.to_string())? {
                Some(status) => break status,
                None if Instant::now() >= until => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!("still running after {limit:?}; killed"));
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let lived = self.started.elapsed();
        // The pipe ends when every process holding it exited: a successor may still hold it.
        let until = Instant::now() + Duration::from_secs(5);
        while !self.stderr_reader.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((status, self.stderr(), lived))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // A failed assertion must not leave a child behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// The binary of workspace package `package` (named like it), built with cargo (into the test
/// run's own target directory and profile) the first time it is asked for in a test process.
/// Tests run after cargo released its build lock, so the nested build can take it.
pub fn workspace_binary(package: &str) -> std::path::PathBuf {
    package_binary(package, package)
}

/// The binary `binary` of workspace package `package`, built as
/// [`workspace_binary`] builds it.
pub fn package_binary(package: &str, binary: &str) -> std::path::PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Where this test binary was built (`<target dir>/<profile>/deps/`), so a `CARGO_TARGET_DIR`
    // or `--release` of the test run is the binary's too.
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|test| Some(test.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| root.join("target/debug"));
    let release = profile_dir.file_name().is_some_and(|name| name == "release");
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = format!("{package}/{binary}");
    if !built.contains(&key) {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "-p", package, "--bin", binary]).current_dir(&root);
        if release {
            build.arg("--release");
        }
        let status = build.status().unwrap_or_else(|error| panic!("cannot run cargo: {error}"));
        assert!(status.success(), "cargo build -p {package} --bin {binary} failed");
        built.push(key);
    }
    profile_dir.join(binary)
}

/// The report's row for `component` in a service's standard error, whitespace collapsed.
///
/// # Panics
/// When the report has no such row, with the whole text.
pub fn report_row(stderr: &str, component: &str) -> String {
    stderr
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{component} ")))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no report row for {component} in:\n{stderr}"))
}

/// The `orders` example, to run in `dir` on `address` with `env` (and nothing of the test's
/// own database or cache settings), logging warnings to a piped standard error.
pub fn orders_command(dir: &std::path::Path, address: std::net::SocketAddr, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(workspace_binary("orders"));
    command
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .envs(env.iter().copied())
        .env("LISTEN_ADDR", address.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

/// A running `orders` example (see [`orders_command`]), its standard error read in the
/// background; killed when dropped.
#[derive(Debug)]
pub struct Orders {
    child: Child,
    stderr: Option<JoinHandle<String>>,
    address: std::net::SocketAddr,
}

impl Orders {
    /// Starts `orders` in `dir` with `env` on a free port of 127.0.0.1, and waits until `/readyz`
    /// answers 200 (ready or degraded).
    ///
    /// # Panics
    /// When it cannot be started or is not ready within 20 s.
    pub async fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap_or_else(|error| panic!("no free port for orders: {error}"));
        Self::start_on(dir, address, env).await
    }

    /// Starts `orders` on `address` (one a test chose, a killed instance's say), as
    /// [`start`](Self::start) does.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub async fn start_on(
        dir: &std::path::Path,
        address: std::net::SocketAddr,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = orders_command(dir, address, env)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start orders: {error}"));
        let stderr = child
            .stderr
            .take()
            .map(|stderr| std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default()));
        let orders = Self { child, stderr, address };
        let limit = Duration::from_secs(20);
        let ready = tokio::time::timeout(limit, async {
            while load::get(address, "/readyz").await.is_none_or(|(status, _)| status != 200) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert!(ready.await.is_ok(), "orders did not turn ready within {limit:?}");
        orders
    }

    /// The address it serves on.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// Whether it still runs.
    ///
    /// # Panics
    /// When its status cannot be read.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap_or_else(|error| panic!("orders' status: {error}")).is_none()
    }

    /// Kills it with SIGKILL (no drain, no stop, no report) and waits until it is gone.
    ///
    /// # Panics
    /// When it cannot be killed.
    pub fn kill(mut self) {
        self.child.kill().unwrap_or_else(|error| panic!("cannot kill orders: {error}"));
        self.child.wait().unwrap_or_else(|error| panic!("orders' status: {error}"));
    }

    /// Sends SIGTERM and waits up to 20 s for it to exit: its exit code and standard error.
    ///
    /// # Panics
    /// When it is still running after 20 s.
    pub fn stop(mut self) -> (Option<i32>, String) {
        kill("TERM", self.child.id());
        let until = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) =
                self.child.try_wait().unwrap_or_else(|error| panic!("orders' status: {error}"))
            {
                break status;
            }
            assert!(Instant::now() < until, "orders did not exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        (status.code(), stderr)
    }
}

impl Drop for Orders {
    fn drop(&mut self) {
        // A failed assertion must not leave it behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` has exited: gone, or a zombie nobody reaped yet (an upgraded service's
/// old generations are not the test's children).
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Waits until process `pid` has exited, up to `limit` (then panics).
pub async fn wait_exited(pid: u32, limit: Duration) {
    let until = Instant::now() + limit;
    while !exited(pid) {
        assert!(Instant::now() < until, "process {pid} still running after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends signal `name` (`TERM`, `USR2`, ...) to process `pid` with the `kill` command; panics if
/// it fails.
pub fn kill(name: &str, pid: u32) {
    if let Err(error) = send_signal(name, pid) {
        panic!("{error}");
    }
}

fn send_signal(name: &str, pid: u32) -> Result<(), String> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("kill -{name} {pid} failed: {status}")) }
}

/// The process id in PID file `file`, waiting up to 10 s for the file to appear: a service
/// writes it once it serves, which its `/readyz` may say a moment before.
///
/// # Panics
/// When the file is still missing after 10 s, cannot be read or holds no process id.
pub fn pid_in(file: &std::path::Path) -> u32 {
    let until = Instant::now() + Duration::from_secs(10);
    let text = loop {
        match std::fs::read_to_string(file) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            read => break read.unwrap_or_else(|error| panic!("{}: {error}", file.display())),
        }
    };
    text.trim().parse().unwrap_or_else(|error| panic!("{}: `{text}`: {error}", file.display()))
}

/// Upgrades the service whose process `pid` wrote `pid_file`: SIGUSR2, then waits up to `limit`
/// until the file names its successor and `pid` has exited. Returns the successor.
///
/// # Panics
/// When the upgrade does not happen within `limit`.
pub async fn upgrade(pid_file: &std::path::Path, pid: u32, limit: Duration) -> u32 {
    kill("USR2", pid);
    let until = Instant::now() + limit;
    let successor = loop {
        let now = pid_in(pid_file);
        if now != pid {
            break now;
        }
        assert!(Instant::now() < until, "process {pid} not upgraded within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    wait_exited(pid, until.saturating_duration_since(Instant::now())).await;
    successor
}
