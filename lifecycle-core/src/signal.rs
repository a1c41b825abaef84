//! Which process signals start a shutdown, and listening for them.

use std::fmt;

/// A process signal that can trigger a shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGTERM`: what Kubernetes, systemd and `kill` send.
    Terminate,
    /// `SIGINT`: Ctrl-C in a terminal.
    Interrupt,
    /// `SIGHUP`.
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

    /// The exit code of a process that gives up waiting on a second signal: 128 plus its number,
    /// as a shell reports a process killed by that signal.
    pub fn forced_exit_code(self) -> i32 {
        128 + self.number()
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

/// The set of signals the run listens to. The first starts a graceful shutdown; the second
/// makes the run stop waiting and return at once, still with its report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signals {
    signals: Vec<Signal>,
}

impl Default for Signals {
    /// `SIGTERM` and `SIGINT`.
    fn default() -> Self {
        Self { signals: vec![Signal::Terminate, Signal::Interrupt] }
    }
}

impl Signals {
    /// No signals: for a registry embedded in a program that handles signals itself.
    pub fn none() -> Self {
        Self { signals: Vec::new() }
    }

    /// Exactly these signals.
    pub fn only(signals: impl IntoIterator<Item = Signal>) -> Self {
        let mut list: Vec<Signal> = Vec::new();
        for signal in signals {
            if !list.contains(&signal) {
                list.push(signal);
            }
        }
        Self { signals: list }
    }

    /// The signals in the set.
    pub fn iter(&self) -> impl Iterator<Item = Signal> + '_ {
        self.signals.iter().copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.signals.is_empty()
    }
}

/// Streams of the configured signals, merged.
pub(crate) struct SignalListener {
    #[cfg(unix)]
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl SignalListener {
    /// Installs the handlers. A signal whose handler cannot be installed is left out and logged.
    #[cfg(unix)]
    pub(crate) fn new(signals: &Signals) -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = signals
            .iter()
            .filter_map(|sig| match signal(SignalKind::from_raw(sig.number())) {
                Ok(stream) => Some((sig, stream)),
                Err(error) => {
                    tracing::error!(signal = %sig, %error, "cannot listen for signal");
                    None
                }
            })
            .collect();
        Self { streams }
    }

    /// The next signal, or never when none is configured.
    #[cfg(unix)]
    pub(crate) async fn recv(&mut self) -> Signal {
        std::future::poll_fn(|cx| {
            for (sig, stream) in &mut self.streams {
                if let std::task::Poll::Ready(Some(())) = stream.poll_recv(cx) {
                    return std::task::Poll::Ready(*sig);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    #[cfg(not(unix))]
    pub(crate) fn new(_signals: &Signals) -> Self {
        Self {}
    }

    /// Ctrl-C is the only signal outside Unix.
    #[cfg(not(unix))]
    pub(crate) async fn recv(&mut self) -> Signal {
        loop {
            if tokio::signal::ctrl_c().await.is_ok() {
                return Signal::Interrupt;
            }
            std::future::pending::<()>().await;
        }
    }
}
