//! Retrying with backoff until a deadline: what an adapter's start does while its server is still
//! coming up, so that it gives up with the last error rather than a bare timeout.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Retries an attempt with exponential backoff until a deadline.
///
/// ```
/// use lifecycle_core::Retry;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let outcome = Retry::until(Instant::now() + Duration::from_secs(1))
///     .run(
///         |attempt| async move { if attempt < 3 { Err("not up yet") } else { Ok(attempt) } },
///         |_error| true,
///     )
///     .await;
/// assert_eq!(outcome.ok(), Some(3));
/// # });
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    until: Instant,
    first: Duration,
    max: Duration,
}

/// Why [`Retry::run`] gave up.
#[derive(Debug)]
#[non_exhaustive]
pub struct RetryFailure<E> {
    /// Attempts made.
    pub attempts: u32,
    /// Time spent.
    pub elapsed: Duration,
    /// The last error; `None` when the last attempt was still running at the deadline.
    pub last_error: Option<E>,
}

impl Retry {
    /// Retries until `deadline` (on tokio's clock; a `std::time::Instant` converts), waiting
    /// 50 ms after the first failure, doubling up to 2 s.
    pub fn until(deadline: impl Into<Instant>) -> Self {
        Self { until: deadline.into(), first: Duration::from_millis(50), max: Duration::from_secs(2) }
    }

    /// Sets the first and the longest wait between attempts.
    #[must_use]
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first = first;
        self.max = max.max(first);
        self
    }

    /// Runs `attempt` (given its number, from 1) until it succeeds, fails with an error that
    /// `is_transient` says retrying cannot fix, or the deadline comes (an attempt still running
    /// then is dropped). A retry that could not finish waiting before the deadline is not begun.
    pub async fn run<T, E, F, Fut>(
        &self,
        mut attempt: F,
        is_transient: impl Fn(&E) -> bool,
    ) -> Result<T, RetryFailure<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let began = Instant::now();
        let mut wait = self.first;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match tokio::time::timeout_at(self.until, attempt(attempts)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                Err(_) => return Err(RetryFailure { attempts, elapsed: began.elapsed(), last_error: None }),
            };
            if !is_transient(&error) || Instant::now() + wait >= self.until {
                return Err(RetryFailure { attempts, elapsed: began.elapsed(), last_error: Some(error) });
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.max);
        }
    }
}
