//! Restart policies: whether a failed component or task starts again, how soon, and how many
//! times before the failure is escalated.
//!
//! The model is systemd's `Restart=` with `StartLimitBurst=`/`StartLimitIntervalSec=` and OTP's
//! restart intensity: exponential backoff with jitter between attempts, and a budget of restarts
//! within a sliding window. A spent budget escalates by the component's criticality: a critical
//! component stops the service; an optional one is marked failed and the service carries on.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio::time::Instant;

/// When a component or task is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Restart {
    /// Never: a failure is final (the default, and the behaviour without a policy).
    Never,
    /// After a failure: an error, a panic, a start that failed or timed out.
    OnFailure,
    /// Whenever it ends, failed or not. For tasks only: a component has no end of its own
    /// besides its failures.
    Always,
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Restart::Never => "never",
            Restart::OnFailure => "on_failure",
            Restart::Always => "always",
        })
    }
}

/// Whether, how soon and how often a failed component or task is started again.
///
/// ```
/// use std::time::Duration;
/// use lifecycle_core::RestartPolicy;
///
/// // Up to 5 restarts in any minute, 100 ms after the first failure, doubling up to 30 s.
/// let policy = RestartPolicy::on_failure()
///     .backoff(Duration::from_millis(100), Duration::from_secs(30))
///     .max_restarts(5, Duration::from_secs(60));
/// assert_eq!(policy.delay(0), Duration::from_millis(100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RestartPolicy {
    restart: Restart,
    initial: Duration,
    max: Duration,
    jitter: f64,
    max_restarts: u32,
    window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self::never()
    }
}

impl RestartPolicy {
    /// No restart: a failure is final.
    pub const fn never() -> Self {
        Self::with(Restart::Never)
    }

    /// Restart after a failure: 100 ms, doubling up to 30 s, a fifth of each delay random, at
    /// most 5 restarts in any 60 s.
    pub const fn on_failure() -> Self {
        Self::with(Restart::OnFailure)
    }

    /// Restart whenever it ends (tasks only), with the same defaults as
    /// [`on_failure`](RestartPolicy::on_failure).
    pub const fn always() -> Self {
        Self::with(Restart::Always)
    }

    const fn with(restart: Restart) -> Self {
        Self {
            restart,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            jitter: 0.2,
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }

    /// The delay before the first restart, and the most any delay grows to (doubling each time).
    #[must_use]
    pub const fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max;
        self
    }

    /// The share of each delay taken off at random (0 to 1, default 0.2), so that instances
    /// that failed together do not all retry in the same instant.
    #[must_use]
    pub const fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// At most `count` restarts within any `window`; the next failure is escalated.
    #[must_use]
    pub const fn max_restarts(mut self, count: u32, window: Duration) -> Self {
        self.max_restarts = count;
        self.window = window;
        self
    }

    /// When it restarts.
    pub const fn restart(&self) -> Restart {
        self.restart
    }

    /// Whether it restarts at all.
    pub fn restarts(&self) -> bool {
        self.restart != Restart::Never
    }

    /// The delay before restart number `previous + 1`, given `previous` restarts in the window,
    /// before jitter: `initial * 2^previous`, at most `max`.
    pub fn delay(&self, previous: u32) -> Duration {
        let factor = 2u32.saturating_pow(previous.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// [`delay`](RestartPolicy::delay) with up to its jitter share taken off at random.
    fn jittered(&self, previous: u32) -> Duration {
        let delay = self.delay(previous);
        if self.jitter <= 0.0 {
            return delay;
        }
        // A fresh random state per call is random enough to spread retries, and needs no crate.
        let random = RandomState::new().hash_one(previous) as f64 / u64::MAX as f64;
        delay.mul_f64(1.0 - self.jitter.min(1.0) * random)
    }

    /// The settings that cannot work, as (setting, value, expected), for `build()` to report
    /// with the component's name. `for_component` rejects what only a task can do.
    pub(crate) fn problems(&self, for_component: bool) -> Vec<(&'static str, String, &'static str)> {
        let mut problems = Vec::new();
        if !self.restarts() {
            return problems;
        }
        if for_component && self.restart == Restart::Always {
            problems.push((
                "restart",
                self.restart.to_string(),
                "`never` or `on_failure`: a component has no end of its own besides its failures \
                 (`always` is for tasks)",
            ));
        }
        if self.max_restarts == 0 {
            problems.push(("max_restarts", "0".into(), "at least 1 (or no restart policy at all)"));
        }
        if self.window.is_zero() {
            problems.push((
                "max_restarts",
                format!("{} per {:?}", self.max_restarts, self.window),
                "a window of more than zero",
            ));
        }
        if self.initial > self.max {
            problems.push((
                "backoff",
                format!("{:?}..{:?}", self.initial, self.max),
                "an initial delay no greater than the maximum",
            ));
        }
        let fits = |d: Duration| Instant::now().checked_add(d.saturating_mul(2)).is_some();
        if !fits(self.max) || !fits(self.window) {
            problems.push((
                "backoff",
                format!("{:?}..{:?}", self.initial, self.max),
                "durations the clock can add to now",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            problems.push(("jitter", self.jitter.to_string(), "between 0 and 1"));
        }
        problems
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.restarts() {
            return f.write_str("never");
        }
        write!(
            f,
            "{}, backoff {:?}..{:?}, at most {} per {:?}",
            self.restart, self.initial, self.max, self.max_restarts, self.window
        )
    }
}

/// A failure that asks the run to restart a component: sent by the component's task set, handled
/// by the run's supervision loop.
#[derive(Debug)]
pub(crate) struct Trouble {
    /// The component.
    pub(crate) index: usize,
    /// Its incarnation when the task was spawned: a failure of an incarnation already replaced
    /// (a task that outlived its stop) restarts nothing.
    pub(crate) incarnation: u64,
}

/// Where a component's task set sends its [`Trouble`].
pub(crate) type TroubleSender = tokio::sync::mpsc::UnboundedSender<Trouble>;

/// The restarts one component or task has had, against its policy's budget.
#[derive(Debug)]
pub(crate) struct RestartBudget {
    policy: RestartPolicy,
    /// When each restart within the window was granted, oldest first.
    recent: VecDeque<Instant>,
    /// Every restart granted, for the report.
    total: u32,
}

impl RestartBudget {
    pub(crate) fn new(policy: RestartPolicy) -> Self {
        Self { policy, recent: VecDeque::new(), total: 0 }
    }

    /// Restarts granted so far.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }

    /// Grants one more restart at `now`, returning how long to wait before it; `None` when the
    /// budget is spent (or the policy never restarts), which escalates the failure.
    pub(crate) fn grant(&mut self, now: Instant) -> Option<Duration> {
        if !self.policy.restarts() {
            return None;
        }
        while self.recent.front().is_some_and(|&at| now.saturating_duration_since(at) >= self.policy.window) {
            self.recent.pop_front();
        }
        let previous = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        if previous >= self.policy.max_restarts {
            return None;
        }
        self.recent.push_back(now);
        self.total = self.total.saturating_add(1);
        Some(self.policy.jittered(previous))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_up_to_the_maximum() {
        let policy = RestartPolicy::on_failure().backoff(ms(100), ms(1_000));
        let delays: Vec<_> = (0..6).map(|n| policy.delay(n)).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(800), ms(1_000), ms(1_000)]);
        assert_eq!(policy.delay(u32::MAX), ms(1_000));
    }

    #[test]
    fn jitter_only_shortens_a_delay_by_its_share() {
        let policy = RestartPolicy::on_failure().backoff(ms(1_000), ms(1_000)).jitter(0.5);
        for _ in 0..100 {
            let delay = policy.jittered(0);
            assert!(delay >= ms(500) && delay <= ms(1_000), "{delay:?}");
        }
        assert_eq!(policy.jitter(0.0).jittered(3), ms(1_000));
    }

    #[test]
    fn the_budget_is_spent_within_its_window_and_refills_after_it() {
        let policy =
            RestartPolicy::on_failure().backoff(ms(10), ms(10)).jitter(0.0).max_restarts(2, ms(1_000));
        let mut budget = RestartBudget::new(policy);
        let now = Instant::now();
        assert_eq!(budget.grant(now), Some(ms(10)));
        assert_eq!(budget.grant(now + ms(100)), Some(ms(10)));
        assert_eq!(budget.grant(now + ms(200)), None, "two per second");
        // The first restart leaves the window a second after it was granted.
        assert_eq!(budget.grant(now + ms(1_000)), Some(ms(10)));
        assert_eq!(budget.total(), 3);
    }

    #[test]
    fn never_grants_nothing() {
        assert_eq!(RestartBudget::new(RestartPolicy::never()).grant(Instant::now()), None);
    }

    #[test]
    fn impossible_policies_are_named() {
        let settings = |policy: RestartPolicy, component| {
            policy.problems(component).into_iter().map(|(setting, ..)| setting).collect::<Vec<_>>()
        };
        assert_eq!(settings(RestartPolicy::on_failure().max_restarts(0, ms(1)), true), ["max_restarts"]);
        assert_eq!(settings(RestartPolicy::on_failure().backoff(ms(2), ms(1)), true), ["backoff"]);
        assert_eq!(settings(RestartPolicy::on_failure().jitter(1.5), true), ["jitter"]);
        assert_eq!(settings(RestartPolicy::always(), true), ["restart"]);
        assert!(settings(RestartPolicy::always(), false).is_empty());
        assert!(settings(RestartPolicy::never().max_restarts(0, ms(0)), true).is_empty());
    }
}
