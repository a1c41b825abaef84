//! What the gRPC tests share (the adapter's and the `events` example's): how a call that did not
//! succeed failed, told from its cause, and the clean end a server gives a stream at a stop.

use tonic::{Code, Status};

/// How a call that did not succeed failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection was refused: no server took the call.
    Refused,
    /// The call never reached a server: cancelled or handed back by a closed connection before
    /// it was sent, or an HTTP/2 stream the server refused or left above its `GOAWAY` (RFC 9113,
    /// 8.7 and 6.8). Safe to send again.
    NotProcessed,
    /// Anything else: a call a server took and did not answer.
    Failed,
}

/// The kind of `status`'s failure, from its cause.
pub fn classify(status: &Status) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Failure::Refused;
            }
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            let refused = h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            let graceful_go_away = h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR);
            if h2.is_remote() && (refused || graceful_go_away) {
                return Failure::NotProcessed;
            }
        }
        source = error.source();
    }
    let text = format!("{status:?}").to_lowercase();
    if text.contains("connection refused") {
        Failure::Refused
    } else if status.code() == Code::Cancelled || text.contains("operation was canceled") {
        // hyper guarantees a cancelled request was never written to the socket.
        Failure::NotProcessed
    } else {
        Failure::Failed
    }
}

/// Whether `status` is the clean end the server gives a stream at the soft deadline (a status in
/// the trailers, not a transport error).
pub fn is_clean_unavailable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && status.message() == "the server is shutting down"
        && std::error::Error::source(status).is_none()
}
