//! [`Timing`]: where the duration of a Redis or loader call is recorded, a
//! histogram with the `metrics` feature (see `telemetry`) and nothing
//! without it, so that the call sites need no `cfg`.

#[cfg(feature = "metrics")]
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

/// When a timed call started: read from the clock only when a histogram
/// will record it, so that an untimed call pays nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    #[cfg(feature = "metrics")]
    at: Option<Instant>,
}

impl Timing {
    #[cfg(feature = "metrics")]
    pub(crate) fn new(histogram: metrics::Histogram) -> Self {
        Self {
            histogram: Some(histogram),
        }
    }

    /// Marks the start of a call.
    #[inline]
    pub(crate) fn start(&self) -> Started {
        Started {
            #[cfg(feature = "metrics")]
            at: self.histogram.as_ref().map(|_| Instant::now()),
        }
    }

    /// Records the time since `started`.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), expect(unused_variables))]
    pub(crate) fn record(&self, started: Started) {
        #[cfg(feature = "metrics")]
        if let (Some(histogram), Some(at)) = (&self.histogram, started.at) {
            histogram.record(at.elapsed());
        }
    }
}
