//! Request-level counters of product reads: how many, how many a cache level
//! answered, their total time (for the average in `/cache/stats`) and a
//! latency histogram (for the percentiles of `/cache/latency`).
//!
//! Recorded on every read, the cache-hit path included, so they are striped
//! per thread (`tiercache::building_blocks::Striped`) rather than atomics every core writes.
//! The histogram is one more striped counter per read: its buckets are fixed,
//! so finding one is a search in a constant array, with no lock and no
//! allocation.

use std::time::Duration;

use tiercache::building_blocks::Striped;

const REQUESTS: usize = 0;
const HITS: usize = 1;
const MICROS: usize = 2;
/// The first histogram bucket; bucket `i` is counter `FIRST_BUCKET + i`.
const FIRST_BUCKET: usize = 3;

/// Upper bounds of the latency buckets, in nanoseconds: 1-2-5 steps from
/// 1 µs to 10 s. An L1 hit takes about a microsecond and a store read up to
/// milliseconds, so the low end needs microsecond resolution; beyond 10 s the
/// request timeout has long passed. A read of `d` counts in the first bucket
/// whose bound is at least `d`; a read over the last bound in the overflow
/// bucket.
const BOUNDS_NS: [u64; 22] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Latency buckets: one per bound plus the overflow bucket.
const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// Counters of product reads (single and batch).
#[derive(Debug, Default)]
pub struct RequestStats {
    counters: Striped<{ FIRST_BUCKET + BUCKETS }>,
}

/// A point-in-time copy of [`RequestStats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestSnapshot {
    pub requests: u64,
    /// Reads answered entirely by a cache level.
    pub hits: u64,
    /// Reads that needed the store.
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 when there were none.
    pub hit_rate: f64,
    pub avg_response_time_ms: f64,
}

/// The bucket a read of `elapsed` counts in.
fn bucket(elapsed: Duration) -> usize {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    // The bounds ascend: the number below `nanos` is the index of the first
    // bound at or above it, `BOUNDS_NS.len()` (the overflow) when none is.
    BOUNDS_NS.partition_point(|&bound| bound < nanos)
}

impl RequestStats {
    /// Counts one read that took `elapsed`.
    pub fn record(&self, hit: bool, elapsed: Duration) {
        self.counters.incr(REQUESTS);
        if hit {
            self.counters.incr(HITS);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counters.add(MICROS, micros);
        self.counters.incr(FIRST_BUCKET + bucket(elapsed));
    }

    pub fn snapshot(&self) -> RequestSnapshot {
        let requests = self.counters.sum(REQUESTS);
        // Stripes are read one after another: clamp so that a hit counted
        // after its request was summed cannot make misses negative.
        let hits = self.counters.sum(HITS).min(requests);
        let total_micros = self.counters.sum(MICROS);
        let ratio = |num: f64| {
            if requests == 0 {
                0.0
            } else {
                num / requests as f64
            }
        };
        RequestSnapshot {
            requests,
            hits,
            misses: requests - hits,
            hit_rate: ratio(hits as f64),
            avg_response_time_ms: ratio(total_micros as f64 / 1_000.0),
        }
    }

    /// Latency buckets: one per bound of [`RequestStats::latency_bounds_ms`]
    /// plus the overflow bucket.
    pub const LATENCY_BUCKETS: usize = BUCKETS;

    /// The latency buckets' upper bounds in milliseconds, ascending; one
    /// fewer than the buckets, as the overflow bucket has none.
    pub fn latency_bounds_ms() -> impl ExactSizeIterator<Item = f64> {
        BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e6)
    }

    /// Reads since start per latency bucket, not cumulative: bucket `i`
    /// holds the reads over bound `i - 1` and at most bound `i`, the last
    /// one those over every bound. Two copies subtract into the histogram
    /// of the reads between them. A loose snapshot, like
    /// [`RequestStats::snapshot`]: reads in progress may or may not be in it.
    pub fn latency_counts(&self) -> [u64; Self::LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.counters.sum(FIRST_BUCKET + i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_snapshot_has_zero_rates() {
        let stats = RequestStats::default();
        let snapshot = stats.snapshot();

        assert_eq!(snapshot.requests, 0);
        assert_eq!(snapshot.hit_rate, 0.0);
        assert_eq!(snapshot.avg_response_time_ms, 0.0);
        assert_eq!(stats.latency_counts(), [0; BUCKETS]);
    }

    #[test]
    fn hit_rate_and_average_follow_the_records() {
        let stats = RequestStats::default();

        stats.record(true, Duration::from_millis(1));
        stats.record(true, Duration::from_millis(2));
        stats.record(false, Duration::from_millis(6));
        stats.record(true, Duration::from_millis(3));
        let snapshot = stats.snapshot();

        assert_eq!(snapshot.requests, 4);
        assert_eq!(snapshot.hits, 3);
        assert_eq!(snapshot.misses, 1);
        assert_eq!(snapshot.hit_rate, 0.75);
        assert_eq!(snapshot.avg_response_time_ms, 3.0);
    }

    #[test]
    fn a_bound_belongs_to_its_own_bucket_and_a_nanosecond_more_to_the_next() {
        for (i, &bound) in BOUNDS_NS.iter().enumerate() {
            assert_eq!(bucket(Duration::from_nanos(bound)), i, "{bound} ns");
            assert_eq!(
                bucket(Duration::from_nanos(bound + 1)),
                i + 1,
                "{bound} ns + 1"
            );
        }
    }

    #[test]
    fn the_extremes_land_in_the_first_and_the_overflow_bucket() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_secs(3_600)), BUCKETS - 1);
        assert_eq!(bucket(Duration::MAX), BUCKETS - 1);
    }

    #[test]
    fn bounds_ascend_in_1_2_5_steps_from_a_microsecond_to_ten_seconds() {
        let bounds: Vec<f64> = RequestStats::latency_bounds_ms().collect();

        assert_eq!(bounds.len(), BUCKETS - 1);
        assert_eq!(bounds.first(), Some(&0.001));
        assert_eq!(bounds.last(), Some(&10_000.0));
        for pair in BOUNDS_NS.windows(2) {
            let step = pair[1] * 10 / pair[0];
            assert!([20, 25, 50].contains(&step), "{pair:?}");
        }
    }

    #[test]
    fn the_histogram_counts_every_read_once_in_its_bucket() {
        let stats = RequestStats::default();

        stats.record(true, Duration::from_nanos(300));
        stats.record(true, Duration::from_nanos(1_500));
        stats.record(true, Duration::from_nanos(1_999));
        stats.record(false, Duration::from_millis(4));
        stats.record(false, Duration::from_secs(11));
        let counts = stats.latency_counts();

        let mut expected = [0; BUCKETS];
        expected[0] = 1; // ≤ 1 µs
        expected[1] = 2; // ≤ 2 µs
        expected[11] = 1; // ≤ 5 ms
        expected[BUCKETS - 1] = 1; // > 10 s
        assert_eq!(counts, expected);
        assert_eq!(counts.iter().sum::<u64>(), stats.snapshot().requests);
    }
}
