//! Restart policy values in attributes: `backoff = "100ms..30s"`, `max_restarts = "5 per 1m"`.

use crate::duration;

/// The delay before the first restart and the most it grows to, in nanoseconds.
#[derive(Debug)]
pub(crate) struct Backoff {
    pub(crate) initial: u64,
    pub(crate) max: u64,
}

/// At most `count` restarts within any `window` nanoseconds.
#[derive(Debug)]
pub(crate) struct MaxRestarts {
    pub(crate) count: u32,
    pub(crate) window: u64,
}

const BACKOFF_FORM: &str =
    "write `backoff` as the first delay and the longest, separated by `..`: \"100ms..30s\"";
const MAX_RESTARTS_FORM: &str =
    "write `max_restarts` as a count, `per`, and a window: \"5 per 1m\" (at most 5 restarts in any minute)";

/// Parses `"100ms..30s"`, or says what is wrong with it.
pub(crate) fn backoff(text: &str) -> Result<Backoff, String> {
    let Some((initial, max)) = text.split_once("..") else {
        return Err(format!("\"{text}\" has no `..`; {BACKOFF_FORM}"));
    };
    let (initial, max) = (initial.trim(), max.trim());
    if initial.is_empty() || max.is_empty() || max.contains("..") {
        return Err(format!("\"{text}\" is not two durations; {BACKOFF_FORM}"));
    }
    // Doubling zero stays zero: every restart would come at once, however high the maximum.
    let zero = "a delay of zero never grows, so every restart would come at once";
    let parsed = Backoff {
        initial: duration::parse_nonzero(initial, zero)?,
        max: duration::parse_nonzero(max, zero)?,
    };
    if parsed.initial > parsed.max {
        return Err(format!(
            "the initial delay {initial} is greater than the maximum {max}; the delay doubles from the \
             first up to the second"
        ));
    }
    Ok(parsed)
}

/// Parses `"5 per 1m"`, or says what is wrong with it.
pub(crate) fn max_restarts(text: &str) -> Result<MaxRestarts, String> {
    let Some((count, window)) = text.split_once("per") else {
        return Err(format!("\"{text}\" has no `per`; {MAX_RESTARTS_FORM}"));
    };
    let count = count.trim();
    if count.is_empty() || !count.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("`{count}` is not a number of restarts; {MAX_RESTARTS_FORM}"));
    }
    let count: u32 = count.parse().map_err(|_| format!("{count} restarts is more than a `u32` can count"))?;
    if count == 0 {
        return Err(
            "`max_restarts` must be at least 1: with 0, the first failure is escalated without a restart \
             (to never restart, leave `restart` out)"
                .to_owned(),
        );
    }
    // A restart leaves a zero window at once: the budget would never run out.
    let zero = "a window of zero forgets each restart at once, so it limits nothing";
    let window = duration::parse_nonzero(window.trim(), zero)?;
    Ok(MaxRestarts { count, window })
}

#[cfg(test)]
mod tests {
    use super::{backoff, max_restarts};

    #[test]
    fn reads_backoff() {
        let parsed = backoff("10ms..1m30s").unwrap();
        assert_eq!((parsed.initial, parsed.max), (10_000_000, 90_000_000_000));
        let parsed = backoff(" 1.5s .. 1.5s ").unwrap();
        assert_eq!((parsed.initial, parsed.max), (1_500_000_000, 1_500_000_000));
    }

    #[test]
    fn rejects_bad_backoff() {
        assert!(backoff("100ms-30s").unwrap_err().contains("has no `..`"));
        assert!(backoff("..30s").unwrap_err().contains("is not two durations"));
        assert!(backoff("1s..2s..3s").unwrap_err().contains("is not two durations"));
        assert!(backoff("1sec..2s").unwrap_err().starts_with("unknown unit `sec`"));
        assert!(backoff("0s..2s").unwrap_err().contains("is zero: a delay of zero"));
        assert!(
            backoff("5s..1s").unwrap_err().starts_with("the initial delay 5s is greater than the maximum 1s")
        );
    }

    #[test]
    fn reads_max_restarts() {
        let parsed = max_restarts("3 per 1m").unwrap();
        assert_eq!((parsed.count, parsed.window), (3, 60_000_000_000));
        let parsed = max_restarts("10per 1m 30s").unwrap();
        assert_eq!((parsed.count, parsed.window), (10, 90_000_000_000));
    }

    #[test]
    fn rejects_bad_max_restarts() {
        assert!(max_restarts("5 in 1m").unwrap_err().contains("has no `per`"));
        assert!(max_restarts("five per 1m").unwrap_err().starts_with("`five` is not a number"));
        assert!(max_restarts("-1 per 1m").unwrap_err().starts_with("`-1` is not a number"));
        assert!(max_restarts("99999999999 per 1m").unwrap_err().contains("more than a `u32`"));
        assert!(max_restarts("0 per 1m").unwrap_err().contains("at least 1"));
        assert!(max_restarts("5 per").unwrap_err().starts_with("empty duration"));
        assert!(max_restarts("5 per 0s").unwrap_err().contains("is zero: a window of zero"));
        assert!(max_restarts("5 per 1 minute").unwrap_err().starts_with("unknown unit `minute`"));
    }
}
