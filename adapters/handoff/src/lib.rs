//! Zero-downtime binary upgrades for a lifecycle service, and systemd socket activation.
//!
//! - [`Listeners`]: the service's listening sockets by name, adopted from the previous
//!   generation or from systemd when they were passed, bound otherwise.
//! - [`Upgrade`]: a component that, on SIGUSR2 or [`UpgradeHandle::upgrade`], starts the
//!   binary as it now is on disk with those sockets, waits until it is ready, and only then
//!   retires this process. Not a single connection is refused: both processes accept on the
//!   same sockets while this one drains.
//! - [`ControlSocket`]: `reload`, `upgrade` and `status` on a Unix socket, answered once they
//!   took effect; the `lifecycle-ctl` binary sends them (`lifecycle-ctl SOCKET upgrade` exits 0
//!   only when the new process serves, non-zero with the reason otherwise).
//!
//! ```no_run
//! use lifecycle_core::RegistryBuilder;
//! use lifecycle_handoff::{Listeners, Upgrade};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // First thing in `main`, before the runtime's threads exist (or as the main attribute's
//! // `setup`): take over what the previous process (or systemd) passed.
//! let listeners = Listeners::inherit()?;
//! let http = listeners.tcp("http", "127.0.0.1:8080".parse()?)?;
//! let upgrade = Upgrade::new(&listeners).pid_file("/run/orders.pid");
//!
//! let mut builder = RegistryBuilder::new();
//! builder.add(upgrade.systemd_notify());
//! builder.add(upgrade);
//! // builder.add(HttpServer::new("http", http, router)) ...
//! # drop(http);
//! # Ok(()) }
//! ```
//!
//! SO_REUSEPORT ([`Listeners::tcp_reuse_port`]) lets two processes listen at once, but it is no
//! hand-over: connections waiting in the accept queue of the socket that closes are reset.
//!
//! In a container whose PID 1 is the service itself, an upgrade is refused
//! ([`UpgradeError::RunsAsInit`]): when PID 1 exits, the kernel ends every process of its PID
//! namespace, the successor included. The same holds under the usual container inits (tini,
//! `docker run --init`, dumb-init), which exit as soon as their child does
//! ([`UpgradeError::InitExitsWithUs`]). In a container, upgrade by replacing it (a rolling
//! update, `deploy/`); upgrades in place are for a service under systemd or on a host.

mod command;
mod control;
mod error;
mod inherit;
mod listeners;
mod pidfile;
mod upgrade;

pub use command::{CommandError, ControlSocket, send_command};
pub use error::{HandoffError, UpgradeError};
pub use listeners::{Listeners, Origin};
pub use upgrade::{Upgrade, UpgradeHandle, UpgradeState};
