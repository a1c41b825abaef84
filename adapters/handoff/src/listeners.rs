//! Named listening sockets: adopted from a predecessor or from systemd when one passed a socket
//! of that name, bound otherwise; kept open so an upgrade can pass them on.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::HandoffError;
use crate::inherit::{self, Source};

/// Pending connections a new Unix listener queues, like most servers.
const BACKLOG: i32 = 1024;

/// Where a listener's socket came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Bound by this process.
    Bound,
    /// Passed by the previous generation during an upgrade.
    Predecessor,
    /// Passed by systemd (socket activation).
    SocketActivation,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Bound => "bound",
            Origin::Predecessor => "inherited from the previous process",
            Origin::SocketActivation => "socket-activated",
        })
    }
}

/// The service's listeners by name. Cheap to clone; clones share the set.
///
/// Create it once, before the runtime starts ([`Listeners::inherit`]), take each listener by name, and
/// give the set to an [`Upgrade`](crate::Upgrade) so the next generation receives them.
#[derive(Clone)]
pub struct Listeners {
    state: Arc<Mutex<State>>,
}

struct State {
    source: Source,
    /// Inherited sockets nobody asked for yet.
    unclaimed: Vec<(String, OwnedFd)>,
    /// Every listener handed out, with our own copy of its socket for the next generation.
    claimed: Vec<Claimed>,
    /// The readiness channel to the predecessor, until the upgrade component takes it.
    control: Option<OwnedFd>,
}

struct Claimed {
    name: String,
    socket: OwnedFd,
    origin: Origin,
}

impl Default for Listeners {
    fn default() -> Self {
        Self::new()
    }
}

impl Listeners {
    /// A set that inherits nothing: every listener is bound.
    pub fn new() -> Self {
        Self::from_inherited(Source::Nothing, Vec::new(), None)
    }

    /// The set with whatever this process inherited: the sockets of the previous generation
    /// during an upgrade, or systemd's socket-activated ones (`LISTEN_FDS`, `LISTEN_PID`,
    /// `LISTEN_FDNAMES`; name them with `FileDescriptorName=`). The variables that described
    /// them are cleared and the descriptors made close-on-exec, so no process started later
    /// inherits either. Only the first call in a process inherits.
    ///
    /// Call it while the process has one thread: before building the runtime, or as the setup
    /// of the main attribute (`#[lifecycle_core::main(setup = ...)]`, which runs before the
    /// runtime exists), since clearing variables races with any thread reading the environment.
    ///
    /// Linux only in practice: it reads `/proc/self/task` (to count threads) and `/proc/self/fd`
    /// (to check what it adopts), and refuses when it cannot.
    ///
    /// A process that inherits is one an upgrade may be asked of: from here until the
    /// [`Upgrade`](crate::Upgrade) component handles its trigger, SIGUSR2 is ignored rather
    /// than left to its default disposition, which ends the process (a trigger sent that early
    /// is dropped, and one sent to a service that never starts an `Upgrade` is ignored). A
    /// handler the program installed before is left alone.
    ///
    /// # Errors
    /// When there was something to inherit and other threads run, or their number cannot be
    /// read (it then takes nothing and clears nothing), or the descriptors passed are not
    /// sockets.
    pub fn inherit() -> Result<Self, HandoffError> {
        inherit::ignore_while_default(nix::sys::signal::Signal::SIGUSR2);
        let inherited = inherit::take()?;
        if inherited.source != Source::Nothing {
            let names: Vec<&str> = inherited.sockets.iter().map(|(name, _)| name.as_str()).collect();
            tracing::info!(source = ?inherited.source, ?names, "inherited listening sockets");
        }
        Ok(Self::from_inherited(inherited.source, inherited.sockets, inherited.control))
    }

    fn from_inherited(source: Source, unclaimed: Vec<(String, OwnedFd)>, control: Option<OwnedFd>) -> Self {
        Self { state: Arc::new(Mutex::new(State { source, unclaimed, claimed: Vec::new(), control })) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The TCP listener `name` on `address`: the inherited socket of that name when there is
    /// one on the same address (or `address` has port 0), else a new socket bound there.
    /// Non-blocking, for `tokio::net::TcpListener::from_std`.
    ///
    /// A socket bound here does not listen yet: until whatever serves it starts, a connection
    /// is refused at once rather than queued unanswered while the service starts (or fails to
    /// start). `lifecycle_http::HttpServer` starts listening at its start; to accept on it
    /// yourself, first call `socket2::SockRef::from(&listener).listen(1024)`. An inherited
    /// socket already listens.
    pub fn tcp(&self, name: &str, address: SocketAddr) -> Result<std::net::TcpListener, HandoffError> {
        self.claim_tcp(name, address, false)
    }

    /// Like [`tcp`](Self::tcp), but a newly bound socket sets `SO_REUSEPORT`, so another process
    /// can listen on the same port at once. Not a hand-over: connections queued on a socket
    /// that closes are reset (see the upgrade's documentation).
    pub fn tcp_reuse_port(
        &self,
        name: &str,
        address: SocketAddr,
    ) -> Result<std::net::TcpListener, HandoffError> {
        self.claim_tcp(name, address, true)
    }

    fn claim_tcp(
        &self,
        name: &str,
        address: SocketAddr,
        reuse_port: bool,
    ) -> Result<std::net::TcpListener, HandoffError> {
        let (socket, origin) = match self.take_inherited(name, |socket| usable_tcp(socket, address))? {
            Some(inherited) => inherited,
            None => (bind_tcp(name, address, reuse_port)?, Origin::Bound),
        };
        // A predecessor that began to stop as it handed over may have told the socket to ignore
        // new connections (the HTTP server does at stop): they are ours to serve now. Without a
        // filter, detaching fails, and that is fine.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if origin != Origin::Bound {
            let _ = socket.detach_filter();
        }
        self.keep(name, &socket, origin)?;
        let listener: std::net::TcpListener = socket.into();
        listener.set_nonblocking(true).map_err(|error| unusable(name, error))?;
        tracing::info!(listener = name, address = ?listener.local_addr().ok(), %origin, "listening");
        Ok(listener)
    }

    /// The Unix-socket listener `name` at `path`: inherited when a socket of that name is bound
    /// to the same path, else bound there (a socket file left by a process that is gone is
    /// replaced; any other file there, or a symbolic link, is left alone and binding fails,
    /// naming the path). Non-blocking.
    pub fn unix(
        &self,
        name: &str,
        path: impl AsRef<Path>,
    ) -> Result<std::os::unix::net::UnixListener, HandoffError> {
        let path = path.as_ref();
        let (socket, origin) = match self.take_inherited(name, |socket| usable_unix(socket, path))? {
            Some(inherited) => inherited,
            None => (bind_unix(name, path)?, Origin::Bound),
        };
        self.keep(name, &socket, origin)?;
        let listener: std::os::unix::net::UnixListener = socket.into();
        listener.set_nonblocking(true).map_err(|error| unusable(name, error))?;
        tracing::info!(listener = name, path = %path.display(), %origin, "listening");
        Ok(listener)
    }

    /// Takes the inherited socket `name` when `fits` accepts it; one that does not fit (the
    /// configuration changed) is closed, and the caller binds anew.
    fn take_inherited(
        &self,
        name: &str,
        fits: impl FnOnce(&Socket) -> Result<bool, String>,
    ) -> Result<Option<(Socket, Origin)>, HandoffError> {
        check_name(name)?;
        let mut state = self.state();
        if state.claimed.iter().any(|c| c.name == name) {
            return Err(HandoffError::Duplicate { name: name.to_owned() });
        }
        let origin = match state.source {
            Source::Nothing => return Ok(None),
            Source::Upgrade { .. } => Origin::Predecessor,
            Source::SocketActivation => Origin::SocketActivation,
        };
        let position = state.unclaimed.iter().position(|(n, _)| n == name).or_else(|| {
            // systemd names a socket "unknown" unless the unit says otherwise: a single unnamed
            // socket goes to the first listener asked for.
            (origin == Origin::SocketActivation
                && state.unclaimed.len() == 1
                && state.claimed.is_empty()
                && state.unclaimed[0].0 == "unknown")
                .then_some(0)
        });
        let Some(position) = position else { return Ok(None) };
        let (_, fd) = state.unclaimed.remove(position);
        let socket = Socket::from(fd);
        match fits(&socket) {
            Ok(true) => Ok(Some((socket, origin))),
            Ok(false) => {
                tracing::warn!(
                    listener = name,
                    "inherited socket is on another address than configured; binding anew"
                );
                Ok(None)
            }
            Err(reason) => Err(HandoffError::Unusable { name: name.to_owned(), reason }),
        }
    }

    /// Keeps a copy of `socket` to pass to the next generation.
    fn keep(&self, name: &str, socket: &Socket, origin: Origin) -> Result<(), HandoffError> {
        let copy = socket.try_clone().map_err(|error| unusable(name, error))?;
        self.state().claimed.push(Claimed { name: name.to_owned(), socket: copy.into(), origin });
        Ok(())
    }

    /// Where listener `name` came from, once taken.
    pub fn origin(&self, name: &str) -> Option<Origin> {
        self.state().claimed.iter().find(|c| c.name == name).map(|c| c.origin)
    }

    /// The names of the listeners taken so far, in order.
    pub fn names(&self) -> Vec<String> {
        self.state().claimed.iter().map(|c| c.name.clone()).collect()
    }

    /// The previous generation's process id, when this process is its successor.
    pub fn predecessor(&self) -> Option<u32> {
        match self.state().source {
            Source::Upgrade { parent } => Some(parent),
            Source::Nothing | Source::SocketActivation => None,
        }
    }

    /// Closes inherited sockets no listener asked for (a listener removed from the
    /// configuration), and returns their names.
    pub fn close_unclaimed(&self) -> Vec<String> {
        let unclaimed = std::mem::take(&mut self.state().unclaimed);
        unclaimed.into_iter().map(|(name, _)| name).collect()
    }

    /// The readiness channel to the predecessor, once.
    pub(crate) fn take_control(&self) -> Option<OwnedFd> {
        self.state().control.take()
    }

    /// A copy of every listener, by name, for the next generation.
    pub(crate) fn for_successor(&self) -> io::Result<Vec<(String, OwnedFd)>> {
        let state = self.state();
        state.claimed.iter().map(|c| Ok((c.name.clone(), c.socket.try_clone()?))).collect()
    }

    /// Closes this set's copies of the listeners (the servers close their own).
    pub(crate) fn release(&self) {
        self.state().claimed.clear();
    }
}

impl fmt::Debug for Listeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        let claimed: Vec<(&str, Origin)> =
            state.claimed.iter().map(|c| (c.name.as_str(), c.origin)).collect();
        f.debug_struct("Listeners").field("source", &state.source).field("listeners", &claimed).finish()
    }
}

fn check_name(name: &str) -> Result<(), HandoffError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains(':') {
        "it contains `:`, the separator of the names list"
    } else if name.len() > 255 || name.chars().any(|c| c.is_control()) {
        "it must be at most 255 printable characters"
    } else {
        return Ok(());
    };
    Err(HandoffError::InvalidName { name: name.to_owned(), reason })
}

fn unusable(name: &str, error: io::Error) -> HandoffError {
    HandoffError::Unusable { name: name.to_owned(), reason: error.to_string() }
}

/// Whether an inherited socket is a listening TCP socket for `wanted`.
fn usable_tcp(socket: &Socket, wanted: SocketAddr) -> Result<bool, String> {
    check_listening_stream(socket)?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let local = local.as_socket().ok_or("it is not a TCP socket")?;
    // Port 0 asks for any port on that address; otherwise only the same address fits, so a
    // changed address in the configuration binds anew.
    Ok(local == wanted || (wanted.port() == 0 && local.ip() == wanted.ip()))
}

/// Whether an inherited socket is a listening Unix socket bound to `path`.
fn usable_unix(socket: &Socket, path: &Path) -> Result<bool, String> {
    check_listening_stream(socket)?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    if local.domain() != Domain::UNIX {
        return Err("it is not a Unix socket".into());
    }
    Ok(local.as_pathname() == Some(path))
}

fn check_listening_stream(socket: &Socket) -> Result<(), String> {
    if socket.r#type().map_err(|e| e.to_string())? != Type::STREAM {
        return Err("it is not a stream socket".into());
    }
    if !socket.is_listener().map_err(|e| e.to_string())? {
        return Err("it is not listening".into());
    }
    Ok(())
}

fn bind_tcp(name: &str, address: SocketAddr, reuse_port: bool) -> Result<Socket, HandoffError> {
    let failed = |source: io::Error| HandoffError::Bind {
        name: name.to_owned(),
        address: address.to_string(),
        source,
    };
    let socket =
        Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP)).map_err(failed)?;
    // A restart must be able to bind while the old process's connections linger in TIME_WAIT.
    socket.set_reuse_address(true).map_err(failed)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(failed)?;
    }
    socket.bind(&address.into()).map_err(failed)?;
    // Not listening yet: see `Listeners::tcp`.
    Ok(socket)
}

fn bind_unix(name: &str, path: &Path) -> Result<Socket, HandoffError> {
    let failed = |source: io::Error| HandoffError::Bind {
        name: name.to_owned(),
        address: path.display().to_string(),
        source,
    };
    let address = SockAddr::unix(path).map_err(failed)?;
    // A socket file nobody answers on is left over from a process that is gone, and is
    // replaced. Anything else at the path is someone's file: never removed, binding fails.
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !metadata.file_type().is_socket() {
            return Err(failed(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is there; it is left alone",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            std::fs::remove_file(path).map_err(failed)?;
        }
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(failed)?;
    socket.bind(&address).map_err(failed)?;
    socket.listen(BACKLOG).map_err(failed)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_are_unique_and_travel_in_a_colon_separated_list() {
        let listeners = Listeners::new();
        let http = listeners.tcp("http", "127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(matches!(
            listeners.tcp("http", "127.0.0.1:0".parse().unwrap()),
            Err(HandoffError::Duplicate { name }) if name == "http"
        ));
        for bad in ["", "a:b", "tab\there"] {
            let error = listeners.tcp(bad, "127.0.0.1:0".parse().unwrap()).unwrap_err();
            assert!(matches!(error, HandoffError::InvalidName { .. }), "{bad:?}: {error}");
        }
        assert_eq!(listeners.names(), ["http"]);
        assert_eq!(listeners.origin("http"), Some(Origin::Bound));
        assert_eq!(listeners.predecessor(), None);
        drop(http);
    }

    #[test]
    fn a_unix_listener_replaces_a_stale_socket_but_never_another_file() {
        let dir = std::env::temp_dir().join(format!("lifecycle-handoff-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.sock");
        std::fs::write(&path, "precious").unwrap();
        let error = Listeners::new().unix("admin", &path).unwrap_err().to_string();
        assert!(error.contains("not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious", "the file is left alone");
        std::fs::remove_file(&path).unwrap();
        // A symbolic link is not followed to what it names.
        let target = dir.join("target");
        std::fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(Listeners::new().unix("admin", &path).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        std::fs::remove_file(&path).unwrap();
        // A socket nobody answers on is stale: replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = Listeners::new().unix("admin", &path).unwrap();
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_busy_address_names_the_listener() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let error = Listeners::new().tcp("api", taken.local_addr().unwrap()).unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("listener `api`: cannot listen on 127.0.0.1:"), "{text}");
    }

    #[test]
    fn the_successor_gets_a_copy_of_every_listener_that_accepts_the_same_connections() {
        let listeners = Listeners::new();
        let tcp = listeners.tcp("http", "127.0.0.1:0".parse().unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("lifecycle-handoff-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.sock");
        // A socket file nobody listens on is left over: replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let unix = listeners.unix("admin", &path).unwrap();
        let copies = listeners.for_successor().unwrap();
        assert_eq!(copies.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["http", "admin"]);

        // Not listening until its server starts: a client is refused, not queued unanswered.
        let address = tcp.local_addr().unwrap();
        let refused = std::net::TcpStream::connect(address).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        // Once it listens, a connection made now is accepted through the copy: it is the same socket.
        socket2::SockRef::from(&tcp).listen(16).unwrap();
        let _client = std::net::TcpStream::connect(address).unwrap();
        let copy: std::net::TcpListener = Socket::from(copies.into_iter().next().unwrap().1).into();
        copy.set_nonblocking(false).unwrap();
        assert!(copy.accept().is_ok());

        listeners.release();
        assert!(listeners.for_successor().unwrap().is_empty());
        drop((tcp, unix));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
