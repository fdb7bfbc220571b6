//! Request-level counters of product reads: how many, how many a cache level
//! answered, and their total time (for the average in `/cache/stats`).
//!
//! Relaxed atomics: the counters are statistics, read as a loose snapshot;
//! no other memory depends on their order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of product reads (single and batch).
#[derive(Debug, Default)]
pub struct RequestStats {
    requests: AtomicU64,
    hits: AtomicU64,
    total_micros: AtomicU64,
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
        self.requests.fetch_add(1, Ordering::Relaxed);
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.total_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RequestSnapshot {
        let requests = self.requests.load(Ordering::Relaxed);
        let hits = self.hits.load(Ordering::Relaxed).min(requests);
        let total_micros = self.total_micros.load(Ordering::Relaxed);
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
