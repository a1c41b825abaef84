//! Taking over what a previous process passed us: the listening sockets and the readiness
//! channel from a parent during an upgrade, or systemd's socket-activated descriptors.
//!
//! Also what a successor inherits besides them: its upgrade signals set to be ignored, so that
//! one arriving before it installs its handlers cannot kill it; and the same for a first
//! generation, from the moment it inherits.
//!
//! This is the only module of the workspace with `unsafe` code, for three operations the
//! protocols require: claiming a descriptor number as our own (`OwnedFd::from_raw_fd`),
//! clearing the variables that described them (`env::remove_var`), so that processes we start
//! later inherit neither, and changing a signal's disposition (`sigaction`), in this process
//! or in a successor between `fork` and `exec` (`pre_exec`).

#![allow(unsafe_code)]

use std::env;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};
use tokio::signal::unix::SignalKind;

use crate::HandoffError;

/// The parent's process id, set by the parent on its successor's environment.
pub(crate) const PARENT_VAR: &str = "LIFECYCLE_UPGRADE_PARENT";
/// The names of the listeners the parent passed, `:`-separated, from [`FIRST_LISTENER_FD`] on.
pub(crate) const NAMES_VAR: &str = "LIFECYCLE_UPGRADE_FDNAMES";
/// The successor's end of the readiness channel.
pub(crate) const CONTROL_FD: RawFd = 3;
/// The first listener a parent passes.
pub(crate) const FIRST_LISTENER_FD: RawFd = 4;

/// Set once descriptors were taken: a second taker would claim descriptors someone owns.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Where inherited sockets came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Nothing was inherited.
    Nothing,
    /// The previous generation of this service, during an upgrade.
    Upgrade {
        /// Its process id.
        parent: u32,
    },
    /// systemd's socket activation (`LISTEN_FDS`).
    SocketActivation,
}

/// What [`take`] found.
pub(crate) struct Inherited {
    pub(crate) source: Source,
    /// Listening sockets by name, in the order they were passed.
    pub(crate) sockets: Vec<(String, OwnedFd)>,
    /// The readiness channel to the parent (upgrade only).
    pub(crate) control: Option<OwnedFd>,
}

impl Inherited {
    fn nothing() -> Self {
        Self { source: Source::Nothing, sockets: Vec::new(), control: None }
    }
}

/// Takes the descriptors passed to this process, once per process, and clears the variables
/// that named them. A second call finds nothing: the first caller owns them.
pub(crate) fn take() -> Result<Inherited, HandoffError> {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Inherited::nothing());
    }
    if let Some(parent) = env::var_os(PARENT_VAR) {
        let names = env::var(NAMES_VAR).ok();
        single_threaded()?;
        // SAFETY: `remove_var` races only with another thread touching the environment, and
        // `single_threaded` just saw this process with one thread: no other can start before
        // this thread starts it.
        unsafe {
            env::remove_var(PARENT_VAR);
            env::remove_var(NAMES_VAR);
        }
        let parent: u32 = parent
            .to_str()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| HandoffError::Inherit(format!("{PARENT_VAR} is not a process id: {parent:?}")))?;
        let names = names
            .ok_or_else(|| HandoffError::Inherit(format!("{PARENT_VAR} is set but {NAMES_VAR} is not")))?;
        // Left in the environment of a process the parent did not start (a grandchild, if the
        // variables leaked): the descriptor numbers mean nothing here. (A parent that died
        // between starting us and this check leaves its descriptors unclaimed; it gave up.)
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!(parent, "upgrade variables from a process that is not our parent; ignored");
            return Ok(Inherited::nothing());
        }
        let control = adopt(CONTROL_FD, "the upgrade's readiness channel")?;
        let mut sockets = Vec::new();
        for (index, name) in names.split(':').filter(|n| !n.is_empty()).enumerate() {
            let fd = FIRST_LISTENER_FD + RawFd::try_from(index).unwrap_or(RawFd::MAX - FIRST_LISTENER_FD);
            sockets.push((name.to_owned(), adopt(fd, name)?));
        }
        return Ok(Inherited { source: Source::Upgrade { parent }, sockets, control: Some(control) });
    }
    if env::var_os("LISTEN_FDS").is_some() {
        single_threaded()?;
    }
    // SAFETY: as above for the environment; sd-notify checks `LISTEN_PID` is ours and sets
    // close-on-exec on each descriptor.
    let activated = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(|error| HandoffError::Inherit(format!("socket activation (LISTEN_FDS): {error}")))?;
    let mut sockets = Vec::new();
    for (fd, name) in activated {
        sockets.push((name.clone(), adopt(fd, &name)?));
    }
    if sockets.is_empty() {
        return Ok(Inherited::nothing());
    }
    Ok(Inherited { source: Source::SocketActivation, sockets, control: None })
}

/// Refuses to go on unless this process has one thread: clearing the environment variables
/// that described the sockets is sound only then (another thread may read the environment at
/// the same moment, in C code that takes no lock). Nothing was taken when it refuses.
fn single_threaded() -> Result<(), HandoffError> {
    let threads = std::fs::read_dir("/proc/self/task").map(Iterator::count).map_err(|error| {
        HandoffError::Inherit(format!("cannot count this process's threads (/proc/self/task): {error}"))
    })?;
    if threads > 1 {
        return Err(HandoffError::Inherit(format!(
            "{threads} threads run: inheriting sockets clears environment variables, which is sound only while \
             the process has one thread; call Listeners::inherit before the runtime starts (the main attribute's \
             `setup`)"
        )));
    }
    Ok(())
}

/// Claims descriptor `fd`, passed for `what`, after checking it is an open socket, and marks it
/// close-on-exec so it reaches no process we start.
fn adopt(fd: RawFd, what: &str) -> Result<OwnedFd, HandoffError> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|error| HandoffError::Inherit(format!("descriptor {fd} for {what} is not open: {error}")))?;
    if !link.to_string_lossy().starts_with("socket:") {
        return Err(HandoffError::Inherit(format!(
            "descriptor {fd} for {what} is not a socket but {}",
            link.display()
        )));
    }
    // SAFETY: the descriptor is open (checked above) and was passed to this process for this
    // purpose by the protocol; `TAKEN` makes sure nothing else in this process claimed it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    socket2::SockRef::from(&owned).set_cloexec(true).map_err(|error| {
        HandoffError::Inherit(format!("descriptor {fd} for {what}: close-on-exec: {error}"))
    })?;
    Ok(owned)
}

/// Makes the successor `command` starts ignore `signals` from its first instruction on.
///
/// A signal's default action (ending the process, for SIGUSR1/SIGUSR2) applies until a process
/// installs a handler, which a successor does only once its `Upgrade` starts, tens of
/// milliseconds after `exec`: a deploy script that signals it in that window would kill it. An
/// ignored disposition, unlike a handler, survives `exec`, and the successor's handlers replace
/// it when they are installed. A signal in the window is so dropped, not fatal; scripts that
/// signal the process the PID file names never hit it (the file names a successor once it is
/// ready).
/// Ignores `signal` in this process when its disposition is still the default (which, for
/// SIGUSR2, ends the process): a handler installed later (the upgrade's) replaces it. One the
/// program installed already is left alone.
pub(crate) fn ignore_while_default(signal: Signal) {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: the dispositions set are "ignore" and the one found, not a handler function, so
    // no code of ours can run in a signal's context; `sigaction` itself is thread-safe.
    unsafe {
        if let Ok(found) = nix::sys::signal::sigaction(signal, &ignore)
            && !matches!(found.handler(), SigHandler::SigDfl)
        {
            let _ = nix::sys::signal::sigaction(signal, &found);
        }
    }
}

pub(crate) fn ignore_in_successor(command: &mut tokio::process::Command, signals: &[SignalKind]) {
    let signals: Vec<Signal> =
        signals.iter().filter_map(|kind| Signal::try_from(kind.as_raw_value()).ok()).collect();
    // SAFETY: the closure runs in the child between `fork` and `exec`, where only
    // async-signal-safe calls are allowed: it allocates nothing (the list is built above) and
    // calls only `sigaction`, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            for signal in &signals {
                nix::sys::signal::signal(*signal, SigHandler::SigIgn).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}
