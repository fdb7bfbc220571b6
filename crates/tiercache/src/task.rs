//! Helpers of the background tasks every part of the cache runs: tying a
//! task's life to its owner, and rate-limiting the warnings of a task that
//! keeps failing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one warning of a kind per this interval; the rest are counted.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(5);

#[cfg(any(feature = "redis", feature = "metrics"))]
/// Aborts a background task when dropped, so that tasks live exactly as
/// long as their owner.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

#[cfg(any(feature = "redis", feature = "metrics"))]
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lets one warning through per [`LOG_EVERY`] and counts the rest.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// Calls `log` with the number of warnings suppressed since the last
    /// one, or counts this one as suppressed.
    pub(crate) fn warn(&self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            *last = Some(now);
        }
        log(self.suppressed.swap(0, Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_lets_one_warning_through_per_interval() {
        let limiter = LogLimiter::default();
        let mut logged = Vec::new();
        for _ in 0..5 {
            limiter.warn(|suppressed| logged.push(suppressed));
        }
        assert_eq!(logged, vec![0]);
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 4);
        *limiter.last.lock().unwrap() = Some(Instant::now() - LOG_EVERY);
        limiter.warn(|suppressed| logged.push(suppressed));
        assert_eq!(logged, vec![0, 4]);
    }
}
