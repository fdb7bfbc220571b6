//! Per-call settings: [`EntryOptions`] overrides the builder's settings for
//! one call, [`Loaded`] lets a loader adapt them to what it loaded, and
//! `Policy` is what a call runs with once both are applied.

use std::time::Duration;

/// Overrides of the builder's settings for one call
/// ([`get_or_load_with`](crate::TieredCache::get_or_load_with),
/// [`set_with`](crate::TieredCache::set_with)); every setting left alone
/// keeps the builder's value.
///
/// Concurrent misses of one key share one load (see
/// [`TieredCache`](crate::TieredCache)): the options of the caller that
/// runs it decide how its result is stored.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tiercache::EntryOptions;
///
/// // A hot, cheap key: short TTL, never a stale answer, no Redis round trip.
/// let options = EntryOptions::new()
///     .ttl(Duration::from_secs(5))
///     .fail_safe_window(None)
///     .skip_l2();
/// assert_ne!(options, EntryOptions::default());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[must_use]
pub struct EntryOptions {
    l1_ttl: Option<Duration>,
    l2_ttl: Option<Duration>,
    skip_l1: bool,
    skip_l2: bool,
    fail_safe_window: Option<Option<Duration>>,
    soft_timeout: Option<Option<Duration>>,
    hard_timeout: Option<Option<Duration>>,
    eager_refresh: Option<Option<f64>>,
}

impl EntryOptions {
    /// The builder's settings, unchanged.
    pub const fn new() -> Self {
        Self {
            l1_ttl: None,
            l2_ttl: None,
            skip_l1: false,
            skip_l2: false,
            fail_safe_window: None,
            soft_timeout: None,
            hard_timeout: None,
            eager_refresh: None,
        }
    }

    /// The TTL in both levels. Zero keeps the entry out of both (the
    /// caller still gets the value).
    pub const fn ttl(self, ttl: Duration) -> Self {
        self.l1_ttl(ttl).l2_ttl(ttl)
    }

    /// The TTL in L1; zero keeps the entry out of L1.
    pub const fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// The TTL in Redis; zero keeps the entry out of Redis.
    pub const fn l2_ttl(mut self, ttl: Duration) -> Self {
        self.l2_ttl = Some(ttl);
        self
    }

    /// Neither reads nor fills L1 (this instance's memory).
    pub const fn skip_l1(mut self) -> Self {
        self.skip_l1 = true;
        self
    }

    /// Neither reads nor writes Redis. Other instances do not see what this
    /// call stores, and a write skipping Redis leaves Redis's copy as it is.
    pub const fn skip_l2(mut self) -> Self {
        self.skip_l2 = true;
        self
    }

    /// How long an expired value is kept as a fail-safe fallback; `None`
    /// turns fail-safe off for this call: no stale answer is served, and
    /// what it stores keeps none.
    pub const fn fail_safe_window(mut self, window: Option<Duration>) -> Self {
        self.fail_safe_window = Some(window);
        self
    }

    /// After this long, a load with a fail-safe fallback answers with the
    /// fallback and finishes in the background; `None`: wait for the load.
    pub const fn soft_timeout(mut self, soft: Option<Duration>) -> Self {
        self.soft_timeout = Some(soft);
        self
    }

    /// After this long a load is abandoned; `None`: no limit.
    pub const fn hard_timeout(mut self, hard: Option<Duration>) -> Self {
        self.hard_timeout = Some(hard);
        self
    }

    /// Refreshes an L1 hit in the background once this fraction of its TTL
    /// has passed; `None` (or a fraction outside `(0, 1)`) turns eager
    /// refresh off for this call.
    pub const fn eager_refresh(mut self, fraction: Option<f64>) -> Self {
        self.eager_refresh = Some(fraction);
        self
    }

    /// Whether reads look in L1.
    pub(crate) const fn reads_l1(&self) -> bool {
        !self.skip_l1
    }

    /// Whether a hit may answer with a stale fallback.
    pub(crate) fn serves_stale(&self) -> bool {
        !matches!(self.fail_safe_window, Some(None))
    }

    /// Whether a hit past its refresh point starts a refresh.
    pub(crate) fn refreshes(&self) -> bool {
        !matches!(self.eager_refresh, Some(None))
    }

    /// `base` with these overrides.
    pub(crate) fn apply(&self, base: &Policy) -> Policy {
        let mut policy = *base;
        if let Some(ttl) = self.l1_ttl {
            policy.l1_ttl = ttl;
        }
        if let Some(ttl) = self.l2_ttl {
            policy.l2_ttl = ttl;
        }
        policy.use_l1 &= !self.skip_l1;
        policy.use_l2 &= !self.skip_l2;
        if let Some(window) = self.fail_safe_window {
            policy.fail_safe_window = window.unwrap_or(Duration::ZERO);
        }
        if let Some(soft) = self.soft_timeout {
            policy.soft_timeout = soft.filter(|soft| !soft.is_zero());
        }
        if let Some(hard) = self.hard_timeout {
            policy.hard_timeout = hard.filter(|hard| !hard.is_zero());
        }
        if let Some(fraction) = self.eager_refresh {
            policy.eager_refresh = fraction.filter(|f| *f > 0.0 && *f < 1.0);
        }
        policy
    }
}

/// What a loader of [`get_or_load_with`](crate::TieredCache::get_or_load_with)
/// returns: the value (or "not found") and how long it may be cached, which
/// the loader can decide from what it loaded (e.g. a short TTL for a
/// draft, none for an error page).
///
/// `Option<V>` converts into it with the call's settings unchanged.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tiercache::Loaded;
///
/// let published = Loaded::found("page").ttl(Duration::from_secs(3_600));
/// let draft = Loaded::found("draft").ttl(Duration::from_secs(5));
/// let private = Loaded::found("secret").uncached();
/// let gone: Loaded<&str> = None.into();
/// assert_eq!(gone, Loaded::absent());
/// # let _ = (published, draft, private);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Loaded<V> {
    pub(crate) value: Option<V>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) cached: bool,
}

impl<V> Loaded<V> {
    /// A value, cached with the call's settings.
    pub const fn found(value: V) -> Self {
        Self {
            value: Some(value),
            ttl: None,
            cached: true,
        }
    }

    /// "Not found", remembered for the negative TTL like `Ok(None)`.
    pub const fn absent() -> Self {
        Self {
            value: None,
            ttl: None,
            cached: true,
        }
    }

    /// Caches it for `ttl` in both levels (instead of the call's TTLs; a
    /// negative entry too). Zero keeps it out of the cache.
    pub const fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Answers the callers waiting for this load, but stores it nowhere:
    /// the next read loads again.
    pub const fn uncached(mut self) -> Self {
        self.cached = false;
        self
    }
}

impl<V> From<Option<V>> for Loaded<V> {
    fn from(value: Option<V>) -> Self {
        Self {
            value,
            ttl: None,
            cached: true,
        }
    }
}

/// The settings one call runs with: the builder's, with the call's
/// [`EntryOptions`] (and its loader's [`Loaded`] TTL) applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) l1_ttl: Duration,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) l2_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    /// Zero: fail-safe off.
    pub(crate) fail_safe_window: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    /// Fraction of the L1 TTL after which a hit refreshes.
    pub(crate) eager_refresh: Option<f64>,
    /// Whether fills go to L1.
    pub(crate) use_l1: bool,
    /// Whether reads and writes go to Redis.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) use_l2: bool,
}

impl Policy {
    /// This policy for a loaded entry: its own TTL, if the loader gave one.
    pub(crate) fn for_loaded<V>(&self, loaded: &Loaded<V>) -> Self {
        let mut policy = *self;
        if let Some(ttl) = loaded.ttl {
            policy.l1_ttl = ttl;
            policy.l2_ttl = ttl;
            policy.negative_ttl = ttl;
        }
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Policy {
        Policy {
            l1_ttl: Duration::from_secs(60),
            l2_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(30),
            fail_safe_window: Duration::from_secs(300),
            soft_timeout: Some(Duration::from_millis(50)),
            hard_timeout: None,
            eager_refresh: Some(0.8),
            use_l1: true,
            use_l2: true,
        }
    }

    #[test]
    fn default_options_change_nothing() {
        let policy = EntryOptions::new().apply(&base());
        assert_eq!(format!("{policy:?}"), format!("{:?}", base()));
        let options = EntryOptions::new();
        assert!(options.reads_l1() && options.serves_stale() && options.refreshes());
    }

    #[test]
    fn overrides_replace_the_builder_settings() {
        let policy = EntryOptions::new()
            .ttl(Duration::from_secs(5))
            .skip_l2()
            .fail_safe_window(None)
            .soft_timeout(None)
            .hard_timeout(Some(Duration::from_secs(2)))
            .eager_refresh(Some(1.5))
            .apply(&base());
        assert_eq!(policy.l1_ttl, Duration::from_secs(5));
        assert_eq!(policy.l2_ttl, Duration::from_secs(5));
        assert!(policy.use_l1 && !policy.use_l2);
        assert_eq!(policy.fail_safe_window, Duration::ZERO);
        assert_eq!(policy.soft_timeout, None);
        assert_eq!(policy.hard_timeout, Some(Duration::from_secs(2)));
        assert_eq!(policy.eager_refresh, None, "1.5 is no fraction of a TTL");
        let options = EntryOptions::new().skip_l1().fail_safe_window(None);
        assert!(!options.reads_l1() && !options.serves_stale());
    }

    #[test]
    fn a_loaded_ttl_applies_to_both_levels_and_negative_entries() {
        let loaded = Loaded::<u8>::absent().ttl(Duration::from_secs(7));
        let policy = base().for_loaded(&loaded);
        assert_eq!(policy.l1_ttl, Duration::from_secs(7));
        assert_eq!(policy.l2_ttl, Duration::from_secs(7));
        assert_eq!(policy.negative_ttl, Duration::from_secs(7));
        assert!(Loaded::found(1).uncached() != Loaded::found(1));
    }
}
