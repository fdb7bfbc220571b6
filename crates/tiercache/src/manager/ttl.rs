//! How long entries live: L1 lifetimes (TTL, fail-safe window, eager-refresh
//! point) and L2 TTLs, each shortened by a random jitter so that entries
//! filled together do not expire together.

use std::time::Duration;

use super::{Inner, Policy, Shared};
use crate::local::Lifetime;

impl<K, V> Inner<K, V> {
    /// An L1 entry's life under `policy`: the (jittered) TTL; for values
    /// also the fail-safe window and the eager-refresh point.
    pub(super) fn l1_lifetime(&self, value: &Shared<V>, policy: &Policy) -> Lifetime {
        if value.is_none() {
            let ttl = policy.negative_ttl.min(policy.l1_ttl);
            return Lifetime::ttl(self.jitter(ttl));
        }
        let fresh = self.jitter(policy.l1_ttl);
        Lifetime {
            fresh,
            stale: policy.fail_safe_window,
            refresh_after: policy.eager_refresh.map(|f| fresh.mul_f64(f)),
            degraded: false,
        }
    }

    /// The life of a value this instance wrote (write-behind): as fresh as a
    /// fill, negative entries included (they stand for a delete).
    #[cfg(feature = "redis")]
    pub(super) fn written_lifetime(&self, value: &Shared<V>) -> Lifetime {
        let policy = &self.settings.policy;
        if value.is_some() {
            self.l1_lifetime(value, policy)
        } else {
            Lifetime::ttl(self.jitter(policy.l1_ttl))
        }
    }

    /// A fail-safe answer's life: fresh for the throttle time, so that the
    /// failing loader is not called again by every request meanwhile.
    pub(super) fn degraded_lifetime(&self, policy: &Policy) -> Lifetime {
        Lifetime {
            fresh: self.settings.fail_safe_throttle,
            stale: policy.fail_safe_window,
            refresh_after: None,
            degraded: true,
        }
    }

    /// A Redis entry's (jittered) TTL under `policy`; zero keeps it out.
    #[cfg(feature = "redis")]
    pub(super) fn l2_ttl_for(&self, value: &Shared<V>, policy: &Policy) -> Duration {
        if !policy.use_l2 {
            return Duration::ZERO;
        }
        let ttl = if value.is_some() {
            policy.l2_ttl
        } else {
            policy.negative_ttl.min(policy.l2_ttl)
        };
        self.jitter(ttl)
    }

    /// Shortens `ttl` by a random fraction up to the configured jitter; never
    /// lengthens it, so the configured TTL stays a bound on staleness.
    fn jitter(&self, ttl: Duration) -> Duration {
        jitter(ttl, self.settings.ttl_jitter, rand::random::<f64>())
    }
}

fn jitter(ttl: Duration, fraction: f64, unit_random: f64) -> Duration {
    if fraction <= 0.0 || ttl.is_zero() {
        return ttl;
    }
    ttl.mul_f64(1.0 - fraction * unit_random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_only_shortens_within_the_fraction() {
        let ttl = Duration::from_secs(100);
        assert_eq!(jitter(ttl, 0.1, 0.0), ttl);
        assert_eq!(jitter(ttl, 0.1, 1.0), Duration::from_secs(90));
        assert_eq!(jitter(ttl, 0.0, 0.7), ttl);
        assert_eq!(jitter(Duration::ZERO, 0.5, 0.7), Duration::ZERO);
        let mid = jitter(ttl, 0.2, 0.5);
        assert_eq!(mid, Duration::from_secs(90));
    }
}
