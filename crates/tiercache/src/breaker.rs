//! A consecutive-failure circuit breaker, for the Redis level (and public,
//! for any other dependency: the catalog guards its store with it).
//!
//! It stops a dead dependency from costing every request a timeout: after
//! `failure_threshold` consecutive failures it *opens* and calls are refused
//! at once (the caller falls through to the loader). After `cooldown` one
//! call is let through as a *probe* (half-open); its success closes the
//! breaker, its failure re-opens it for another cooldown. A probe whose
//! caller vanished (its future was dropped) is presumed lost after another
//! cooldown, so the breaker can never stay half-open forever.
//!
//! Only availability failures count (I/O, timeouts, cluster down…); a
//! command Redis rejected on its merits (say, a wrong-type reply) proves
//! Redis alive and is reported as a success here. That classification lives
//! with the caller (for Redis, in `remote::is_availability_failure`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::clock::{Clock, SystemClock};

/// Breaker tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub(crate) failure_threshold: u32,
    /// How long the breaker stays open before it lets a probe through.
    pub(crate) cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

/// Circuit breaker state machine; cheap to call (one uncontended mutex).
///
/// Ask [`permit`](Self::permit) before each call to the dependency, then
/// report how it went with [`on_success`](Self::on_success) or
/// [`on_failure`](Self::on_failure) (availability failures only).
///
/// ```
/// use std::time::Duration;
/// use tiercache::building_blocks::{CircuitBreaker, Permit};
///
/// let breaker = CircuitBreaker::new(2, Duration::from_secs(1));
/// breaker.on_failure();
/// assert!(breaker.on_failure(), "the second failure opens it");
/// assert_eq!(breaker.permit(), Permit::Refused);
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

/// What the breaker says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Permit {
    /// Make the call.
    Allowed,
    /// Make the call: it is the half-open probe.
    Probe,
    /// Do not call the dependency.
    Refused,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `failure_threshold` consecutive
    /// failures (at least 1) and lets a probe through every `cooldown`
    /// while open.
    pub fn new(failure_threshold: u32, cooldown: Duration) -> Self {
        Self::with_clock(
            BreakerConfig {
                failure_threshold,
                cooldown,
            },
            Arc::new(SystemClock),
        )
    }

    pub(crate) fn with_clock(config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            config: BreakerConfig {
                failure_threshold: config.failure_threshold.max(1),
                cooldown: config.cooldown,
            },
            clock,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain value that every transition writes whole, so
        // a panic elsewhere cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks whether a call may go to the dependency now.
    pub fn permit(&self) -> Permit {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Permit::Allowed,
            State::Open { until } => {
                let now = self.clock.now();
                if now >= until {
                    *state = State::HalfOpen { probe_started: now };
                    Permit::Probe
                } else {
                    Permit::Refused
                }
            }
            State::HalfOpen { probe_started } => {
                let now = self.clock.now();
                if now.duration_since(probe_started) >= self.config.cooldown {
                    *state = State::HalfOpen { probe_started: now };
                    Permit::Probe
                } else {
                    Permit::Refused
                }
            }
        }
    }

    /// Records a call that reached the dependency and got an answer; returns whether
    /// this closed an open breaker.
    pub fn on_success(&self) -> bool {
        let mut state = self.lock();
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        !was_closed
    }

    /// Records a call that failed for availability reasons; returns whether
    /// this opened a closed breaker.
    pub fn on_failure(&self) -> bool {
        let mut state = self.lock();
        let was_closed = matches!(*state, State::Closed { .. });
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            State::Closed { .. } | State::HalfOpen { .. } | State::Open { .. } => State::Open {
                until: self.clock.now() + self.config.cooldown,
            },
        };
        was_closed && !matches!(*state, State::Closed { .. })
    }

    #[cfg(any(test, feature = "redis"))]
    /// Opens the breaker regardless of the failure count (used while the
    /// first connection has not been made).
    pub(crate) fn trip(&self) {
        *self.lock() = State::Open {
            until: self.clock.now() + self.config.cooldown,
        };
    }

    /// Whether calls currently flow normally.
    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const COOLDOWN: Duration = Duration::from_secs(1);

    fn breaker(threshold: u32) -> (CircuitBreaker, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let config = BreakerConfig {
            failure_threshold: threshold,
            cooldown: COOLDOWN,
        };
        (CircuitBreaker::with_clock(config, clock.clone()), clock)
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let (breaker, _clock) = breaker(3);
        assert!(!breaker.on_failure());
        assert!(!breaker.on_failure());
        assert_eq!(breaker.permit(), Permit::Allowed);
        assert!(breaker.on_failure(), "reports the transition to open");
        assert!(!breaker.is_closed());
        assert_eq!(breaker.permit(), Permit::Refused);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let (breaker, _clock) = breaker(3);
        breaker.on_failure();
        breaker.on_failure();
        breaker.on_success();
        breaker.on_failure();
        breaker.on_failure();
        assert!(breaker.is_closed());
    }

    #[test]
    fn lets_one_probe_through_after_the_cooldown() {
        let (breaker, clock) = breaker(1);
        breaker.on_failure();
        clock.advance(COOLDOWN - Duration::from_millis(1));
        assert_eq!(breaker.permit(), Permit::Refused);
        clock.advance(Duration::from_millis(1));
        assert_eq!(breaker.permit(), Permit::Probe);
        assert_eq!(
            breaker.permit(),
            Permit::Refused,
            "only one probe at a time"
        );
    }

    #[test]
    fn successful_probe_closes() {
        let (breaker, clock) = breaker(1);
        breaker.on_failure();
        clock.advance(COOLDOWN);
        assert_eq!(breaker.permit(), Permit::Probe);
        assert!(breaker.on_success(), "reports the transition to closed");
        assert!(!breaker.on_success());
        assert!(breaker.is_closed());
        assert_eq!(breaker.permit(), Permit::Allowed);
    }

    #[test]
    fn failed_probe_reopens_for_a_full_cooldown() {
        let (breaker, clock) = breaker(1);
        breaker.on_failure();
        clock.advance(COOLDOWN);
        assert_eq!(breaker.permit(), Permit::Probe);
        assert!(!breaker.on_failure(), "already open, no new transition");
        clock.advance(COOLDOWN - Duration::from_millis(1));
        assert_eq!(breaker.permit(), Permit::Refused);
        clock.advance(Duration::from_millis(1));
        assert_eq!(breaker.permit(), Permit::Probe);
    }

    #[test]
    fn lost_probe_is_replaced_after_a_cooldown() {
        let (breaker, clock) = breaker(1);
        breaker.on_failure();
        clock.advance(COOLDOWN);
        assert_eq!(breaker.permit(), Permit::Probe);
        clock.advance(COOLDOWN);
        assert_eq!(breaker.permit(), Permit::Probe);
    }

    #[test]
    fn trip_opens_immediately() {
        let (breaker, clock) = breaker(5);
        breaker.trip();
        assert_eq!(breaker.permit(), Permit::Refused);
        clock.advance(COOLDOWN);
        assert_eq!(breaker.permit(), Permit::Probe);
    }

    #[test]
    fn zero_threshold_behaves_as_one() {
        let (breaker, _clock) = breaker(0);
        assert!(breaker.is_closed());
        breaker.on_failure();
        assert!(!breaker.is_closed());
    }
}
