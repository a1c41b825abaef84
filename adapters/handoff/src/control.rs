//! The readiness channel between two generations: a Unix socket pair, one end in each process.
//!
//! The successor says `ready` once every component started; the predecessor answers
//! `handed-over` once it told systemd the successor is the main process. The predecessor's end
//! stays open until its run ends, so the successor reads end-of-file when it is gone.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Successor to predecessor: every component started.
pub(crate) const READY: &str = "ready";
/// Predecessor to successor: systemd knows you as the main process; announce yourself.
pub(crate) const HANDED_OVER: &str = "handed-over";

/// Longest message accepted, so a confused peer cannot make us buffer without end.
const MAX_MESSAGE: usize = 64;

/// Sends one message.
pub(crate) async fn send(stream: &mut UnixStream, message: &str) -> std::io::Result<()> {
    stream.write_all(format!("{message}\n").as_bytes()).await
}

/// Reads one message; `None` at end of file (the peer is gone).
pub(crate) async fn receive(stream: &mut UnixStream) -> std::io::Result<Option<String>> {
    let mut message = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: messages are a few bytes, and nothing after the newline may be consumed.
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        if byte[0] == b'\n' {
            return Ok(Some(String::from_utf8_lossy(&message).into_owned()));
        }
        if message.len() == MAX_MESSAGE {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message too long"));
        }
        message.push(byte[0]);
    }
}
