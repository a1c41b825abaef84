//! The exit code: decided in one place, from the cause the run ended with.

use std::fmt;

use crate::{ComponentId, Signal};

/// Exit code of a service that failed: a critical component failed to start, failed while
/// running, or failed to stop; also of a program whose registry could not be built.
pub const EXIT_FAILURE: i32 = 1;

/// Exit code of a run that missed its global shutdown deadline, whether the run itself gave up
/// at the deadline or the watchdog had to end the process.
pub const EXIT_DEADLINE: i32 = 124;

/// Why a run ends with the exit code it does. One rule, in this order (the first that applies):
///
/// | cause | exit code | the report says |
/// |---|---|---|
/// | [`Forced`](ExitCause::Forced): a second signal ended the wait | 128 + the signal's number (143 for `SIGTERM`) | `forced by a second SIGTERM` |
/// | [`DeadlineExceeded`](ExitCause::DeadlineExceeded): the global shutdown deadline passed before everything stopped | [`EXIT_DEADLINE`] (124) | `shutdown deadline exceeded` and what was abandoned |
/// | [`Requested`](ExitCause::Requested) with a non-zero code | that code | `shutdown requested: <message>` |
/// | [`ComponentFailed`](ExitCause::ComponentFailed): a critical component failed to start, while running, or to stop | [`EXIT_FAILURE`] (1) | the component's failure |
/// | [`Clean`](ExitCause::Clean): everything critical stopped (a signal, a hand-over, a request with code 0) | 0 | the reason |
///
/// A non-critical component's failure is reported but never changes the exit code. The watchdog
/// applies the same rule: at the deadline the run has missed it (124); after the run returned it
/// keeps the run's own code.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCause {
    /// Everything critical stopped as asked.
    Clean,
    /// [`Shutdown::request`](crate::Shutdown::request) asked for this non-zero code.
    Requested(i32),
    /// This critical component failed (the first one to).
    ComponentFailed(ComponentId),
    /// The global shutdown deadline passed before everything stopped.
    DeadlineExceeded,
    /// A second signal ended the wait.
    Forced(Signal),
}

impl ExitCause {
    /// Applies the rule to what the run knows when it ends: the second signal, if any; whether
    /// the deadline passed; the code a shutdown request asked for, if one did; the critical
    /// component that failed, if one did (the one whose failure stopped the service first).
    pub(crate) fn decide(
        forced_by: Option<Signal>,
        deadline_exceeded: bool,
        requested: Option<i32>,
        failed_critical: Option<&ComponentId>,
    ) -> Self {
        if let Some(signal) = forced_by {
            return ExitCause::Forced(signal);
        }
        if deadline_exceeded {
            return ExitCause::DeadlineExceeded;
        }
        match (requested, failed_critical) {
            (Some(code), _) if code != 0 => ExitCause::Requested(code),
            (_, Some(component)) => ExitCause::ComponentFailed(component.clone()),
            _ => ExitCause::Clean,
        }
    }

    /// The process exit code for this cause.
    pub fn code(&self) -> i32 {
        match self {
            ExitCause::Clean => 0,
            ExitCause::Requested(code) => *code,
            ExitCause::ComponentFailed(_) => EXIT_FAILURE,
            ExitCause::DeadlineExceeded => EXIT_DEADLINE,
            ExitCause::Forced(signal) => 128 + signal.number(),
        }
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitCause::Clean => f.write_str("stopped cleanly"),
            ExitCause::Requested(code) => write!(f, "exit code {code} requested"),
            ExitCause::ComponentFailed(component) => write!(f, "critical component `{component}` failed"),
            ExitCause::DeadlineExceeded => f.write_str("shutdown deadline exceeded"),
            ExitCause::Forced(signal) => write!(f, "forced by a second {signal}"),
        }
    }
}

/// Whether `code` survives as a process exit status: Unix keeps only its low 8 bits, so 256
/// would read as success.
pub(crate) fn is_valid_code(code: i32) -> bool {
    (0..=255).contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_applies_in_order() {
        let worker = ComponentId::from("worker");
        let decide = ExitCause::decide;
        assert_eq!(decide(None, false, None, None).code(), 0);
        assert_eq!(decide(None, false, Some(0), None).code(), 0);
        assert_eq!(decide(None, false, None, Some(&worker)).code(), EXIT_FAILURE);
        assert_eq!(decide(None, false, Some(0), Some(&worker)), ExitCause::ComponentFailed(worker.clone()));
        assert_eq!(decide(None, false, Some(3), Some(&worker)).code(), 3);
        assert_eq!(decide(None, true, Some(3), Some(&worker)).code(), EXIT_DEADLINE);
        assert_eq!(decide(Some(Signal::Terminate), true, Some(3), Some(&worker)).code(), 143);
        assert_eq!(decide(Some(Signal::Interrupt), false, None, None).code(), 130);
    }
}
