//! Request-level counters of product reads: how many, how many a cache level
//! answered, and their total time (for the average in `/cache/stats`).
//!
//! Recorded on every read, the cache-hit path included, so they are striped
//! per thread (`tiercache::Striped`) rather than atomics every core writes.

use std::time::Duration;

use tiercache::Striped;

const REQUESTS: usize = 0;
const HITS: usize = 1;
const MICROS: usize = 2;

/// Counters of product reads (single and batch).
#[derive(Debug, Default)]
pub struct RequestStats {
    counters: Striped<3>,
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

impl RequestStats {
    /// Counts one read that took `elapsed`.
    pub fn record(&self, hit: bool, elapsed: Duration) {
        self.counters.incr(REQUESTS);
        if hit {
            self.counters.incr(HITS);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counters.add(MICROS, micros);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_snapshot_has_zero_rates() {
        let snapshot = RequestStats::default().snapshot();

        assert_eq!(snapshot.requests, 0);
        assert_eq!(snapshot.hit_rate, 0.0);
        assert_eq!(snapshot.avg_response_time_ms, 0.0);
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
}
