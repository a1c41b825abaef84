//! The upgrade itself: start the binary as it now is on disk with our listeners, wait until it
//! is ready, then hand over and retire; or, when anything goes wrong, stop it and keep serving.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use lifecycle_core::{BoxError, Component, ComponentId, ComponentOptions, Context, Phase};
use lifecycle_systemd::sd_notify::NotifyState;
use lifecycle_systemd::{ReadyGate, SystemdNotify};
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::signal::unix::SignalKind;

use crate::inherit::{CONTROL_FD, FIRST_LISTENER_FD, NAMES_VAR, PARENT_VAR, ignore_in_successor};
use crate::{Listeners, UpgradeError, control, pidfile};

/// Default for [`Upgrade::ready_timeout`].
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a successor that failed gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Variables a successor must not inherit: they describe this process, not the successor.
const NOT_INHERITED: [&str; 4] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID"];

/// Where this process stands in the upgrade sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeState {
    /// Serving; an upgrade may start.
    Idle,
    /// An upgrade is under way.
    Upgrading,
    /// This process is a successor whose predecessor is still draining: no upgrade until it
    /// is gone.
    PredecessorRunning {
        /// The predecessor's process id.
        predecessor: u32,
    },
    /// This process handed over and is retiring.
    HandedOver {
        /// The successor's process id.
        successor: u32,
    },
}

/// Zero-downtime upgrades as a component named `upgrade`.
///
/// On SIGUSR2 (see [`signals`](Self::signals)), or [`UpgradeHandle::upgrade`]:
///
/// 1. refuses unless this process is ready, no upgrade runs and its own predecessor is gone (a
///    signal that comes while the predecessor still drains is kept, and carried out once it
///    has exited; `UpgradeHandle::upgrade` answers at once);
/// 2. tells systemd `RELOADING=1`, starts the binary as it now is on disk, with the same
///    arguments, every listener of the [`Listeners`] set from descriptor 4 on (names in
///    `LIFECYCLE_UPGRADE_FDNAMES`) and a readiness channel on descriptor 3;
/// 3. the successor adopts the listeners by name ([`Listeners::inherit`]), starts every
///    component and says `ready`;
/// 4. this process tells systemd `MAINPID=<successor>`, answers `handed-over` (the successor
///    then sends `READY=1`), rewrites the PID file, and stops with
///    [`ShutdownReason::HandedOver`](lifecycle_core::ShutdownReason::HandedOver): no drain
///    delay, the successor accepts on the same sockets while this process drains.
///
/// If the binary cannot be started, the successor exits, or it is not ready within
/// [`ready_timeout`](Self::ready_timeout), the successor is stopped (SIGTERM, then SIGKILL),
/// this process keeps serving, and the error is logged, noted in the report and returned.
pub struct Upgrade {
    shared: Arc<Shared>,
    gate: ReadyGate,
}

/// Everything an upgrade needs, shared by the component and its handles.
struct Shared {
    listeners: Listeners,
    binary: Mutex<Result<PathBuf, String>>,
    args: Mutex<Vec<OsString>>,
    /// Set for the successor on top of this process's environment.
    env: Mutex<Vec<(OsString, OsString)>>,
    ready_timeout: Mutex<Duration>,
    signals: Mutex<Vec<SignalKind>>,
    pid_file: Mutex<Option<PathBuf>>,
    state: Mutex<UpgradeState>,
    /// The run this component belongs to, while it runs.
    running: Mutex<Option<Context>>,
    /// Our end of the readiness channel to the successor: open until this process ends, so
    /// the successor knows when we are gone.
    successor_channel: Mutex<Option<UnixStream>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Upgrade {
    /// Upgrades that pass `listeners` on, re-executing this process's binary (its path as it
    /// was at start, so a new file at that path is what runs) with the same arguments.
    pub fn new(listeners: &Listeners) -> Self {
        let binary =
            std::env::current_exe().map_err(|error| format!("cannot find this process's binary: {error}"));
        let predecessor = listeners.predecessor();
        let gate = ReadyGate::new();
        if predecessor.is_none() {
            gate.open();
        }
        let state = match predecessor {
            Some(predecessor) => UpgradeState::PredecessorRunning { predecessor },
            None => UpgradeState::Idle,
        };
        Self {
            shared: Arc::new(Shared {
                listeners: listeners.clone(),
                binary: Mutex::new(binary),
                args: Mutex::new(std::env::args_os().skip(1).collect()),
                env: Mutex::new(Vec::new()),
                ready_timeout: Mutex::new(READY_TIMEOUT),
                signals: Mutex::new(vec![SignalKind::user_defined2()]),
                pid_file: Mutex::new(None),
                state: Mutex::new(state),
                running: Mutex::new(None),
                successor_channel: Mutex::new(None),
            }),
            gate,
        }
    }

    /// The program to start (default: this process's binary as the kernel resolved it at start,
    /// symbolic links followed). Set it when deploys switch a symbolic link (`current ->
    /// releases/v2`): give the link's path, so the upgrade runs what it points to now.
    #[must_use]
    pub fn binary(self, path: impl Into<PathBuf>) -> Self {
        *lock(&self.shared.binary) = Ok(path.into());
        self
    }

    /// The successor's arguments (default: this process's own). Leave out a secret given on the
    /// command line and pass it with [`env`](Self::env) instead: every local user can read a
    /// process's arguments (`ps`), only its own user its environment.
    #[must_use]
    pub fn args(self, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        *lock(&self.shared.args) = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `key` to `value` in the successor's environment (on top of this process's).
    #[must_use]
    pub fn env(self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        lock(&self.shared.env).push((key.into(), value.into()));
        self
    }

    /// How long the successor has to become ready (default 30 s) before it is stopped and the
    /// upgrade fails.
    #[must_use]
    pub fn ready_timeout(self, timeout: Duration) -> Self {
        *lock(&self.shared.ready_timeout) = timeout;
        self
    }

    /// The signals that start an upgrade (default SIGUSR2, nginx's convention; SIGHUP reloads
    /// the service instead, see `lifecycle_core::Signals`; none: only the API).
    #[must_use]
    pub fn signals(self, signals: impl IntoIterator<Item = SignalKind>) -> Self {
        *lock(&self.shared.signals) = signals.into_iter().collect();
        self
    }

    /// Keeps a PID file at `path` naming the process that serves: written once ready by a
    /// process without predecessor, rewritten with the successor's id at a hand-over (once the
    /// successor is ready), removed at a stop that hands over to nobody.
    #[must_use]
    pub fn pid_file(self, path: impl Into<PathBuf>) -> Self {
        *lock(&self.shared.pid_file) = Some(path.into());
        self
    }

    /// A handle to start upgrades from code (an admin endpoint, a file watcher).
    pub fn handle(&self) -> UpgradeHandle {
        UpgradeHandle { shared: Arc::clone(&self.shared) }
    }

    /// The systemd notifier for a service that upgrades: a successor sends `READY=1` only
    /// after its predecessor sent `MAINPID=`, so systemd accepts it from the new main process.
    pub fn systemd_notify(&self) -> SystemdNotify {
        SystemdNotify::new().hold_ready_until(self.gate.clone())
    }
}

/// Starts upgrades and tells where the process stands. Cheap to clone.
#[derive(Clone)]
pub struct UpgradeHandle {
    shared: Arc<Shared>,
}

impl UpgradeHandle {
    /// Where this process stands.
    pub fn state(&self) -> UpgradeState {
        *lock(&self.shared.state)
    }

    /// Waits until this process no longer waits for its predecessor to exit; false when
    /// `stop` came first.
    async fn predecessor_gone(&self, stop: &lifecycle_core::CancellationToken) -> bool {
        while matches!(self.state(), UpgradeState::PredecessorRunning { .. }) {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        true
    }

    /// Upgrades now. Returns the successor's process id once it is ready and this process
    /// began to retire; on error this process keeps serving.
    pub async fn upgrade(&self) -> Result<u32, UpgradeError> {
        let ctx = lock(&self.shared.running).clone().ok_or(UpgradeError::NotRunning)?;
        // The upgrade would "succeed" and leave nothing serving: refused, in the report too.
        if let Some(refusal) = container_refusal() {
            ctx.note(format!("upgrade {refusal}"));
            return Err(refusal);
        }
        let phase = ctx.lifecycle().phase();
        {
            let mut state = lock(&self.shared.state);
            match *state {
                UpgradeState::Idle => {}
                UpgradeState::Upgrading => return Err(UpgradeError::InProgress),
                UpgradeState::PredecessorRunning { predecessor } => {
                    return Err(UpgradeError::PredecessorRunning { predecessor });
                }
                UpgradeState::HandedOver { successor } => return Err(UpgradeError::HandedOver { successor }),
            }
            if phase != Phase::Ready {
                return Err(UpgradeError::NotReady { phase });
            }
            *state = UpgradeState::Upgrading;
        }
        let began = Instant::now();
        notify(&ctx, &[NotifyState::Reloading, monotonic_now(), NotifyState::Status("upgrading")]);
        let result = self.perform(&ctx).await;
        match &result {
            Ok(successor) => {
                *lock(&self.shared.state) = UpgradeState::HandedOver { successor: *successor };
                let ms = began.elapsed().as_secs_f64() * 1e3;
                tracing::info!(component = %ctx.name(), successor, ready_ms = ms, "handed over; retiring");
                ctx.note(format!("handed over to process {successor}, ready {ms:.1} ms after the trigger"));
                if !ctx.shutdown().hand_over(*successor) {
                    // A shutdown request raced the hand-over: its reason stands, and the
                    // successor serves.
                    tracing::warn!(component = %ctx.name(), successor, "a shutdown began during the hand-over");
                }
            }
            Err(error) => {
                *lock(&self.shared.state) = UpgradeState::Idle;
                tracing::error!(component = %ctx.name(), %error, "upgrade failed; still serving");
                ctx.note(format!("upgrade failed, still serving: {error}"));
                // A stopping process no longer says it is ready.
                if !ctx.shutdown().is_requested() {
                    let status = format!("ready; upgrade failed: {error}");
                    notify(&ctx, &[NotifyState::Ready, NotifyState::Status(&status)]);
                }
            }
        }
        result
    }

    async fn perform(&self, ctx: &Context) -> Result<u32, UpgradeError> {
        let shared = &self.shared;
        let binary = lock(&shared.binary)
            .clone()
            .map_err(|error| UpgradeError::Prepare(std::io::Error::other(error)))?;
        let listeners = shared.listeners.for_successor().map_err(UpgradeError::Prepare)?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(UpgradeError::Prepare)?;
        let names: Vec<&str> = listeners.iter().map(|(name, _)| name.as_str()).collect();

        let mut command = tokio::process::Command::new(&binary);
        command
            .args(lock(&shared.args).iter())
            .envs(lock(&shared.env).iter().map(|(key, value)| (key, value)))
            .env(PARENT_VAR, std::process::id().to_string())
            .env(NAMES_VAR, names.join(":"));
        for variable in NOT_INHERITED {
            command.env_remove(variable);
        }
        ignore_in_successor(&mut command, &lock(&shared.signals));
        let mut mappings = vec![FdMapping { parent_fd: theirs.into(), child_fd: CONTROL_FD }];
        for (index, (_, socket)) in listeners.into_iter().enumerate() {
            let child_fd =
                FIRST_LISTENER_FD + RawFd::try_from(index).unwrap_or(RawFd::MAX - FIRST_LISTENER_FD);
            mappings.push(FdMapping { parent_fd: socket, child_fd });
        }
        command
            .fd_mappings(mappings)
            .map_err(|_| UpgradeError::Prepare(std::io::Error::other("descriptor numbers collide")))?;
        let spawned = command.spawn();
        // The command holds our copies of the successor's descriptors: closed now, so its end
        // of the channel lives in the successor alone and its exit reads as end of file.
        drop(command);
        let mut child = spawned.map_err(|source| UpgradeError::Spawn { binary: binary.clone(), source })?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(component = %ctx.name(), pid, binary = %binary.display(), "upgrade: successor started");

        let mut channel = ours
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(ours))
            .map_err(|source| UpgradeError::Channel { pid, source })?;
        let timeout = *lock(&shared.ready_timeout);
        let heard = tokio::select! {
            message = control::receive(&mut channel) => Heard::Message(message),
            status = child.wait() => Heard::Exited(status),
            _ = tokio::time::sleep(timeout) => Heard::Nothing,
            _ = ctx.shutdown().requested() => Heard::Stopping,
        };
        let failure = match heard {
            Heard::Message(Ok(Some(message))) if message == control::READY => None,
            Heard::Message(Ok(Some(message))) => Some(UpgradeError::Channel {
                pid,
                source: std::io::Error::other(format!("unexpected message {message:?}")),
            }),
            // The successor closed its end: it is exiting or exited.
            Heard::Message(Ok(None)) => match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(Ok(status)) => Some(UpgradeError::ChildExited { pid, status }),
                _ => Some(UpgradeError::Channel { pid, source: std::io::ErrorKind::UnexpectedEof.into() }),
            },
            Heard::Message(Err(source)) => Some(UpgradeError::Channel { pid, source }),
            Heard::Exited(Ok(status)) => Some(UpgradeError::ChildExited { pid, status }),
            Heard::Exited(Err(source)) => Some(UpgradeError::Channel { pid, source }),
            Heard::Nothing => Some(UpgradeError::NotReadyInTime { pid, timeout }),
            Heard::Stopping => Some(UpgradeError::Stopping { pid }),
        };
        if let Some(failure) = failure {
            stop_successor(&mut child, pid).await;
            return Err(failure);
        }

        // A shutdown that began meanwhile wins: this process still owns the service.
        if ctx.shutdown().is_requested() {
            stop_successor(&mut child, pid).await;
            return Err(UpgradeError::Stopping { pid });
        }
        // systemd first learns the new main process, then the successor announces itself. If
        // systemd cannot be told, the successor would die with this process's unit: give up.
        let status = format!("handed over to process {pid}");
        if lifecycle_systemd::under_systemd() {
            if let Err(source) = lifecycle_systemd::sd_notify::notify(&[
                NotifyState::MainPid(pid),
                NotifyState::Status(&status),
            ]) {
                stop_successor(&mut child, pid).await;
                return Err(UpgradeError::Systemd { pid, source });
            }
        }
        if let Err(source) = control::send(&mut channel, control::HANDED_OVER).await {
            notify(ctx, &[NotifyState::MainPid(std::process::id())]);
            stop_successor(&mut child, pid).await;
            return Err(UpgradeError::Channel { pid, source });
        }
        if let Some(path) = lock(&shared.pid_file).as_ref() {
            if let Err(error) = pidfile::write(path, pid) {
                tracing::warn!(component = %ctx.name(), path = %path.display(), %error, "cannot write the PID file");
            }
        }
        *lock(&shared.successor_channel) = Some(channel);
        Ok(pid)
    }
}

/// What the wait for the successor's readiness ended with.
enum Heard {
    Message(std::io::Result<Option<String>>),
    Exited(std::io::Result<ExitStatus>),
    /// Timed out.
    Nothing,
    /// This process began to stop.
    Stopping,
}

/// Stops a successor that will not take over: SIGTERM, so connections it accepted on the shared
/// sockets are drained rather than reset, then SIGKILL after a grace period.
async fn stop_successor(child: &mut Child, pid: u32) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        tracing::warn!(pid, "successor ignored SIGTERM; killing it");
        let _ = child.kill().await;
    }
}

fn notify(ctx: &Context, states: &[NotifyState<'_>]) {
    if lifecycle_systemd::under_systemd() {
        lifecycle_systemd::notify(ctx.name(), states);
    }
}

/// `MONOTONIC_USEC=` for `RELOADING=1`, which systemd 253 and later require with it.
fn monotonic_now() -> NotifyState<'static> {
    NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Custom(""))
}

impl Component for Upgrade {
    fn name(&self) -> ComponentId {
        "upgrade".into()
    }

    fn options(&self) -> ComponentOptions {
        // An upgrade that cannot happen must not stop a service that serves.
        ComponentOptions::new().critical(false)
    }

    /// One per process, started once: it keeps the run's context for the hand-over.
    fn restartable(&self) -> bool {
        false
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let shared = &self.shared;
        *lock(&shared.running) = Some(ctx.clone());
        // Once every component started: any of them may still claim a listener in its start.
        let (listeners, unclaimed) = (shared.listeners.clone(), ctx.clone());
        ctx.tasks().spawn("close_unclaimed", async move {
            tokio::select! {
                _ = unclaimed.lifecycle().reached(Phase::Ready) => {}
                _ = unclaimed.cancelled() => return,
            }
            let closed = listeners.close_unclaimed();
            if !closed.is_empty() {
                unclaimed
                    .note(format!("closed inherited listeners no longer configured: {}", closed.join(", ")));
            }
        });
        if let Some(control) = shared.listeners.take_control() {
            let channel = std::os::unix::net::UnixStream::from(control);
            channel.set_nonblocking(true)?;
            let channel = UnixStream::from_std(channel)?;
            ctx.tasks().spawn(
                "predecessor",
                follow_predecessor(ctx.clone(), Arc::clone(shared), self.gate.clone(), channel),
            );
        } else if let Some(path) = lock(&shared.pid_file).clone() {
            // Written once the process serves, so the file never names one that is still starting.
            let serving = ctx.clone();
            ctx.tasks().spawn("pid_file", async move {
                tokio::select! {
                    _ = serving.lifecycle().reached(Phase::Ready) => {}
                    _ = serving.cancelled() => return,
                }
                if serving.lifecycle().phase() != Phase::Ready {
                    return;
                }
                if let Err(error) = pidfile::write(&path, std::process::id()) {
                    tracing::error!(component = %serving.name(), path = %path.display(), %error, "cannot write the PID file");
                    serving.note(format!("cannot write the PID file {}: {error}", path.display()));
                }
            });
        }
        for kind in lock(&shared.signals).iter().copied() {
            let mut signal = tokio::signal::unix::signal(kind)?;
            let (handle, token, name) =
                (UpgradeHandle { shared: Arc::clone(shared) }, ctx.token().clone(), ctx.name().clone());
            ctx.tasks().spawn("upgrade_signal", async move {
                loop {
                    // A trigger that arrived before the stop is still answered (and logged), even
                    // when the stop is what woke this task.
                    tokio::select! {
                        biased;
                        received = signal.recv() => if received.is_none() { return },
                        _ = token.cancelled() => return,
                    }
                    tracing::info!(component = %name, signal = ?kind, "upgrade requested");
                    let mut result = handle.upgrade().await;
                    // A trigger while the previous generation still drains is kept and carried
                    // out once it has exited: a deploy script signalling the process the PID
                    // file names must not be ignored (triggers meanwhile make one upgrade).
                    while let Err(error @ UpgradeError::PredecessorRunning { .. }) = &result {
                        tracing::info!(component = %name, %error, "upgrade deferred until then");
                        if !handle.predecessor_gone(&token).await {
                            return;
                        }
                        result = handle.upgrade().await;
                    }
                    if let Err(error) = result {
                        tracing::warn!(component = %name, %error, "upgrade not done");
                    }
                }
            });
        }
        Ok(())
    }

    /// The service is leaving: no upgrade from here on, and this set's copies of the listening
    /// sockets are closed now, so that once the servers close theirs, nothing keeps a socket
    /// listening (and completing handshakes the kernel would later reset).
    async fn drain(&self, _ctx: &Context) -> Result<(), BoxError> {
        *lock(&self.shared.running) = None;
        self.shared.listeners.release();
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        let shared = &self.shared;
        *lock(&shared.running) = None;
        shared.listeners.release();
        if !ctx.shutdown().is_handed_over() {
            if let Some(path) = lock(&shared.pid_file).as_ref() {
                pidfile::remove_if_ours(path, std::process::id())?;
            }
        }
        Ok(())
    }
}

/// The successor's side: says `ready` once the run is, opens the systemd gate when the
/// predecessor answers, and allows upgrades again once the predecessor is gone.
async fn follow_predecessor(ctx: Context, shared: Arc<Shared>, gate: ReadyGate, mut channel: UnixStream) {
    let predecessor = shared.listeners.predecessor().unwrap_or_default();
    tokio::select! {
        _ = ctx.lifecycle().reached(Phase::Ready) => {}
        _ = ctx.cancelled() => return,
    }
    if ctx.lifecycle().phase() != Phase::Ready {
        return;
    }
    if let Err(error) = control::send(&mut channel, control::READY).await {
        tracing::warn!(component = %ctx.name(), predecessor, %error, "cannot tell the predecessor we are ready");
    }
    let answer = tokio::select! {
        answer = control::receive(&mut channel) => answer,
        _ = ctx.cancelled() => return,
    };
    match answer {
        // systemd knows us as the main process now: `READY=1` may go.
        Ok(Some(message)) if message == control::HANDED_OVER => gate.open(),
        // The predecessor gave up on us (timeout, failure): it stops us next, and systemd must
        // not hear `READY=1` from a process that is not its main one.
        other => {
            tracing::warn!(component = %ctx.name(), predecessor, ?other, "predecessor did not confirm the hand-over")
        }
    }
    // Anything else before the end of file is ignored: the predecessor only ever closes.
    loop {
        tokio::select! {
            message = control::receive(&mut channel) => if !matches!(message, Ok(Some(_))) { break },
            _ = ctx.cancelled() => return,
        }
    }
    let mut state = lock(&shared.state);
    if *state == (UpgradeState::PredecessorRunning { predecessor }) {
        *state = UpgradeState::Idle;
    }
    drop(state);
    tracing::info!(component = %ctx.name(), predecessor, "previous generation exited; upgrades allowed");
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("listeners", &self.shared.listeners)
            .field("state", &*lock(&self.shared.state))
            .finish()
    }
}

impl std::fmt::Debug for UpgradeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeHandle").field("state", &self.state()).finish()
    }
}

/// Container inits that exit as soon as the child they started does (rather than when every
/// process is gone), by the name PID 1 shows in `/proc/1/comm`; a shell as PID 1 does the same.
const INITS_THAT_EXIT_WITH_THEIR_CHILD: [&str; 7] =
    ["tini", "docker-init", "dumb-init", "catatonit", "sh", "bash", "dash"];

/// Shells, which exit when the command they wait for does (an entrypoint script without `exec`).
const SHELLS: [&str; 3] = ["sh", "bash", "dash"];

/// Why an upgrade here would end the service with this process: it is PID 1 of its namespace,
/// or it runs under a container init that exits with its child, directly or through shells
/// that exit with theirs (`tini -- sh entrypoint.sh`). `None` when a successor outlives it, as
/// far as the process tree tells (another supervisor in between may keep the init alive).
fn container_refusal() -> Option<UpgradeError> {
    if std::process::id() == 1 {
        return Some(UpgradeError::RunsAsInit);
    }
    let init = std::fs::read_to_string("/proc/1/comm").ok()?;
    let init = init.trim();
    if !INITS_THAT_EXIT_WITH_THEIR_CHILD.contains(&init) {
        return None;
    }
    let mut ancestor = std::os::unix::process::parent_id();
    // Bounded: a process tree is shallow, and a loop in it would be the kernel's bug.
    for _ in 0..64 {
        if ancestor == 1 {
            return Some(UpgradeError::InitExitsWithUs { init: init.to_owned() });
        }
        let (name, parent) = process_name_and_parent(ancestor)?;
        if !SHELLS.contains(&name.as_str()) {
            return None;
        }
        ancestor = parent;
    }
    None
}

/// The name and parent of process `pid`, from `/proc/PID/stat` (`pid (name) state ppid ...`; the
/// name may itself hold spaces and parentheses, so it ends at the last `)`).
fn process_name_and_parent(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let parent = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((name, parent))
}
