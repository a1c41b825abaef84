//! What one connection is doing: requests in flight, when it last finished one, whether a
//! request's head is being read and since when, its protocol.
//!
//! The header-read timeout is kept here rather than by hyper's own: hyper arms a timer for every
//! request (an allocation and a timer-wheel entry each, about 2% of a trivial request's CPU), and
//! arms it as soon as a keep-alive connection turns idle, so an idle connection was closed at
//! the header-read timeout (5 s) instead of the idle timeout (60 s). Here the head's clock starts
//! with its first byte, seen by [`Watched`], and the connection's own loop looks at it when it
//! wakes, which it does at least once per header-read timeout. HTTP/2 has no such clock (as with
//! hyper's): [`Watched`] knows it by its preface, so a client that connects and waits before its
//! first call is not cut.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::Version;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::request::Requests;

pub(crate) struct Activity {
    /// What the times below count from, as an `Instant` and on the clock [`coarse_nanos`] reads.
    opened: Instant,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    opened_nanos: u64,
    in_flight: AtomicU64,
    /// When the last request ended, in nanoseconds since `opened`.
    last_active: AtomicU64,
    /// When the first byte of a request's head came, in nanoseconds since `opened`, plus one;
    /// 0 while no head is being read.
    head_since: AtomicU64,
    http2: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Self {
        // A fresh connection counts as active: its first request may be on the wire.
        Self {
            opened: Instant::now(),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            opened_nanos: coarse_nanos(),
            in_flight: AtomicU64::new(0),
            last_active: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        }
    }

    /// Nanoseconds since `opened`, read twice per request.
    fn now(&self) -> u64 {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let nanos = coarse_nanos().saturating_sub(self.opened_nanos);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let nanos = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        nanos.min(u64::MAX - 1)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.opened + Duration::from_nanos(nanos)
    }

    /// A request's head was read: it is in flight until [`Activity::end`].
    pub(crate) fn begin(&self, version: Version) {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Release);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
    }

    /// A request [`begun`](Activity::begin) has ended: its response is ready, or it was dropped.
    pub(crate) fn end(&self) {
        // The time first: `quiet_until` reads the count first.
        self.last_active.store(self.now(), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Bytes came from the client: with no request in flight, on HTTP/1, they begin a head.
    fn received(&self) {
        if self.head_since.load(Ordering::Acquire) == 0
            && self.in_flight.load(Ordering::Acquire) == 0
            && !self.http2.load(Ordering::Acquire)
        {
            self.head_since.store(self.now() + 1, Ordering::Release);
        }
    }

    /// The client sent the HTTP/2 preface: no head clock from now on.
    fn http2_preface(&self) {
        self.http2.store(true, Ordering::Release);
        self.head_since.store(0, Ordering::Release);
    }

    pub(crate) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Acquire)
    }

    /// When the connection will have been quiet for `idle`; `None` while a request is in flight
    /// or a head is being read.
    pub(crate) fn quiet_until(&self, idle: Duration) -> Option<Instant> {
        // The count first: `end` stamps the time before it decrements, so a zero count
        // comes with the last request's end.
        let quiet =
            self.in_flight.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Acquire) == 0;
        quiet.then(|| self.at(self.last_active.load(Ordering::Acquire)) + idle)
    }

    /// When the head being read runs out of `timeout`, if one is.
    pub(crate) fn head_deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.head_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(self.at(since - 1) + timeout),
        }
    }
}

/// The monotonic clock in nanoseconds, in its coarse variant: the time at the kernel's last tick,
/// with no hardware counter read, precise to a few milliseconds (plenty for timeouts of seconds),
/// summed in integers. callgrind counted about 190 instructions per request for `Instant::now`
/// and its subtraction, read twice per request.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn coarse_nanos() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let (seconds, nanos) = (u64::try_from(now.tv_sec).unwrap_or(0), u64::try_from(now.tv_nsec).unwrap_or(0));
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// What every HTTP/2 connection begins with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much of the HTTP/2 preface the connection's first bytes matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preface {
    /// The first this many bytes match so far.
    Matching(usize),
    Http1,
    Http2,
}

impl Preface {
    /// With the bytes that came next.
    fn read(self, data: &[u8]) -> Self {
        let Self::Matching(matched) = self else { return self };
        let wanted = &H2_PREFACE[matched..];
        let compared = data.len().min(wanted.len());
        if data[..compared] != wanted[..compared] {
            Self::Http1
        } else if compared == wanted.len() {
            Self::Http2
        } else {
            Self::Matching(matched + compared)
        }
    }
}

/// A connection's stream, telling its [`Activity`] when bytes come.
pub(crate) struct Watched<S> {
    stream: S,
    /// Where the connection's activity is kept.
    requests: Arc<Requests>,
    preface: Preface,
}

impl<S> Watched<S> {
    pub(crate) fn new(stream: S, requests: Arc<Requests>) -> Self {
        Self { stream, requests, preface: Preface::Matching(0) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            // Until the preface is told apart, its bytes are timed as a head: sending them slowly
            // gains nothing.
            if let Preface::Matching(_) = this.preface {
                this.preface = this.preface.read(&buf.filled()[before..]);
                if this.preface == Preface::Http2 {
                    this.requests.activity.http2_preface();
                }
            }
            this.requests.activity.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_timed_from_its_first_byte_until_its_request_begins() {
        let activity = Arc::new(Activity::new());
        assert!(activity.quiet_until(Duration::from_secs(1)).is_some(), "a fresh connection waits quietly");
        assert_eq!(activity.head_deadline(Duration::from_secs(1)), None);
        activity.received();
        let deadline = activity.head_deadline(Duration::from_secs(1));
        assert!(deadline.is_some_and(|at| at > Instant::now()), "{deadline:?}");
        assert_eq!(activity.quiet_until(Duration::from_secs(1)), None, "reading a head is not quiet");
        activity.received();
        assert_eq!(
            activity.head_deadline(Duration::from_secs(1)),
            deadline,
            "the clock runs from the first byte"
        );

        activity.begin(Version::HTTP_11);
        assert_eq!(activity.head_deadline(Duration::from_secs(1)), None);
        activity.received(); // the request's body
        assert_eq!(activity.head_deadline(Duration::from_secs(1)), None, "a body is not a head");
        activity.end();
        assert!(activity.quiet_until(Duration::from_secs(1)).is_some());
    }

    #[test]
    fn the_http2_preface_is_told_apart_from_a_request_even_in_pieces() {
        assert_eq!(Preface::Matching(0).read(H2_PREFACE), Preface::Http2);
        assert_eq!(Preface::Matching(0).read(b"POST / HTTP/1.1\r\n"), Preface::Http1);
        // "P" could begin either: undecided until a byte says.
        let after_p = Preface::Matching(0).read(b"P");
        assert_eq!(after_p, Preface::Matching(1));
        assert_eq!(after_p.read(b"OST"), Preface::Http1);
        let half = Preface::Matching(0).read(&H2_PREFACE[..10]);
        assert_eq!(half.read(&H2_PREFACE[10..]), Preface::Http2);
        // The preface and the first frames in one read.
        assert_eq!(Preface::Matching(0).read(&[H2_PREFACE, b"\0\0\0\x04"].concat()), Preface::Http2);
    }

    #[test]
    fn an_http2_preface_stops_the_head_clock() {
        let activity = Arc::new(Activity::new());
        activity.received();
        activity.http2_preface();
        activity.received(); // settings, then nothing for a while
        assert_eq!(activity.head_deadline(Duration::from_secs(1)), None);
    }

    #[test]
    fn http2_has_no_head_clock() {
        let activity = Arc::new(Activity::new());
        activity.begin(Version::HTTP_2);
        activity.end();
        activity.received(); // frames between streams: pings, settings, window updates
        assert_eq!(activity.head_deadline(Duration::from_secs(1)), None);
        assert!(activity.is_http2());
    }
}
