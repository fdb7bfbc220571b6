//! Bounded polling: the one way the tests wait for something that happens
//! in its own time (a bus message applied, a queue flushed, a server
//! started). Every wait has a limit, a condition, and the same pace
//! ([`POLL_INTERVAL`]); nothing here retries a failed assertion.
//!
//! Time is tokio's: in a test on a paused clock (`time::pause()`) the limit
//! is virtual time, and the sleeps between checks let it advance.

use std::time::Duration;

use tokio::time::Instant;

/// The pause between two checks of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Checks `check` until it returns `true` or `limit` has passed; whether it
/// did.
///
/// The first check is made at once and the last one at the limit (the
/// sleep before it is cut short), so a zero `limit` checks exactly once.
#[must_use = "a condition that never held is a failure to report"]
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    poll_until(limit, async || check().await, |held| *held)
        .await
        .is_ok()
}

/// Reads `probe` until `done` accepts the value or `limit` has passed:
/// `Ok` with the accepted value, or `Err` with the last one (to say in a
/// failure what was seen instead).
///
/// Checks as [`eventually`] does: at once, every [`POLL_INTERVAL`], and
/// once more at the limit.
pub async fn poll_until<T>(
    limit: Duration,
    mut probe: impl AsyncFnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> Result<T, T> {
    let started = Instant::now();
    loop {
        let value = probe().await;
        if done(&value) {
            return Ok(value);
        }
        let elapsed = started.elapsed();
        if elapsed >= limit {
            return Err(value);
        }
        tokio::time::sleep(POLL_INTERVAL.min(limit - elapsed)).await;
    }
}

/// [`eventually`], for a wait that is part of arranging a test: panics
/// with `gave up after {limit:?} waiting for: {what}` if `check` never
/// held.
///
/// # Panics
/// When `limit` passes before `check` returns `true`.
pub async fn wait_for(limit: Duration, what: &str, check: impl AsyncFnMut() -> bool) {
    assert!(
        eventually(limit, check).await,
        "gave up after {limit:?} waiting for: {what}"
    );
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_condition_that_holds_later_is_seen_within_one_interval() {
        let started = Instant::now();
        let ready_at = Duration::from_millis(95);

        let held = eventually(Duration::from_secs(1), async || {
            started.elapsed() >= ready_at
        })
        .await;

        assert!(held);
        assert!(started.elapsed() < ready_at + POLL_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_condition_that_never_holds_is_checked_last_at_the_limit() {
        let started = Instant::now();
        let last_check = Cell::new(None);
        let limit = Duration::from_millis(25);

        let held = eventually(limit, async || {
            last_check.set(Some(started.elapsed()));
            false
        })
        .await;

        assert!(!held);
        assert_eq!(last_check.get(), Some(limit));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_limit_checks_once() {
        let checks = Cell::new(0);

        let last = poll_until(
            Duration::ZERO,
            async || {
                checks.set(checks.get() + 1);
                checks.get()
            },
            |_| false,
        )
        .await;

        assert_eq!((last, checks.get()), (Err(1), 1));
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "gave up after 50ms waiting for: nothing")]
    async fn wait_for_names_what_it_waited_for() {
        wait_for(Duration::from_millis(50), "nothing", async || false).await;
    }
}
