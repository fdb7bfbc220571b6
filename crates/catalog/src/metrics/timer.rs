//! [`RequestTimer`]: `request_duration_seconds` of one endpoint, recorded
//! on the request path without shared writes and replayed into the
//! exporter's histogram at scrape time.

use std::sync::Arc;
use std::time::Duration;

use metrics::Histogram;

use super::DURATION_BUCKETS;

/// An endpoint's exporter histogram, its striped timer, and the timer's
/// counts already replayed into the histogram.
pub(super) type RegisteredTimer = (Histogram, Arc<RequestTimer>, [u64; TIMER_SLOTS]);

/// Slots of a [`RequestTimer`]: one per [`DURATION_BUCKETS`] bound, one for
/// the overflow, one for the sum of durations in ns.
pub(super) const TIMER_SLOTS: usize = DURATION_BUCKETS.len() + 2;
const TIMER_SUM: usize = TIMER_SLOTS - 1;
/// Where overflow durations (above the last bound) are replayed.
const TIMER_OVERFLOW_SECONDS: f64 = 2.0 * DURATION_BUCKETS[DURATION_BUCKETS.len() - 1];

/// `request_duration_seconds` of one endpoint, recorded without shared
/// writes: per-thread stripes of bucket counts and of the summed duration
/// (`tiercache::building_blocks::Striped`), replayed into the exporter's histogram at scrape
/// time ([`Metrics::render`](super::Metrics::render)). Recording straight into the exporter's
/// histogram (an atomic bucket all cores append to) cost about a tenth of
/// the L1-hit throughput on 2 cores (measured); this costs two striped
/// increments.
#[derive(Debug, Default)]
pub struct RequestTimer {
    slots: tiercache::building_blocks::Striped<TIMER_SLOTS>,
}

impl RequestTimer {
    /// Counts one request that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS.partition_point(|&bound| bound < seconds);
        self.slots.incr(bucket);
        self.slots.add(
            TIMER_SUM,
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// Records the requests counted since `seen` into `histogram` so that
    /// both its bucket counts and its sum come out exact: each bucket's new
    /// requests are recorded at one point inside the bucket, the same
    /// fraction of the way up in every bucket, chosen to make the values
    /// add up to the measured sum (overflow requests at twice the last
    /// bound).
    pub(super) fn replay_into(&self, histogram: &Histogram, seen: &mut [u64; TIMER_SLOTS]) {
        let now: [u64; TIMER_SLOTS] = std::array::from_fn(|slot| self.slots.sum(slot));
        let new: [u64; TIMER_SLOTS] =
            std::array::from_fn(|slot| now[slot].saturating_sub(seen[slot]));
        *seen = now;
        let lower = |i: usize| if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
        let mut floor = TIMER_OVERFLOW_SECONDS * new[DURATION_BUCKETS.len()] as f64;
        let mut spread = 0.0;
        for i in 0..DURATION_BUCKETS.len() {
            floor += lower(i) * new[i] as f64;
            spread += (DURATION_BUCKETS[i] - lower(i)) * new[i] as f64;
        }
        let sum = new[TIMER_SUM] as f64 / 1e9;
        // Strictly above the lower bound, so each value stays in its bucket.
        let fraction = if spread > 0.0 {
            ((sum - floor) / spread).clamp(1e-6, 1.0)
        } else {
            1.0
        };
        for (i, &count) in new[..DURATION_BUCKETS.len()].iter().enumerate() {
            if count > 0 {
                let value = lower(i) + fraction * (DURATION_BUCKETS[i] - lower(i));
                histogram.record_many(value, usize::try_from(count).unwrap_or(usize::MAX));
            }
        }
        let overflow = new[DURATION_BUCKETS.len()];
        if overflow > 0 {
            histogram.record_many(
                TIMER_OVERFLOW_SECONDS,
                usize::try_from(overflow).unwrap_or(usize::MAX),
            );
        }
    }
}
