//! Latency percentiles in bounded memory, and the longest stretch without a successful response.

use std::time::Duration;

/// Sub-buckets per power of two: values under `2 * SUB` are exact, larger ones are kept within
/// 1/128 (0.8 %) of their value.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Larger values are recorded as this one (71 minutes in microseconds): the drill's per-request
/// timeout ends every request long before, so nothing real is clipped, and the bucket count stays
/// bounded whatever a caller records.
const MAX_VALUE: u64 = u32::MAX as u64;

/// A log-linear histogram of microseconds, in the manner of HdrHistogram: memory grows with the
/// largest value recorded (2,176 counters for 5 s), never with the number of values.
#[derive(Clone, Debug, Default)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    /// Counts one value.
    pub(crate) fn record(&mut self, micros: u64) {
        let micros = micros.min(MAX_VALUE);
        let index = bucket(micros);
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    /// Adds every value of `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// How many values were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded, exactly.
    pub(crate) fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// The nearest-rank quantile `numerator / denominator` (`1, 2` for the median, `99, 100` for
    /// p99): the smallest recorded value with at least that share of the values at or below it,
    /// reported as the top of its bucket so that it never understates. Integer fractions keep
    /// the rank exact (as floats, `0.99 * 100` rounds up to a rank too many).
    pub(crate) fn quantile(&self, numerator: u64, denominator: u64) -> Option<u64> {
        if self.total == 0 || denominator == 0 {
            return None;
        }
        let rank = (self.total * numerator).div_ceil(denominator).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(highest_in(index).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// The bucket of `value`: itself below `2 * SUB`, then `SUB` buckets per power of two.
fn bucket(value: u64) -> usize {
    if value < 2 * SUB {
        return value as usize;
    }
    let exponent = u64::BITS - 1 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    // `value >> shift` is in SUB..2 * SUB; octave `exponent` starts at bucket
    // (exponent - SUB_BITS + 1) * SUB.
    ((exponent - SUB_BITS + 1) as u64 * SUB + (value >> shift) - SUB) as usize
}

/// The largest value that falls in bucket `index`.
fn highest_in(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB {
        return index;
    }
    let shift = index / SUB - 1;
    let low = (index % SUB + SUB) << shift;
    low + (1 << shift) - 1
}

/// The longest time between two successive successes, fed in time order.
///
/// The load generator records successes under one lock and reads the clock inside it, so the
/// times arrive sorted even though they come from many connections, and it finishes the tracker
/// under the same lock, so that the requests still in flight when the load stops (whose
/// answers trickle in with nothing sent after them) cannot make gaps of their own.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GapTracker {
    last: Duration,
    longest: Gap,
    finished: bool,
}

/// A stretch of time without any successful response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Gap {
    /// When it began (the last success before it), since the load started.
    pub(crate) from: Duration,
    /// How long it lasted.
    pub(crate) length: Duration,
}

impl GapTracker {
    /// A tracker whose first gap starts at `origin`, when the load began.
    pub(crate) fn new(origin: Duration) -> Self {
        Self { last: origin, longest: Gap { from: origin, length: Duration::ZERO }, finished: false }
    }

    /// A success at `at`; ignored once the tracker is finished.
    pub(crate) fn success(&mut self, at: Duration) {
        if self.finished {
            return;
        }
        self.observe(at);
        self.last = self.last.max(at);
    }

    /// Ends the tracking at `end` (when the load stopped) and returns the longest gap, counting
    /// the stretch from the last success to `end`: a service that never comes back must show as
    /// one long gap, not as none. Later calls return the same gap.
    pub(crate) fn finish(&mut self, end: Duration) -> Gap {
        if !self.finished {
            self.observe(end);
            self.finished = true;
        }
        self.longest
    }

    fn observe(&mut self, at: Duration) {
        let length = at.saturating_sub(self.last);
        if length > self.longest.length {
            self.longest = Gap { from: self.last, length };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram {
        let mut histogram = Histogram::default();
        for value in values {
            histogram.record(value);
        }
        histogram
    }

    #[test]
    fn small_values_give_exact_nearest_rank_percentiles() {
        let h = histogram(1..=100);
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(1, 2), Some(50));
        assert_eq!(h.quantile(99, 100), Some(99));
        assert_eq!(h.quantile(1, 1), Some(100));
        assert_eq!(h.quantile(0, 1), Some(1), "rank 0 is clamped to the smallest value");
        assert_eq!(h.max(), Some(100));
    }

    #[test]
    fn percentiles_ignore_insertion_order() {
        let h = histogram([200, 3, 150, 7, 7, 90, 12, 250, 1, 33]);
        // Sorted: 1 3 7 7 12 33 90 150 200 250.
        assert_eq!(h.quantile(1, 2), Some(12));
        assert_eq!(h.quantile(9, 10), Some(200));
        assert_eq!(h.quantile(99, 100), Some(250));
        assert_eq!(h.quantile(1, 10), Some(1));
    }

    #[test]
    fn large_values_stay_within_one_bucket_above_the_truth() {
        let h = histogram(1..=100_000);
        let median = h.quantile(1, 2).unwrap_or_default();
        let p99 = h.quantile(99, 100).unwrap_or_default();
        // Buckets are 1/128 of the value wide, and the top of the bucket is reported.
        assert!((50_000..=50_000 + 50_000 / 128).contains(&median), "median {median}");
        assert!((99_000..=99_000 + 99_000 / 128).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile(1, 1), Some(100_000), "the top is the exact maximum");
    }

    #[test]
    fn one_slow_request_in_a_hundred_sets_the_p99_but_not_the_median() {
        let h = histogram(std::iter::repeat_n(1_000, 98).chain([5_000_000, 5_000_000]));
        // 1,000 is in the 512..1024 octave, whose buckets are 4 wide: 1,000..=1,003.
        assert_eq!(h.quantile(1, 2), Some(1_003));
        let p99 = h.quantile(99, 100).unwrap_or_default();
        assert!((5_000_000..=5_000_000 + 5_000_000 / 128).contains(&p99), "p99 {p99}");
        assert_eq!(h.max(), Some(5_000_000));
    }

    #[test]
    fn every_value_lies_in_the_bucket_it_is_counted_in() {
        for value in (0..5_000).chain((1..64).map(|shift| (1u64 << shift) - 1)).chain([MAX_VALUE]) {
            let index = bucket(value);
            assert!(highest_in(index) >= value, "{value} in bucket {index}");
            if index > 0 {
                assert!(highest_in(index - 1) < value, "{value} belongs to an earlier bucket");
            }
        }
        assert_eq!(bucket(MAX_VALUE) + 1, 26 * SUB as usize, "bounded bucket count");
    }

    #[test]
    fn merging_adds_counts_and_keeps_the_largest_maximum() {
        let mut a = histogram(1..=50);
        a.merge(&histogram(51..=100));
        assert_eq!(a.count(), 100);
        assert_eq!(a.quantile(1, 2), Some(50));
        assert_eq!(a.max(), Some(100));
        let mut empty = Histogram::default();
        assert_eq!(empty.quantile(1, 2), None);
        assert_eq!(empty.max(), None);
        empty.merge(&a);
        assert_eq!(empty.quantile(99, 100), Some(99));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn longest_gap_is_between_the_successes_furthest_apart() {
        let mut gaps = GapTracker::new(ms(0));
        for at in [1, 2, 4, 5, 85, 86, 87, 120, 121] {
            gaps.success(ms(at));
        }
        assert_eq!(gaps.finish(ms(125)), Gap { from: ms(5), length: ms(80) });
    }

    #[test]
    fn a_service_that_never_answers_again_is_one_gap_to_the_end() {
        let mut gaps = GapTracker::new(ms(0));
        for at in [10, 20, 30] {
            gaps.success(ms(at));
        }
        assert_eq!(gaps.finish(ms(1_030)), Gap { from: ms(30), length: ms(1_000) });
    }

    #[test]
    fn answers_after_the_end_make_no_gap() {
        let mut gaps = GapTracker::new(ms(0));
        for at in [10, 25, 30] {
            gaps.success(ms(at));
        }
        assert_eq!(gaps.finish(ms(40)), Gap { from: ms(10), length: ms(15) });
        // Requests in flight at the stop, answered late and far apart.
        gaps.success(ms(500));
        gaps.success(ms(900));
        assert_eq!(gaps.finish(ms(900)), Gap { from: ms(10), length: ms(15) });
    }

    #[test]
    fn no_success_at_all_is_a_gap_from_the_start() {
        assert_eq!(GapTracker::new(ms(100)).finish(ms(600)), Gap { from: ms(100), length: ms(500) });
    }

    #[test]
    fn a_success_out_of_order_neither_shrinks_nor_invents_a_gap() {
        let mut gaps = GapTracker::new(ms(0));
        gaps.success(ms(10));
        gaps.success(ms(50));
        gaps.success(ms(40));
        gaps.success(ms(60));
        assert_eq!(gaps.finish(ms(60)), Gap { from: ms(10), length: ms(40) });
    }
}
