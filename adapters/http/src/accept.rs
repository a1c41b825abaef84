//! Failed accepts: out of descriptors (EMFILE, ENFILE) or out of memory, which do not pass by
//! themselves in a millisecond. The loop backs off, doubling its pause up to a second, and says
//! so once per burst rather than once per failure (a hundred lines a second hide everything
//! else in the log); when accepting works again, one line tells how long it did not. Near the
//! limit, a descriptor freed for a moment lets one accept through between failures: a failure
//! within [`RELAPSE`] of the last recovery is the same trouble, counted but not announced again.
//!
//! Beyond the connection limit, a client is turned away at once rather than left waiting in the
//! listen queue for a slot: answered `503` and closed, in an order that never resets it.

use std::time::Duration;

use lifecycle_core::ComponentId;
use tokio::time::Instant;

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
/// How soon after a recovery a failure belongs to the same trouble.
const RELAPSE: Duration = Duration::from_secs(1);

/// Connections being turned away at once, at most: each holds a descriptor for up to
/// [`TURN_AWAY_WAIT`], out of those the limit keeps for everything else.
pub(crate) const REFUSALS_AT_ONCE: usize = 64;

/// How long a connection being turned away is given to send its request's head.
const HEAD_WAIT: Duration = Duration::from_millis(250);

/// How long a connection being turned away is given in all to read the answer and close.
const TURN_AWAY_WAIT: Duration = Duration::from_secs(1);

/// The answer to a connection beyond the limit.
const TOO_BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n\
content-type: text/plain\r\ncontent-length: 22\r\n\r\ntoo many connections\r\n";

/// Turns `stream` away: for plain HTTP, the request's head read and the 503 written after it
/// (a client does not expect an answer before it asked); then the write side closed, and
/// whatever else the client sent read and dropped until it closes its side, so the socket never
/// closes with unread data (which would reset the connection, and the answer with it).
pub(crate) async fn turn_away(
    mut stream: tokio::net::TcpStream,
    _refusal: tokio::sync::OwnedSemaphorePermit,
    plain_http: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(TURN_AWAY_WAIT, async {
        let mut buffer = [0u8; 1024];
        if plain_http {
            // A client that asks nothing soon (an idle flood) is closed without an answer: its
            // descriptor is wanted for the next one.
            let mut head = Vec::new();
            let _ = tokio::time::timeout(HEAD_WAIT, async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    let read = stream.read(&mut buffer).await?;
                    if read == 0 {
                        break;
                    }
                    head.extend_from_slice(&buffer[..read]);
                }
                Ok::<(), std::io::Error>(())
            })
            .await;
            if !head.is_empty() {
                stream.write_all(TOO_BUSY).await?;
            }
        }
        stream.shutdown().await?;
        while stream.read(&mut buffer).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// The current burst of failed accepts, if any.
#[derive(Debug, Default)]
pub(crate) struct AcceptErrors {
    burst: Option<Burst>,
    recovered_at: Option<Instant>,
}

#[derive(Debug)]
struct Burst {
    began: Instant,
    failures: u64,
    pause: Duration,
    /// Whether its start was logged (a relapse's is not).
    announced: bool,
}

impl AcceptErrors {
    /// Records a failed accept; returns how long to pause before the next one.
    pub(crate) fn failed(&mut self, component: &ComponentId, error: &std::io::Error) -> Duration {
        let recovered_at = self.recovered_at;
        let burst = self.burst.get_or_insert_with(|| {
            let now = Instant::now();
            let relapse = recovered_at.is_some_and(|at| now.saturating_duration_since(at) < RELAPSE);
            if !relapse {
                tracing::warn!(component = %component, %error, "accept failed; backing off until it works again");
            }
            Burst { began: now, failures: 0, pause: FIRST_PAUSE, announced: !relapse }
        });
        burst.failures += 1;
        let pause = burst.pause;
        burst.pause = (pause * 2).min(LONGEST_PAUSE);
        pause
    }

    /// Records a successful accept, which ends a burst.
    pub(crate) fn succeeded(&mut self, component: &ComponentId) {
        if let Some(burst) = self.burst.take() {
            self.recovered_at = Some(Instant::now());
            let for_ms = burst.began.elapsed().as_millis() as u64;
            if burst.announced {
                tracing::info!(component = %component, failures = burst.failures, for_ms, "accepting again");
            } else {
                tracing::debug!(component = %component, failures = burst.failures, for_ms, "accepting again after a relapse");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_backs_off_up_to_a_second_and_ends_with_a_success() {
        let name = ComponentId::from("http");
        let error = std::io::Error::from_raw_os_error(24); // EMFILE
        let mut errors = AcceptErrors::default();
        let pauses: Vec<_> = (0..10).map(|_| errors.failed(&name, &error)).collect();
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert_eq!(pauses[1], FIRST_PAUSE * 2);
        assert_eq!(*pauses.last().unwrap_or(&Duration::ZERO), LONGEST_PAUSE);
        errors.succeeded(&name);
        assert!(errors.burst.is_none());
        assert_eq!(errors.failed(&name, &error), FIRST_PAUSE, "a new burst starts over");
        assert!(!errors.burst.as_ref().is_some_and(|b| b.announced), "a relapse is not announced");
        errors.succeeded(&name);
        errors.recovered_at = errors.recovered_at.map(|at| at - RELAPSE);
        errors.failed(&name, &error);
        assert!(errors.burst.as_ref().is_some_and(|b| b.announced), "later, a new burst is");
    }
}
