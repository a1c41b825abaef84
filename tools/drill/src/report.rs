//! The drill's results: one value, printed as tables for people and serialized as JSON for
//! scripts and CI.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{Options, RestartMode};
use crate::load::{Kind, Totals};
use crate::service::Restart;
use crate::stats::Histogram;

/// Everything the drill measured. Times are in milliseconds since the load started.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) mode: RestartMode,
    pub(crate) binary: String,
    pub(crate) request: String,
    pub(crate) connections: usize,
    /// Each connection's pause after a success (0: back to back).
    pub(crate) pause_ms: f64,
    pub(crate) restarts_requested: usize,
    pub(crate) restarts_completed: usize,
    /// How long the load ran.
    pub(crate) load_ms: f64,
    pub(crate) requests: Requests,
    /// Latency of successful requests, from sending (connecting included) to the whole
    /// response.
    pub(crate) latency_ms: Latencies,
    pub(crate) longest_gap: LongestGap,
    /// From each restart's trigger to its new process being ready.
    pub(crate) ready_ms: Option<Spread>,
    pub(crate) restarts: Vec<RestartRow>,
    /// How the last process ended at the drill's SIGTERM.
    pub(crate) service_exit: Option<String>,
    /// Why the drill stopped early, when it did.
    pub(crate) error: Option<String>,
}

/// Requests by outcome.
#[derive(Debug, Serialize)]
pub(crate) struct Requests {
    pub(crate) sent: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) failed_by_kind: FailedByKind,
    /// Failed requests that overlapped a restart window.
    pub(crate) failed_during_restarts: u64,
    pub(crate) connections_opened: u64,
    /// Requests sent again because hyper found their connection closed before writing them.
    pub(crate) resent_after_close: u64,
}

/// Failed requests by kind; every kind is always present.
#[derive(Debug, Default, Serialize)]
pub(crate) struct FailedByKind {
    pub(crate) refused: u64,
    pub(crate) reset: u64,
    pub(crate) early_close: u64,
    #[serde(rename = "5xx")]
    pub(crate) server_error: u64,
    pub(crate) timeout: u64,
    pub(crate) unexpected_status: u64,
}

impl FailedByKind {
    fn slot(&mut self, kind: Kind) -> &mut u64 {
        match kind {
            Kind::Refused => &mut self.refused,
            Kind::Reset => &mut self.reset,
            Kind::EarlyClose => &mut self.early_close,
            Kind::ServerError => &mut self.server_error,
            Kind::Timeout => &mut self.timeout,
            Kind::UnexpectedStatus => &mut self.unexpected_status,
        }
    }

    fn get(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Refused => self.refused,
            Kind::Reset => self.reset,
            Kind::EarlyClose => self.early_close,
            Kind::ServerError => self.server_error,
            Kind::Timeout => self.timeout,
            Kind::UnexpectedStatus => self.unexpected_status,
        }
    }
}

/// Latency of all successful requests, of those that overlapped no restart, and of those that
/// overlapped one.
#[derive(Debug, Serialize)]
pub(crate) struct Latencies {
    pub(crate) all: Latency,
    pub(crate) steady: Latency,
    pub(crate) restart: Latency,
}

/// Percentiles of one set of requests; `null` when it is empty.
#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) p50: Option<f64>,
    pub(crate) p99: Option<f64>,
    pub(crate) max: Option<f64>,
}

impl From<&Histogram> for Latency {
    fn from(histogram: &Histogram) -> Self {
        Self {
            count: histogram.count(),
            p50: histogram.quantile(1, 2).map(micros_as_ms),
            p99: histogram.quantile(99, 100).map(micros_as_ms),
            max: histogram.max().map(micros_as_ms),
        }
    }
}

/// The longest time without any successful response.
#[derive(Debug, Serialize)]
pub(crate) struct LongestGap {
    pub(crate) ms: f64,
    pub(crate) from_ms: f64,
    /// The restart (from 1) whose window it overlapped, if any.
    pub(crate) restart: Option<usize>,
}

/// Smallest, median and largest of a set of times.
#[derive(Debug, Serialize)]
pub(crate) struct Spread {
    pub(crate) min: f64,
    pub(crate) median: f64,
    pub(crate) max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Self> {
        values.sort_by(f64::total_cmp);
        let (min, max) = (*values.first()?, *values.last()?);
        // The lower median: a value that was measured, never an average of two.
        let median = values[(values.len() - 1) / 2];
        Some(Self { min, median, max })
    }
}

/// One restart.
#[derive(Debug, Serialize)]
pub(crate) struct RestartRow {
    /// Its number, from 1.
    pub(crate) restart: usize,
    /// When it was triggered.
    pub(crate) at_ms: f64,
    /// From the trigger to the new process being ready.
    pub(crate) ready_ms: f64,
    /// From the trigger to the old process having exited.
    pub(crate) done_ms: f64,
    /// Failed requests that overlapped it.
    pub(crate) failed: u64,
    pub(crate) old_pid: i32,
    pub(crate) new_pid: i32,
    pub(crate) old_exit: String,
}

/// A restart as the drill ran it: when, and how it went.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timed {
    pub(crate) at: Duration,
    pub(crate) restart: Restart,
}

/// Milliseconds, to the microsecond: finer digits would only be noise.
fn ms(duration: Duration) -> f64 {
    micros_as_ms(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX))
}

fn micros_as_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Report {
    /// Puts the measurements together.
    pub(crate) fn new(
        options: &Options,
        totals: &Totals,
        restarts: &[Timed],
        service_exit: Option<String>,
        error: Option<String>,
    ) -> Self {
        let record = &totals.record;
        let mut failed_by_kind = FailedByKind::default();
        for (kind, n) in &record.failed {
            *failed_by_kind.slot(*kind) += n;
        }
        let mut all = record.steady.clone();
        all.merge(&record.restart);
        let gap_end = totals.gap.from + totals.gap.length;
        let rows: Vec<RestartRow> = restarts
            .iter()
            .enumerate()
            .map(|(i, timed)| RestartRow {
                restart: i + 1,
                at_ms: ms(timed.at),
                ready_ms: ms(timed.restart.ready),
                done_ms: ms(timed.restart.done),
                failed: record.failed_in_restart.get(&i).copied().unwrap_or_default(),
                old_pid: timed.restart.old_pid.as_raw(),
                new_pid: timed.restart.new_pid.as_raw(),
                old_exit: timed.restart.old_exit.to_string(),
            })
            .collect();
        Self {
            mode: options.mode,
            binary: options.binary.display().to_string(),
            request: options.target.to_string(),
            connections: options.connections,
            pause_ms: ms(options.pause),
            restarts_requested: options.restarts,
            restarts_completed: restarts.len(),
            load_ms: ms(totals.duration),
            requests: Requests {
                sent: record.sent,
                ok: record.ok,
                failed: record.failed.values().sum(),
                failed_by_kind,
                failed_during_restarts: record.failed_in_restart.values().sum(),
                connections_opened: record.connections,
                resent_after_close: record.resent,
            },
            latency_ms: Latencies {
                all: Latency::from(&all),
                steady: Latency::from(&record.steady),
                restart: Latency::from(&record.restart),
            },
            longest_gap: LongestGap {
                ms: ms(totals.gap.length),
                from_ms: ms(totals.gap.from),
                restart: restarts
                    .iter()
                    .position(|t| t.at < gap_end && t.at + t.restart.done > totals.gap.from)
                    .map(|i| i + 1),
            },
            ready_ms: Spread::of(restarts.iter().map(|t| ms(t.restart.ready)).collect()),
            restarts: rows,
            service_exit,
            error,
        }
    }

    /// The report as pretty-printed JSON.
    pub(crate) fn json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} drill: {} of {} restarts of {}, {} connections{}, {}, {:.2} s of load\n",
            self.mode,
            self.restarts_completed,
            self.restarts_requested,
            self.binary,
            self.connections,
            if self.pause_ms > 0.0 {
                format!(" pausing {} ms after each success", self.pause_ms)
            } else {
                String::new()
            },
            self.request,
            self.load_ms / 1000.0
        )?;

        let requests = &self.requests;
        let mut header = vec!["requests", "sent", "ok", "failed"];
        header.extend(Kind::ALL.map(Kind::label));
        let mut row = vec![String::new(), requests.sent.to_string(), requests.ok.to_string()];
        row.push(requests.failed.to_string());
        row.extend(Kind::ALL.map(|kind| requests.failed_by_kind.get(kind).to_string()));
        write!(f, "{}", table(&header, &[row]))?;
        writeln!(
            f,
            "failed during restarts: {}; connections opened: {}; resent after a close before writing: {}\n",
            requests.failed_during_restarts, requests.connections_opened, requests.resent_after_close
        )?;

        let latency = |name: &str, l: &Latency| {
            let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
            vec![name.to_owned(), l.count.to_string(), cell(l.p50), cell(l.p99), cell(l.max)]
        };
        let rows = [
            latency("all", &self.latency_ms.all),
            latency("steady", &self.latency_ms.steady),
            latency("during restarts", &self.latency_ms.restart),
        ];
        writeln!(f, "{}", table(&["latency (ms)", "count", "p50", "p99", "max"], &rows))?;

        let gap = &self.longest_gap;
        write!(f, "longest gap without a successful response: {:.1} ms, from {:.1} ms", gap.ms, gap.from_ms)?;
        match gap.restart {
            Some(restart) => writeln!(f, " (restart {restart})")?,
            None => writeln!(f, " (no restart)")?,
        }
        if let Some(ready) = &self.ready_ms {
            writeln!(
                f,
                "trigger to new process ready (ms): min {:.1}, median {:.1}, max {:.1}",
                ready.min, ready.median, ready.max
            )?;
        }

        if !self.restarts.is_empty() {
            let rows: Vec<Vec<String>> = self
                .restarts
                .iter()
                .map(|r| {
                    vec![
                        r.restart.to_string(),
                        format!("{:.1}", r.at_ms),
                        format!("{:.1}", r.ready_ms),
                        format!("{:.1}", r.done_ms),
                        r.failed.to_string(),
                        r.old_pid.to_string(),
                        r.new_pid.to_string(),
                        r.old_exit.clone(),
                    ]
                })
                .collect();
            let header =
                ["restart", "at (ms)", "ready (ms)", "done (ms)", "failed", "old pid", "new pid", "old exit"];
            write!(f, "\n{}", table(&header, &rows))?;
        }
        if let Some(exit) = &self.service_exit {
            writeln!(f, "\nthe last process ended with {exit} at the drill's SIGTERM")?;
        }
        if let Some(error) = &self.error {
            writeln!(f, "\nINCOMPLETE: {error}")?;
        }
        Ok(())
    }
}

/// Columns as wide as their widest cell, two spaces apart, the first left-aligned and the
/// others right-aligned; one line per row.
fn table<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.as_ref().len())
                .fold(name.len(), usize::max)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut line = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            match i {
                0 => line.push_str(&format!("{cell:<width$}")),
                _ => line.push_str(&format!("  {cell:>width$}")),
            }
        }
        line.trim_end().to_owned() + "\n"
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(AsRef::as_ref).collect()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_numbers_right_under_their_header() {
        let text = table(&["name", "count"], &[vec!["all", "12345"], vec!["steady", "7"]]);
        assert_eq!(text, "name    count\nall     12345\nsteady      7\n");
    }

    #[test]
    fn spread_reports_a_measured_median() {
        let spread = Spread::of(vec![30.0, 10.0, 20.0, 40.0]).unwrap();
        assert_eq!((spread.min, spread.median, spread.max), (10.0, 20.0, 40.0));
        assert!(Spread::of(Vec::new()).is_none());
    }

    #[test]
    fn every_failure_kind_has_a_json_key() {
        let mut failed = FailedByKind::default();
        for (n, kind) in Kind::ALL.into_iter().enumerate() {
            *failed.slot(kind) = n as u64 + 1;
        }
        let json = serde_json::to_value(&failed).unwrap();
        let keys = ["refused", "reset", "early_close", "5xx", "timeout", "unexpected_status"];
        for (n, key) in keys.into_iter().enumerate() {
            assert_eq!(json[key], n as u64 + 1, "{key}");
        }
        assert_eq!(json.as_object().map(|o| o.len()), Some(keys.len()));
    }
}
