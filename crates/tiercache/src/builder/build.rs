//! [`TieredCacheBuilder::build`]: validates the settings, then creates the
//! levels (L1, the Redis connection, the bus, the write-behind queue) and
//! hands them to the manager.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{RedisSetting, TieredCacheBuilder, defaults};
use crate::bus::log::LogConfig;
use crate::bus::{Bus, BusConfig, channel_and_log};
use crate::error::Error;
use crate::local::LocalCache;
use crate::manager::{CacheKey, L1Handle, LocalLevel, OwnWrites, Parts, Settings, TieredCache};
use crate::remote::breaker::BreakerConfig;
use crate::remote::topology::RedisTopology;
use crate::remote::{RemoteCache, RemoteConfig};
use crate::write_behind::{self, WriteBehind};

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
        let topology = match self.redis {
            RedisSetting::None => None,
            RedisSetting::Url(url) => Some(RedisTopology::parse(&url)?),
            RedisSetting::Topology(topology) => Some(topology),
        };
        let local = LocalLevel::new(LocalCache::new(self.l1_max_entries, self.l1_max_bytes)?);
        let l2 = match topology {
            None => None,
            Some(topology) => Some(
                RemoteCache::connect(RemoteConfig {
                    topology,
                    timeout: self.l2_timeout,
                    connect_timeout: self.l2_connect_timeout,
                    breaker: BreakerConfig {
                        failure_threshold: self.breaker_failure_threshold,
                        cooldown: self.breaker_cooldown,
                    },
                })
                .await?,
            ),
        };
        let key_prefix = format!("{}{}:", self.key_prefix, self.namespace);
        let own_writes = Arc::new(OwnWrites::new());
        let bus = match &l2 {
            Some(l2) if self.bus => {
                let sharded = l2.topology().is_cluster();
                let (channel, log) = channel_and_log(&key_prefix, sharded);
                let config = BusConfig {
                    channel,
                    heartbeat_interval: self.heartbeat_interval,
                    log: LogConfig {
                        key: log,
                        max_len: self.change_log_len,
                        sharded,
                    },
                    key_prefix: key_prefix.clone(),
                    tracking: self.client_tracking,
                };
                let sink = L1Handle {
                    local: local.clone(),
                    versions: self
                        .versioning
                        .clone()
                        .map(|versioning| (Arc::clone(&self.codec), versioning)),
                    own_writes: Arc::clone(&own_writes),
                };
                let bus = Bus::start(l2.clone(), config, Arc::new(sink));
                if l2.state() == crate::L2State::Up {
                    bus.wait_subscribed(self.l2_connect_timeout).await;
                }
                Some(bus)
            }
            _ => None,
        };
        let settings = Settings {
            key_prefix,
            l1_ttl: self.l1_ttl,
            l2_ttl: self.l2_ttl,
            negative_ttl: self.negative_ttl.unwrap_or(Duration::ZERO),
            ttl_jitter: self.ttl_jitter,
            compression_threshold: self.compression_threshold,
            tombstone_ttl: self.tombstone_ttl,
            fail_safe_window: self.fail_safe_window.unwrap_or(Duration::ZERO),
            fail_safe_throttle: self.fail_safe_throttle,
            soft_timeout: self.soft_timeout,
            hard_timeout: self.hard_timeout,
            eager_refresh: self.eager_refresh,
            stampede_lease: self.stampede_lease,
        };
        let write_behind = match (self.write_behind, &l2, &self.versioning) {
            (Some((flush, interval)), Some(l2), Some(versioning)) => {
                let default_wait = l2
                    .topology()
                    .is_cluster()
                    .then_some(defaults::WRITE_BEHIND_REPLICA_WAIT);
                let replica_wait = match self.replica_wait.unwrap_or(default_wait) {
                    Some(timeout) => Some(write_behind::ReplicaWait {
                        conn: l2.with_timeout(timeout).await?,
                        timeout,
                    }),
                    None => None,
                };
                Some(WriteBehind::start(
                    l2.clone(),
                    Arc::clone(&self.codec),
                    &settings.key_prefix,
                    &versioning.field,
                    write_behind::Config {
                        flush,
                        interval,
                        replica_wait,
                    },
                ))
            }
            _ => None,
        };
        Ok(TieredCache::from_parts(Parts {
            local,
            l2,
            bus,
            write_behind,
            codec: self.codec,
            versioning: self.versioning,
            own_writes,
            settings,
        }))
    }
}
