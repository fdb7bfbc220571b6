//! [`GuardedStore`]: a [`Store`] decorator with a circuit breaker, so that a
//! store known to be down answers at once instead of costing every call a
//! connection attempt or a timeout.
//!
//! After [`FAILURE_THRESHOLD`] consecutive calls fail with
//! [`StoreError::Unavailable`] (the database cannot be reached) or are
//! abandoned unanswered after a second or more (a hung database: the
//! cache's hard loader timeout gives up on them), calls are refused with
//! [`StoreError::Down`] without touching the database: an uncached read is
//! a 503 (with `Retry-After`) within microseconds, an expired cached
//! product is answered `STALE` at once (the cache's loader fails fast, and
//! fail-safe answers), and `/health` says `down` at once. Every
//! [`COOLDOWN`] one call is let through as a probe, and its success closes
//! the breaker: the next request when the database refused calls (a probe
//! then fails at once), only a ping of the probe task (at most
//! `PROBE_TIMEOUT`) when it hung, so that no request waits out a hung
//! database. The probe task pings on that beat in both cases, so the
//! service recovers within about a second of the database answering,
//! traffic or not. Any answer from the database (a row, "not found", a
//! version conflict) counts as a success.
//!
//! This is tiercache's [`CircuitBreaker`], the one that guards Redis.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics::Gauge;
use tiercache::building_blocks::{CircuitBreaker, Permit};
use tokio_util::task::AbortOnDropHandle;

use super::decorator::{Decorator, Op, StoreMetrics};
use super::{Store, StoreError};

/// Consecutive unavailable answers that open the breaker.
pub const FAILURE_THRESHOLD: u32 = 3;
/// How long calls are refused before a probe; also the `Retry-After` of a
/// 503 while the store is down.
pub const COOLDOWN: Duration = Duration::from_secs(1);
/// Longest the probe task waits for its ping (at least [`ABANDONED_AFTER`],
/// so that a ping given up counts as a failure).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A call given up on after this long counts as a failure (see [`Pending`]).
const ABANDONED_AFTER: Duration = Duration::from_secs(1);

/// Wraps another store; refuses calls while the breaker is open.
#[derive(Debug)]
pub struct GuardedStore {
    guard: Arc<Guard>,
    _probe: AbortOnDropHandle<()>,
}

#[derive(Debug)]
struct Guard {
    inner: Arc<dyn Store>,
    breaker: CircuitBreaker,
    /// The last call that settled or was abandoned was abandoned: the
    /// database hangs rather than refuses.
    hung: AtomicBool,
    /// 1 while the breaker is not closed.
    open: Gauge,
}

impl GuardedStore {
    /// Wraps `inner`; its state shows as `db_circuit_open` in `metrics`.
    ///
    /// # Panics
    /// Outside a tokio runtime (the probe task is spawned on it).
    pub fn new(inner: Arc<dyn Store>, metrics: &dyn StoreMetrics) -> Self {
        let guard = Arc::new(Guard {
            inner,
            breaker: CircuitBreaker::new(FAILURE_THRESHOLD, COOLDOWN),
            hung: AtomicBool::new(false),
            open: metrics.circuit_open(),
        });
        let probe = AbortOnDropHandle::new(tokio::spawn(probe(Arc::downgrade(&guard))));
        Self {
            guard,
            _probe: probe,
        }
    }
}

impl Guard {
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if !self.breaker.is_closed() {
            // A hung database is probed by the probe task only: a request
            // made the probe would wait as long as the calls that found it
            // hung. One that refused calls fails a probe at once, so a
            // request may be the probe and find it back without delay.
            if self.hung.load(Ordering::Relaxed) || self.breaker.permit() == Permit::Refused {
                return Err(StoreError::Down);
            }
        }
        self.call(call).await
    }

    /// Makes the call and records how it went.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut pending = Pending {
            guard: self,
            started: Instant::now(),
            settled: false,
        };
        let result = call.await;
        pending.settled = true;
        self.hung.store(false, Ordering::Relaxed);
        match &result {
            Err(StoreError::Unavailable(error)) => self.failed(error),
            _ => self.succeeded(),
        }
        result
    }

    fn failed(&self, error: &dyn std::fmt::Display) {
        if self.breaker.on_failure() {
            self.open.set(1.0);
            tracing::warn!(
                %error,
                cooldown = ?COOLDOWN,
                "store unavailable; circuit breaker open, refusing store calls until a probe succeeds"
            );
        }
    }

    fn succeeded(&self) {
        if self.breaker.on_success() {
            self.open.set(0.0);
            tracing::info!("store is back; circuit breaker closed");
        }
    }
}

/// A call in progress. Dropped unsettled, it was abandoned by its caller:
/// after [`ABANDONED_AFTER`] or more that counts as a failure, since a hung
/// database answers nothing at all and its calls end only by being given
/// up (the cache's hard loader timeout, the request timeout).
struct Pending<'a> {
    guard: &'a Guard,
    started: Instant,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled && self.started.elapsed() >= ABANDONED_AFTER {
            self.guard.hung.store(true, Ordering::Relaxed);
            self.guard.failed(&"a call was abandoned unanswered");
        }
    }
}

/// While the breaker is open, pings the store once per cooldown (the
/// half-open probe, given up after [`PROBE_TIMEOUT`]), so that it closes
/// within a cooldown of the store answering again, traffic or not.
async fn probe(guard: std::sync::Weak<Guard>) {
    let mut beat = tokio::time::interval(COOLDOWN);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.tick().await;
        let Some(guard) = guard.upgrade() else { return };
        if guard.breaker.is_closed() || guard.breaker.permit() != Permit::Probe {
            continue;
        }
        // Given up unanswered, the ping counts as abandoned (a hung store).
        let _ = tokio::time::timeout(PROBE_TIMEOUT, guard.call(guard.inner.ping())).await;
    }
}

impl Decorator for GuardedStore {
    fn inner(&self) -> &dyn Store {
        self.guard.inner.as_ref()
    }

    /// Every call but `migrate` (made once, at start, before there is
    /// traffic to protect) goes through the breaker.
    async fn around<T: Send>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        match op {
            Op::Migrate => call.await,
            _ => self.guard.guarded(call).await,
        }
    }
}
