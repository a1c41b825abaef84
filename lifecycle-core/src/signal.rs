//! Which process signals start a shutdown or a reload, and listening for them.

use std::fmt;

/// A process signal that can trigger a shutdown or a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGTERM`: what Kubernetes, systemd and `kill` send.
    Terminate,
    /// `SIGINT`: Ctrl-C in a terminal.
    Interrupt,
    /// `SIGHUP`: a closing terminal, and by convention (nginx, most daemons) "reload your
    /// configuration".
    Hangup,
    /// `SIGQUIT`.
    Quit,
}

impl Signal {
    /// The signal's number on this platform.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hangup => 1,
            Signal::Interrupt => 2,
            Signal::Quit => 3,
            Signal::Terminate => 15,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
            Signal::Quit => "SIGQUIT",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The signals the run listens to, and what each does.
///
/// A shutdown signal: the first starts a graceful shutdown; the second makes the run stop
/// waiting and return at once, still with its report. A signal within 100 ms of the first is
/// that one delivered twice (to the process and its group), not a second.
///
/// A reload signal runs every running component's [`reload`](crate::Component::reload) hook
/// (as [`LifecycleHandle::reload`](crate::LifecycleHandle::reload) does); signals that arrive
/// while one is waiting to run join it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signals {
    signals: Vec<Signal>,
    reload: Vec<Signal>,
}

impl Default for Signals {
    /// `SIGTERM` and `SIGINT` shut down; `SIGHUP` reloads.
    fn default() -> Self {
        Self { signals: vec![Signal::Terminate, Signal::Interrupt], reload: vec![Signal::Hangup] }
    }
}

impl Signals {
    /// No signals: for a registry embedded in a program that handles signals itself.
    pub fn none() -> Self {
        Self { signals: Vec::new(), reload: Vec::new() }
    }

    /// Exactly these signals shut down, and none reloads (add one with
    /// [`reload_on`](Self::reload_on)).
    pub fn only(signals: impl IntoIterator<Item = Signal>) -> Self {
        Self { signals: distinct(signals), reload: Vec::new() }
    }

    /// These signals reload instead of whatever they did before (none: no signal reloads).
    #[must_use]
    pub fn reload_on(mut self, signals: impl IntoIterator<Item = Signal>) -> Self {
        self.reload = distinct(signals);
        self.signals.retain(|signal| !self.reload.contains(signal));
        self
    }

    /// The signals that shut down.
    pub fn iter(&self) -> impl Iterator<Item = Signal> + '_ {
        self.signals.iter().copied()
    }

    /// The signals that reload.
    pub fn reloads(&self) -> impl Iterator<Item = Signal> + '_ {
        self.reload.iter().copied()
    }

    /// Whether `signal` reloads.
    pub(crate) fn is_reload(&self, signal: Signal) -> bool {
        self.reload.contains(&signal)
    }

    /// Every signal the set catches.
    fn all(&self) -> impl Iterator<Item = Signal> + '_ {
        self.signals.iter().chain(&self.reload).copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.signals.is_empty() && self.reload.is_empty()
    }
}

/// `signals` without repeats, in their order.
fn distinct(signals: impl IntoIterator<Item = Signal>) -> Vec<Signal> {
    let mut list: Vec<Signal> = Vec::new();
    for signal in signals {
        if !list.contains(&signal) {
            list.push(signal);
        }
    }
    list
}

/// The configured signals, caught from the moment the listener is installed.
///
/// [`Registry::run`](crate::Registry::run) installs one when it starts. A program that wants
/// signals caught earlier, before anything else runs, installs it itself first thing in `main`
/// (even before a runtime exists) and hands it over with
/// [`RegistryBuilder::signal_listener`](crate::RegistryBuilder::signal_listener): a signal that
/// arrives in between is kept, not lost, and no longer ends the process without a report.
/// `#[lifecycle_core::main]` does this for you.
///
/// ```
/// use lifecycle_core::{Registry, SignalListener, Signals};
///
/// let listener = SignalListener::install(&Signals::default())?;
/// // ... read configuration, inherit sockets, build the runtime ...
/// let mut builder = Registry::builder();
/// builder.signal_listener(listener);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SignalListener {
    signals: Signals,
    #[cfg(unix)]
    streams: Vec<unix::Stream>,
    pending: std::collections::VecDeque<Signal>,
}

impl SignalListener {
    /// Starts catching `signals` now: from here on they no longer end the process, they are
    /// counted until the run reads them.
    ///
    /// # Errors
    /// When a handler cannot be installed (the signal cannot be caught, or the process is out of
    /// descriptors).
    #[cfg(unix)]
    pub fn install(signals: &Signals) -> std::io::Result<Self> {
        let streams = signals.all().map(unix::Stream::install).collect::<std::io::Result<_>>()?;
        Ok(Self { signals: signals.clone(), streams, pending: std::collections::VecDeque::new() })
    }

    /// Starts catching Ctrl-C (the only signal outside Unix) when the run starts.
    #[cfg(not(unix))]
    pub fn install(_signals: &Signals) -> std::io::Result<Self> {
        Ok(Self { signals: Signals::only([Signal::Interrupt]), pending: std::collections::VecDeque::new() })
    }

    /// The signals this listener catches, and what each does.
    pub fn signals(&self) -> Signals {
        self.signals.clone()
    }

    /// Puts `signal` back, to be the next one [`recv`](SignalListener::recv) returns.
    #[cfg(feature = "macros")]
    pub(crate) fn unread(&mut self, signal: Signal) {
        self.pending.push_front(signal);
    }

    /// The next signal: one caught before this call first, then one as it arrives.
    #[cfg(unix)]
    pub(crate) async fn recv(&mut self) -> Signal {
        loop {
            if let Some(signal) = self.pending.pop_front() {
                return signal;
            }
            let pending = &mut self.pending;
            let streams = &mut self.streams;
            std::future::poll_fn(|cx| {
                let mut any = false;
                for stream in streams.iter_mut() {
                    for _ in 0..stream.poll_count(cx) {
                        pending.push_back(stream.signal);
                        any = true;
                    }
                }
                if any { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
            })
            .await;
        }
    }

    /// Ctrl-C is the only signal outside Unix.
    #[cfg(not(unix))]
    pub(crate) async fn recv(&mut self) -> Signal {
        if let Some(signal) = self.pending.pop_front() {
            return signal;
        }
        loop {
            if tokio::signal::ctrl_c().await.is_ok() {
                return Signal::Interrupt;
            }
            std::future::pending::<()>().await;
        }
    }
}

impl fmt::Debug for SignalListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalListener").field("signals", &self.signals()).finish()
    }
}

#[cfg(unix)]
mod unix {
    use std::io::ErrorKind;
    use std::os::unix::net::UnixStream;
    use std::task::Context;

    use signal_hook::SigId;

    use super::Signal;

    /// One signal, written as a byte into a socket pair by the handler: the byte count is the
    /// delivery count, readable before a runtime exists and awaited once one does.
    pub(super) struct Stream {
        pub(super) signal: Signal,
        id: SigId,
        receiver: Receiver,
    }

    enum Receiver {
        /// Installed before a runtime: a plain socket, registered with tokio at the first poll.
        Plain(UnixStream),
        Async(tokio::net::UnixStream),
        /// Tokio could not take the socket (a runtime without I/O); logged once, never ready.
        Broken,
    }

    impl Stream {
        pub(super) fn install(signal: Signal) -> std::io::Result<Self> {
            let (receiver, sender) = UnixStream::pair()?;
            receiver.set_nonblocking(true)?;
            sender.set_nonblocking(true)?;
            let id = signal_hook::low_level::pipe::register(signal.number(), sender)?;
            Ok(Self { signal, id, receiver: Receiver::Plain(receiver) })
        }

        /// How many times the signal arrived since the last call; registers for a wake-up when
        /// none did.
        pub(super) fn poll_count(&mut self, cx: &mut Context<'_>) -> usize {
            if let Receiver::Plain(_) = self.receiver {
                let Receiver::Plain(plain) = std::mem::replace(&mut self.receiver, Receiver::Broken) else {
                    return 0;
                };
                self.receiver = match tokio::net::UnixStream::from_std(plain) {
                    Ok(stream) => Receiver::Async(stream),
                    Err(error) => {
                        tracing::error!(signal = %self.signal, %error, "cannot listen for signal (a tokio runtime with I/O enabled is needed)");
                        Receiver::Broken
                    }
                };
            }
            let Receiver::Async(stream) = &mut self.receiver else { return 0 };
            let mut count = 0;
            let mut buffer = [0u8; 64];
            loop {
                if stream.poll_read_ready(cx).is_pending() {
                    return count;
                }
                match stream.try_read(&mut buffer) {
                    Ok(0) => return count,
                    Ok(read) => count += read,
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                    Err(error) => {
                        tracing::error!(signal = %self.signal, %error, "cannot read caught signals");
                        return count;
                    }
                }
            }
        }
    }

    impl Drop for Stream {
        fn drop(&mut self) {
            signal_hook::low_level::unregister(self.id);
        }
    }
}

/// A signal within this long of the first is the same request delivered twice: coreutils'
/// `timeout` signals the process and then its process group, and so do some shells and
/// supervisors. Only a later one is a second signal, which forces the end.
pub(crate) const SAME_DELIVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// When the first signal came, to tell a second signal from the same one delivered twice.
/// Real time: signals come from outside the runtime.
#[derive(Default, Debug)]
pub(crate) struct FirstSignal(Option<std::time::Instant>);

impl FirstSignal {
    /// The first signal came now.
    pub(crate) fn seen(&mut self) {
        self.0.get_or_insert_with(std::time::Instant::now);
    }

    /// Whether a signal now is the first one delivered again (within [`SAME_DELIVERY`]).
    pub(crate) fn echoed(&self) -> bool {
        self.0.is_some_and(|at| at.elapsed() < SAME_DELIVERY)
    }
}

/// Hands every signal to `on_signal` until `done`.
pub(crate) async fn listen(
    mut listener: SignalListener,
    done: tokio_util::sync::CancellationToken,
    mut on_signal: impl FnMut(Signal),
) {
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            signal = listener.recv() => on_signal(signal),
        }
    }
}
