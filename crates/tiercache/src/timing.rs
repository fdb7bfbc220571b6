//! [`Timing`]: where the duration of a Redis or loader call is recorded, a
//! histogram with the `metrics` feature (see `telemetry`) and nothing
//! without it, so that the call sites need no `cfg`.

use std::time::Instant;

/// A duration histogram, or nothing.
#[derive(Clone, Default)]
pub(crate) struct Timing {
    #[cfg(feature = "metrics")]
    histogram: Option<metrics::Histogram>,
}

impl std::fmt::Debug for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timing")
    }
}

impl Timing {
    #[cfg(feature = "metrics")]
    pub(crate) fn new(histogram: metrics::Histogram) -> Self {
        Self {
            histogram: Some(histogram),
        }
    }

    /// Records the time since `started`.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), expect(unused_variables))]
    pub(crate) fn record(&self, started: Instant) {
        #[cfg(feature = "metrics")]
        if let Some(histogram) = &self.histogram {
            histogram.record(started.elapsed());
        }
    }
}
