//! [`TieredCacheBuilder::build`]: validates the settings, then creates L1
//! (and, with Redis, the levels `connect` starts) and hands them to the
//! manager.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(feature = "redis")]
use super::RedisSetting;
use super::TieredCacheBuilder;
use crate::error::Error;
use crate::events::Events;
use crate::local::LocalCache;
use crate::manager::{CacheKey, LocalLevel, Parts, Policy, Settings, TieredCache};
#[cfg(feature = "metrics")]
use crate::telemetry::Telemetry;
use crate::timing::Timing;
#[cfg(feature = "metrics")]
use metrics::Label;
#[cfg(feature = "metrics")]
use std::sync::Arc;

impl<K, V> TieredCacheBuilder<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Builds the cache.
    ///
    /// With Redis configured, makes one connection attempt (bounded by
    /// [`l2_connect_timeout`](Self::l2_connect_timeout)) and returns whether
    /// or not it succeeded: an unreachable Redis yields a working cache whose
    /// L2 is [`Down`](crate::L2State::Down) and reconnects in the background.
    /// Must be called within a Tokio runtime when Redis is configured.
    ///
    /// With Redis up and the bus on, also waits (at most the connect
    /// timeout) until the bus is subscribed; otherwise the bus keeps
    /// subscribing in the background (see
    /// [`TieredCache::wait_subscribed`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid setting: zero L1 bounds, a namespace
    /// that is empty or contains `:`, a jitter outside `[0, 1)`, zero
    /// timeouts, a zero breaker cooldown or heartbeat interval, or a Redis
    /// URL that does not parse.
    pub async fn build(self) -> Result<TieredCache<K, V>, Error> {
        self.validate()?;
        let local = LocalLevel::new(
            LocalCache::new(self.l1_max_entries, self.l1_max_bytes)?,
            Events::new(),
        );
        let settings = Settings {
            key_prefix: format!("{}{}:", self.key_prefix, self.namespace),
            name: self.namespace.clone(),
            policy: Policy {
                l1_ttl: self.l1_ttl,
                l2_ttl: self.l2_ttl,
                negative_ttl: self.negative_ttl.unwrap_or(Duration::ZERO),
                fail_safe_window: self.fail_safe_window.unwrap_or(Duration::ZERO),
                soft_timeout: self.soft_timeout,
                hard_timeout: self.hard_timeout,
                eager_refresh: self.eager_refresh,
                use_l1: true,
                use_l2: true,
            },
            ttl_jitter: self.ttl_jitter,
            compression_threshold: self.compression_threshold,
            #[cfg(feature = "redis")]
            tombstone_ttl: self.tombstone_ttl,
            fail_safe_throttle: self.fail_safe_throttle,
            #[cfg(feature = "redis")]
            stampede_lease: self.stampede_lease,
        };
        #[cfg(feature = "metrics")]
        let telemetry = Arc::new(Telemetry::register(
            &self.metrics_target,
            &self
                .metrics_labels
                .iter()
                .map(|(key, value)| Label::new(key.clone(), value.clone()))
                .collect::<Vec<_>>(),
        ));
        #[cfg(feature = "metrics")]
        let (l2_timing, loader_timing) = (
            Timing::new(telemetry.l2_duration.clone()),
            Timing::new(telemetry.loader_duration.clone()),
        );
        #[cfg(not(feature = "metrics"))]
        let (l2_timing, loader_timing) = (Timing::default(), Timing::default());
        #[cfg(feature = "redis")]
        let redis = self.connect_redis(&local, &settings, l2_timing).await?;
        #[cfg(not(feature = "redis"))]
        let _ = l2_timing;
        Ok(TieredCache::from_parts(Parts {
            local,
            #[cfg(feature = "redis")]
            l2: redis.l2,
            #[cfg(feature = "redis")]
            bus: redis.bus,
            #[cfg(feature = "redis")]
            write_behind: redis.write_behind,
            #[cfg(feature = "redis")]
            own_writes: redis.own_writes,
            loader_timing,
            #[cfg(feature = "metrics")]
            telemetry,
            codec: self.codec,
            #[cfg(feature = "redis")]
            versioning: self.versioning,
            settings,
        }))
    }

    /// Rejects invalid settings with [`Error::Config`].
    fn validate(&self) -> Result<(), Error> {
        if self.namespace.is_empty() || self.namespace.contains(':') {
            return Err(Error::config(format!(
                "namespace must be non-empty and contain no ':' (got {:?})",
                self.namespace
            )));
        }
        if !(0.0..1.0).contains(&self.ttl_jitter) {
            return Err(Error::config(format!(
                "ttl_jitter must be in [0, 1) (got {})",
                self.ttl_jitter
            )));
        }
        if self.breaker_cooldown.is_zero() {
            return Err(Error::config("breaker_cooldown must be positive"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(Error::config("heartbeat_interval must be positive"));
        }
        if self.change_log_len == 0 {
            return Err(Error::config("change_log_len must be positive"));
        }
        if let Some(fraction) = self.eager_refresh
            && !(fraction > 0.0 && fraction < 1.0)
        {
            return Err(Error::config(format!(
                "eager_refresh must be in (0, 1) (got {fraction})"
            )));
        }
        // "Off" is `None`, never a zero.
        for (name, value) in [
            ("the stampede lease", self.stampede_lease),
            ("negative_ttl", self.negative_ttl),
            ("the fail-safe window", self.fail_safe_window),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(Error::config(format!(
                    "{name} must be positive (None turns it off)"
                )));
            }
        }
        if [self.soft_timeout, self.hard_timeout].contains(&Some(Duration::ZERO)) {
            return Err(Error::config("loader timeouts must be positive"));
        }
        if self.versioning.is_some() && self.tombstone_ttl.is_zero() {
            return Err(Error::config("tombstone_ttl must be positive"));
        }
        #[cfg(feature = "redis")]
        if let Some((_, interval)) = &self.write_behind {
            if self.versioning.is_none() {
                return Err(Error::config("write-behind needs a versioned cache"));
            }
            if interval.is_zero() {
                return Err(Error::config("the write-behind interval must be positive"));
            }
            if let RedisSetting::None = &self.redis {
                return Err(Error::config(
                    "write-behind needs Redis: its queue is a Redis Stream",
                ));
            }
            if self.replica_wait == Some(Some(Duration::ZERO)) {
                return Err(Error::config(
                    "the write-behind replica wait must be positive (or off)",
                ));
            }
        }
        Ok(())
    }
}
