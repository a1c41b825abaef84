//! The service under drill: its processes, its readiness, and a restart in each mode.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use lifecycle_tests::load::{Mode, connect};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::Error;
use crate::cli::{Options, RestartMode};
use crate::nginx::Nginx;
use crate::process::{self, Exit, Logs};

/// Variables of the drill's own environment that the service must not inherit: descriptors to
/// adopt and a service manager to notify (the drill plays neither role), and the contract's
/// variables, which the drill sets itself where its mode needs them.
const NOT_INHERITED: [&str; 6] =
    ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "LISTEN_REUSEPORT", "PID_FILE"];

/// `/readyz` answers in a row that make a new process ready in reuseport mode.
const REUSEPORT_PROBES: u32 = 8;

/// The files in the drill's directory worth reading when something failed: the service's
/// standard error, and nginx's error log in that mode.
pub(crate) fn logs(dir: &Path) -> Vec<PathBuf> {
    [Logs::new(dir, "service").stderr, Nginx::error_log_in(dir)]
        .into_iter()
        .filter(|path| path.exists())
        .collect()
}

/// Whether `GET /readyz` on a new connection to `address` answers 200 within a second.
pub(crate) async fn is_ready(address: SocketAddr) -> bool {
    let probe = async {
        let mut sender = connect(address, Mode::ConnectionClose).await.ok()?;
        let request = hyper::Request::get("/readyz")
            .header("host", "drill")
            .header("connection", "close")
            .body(Full::new(Bytes::new()))
            .ok()?;
        sender.send(request).await.ok().map(|(status, _)| status)
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), probe).await, Ok(Some(200)))
}

/// How one restart went.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Restart {
    /// From the trigger to the new process being ready (for handoff: the PID file naming it).
    pub(crate) ready: Duration,
    /// From the trigger to the restart's end: the old process exited.
    pub(crate) done: Duration,
    pub(crate) old_pid: Pid,
    pub(crate) new_pid: Pid,
    pub(crate) old_exit: Exit,
}

/// A process of the service and the port it listens on.
#[derive(Clone, Copy, Debug)]
struct Instance {
    pid: Pid,
    port: u16,
}

/// The service: the process that serves now, how to start the next one, and nginx in front of
/// them in that mode.
///
/// Dropping it kills (SIGKILL) every process the drill still has, so that a failed drill leaves
/// nothing holding the ports; `stop` is the graceful way.
#[derive(Debug)]
pub(crate) struct Service {
    mode: RestartMode,
    binary: PathBuf,
    args: Vec<OsString>,
    dir: PathBuf,
    logs: Logs,
    database_url: String,
    drain_delay: Duration,
    ready_timeout: Duration,
    stop_timeout: Duration,
    settle: Duration,
    /// The two ports that nginx mode alternates between; one port twice in the other modes.
    ports: [u16; 2],
    /// The process that serves, once started and until it has been reaped.
    current: Option<Instance>,
    /// Processes started so far, less one: the first is generation 0.
    generation: usize,
    nginx: Option<Nginx>,
}

impl Service {
    /// Starts the first process (and nginx in front of it in that mode) and waits until it is
    /// ready.
    pub(crate) async fn start(options: &Options, dir: &Path) -> Result<Self, Error> {
        // Canonical, because the service runs in `dir` and a relative path would point there.
        let binary = std::fs::canonicalize(&options.binary)
            .map_err(|error| format!("--binary {}: {error}", options.binary.display()))?;
        // Found before anything starts, so a missing nginx fails at once.
        let nginx = match options.mode {
            RestartMode::Nginx => Some(Nginx::locate(options.nginx.as_deref())?),
            _ => None,
        };
        let database_url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| format!("sqlite://{}/drill.db?mode=rwc", dir.display()));
        let ports = match options.mode {
            RestartMode::Nginx => free_ports()?,
            _ => {
                let port = process::free_port()?;
                [port, port]
            }
        };
        let mut service = Self {
            mode: options.mode,
            binary,
            args: options.service_args.clone(),
            dir: dir.to_path_buf(),
            logs: Logs::new(dir, "service"),
            database_url,
            drain_delay: options.drain_delay,
            ready_timeout: options.ready_timeout,
            stop_timeout: options.stop_timeout,
            settle: options.settle,
            ports,
            current: None,
            generation: 0,
            nginx: None,
        };
        let first = service.spawn(0)?;
        service.current = Some(first);
        service.wait_ready(first, Instant::now() + service.ready_timeout).await?;
        if service.mode == RestartMode::Handoff {
            // The PID file is the authority from now on: handoff signals whatever it names.
            let pid = service.wait_pid_file(first, 0).await?;
            service.current = Some(Instance { pid, port: first.port });
        }
        if let Some(binary) = nginx {
            service.nginx = Some(Nginx::start(binary, dir, first.port, service.ready_timeout).await?);
        }
        Ok(service)
    }

    /// Where clients connect: nginx, or the service itself.
    pub(crate) fn address(&self) -> SocketAddr {
        let port = self.nginx.as_ref().map_or(self.ports[0], |nginx| nginx.port);
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Restarts the service the way its mode says.
    pub(crate) async fn restart(&mut self) -> Result<Restart, Error> {
        let old = self.current.ok_or("no process of the service is running")?;
        match self.mode {
            RestartMode::Handoff => self.handoff(old).await,
            RestartMode::Graceful => self.replace(old, Signal::SIGTERM).await,
            RestartMode::Kill => self.replace(old, Signal::SIGKILL).await,
            RestartMode::Reuseport => self.reuseport(old).await,
            RestartMode::Nginx => self.blue_green(old).await,
        }
    }

    /// Stops nginx, then the service, each gracefully, and returns how the service ended.
    pub(crate) async fn stop(&mut self) -> Result<Exit, Error> {
        if let Some(nginx) = self.nginx.take() {
            nginx.stop(self.stop_timeout).await?;
        }
        let current = self.current.ok_or("no process of the service is running")?;
        let exit = process::terminate(current.pid, "the service", self.stop_timeout).await;
        self.current = None;
        exit
    }

    /// SIGUSR2; done when the PID file names another process and the old one has exited.
    async fn handoff(&mut self, old: Instance) -> Result<Restart, Error> {
        let pid_file = self.pid_file(self.generation);
        let successor = || process::read_pid_file(&pid_file).filter(|pid| *pid != old.pid);
        let triggered = Instant::now();
        process::send(old.pid, Signal::SIGUSR2)?;
        let deadline = triggered + self.ready_timeout;
        let mut ready = None;
        let mut ended = None;
        loop {
            if ready.is_none() {
                ready = successor().map(|pid| (pid, triggered.elapsed()));
            }
            if ended.is_none() {
                ended = process::reap(old.pid)?.map(|exit| (exit, triggered.elapsed()));
            }
            match (ready, ended) {
                (Some((new_pid, ready)), Some((old_exit, done))) => {
                    self.current = Some(Instance { pid: new_pid, port: old.port });
                    self.generation += 1;
                    if let Some(exit) = process::reap(new_pid)? {
                        self.current = None;
                        return Err(format!("handoff: the new process (pid {new_pid}) ended ({exit})").into());
                    }
                    return Ok(Restart { ready, done, old_pid: old.pid, new_pid, old_exit });
                }
                // Read once more: the successor may have written the file just before the old
                // process exited, after the read above.
                (None, Some((exit, _))) if successor().is_none() => {
                    self.current = None;
                    return Err(format!(
                        "handoff: pid {} ended ({exit}) but {} does not name a successor: \
                         does the service upgrade on SIGUSR2 and write PID_FILE?",
                        old.pid,
                        pid_file.display()
                    )
                    .into());
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "handoff did not complete within {:?} of SIGUSR2 to pid {}: {}, and the old process {}",
                    self.ready_timeout,
                    old.pid,
                    match ready {
                        Some((pid, _)) => format!("PID_FILE names pid {pid}"),
                        None => "PID_FILE still names the old process".into(),
                    },
                    if ended.is_some() { "exited" } else { "still runs" },
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// `signal` to the old process, wait for its exit, start a new one, wait until it is ready.
    async fn replace(&mut self, old: Instance, signal: Signal) -> Result<Restart, Error> {
        let triggered = Instant::now();
        process::send(old.pid, signal)?;
        let Some(old_exit) = process::wait_exit(old.pid, self.stop_timeout).await? else {
            // Best effort: the error says what matters.
            let _ = process::send(old.pid, Signal::SIGKILL);
            return Err(format!(
                "the service (pid {}) did not exit within {:?} of {}",
                old.pid,
                self.stop_timeout,
                signal.as_str()
            )
            .into());
        };
        self.current = None;
        let new = self.spawn(self.generation + 1)?;
        self.current = Some(new);
        self.wait_ready(new, triggered + self.ready_timeout).await?;
        let ready = triggered.elapsed();
        Ok(Restart { ready, done: ready, old_pid: old.pid, new_pid: new.pid, old_exit })
    }

    /// A new process beside the old one on the same port (SO_REUSEPORT), then SIGTERM to the
    /// old one once the new one is ready and `settle` has passed.
    ///
    /// With two processes on the port a `/readyz` probe reaches either, so one 200 proves
    /// nothing. The new process counts as ready once its PID file exists and
    /// [`REUSEPORT_PROBES`] probes in a row, each on a new connection, answered 200: the kernel
    /// spreads new connections over both sockets, so while the new process does not serve, a
    /// probe that reaches it waits in its accept queue or gets a 503, and a streak of that length
    /// from the old process alone is unlikely (1 in 2^8 per streak).
    async fn reuseport(&mut self, old: Instance) -> Result<Restart, Error> {
        let triggered = Instant::now();
        let generation = self.generation + 1;
        let new = self.spawn(generation)?;
        self.wait_pid_file(new, generation).await?;
        let deadline = triggered + self.ready_timeout;
        let mut streak = 0;
        while streak < REUSEPORT_PROBES {
            if is_ready(self.address()).await {
                streak += 1;
                continue;
            }
            streak = 0;
            self.check_starting(new, deadline)?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready = triggered.elapsed();
        tokio::time::sleep(self.settle).await;
        let old_exit = process::terminate(old.pid, "the old process", self.stop_timeout).await?;
        self.current = Some(new);
        Ok(Restart { ready, done: triggered.elapsed(), old_pid: old.pid, new_pid: new.pid, old_exit })
    }

    /// The other instance on the other port, ready, nginx switched to it and its old workers
    /// gone, then SIGTERM to the old instance.
    async fn blue_green(&mut self, old: Instance) -> Result<Restart, Error> {
        let triggered = Instant::now();
        let new = self.spawn(self.generation + 1)?;
        self.wait_ready(new, triggered + self.ready_timeout).await?;
        let ready = triggered.elapsed();
        let nginx = self.nginx.as_ref().ok_or("nginx mode without nginx")?;
        nginx.switch(new.port, self.stop_timeout).await?;
        let old_exit = process::terminate(old.pid, "the old instance", self.stop_timeout).await?;
        self.current = Some(new);
        Ok(Restart { ready, done: triggered.elapsed(), old_pid: old.pid, new_pid: new.pid, old_exit })
    }

    /// Starts process number `generation` with the service contract's environment. The caller
    /// makes it the current one when the old one is gone; until then it is one of the drill's
    /// children, which a drop kills too.
    fn spawn(&mut self, generation: usize) -> Result<Instance, Error> {
        let port = self.ports[generation % 2];
        let pid_file = self.pid_file(generation);
        match std::fs::remove_file(&pid_file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot remove the stale {}: {error}", pid_file.display()).into());
            }
            _ => {}
        }
        let mut command = Command::new(&self.binary);
        // Removed first: the contract's own variables are set below.
        for name in NOT_INHERITED {
            command.env_remove(name);
        }
        command
            .args(&self.args)
            .current_dir(&self.dir)
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &self.database_url)
            .env("PID_FILE", &pid_file)
            .env("DRAIN_DELAY", self.drain_delay.as_secs_f64().to_string())
            // Its output goes to files, read back on failure: no colour codes in them.
            .env("NO_COLOR", "1");
        if self.mode == RestartMode::Reuseport {
            command.env("LISTEN_REUSEPORT", "1");
        }
        let pid = process::spawn(&mut command, &self.logs)?;
        self.generation = generation;
        Ok(Instance { pid, port })
    }

    /// One PID file per process where two run at once (reuseport, nginx), else one for all.
    fn pid_file(&self, generation: usize) -> PathBuf {
        match self.mode {
            RestartMode::Reuseport | RestartMode::Nginx => self.dir.join(format!("service-{generation}.pid")),
            _ => self.dir.join("service.pid"),
        }
    }

    /// Waits until `instance` answers 200 on `/readyz`.
    async fn wait_ready(&self, instance: Instance, deadline: Instant) -> Result<(), Error> {
        let address = SocketAddr::from(([127, 0, 0, 1], instance.port));
        while !is_ready(address).await {
            self.check_starting(instance, deadline)?;
            // Often: this wait is part of the restart times the report gives.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// An error when `instance`, not ready yet, has ended or has run out of time.
    fn check_starting(&self, instance: Instance, deadline: Instant) -> Result<(), Error> {
        let address = SocketAddr::from(([127, 0, 0, 1], instance.port));
        if let Some(exit) = process::reap(instance.pid)? {
            return Err(format!(
                "{}: the service (pid {}) ended ({exit}) before /readyz on {address} answered 200",
                self.mode, instance.pid
            )
            .into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: the service (pid {}) did not answer 200 on /readyz at {address} within {:?}",
                self.mode, instance.pid, self.ready_timeout
            )
            .into());
        }
        Ok(())
    }

    /// Waits until process `generation`'s PID file names a process, and returns it.
    async fn wait_pid_file(&self, instance: Instance, generation: usize) -> Result<Pid, Error> {
        let path = self.pid_file(generation);
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(pid) = process::read_pid_file(&path) {
                return Ok(pid);
            }
            if let Some(exit) = process::reap(instance.pid)? {
                return Err(format!(
                    "{}: the service (pid {}) ended ({exit}) before writing {}",
                    self.mode,
                    instance.pid,
                    path.display()
                )
                .into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: the service (pid {}) wrote no PID file at {} within {:?}: \
                     this mode needs a service that writes PID_FILE",
                    self.mode,
                    instance.pid,
                    path.display(),
                    self.ready_timeout
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Only signals. The drill's children are the service's processes and nginx (the
        // subreaper makes orphaned successors children too); the current process's children
        // cover a successor whose parent has not exited yet.
        let mut pids = process::children(Pid::this());
        if let Some(current) = self.current {
            pids.push(current.pid);
            pids.extend(process::children(current.pid));
        }
        for pid in pids {
            // Best effort: a process may have exited since it was listed.
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
    }
}

/// Two distinct free ports, bound together so that the second cannot be the first one again.
fn free_ports() -> Result<[u16; 2], Error> {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0");
    let (a, b) = (bind()?, bind()?);
    Ok([a.local_addr()?.port(), b.local_addr()?.port()])
}
