//! The load: one task per keep-alive connection, sending requests back to back and recording
//! each outcome: latency, failure kind, and whether it overlapped a restart.
//!
//! A connection the server closed is replaced before the next request, which is not a failure.
//! A request that fails is counted and never retried, with one exception that is counted apart:
//! when hyper reports that the connection closed before the request was written (the server's
//! close raced with the check above), the request is sent once more on a new connection, as
//! hyper-util's pooled client would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use lifecycle_tests::load::{BoxError, Mode, Sender, classify, connect};
use tokio::task::JoinHandle;

use crate::cli::Target;
use crate::stats::{Gap, GapTracker, Histogram};

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// The connection was refused: nothing listened.
    Refused,
    /// The connection was reset.
    Reset,
    /// The connection ended before the whole response arrived.
    EarlyClose,
    /// A 5xx response.
    ServerError,
    /// No whole response within the per-request timeout.
    Timeout,
    /// Any other status than the expected one.
    UnexpectedStatus,
}

impl Kind {
    pub(crate) const ALL: [Kind; 6] = [
        Self::Refused,
        Self::Reset,
        Self::EarlyClose,
        Self::ServerError,
        Self::Timeout,
        Self::UnexpectedStatus,
    ];

    /// The name in the table.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::EarlyClose => "early close",
            Self::ServerError => "5xx",
            Self::Timeout => "timeout",
            Self::UnexpectedStatus => "other status",
        }
    }

    fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        match classify(error) {
            "refused" => Self::Refused,
            "reset" => Self::Reset,
            _ => Self::EarlyClose,
        }
    }
}

/// Restart windows, as seen by requests: an epoch that is odd while a restart runs.
///
/// Restart `i` (from 0) opens the window at epoch `2i + 1` and closes it at `2i + 2`, so a
/// request that reads the epoch when it starts and when it ends knows, without locks or clocks,
/// whether a restart overlapped it and which.
#[derive(Debug, Default)]
pub(crate) struct RestartWindows {
    // Relaxed: the epoch publishes no other data, and the reads of one variable are coherent.
    epoch: AtomicU64,
}

impl RestartWindows {
    /// A restart begins.
    pub(crate) fn open(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// The restart in progress has completed (or failed).
    pub(crate) fn close(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }
}

/// The restart (from 0) that a request overlapped, from the epochs it read when it started and
/// when it ended: the one in progress at its end, else the last one that ran during it (also
/// covering a request that started inside a window that closed before it ended).
fn overlapped(at_start: u64, at_end: u64) -> Option<usize> {
    if at_end % 2 == 1 {
        Some((at_end / 2) as usize)
    } else if at_end != at_start {
        Some((at_end / 2 - 1) as usize)
    } else {
        None
    }
}

/// What the load needs to know.
#[derive(Clone, Debug)]
pub(crate) struct LoadOptions {
    pub(crate) address: SocketAddr,
    pub(crate) connections: usize,
    pub(crate) target: Target,
    pub(crate) timeout: Duration,
    pub(crate) backoff: Duration,
    /// Pause after each success (zero: back to back).
    pub(crate) pause: Duration,
}

/// State shared by every connection's task.
#[derive(Debug)]
struct Shared {
    options: LoadOptions,
    origin: Instant,
    stopping: AtomicBool,
    windows: Arc<RestartWindows>,
    gaps: Mutex<GapTracker>,
}

/// What one connection's task recorded; merged into the load's totals at the end.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// Requests sent, successful or not.
    pub(crate) sent: u64,
    /// Requests answered with the expected status.
    pub(crate) ok: u64,
    /// Failed requests by kind.
    pub(crate) failed: BTreeMap<Kind, u64>,
    /// Failed requests by the restart (from 0) they overlapped.
    pub(crate) failed_in_restart: BTreeMap<usize, u64>,
    /// Latency of successful requests that overlapped no restart, in microseconds.
    pub(crate) steady: Histogram,
    /// Latency of successful requests that overlapped a restart, in microseconds.
    pub(crate) restart: Histogram,
    /// Connections opened.
    pub(crate) connections: u64,
    /// Requests sent again because the connection closed before they were written.
    pub(crate) resent: u64,
}

impl Record {
    fn merge(&mut self, other: Record) {
        self.sent += other.sent;
        self.ok += other.ok;
        for (kind, n) in other.failed {
            *self.failed.entry(kind).or_default() += n;
        }
        for (restart, n) in other.failed_in_restart {
            *self.failed_in_restart.entry(restart).or_default() += n;
        }
        self.steady.merge(&other.steady);
        self.restart.merge(&other.restart);
        self.connections += other.connections;
        self.resent += other.resent;
    }

    fn fail(&mut self, kind: Kind, restart: Option<usize>) {
        *self.failed.entry(kind).or_default() += 1;
        if let Some(restart) = restart {
            *self.failed_in_restart.entry(restart).or_default() += 1;
        }
    }
}

/// The load's totals.
#[derive(Debug)]
pub(crate) struct Totals {
    pub(crate) record: Record,
    /// The longest stretch without a successful response, from the load's start to its stop.
    pub(crate) gap: Gap,
    /// How long the load ran.
    pub(crate) duration: Duration,
}

/// The running load.
#[derive(Debug)]
pub(crate) struct Load {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<Record>>,
}

impl Load {
    /// Opens the connections and starts sending.
    pub(crate) fn start(options: LoadOptions, windows: Arc<RestartWindows>) -> Self {
        let origin = Instant::now();
        let shared = Arc::new(Shared {
            options,
            origin,
            stopping: AtomicBool::new(false),
            windows,
            gaps: Mutex::new(GapTracker::new(Duration::ZERO)),
        });
        let tasks =
            (0..shared.options.connections).map(|_| tokio::spawn(connection(Arc::clone(&shared)))).collect();
        Self { shared, tasks }
    }

    /// Time since the load started: the origin of every time in the report.
    pub(crate) fn elapsed(&self) -> Duration {
        self.shared.origin.elapsed()
    }

    /// Stops sending, lets each request in flight end (within the request timeout), and adds up.
    pub(crate) async fn stop(self) -> Result<Totals, crate::Error> {
        let (duration, gap) = {
            // Under the lock, like every success, so that none recorded comes after the end.
            let mut gaps = self.shared.gaps.lock().unwrap_or_else(PoisonError::into_inner);
            let duration = self.elapsed();
            (duration, gaps.finish(duration))
        };
        // Relaxed: tasks only need to see the flag eventually; the results come back by `join`.
        self.shared.stopping.store(true, Ordering::Relaxed);
        let mut record = Record::default();
        for task in self.tasks {
            record.merge(task.await.map_err(|error| format!("a load task failed: {error}"))?);
        }
        Ok(Totals { record, gap, duration })
    }
}

/// One connection: requests back to back until the load stops.
async fn connection(shared: Arc<Shared>) -> Record {
    let options = &shared.options;
    let mut record = Record::default();
    let mut sender: Option<Box<dyn Sender>> = None;
    while !shared.stopping.load(Ordering::Relaxed) {
        let epoch = shared.windows.epoch();
        let started = Instant::now();
        let outcome = tokio::time::timeout(options.timeout, send(&mut sender, options, &mut record)).await;
        let latency = started.elapsed();
        let restart = overlapped(epoch, shared.windows.epoch());
        record.sent += 1;
        let failure = match outcome {
            Ok(Ok(status)) if status == options.target.expected_status() => {
                // The clock is read under the lock so that successes reach the tracker in order.
                let mut gaps = shared.gaps.lock().unwrap_or_else(PoisonError::into_inner);
                gaps.success(shared.origin.elapsed());
                drop(gaps);
                record.ok += 1;
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                match restart {
                    Some(_) => record.restart.record(micros),
                    None => record.steady.record(micros),
                }
                None
            }
            // A whole response came back: the connection is still good.
            Ok(Ok(status)) if status >= 500 => Some(Kind::ServerError),
            Ok(Ok(_)) => Some(Kind::UnexpectedStatus),
            Ok(Err(error)) => {
                sender = None;
                Some(Kind::of(error.as_ref()))
            }
            Err(_elapsed) => {
                // The connection is in an unknown state, a response may still be on its way.
                sender = None;
                Some(Kind::Timeout)
            }
        };
        if let Some(kind) = failure {
            record.fail(kind, restart);
            tokio::time::sleep(options.backoff).await;
        } else if !options.pause.is_zero() {
            tokio::time::sleep(options.pause).await;
        }
    }
    record
}

/// Sends one request on the connection, opening one first when there is none or the server
/// closed it, and returns the response's status.
async fn send(
    sender: &mut Option<Box<dyn Sender>>,
    options: &LoadOptions,
    record: &mut Record,
) -> Result<u16, BoxError> {
    let mut resent = false;
    loop {
        let connection = match sender.take() {
            Some(connection) if !connection.is_closed() => connection,
            _ => {
                record.connections += 1;
                connect(options.address, Mode::KeepAlive).await?
            }
        };
        let connection = sender.insert(connection);
        match connection.send(options.target.request()?).await {
            Ok((status, _body)) => return Ok(status),
            Err(error) if !resent && closed_before_sending(error.as_ref()) => {
                record.resent += 1;
                resent = true;
                *sender = None;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether hyper gave the request back unsent because the connection had closed: `ready()`
/// failing (closed), or the request dropped from the queue before its first byte was written
/// (canceled). Either way no server saw it.
fn closed_before_sending(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.downcast_ref::<hyper::Error>().is_some_and(|e| e.is_closed() || e.is_canceled()) {
            return true;
        }
        cause = error.source();
    }
    false
}

impl Target {
    /// The status a successful request gets.
    pub(crate) fn expected_status(&self) -> u16 {
        match self {
            Self::CreateOrder => 201,
            Self::Get(_) => 200,
        }
    }

    fn request(&self) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
        let request = match self {
            Self::CreateOrder => {
                hyper::Request::post("/api/orders").header("content-type", "application/json")
            }
            Self::Get(path) => hyper::Request::get(path.as_str()),
        };
        let body = match self {
            Self::CreateOrder => Bytes::from_static(br#"{"item":"drill","quantity":1}"#),
            Self::Get(_) => Bytes::new(),
        };
        request.header("host", "drill").body(Full::new(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_attributed_to_the_restart_it_overlapped() {
        // Steady before and after restart 0.
        assert_eq!(overlapped(0, 0), None);
        assert_eq!(overlapped(2, 2), None);
        // Inside restart 0, from start to end, or only at its end.
        assert_eq!(overlapped(1, 1), Some(0));
        assert_eq!(overlapped(0, 1), Some(0));
        // Started during restart 0, which completed before the response.
        assert_eq!(overlapped(1, 2), Some(0));
        // Started before restart 0 and ended after it.
        assert_eq!(overlapped(0, 2), Some(0));
        // Long enough to overlap restarts 1 and 2: the later one.
        assert_eq!(overlapped(2, 5), Some(2));
        assert_eq!(overlapped(3, 6), Some(2));
    }

    #[test]
    fn windows_count_epochs_in_pairs() {
        let windows = RestartWindows::default();
        let before = windows.epoch();
        windows.open();
        let during = windows.epoch();
        windows.close();
        windows.open();
        windows.close();
        assert_eq!(overlapped(before, during), Some(0));
        assert_eq!(overlapped(during, windows.epoch()), Some(1));
        assert_eq!(overlapped(windows.epoch(), windows.epoch()), None);
    }

    #[test]
    fn failures_add_up_by_kind_and_by_restart() {
        let mut a = Record::default();
        a.fail(Kind::Refused, Some(0));
        a.fail(Kind::Refused, None);
        let mut b = Record::default();
        b.fail(Kind::EarlyClose, Some(0));
        b.fail(Kind::Timeout, Some(3));
        a.merge(b);
        assert_eq!(a.failed, BTreeMap::from([(Kind::Refused, 2), (Kind::EarlyClose, 1), (Kind::Timeout, 1)]));
        assert_eq!(a.failed_in_restart, BTreeMap::from([(0, 2), (3, 1)]));
    }

    #[test]
    fn requests_use_the_origin_form_and_the_expected_body() {
        let post = Target::CreateOrder.request().unwrap();
        assert_eq!((post.method().as_str(), post.uri().to_string()), ("POST", "/api/orders".to_owned()));
        assert_eq!(post.headers()["content-type"], "application/json");
        let get = Target::Get("/readyz".into()).request().unwrap();
        assert_eq!((get.method().as_str(), get.uri().to_string()), ("GET", "/readyz".to_owned()));
        assert_eq!(Target::Get("/".into()).expected_status(), 200);
        assert_eq!(Target::CreateOrder.expected_status(), 201);
    }
}
