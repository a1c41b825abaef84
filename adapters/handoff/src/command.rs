//! Operator commands over a Unix socket: `reload`, `upgrade` and `status`, one line each way,
//! answered only once the command took effect (or with the reason it did not). A signal says
//! nothing back; a deploy script that must know whether the new binary or the new certificate
//! is in service asks here ([`send_command`], or the `lifecycle-ctl` tool).
//!
//! The socket comes from [`Listeners::unix`](crate::Listeners::unix), so a successor inherits
//! it: after a hand-over the next command reaches the new process (the old one stops accepting
//! when it begins to drain). Its file mode is the caller's business: whoever can connect can
//! reload and upgrade the service, so keep it in a directory only the service's user can enter.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use lifecycle_core::{BoxError, Component, ComponentId, ComponentOptions, Context, Phase};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::{UpgradeError, UpgradeHandle};

/// Longest command line accepted, so a confused client cannot make the service buffer without end.
const MAX_COMMAND: usize = 64;
/// How long a client has to send its command once connected.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A component named `control` that serves operator commands on a Unix socket:
///
/// - `reload`: runs the service's reload ([`LifecycleHandle::reload`](lifecycle_core::LifecycleHandle::reload));
///   answers `ok` with the reload's report once every component is done, or `error` with the
///   components that failed;
/// - `upgrade` (with [`upgrade`](Self::upgrade)): answers `ok` once the new process is ready and
///   serves, `error` with the reason otherwise (one under way, the previous generation still
///   draining, this one stopping, the new binary failing to start);
/// - `status`: `ok` with the phase and process id.
///
/// Not critical: a broken control socket never stops the service.
pub struct ControlSocket {
    listener: Mutex<Option<std::os::unix::net::UnixListener>>,
    upgrade: Option<UpgradeHandle>,
}

impl std::fmt::Debug for ControlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSocket").field("upgrade", &self.upgrade.is_some()).finish_non_exhaustive()
    }
}

impl ControlSocket {
    /// Serves commands on `listener` (from [`Listeners::unix`](crate::Listeners::unix)).
    pub fn new(listener: std::os::unix::net::UnixListener) -> Self {
        Self { listener: Mutex::new(Some(listener)), upgrade: None }
    }

    /// Accepts `upgrade` through `handle`.
    #[must_use]
    pub fn upgrade(mut self, handle: UpgradeHandle) -> Self {
        self.upgrade = Some(handle);
        self
    }
}

impl Component for ControlSocket {
    fn name(&self) -> ComponentId {
        ComponentId::from("control")
    }

    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().critical(false)
    }

    /// A start takes the listener it was given.
    fn restartable(&self) -> bool {
        false
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or("component `control` was already started: its socket is gone")?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let (ctx, upgrade) = (ctx.clone(), self.upgrade.clone());
        ctx.clone().tasks().spawn("control_accept", async move {
            loop {
                let accepted = tokio::select! {
                    // At the stop, or at the drain once a successor took over the socket: its
                    // commands are the successor's.
                    () = ctx.cancelled() => return,
                    () = handed_over(&ctx) => return,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, _)) => {
                        let (ctx_for_command, upgrade) = (ctx.clone(), upgrade.clone());
                        ctx.tasks().spawn("control_command", async move {
                            serve(stream, &ctx_for_command, upgrade.as_ref()).await;
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(())
    }
}

/// Resolves once this process handed its sockets to a successor (which always comes with a
/// shutdown request).
async fn handed_over(ctx: &Context) {
    ctx.shutdown().requested().await;
    while !ctx.shutdown().has_successor() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads one command from `stream`, carries it out and answers it.
async fn serve(stream: UnixStream, ctx: &Context, upgrade: Option<&UpgradeHandle>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_COMMAND as u64 + 1));
    // A client slow to send its command holds up no stop.
    let read = tokio::select! {
        () = ctx.cancelled() => None,
        read = tokio::time::timeout(COMMAND_TIMEOUT, reader.read_line(&mut line)) => Some(read),
    };
    let answer = match read {
        None => "error the service is stopping".to_owned(),
        Some(Err(_)) => "error no command within 5 s".to_owned(),
        Some(Ok(Err(error))) => format!("error cannot read the command: {error}"),
        Some(Ok(Ok(_))) if line.trim_end_matches('\n').len() > MAX_COMMAND => {
            "error command too long".to_owned()
        }
        // The component's stop does not wait for a command (an upgrade waits up to its ready
        // timeout): its client hears that the service is stopping.
        Some(Ok(Ok(_))) => tokio::select! {
            answer = execute(line.trim(), ctx, upgrade) => answer,
            () = ctx.cancelled() => "error the service is stopping".to_owned(),
        },
    };
    tracing::info!(command = line.trim(), %answer, "control command");
    // The client may be gone; the command was carried out either way.
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
    let _ = write.shutdown().await;
}

/// Carries out `command`: `ok ...` when it took effect, `error ...` with the reason otherwise.
async fn execute(command: &str, ctx: &Context, upgrade: Option<&UpgradeHandle>) -> String {
    match command {
        "reload" => match ctx.lifecycle().reload().await {
            Ok(report) if report.is_success() => format!("ok {report}"),
            Ok(report) => format!("error {report}"),
            Err(error) => format!("error {error}"),
        },
        "upgrade" => match upgrade {
            None => "error this service does not upgrade in place".to_owned(),
            // Said first: once draining, the upgrade component is no longer running either, and
            // the phase is the reason an operator can act on.
            Some(_) if ctx.lifecycle().phase() != Phase::Ready => {
                format!("error {}", UpgradeError::NotReady { phase: ctx.lifecycle().phase() })
            }
            Some(upgrade) => match upgrade.upgrade().await {
                Ok(successor) => format!("ok upgraded: process {successor} serves"),
                Err(error) => format!("error {error}"),
            },
        },
        "status" => format!("ok {} (process {})", ctx.lifecycle().phase(), std::process::id()),
        other => format!("error unknown command `{other}`; use reload, upgrade or status"),
    }
}

/// Why a command could not be sent or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The socket could not be reached (no service there, or no permission).
    #[error("cannot reach the control socket {path}: {source}")]
    Unreachable {
        /// The socket's path.
        path: String,
        /// What connecting said.
        source: std::io::Error,
    },
    /// The service closed the connection, or did not answer within the time given.
    #[error("no answer from the control socket {path}: {reason}")]
    NoAnswer {
        /// The socket's path.
        path: String,
        /// What happened.
        reason: String,
    },
    /// The command did not take effect, or not in full (a reload that failed for some
    /// components): the service's answer says why.
    #[error("{0}")]
    Refused(String),
}

/// Sends `command` to the control socket at `path` and waits up to `timeout` for the answer:
/// what the service said when the command took effect, or [`CommandError::Refused`] with its
/// reason when it did not.
///
/// # Errors
/// See [`CommandError`].
pub async fn send_command(path: &Path, command: &str, timeout: Duration) -> Result<String, CommandError> {
    let display = path.display().to_string();
    let exchange = async {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|source| CommandError::Unreachable { path: display.clone(), source })?;
        let no_answer = |reason: String| CommandError::NoAnswer { path: display.clone(), reason };
        stream.write_all(format!("{command}\n").as_bytes()).await.map_err(|e| no_answer(e.to_string()))?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await.map_err(|e| no_answer(e.to_string()))?;
        let answer = answer.trim_end();
        match answer.split_once(' ').unwrap_or((answer, "")) {
            ("ok", rest) => Ok(rest.to_owned()),
            ("error", rest) => Err(CommandError::Refused(rest.to_owned())),
            _ if answer.is_empty() => Err(no_answer("the connection closed without an answer".into())),
            _ => Err(no_answer(format!("unexpected answer `{answer}`"))),
        }
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| {
        Err(CommandError::NoAnswer { path: display.clone(), reason: format!("none within {timeout:?}") })
    })
}
