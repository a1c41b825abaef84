//! A latch that holds `READY=1` back until something else says go.

use std::sync::Arc;

use tokio::sync::watch;

/// Opens once and stays open; cheap to clone. [`SystemdNotify::hold_ready_until`] waits for it.
///
/// [`SystemdNotify::hold_ready_until`]: crate::SystemdNotify::hold_ready_until
#[derive(Clone, Debug)]
pub struct ReadyGate {
    open: Arc<watch::Sender<bool>>,
}

impl Default for ReadyGate {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadyGate {
    /// A closed gate.
    pub fn new() -> Self {
        Self { open: Arc::new(watch::Sender::new(false)) }
    }

    /// Opens the gate for every waiter, now and later.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Completes once the gate is open.
    pub async fn opened(&self) {
        let mut open = self.open.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = open.wait_for(|open| *open).await;
    }
}
