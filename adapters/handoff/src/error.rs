//! What can go wrong, each error naming the listener or the step at fault.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A listener could not be declared, adopted or bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// The descriptors or variables a previous process passed are wrong.
    #[error("cannot take over inherited sockets: {0}")]
    Inherit(String),
    /// The name cannot travel in `LIFECYCLE_UPGRADE_FDNAMES` / `LISTEN_FDNAMES`.
    #[error("listener name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Two listeners with one name.
    #[error("listener `{name}` is declared twice: names must be unique")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// Binding a new socket failed.
    #[error("listener `{name}`: cannot listen on {address}: {source}")]
    Bind {
        /// The listener.
        name: String,
        /// Where it was to listen.
        address: String,
        /// Why not.
        source: io::Error,
    },
    /// An inherited socket of that name is not what the listener needs.
    #[error("listener `{name}`: the inherited socket cannot be used: {reason}")]
    Unusable {
        /// The listener.
        name: String,
        /// Why not.
        reason: String,
    },
}

/// Why an upgrade did not happen. The process that tried keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The upgrade component is not running (not started yet, or stopped).
    #[error("the upgrade component is not running")]
    NotRunning,
    /// This process is not ready (still starting, or stopping).
    #[error("this process is not ready to be upgraded (phase: {phase})")]
    NotReady {
        /// The run's phase.
        phase: lifecycle_core::Phase,
    },
    /// Another upgrade is under way.
    #[error("an upgrade is already in progress")]
    InProgress,
    /// This process is PID 1 of its PID namespace (a container's init): when it exits, the
    /// kernel ends every process of the namespace, the successor included.
    #[error(
        "refused: this process is PID 1 (a container's init), and its exit would end the new process with it; \
         upgrade by replacing the container (a rolling update)"
    )]
    RunsAsInit,
    /// This process runs under a container init (tini, `docker run --init`, dumb-init) that
    /// exits as soon as its child does: this process's exit would end the init, and with it
    /// every process of the PID namespace, the successor included.
    #[error(
        "refused: this process runs under the container init `{init}` (PID 1), which exits when this process \
         does and would end the new process with it; upgrade by replacing the container (a rolling update)"
    )]
    InitExitsWithUs {
        /// PID 1's name.
        init: String,
    },
    /// This process is itself the successor of a process that has not exited yet.
    #[error("the previous generation (process {predecessor}) has not exited yet")]
    PredecessorRunning {
        /// Its process id.
        predecessor: u32,
    },
    /// This process already handed over to a successor.
    #[error("already handed over to process {successor}")]
    HandedOver {
        /// The successor's process id.
        successor: u32,
    },
    /// The listeners could not be prepared for the successor.
    #[error("cannot pass the listeners to the new process: {0}")]
    Prepare(io::Error),
    /// The binary could not be started (missing, not executable, not a program).
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why not.
        source: io::Error,
    },
    /// The new process exited before it was ready.
    #[error("the new process {pid} exited before it was ready: {status}")]
    ChildExited {
        /// Its process id.
        pid: u32,
        /// How it exited.
        status: std::process::ExitStatus,
    },
    /// The new process was not ready in time and was killed.
    #[error("the new process {pid} was not ready within {timeout:?} and was stopped")]
    NotReadyInTime {
        /// Its process id.
        pid: u32,
        /// The ready timeout.
        timeout: Duration,
    },
    /// This process began to stop during the upgrade; the new process was stopped.
    #[error("this process began to stop during the upgrade; the new process {pid} was stopped")]
    Stopping {
        /// Its process id.
        pid: u32,
    },
    /// systemd could not be told the new main process; the new process was stopped.
    #[error("cannot tell systemd MAINPID={pid}: {source}; the new process was stopped")]
    Systemd {
        /// Its process id.
        pid: u32,
        /// Why not.
        source: io::Error,
    },
    /// The readiness channel to the new process broke.
    #[error("readiness channel to the new process {pid}: {source}")]
    Channel {
        /// Its process id.
        pid: u32,
        /// What broke.
        source: io::Error,
    },
}
