//! The Redis half of [`TieredCacheBuilder::build`]: connects L2 and starts
//! what runs on it (the bus, the write-behind flusher).

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{RedisSetting, TieredCacheBuilder, defaults};
use crate::breaker::BreakerConfig;
use crate::bus::log::LogConfig;
use crate::bus::{Bus, BusConfig, channel_and_log};
use crate::error::Error;
use crate::manager::{CacheKey, L1Handle, LocalLevel, OwnWrites, Settings};
use crate::remote::topology::RedisTopology;
use crate::remote::{RemoteCache, RemoteConfig};
use crate::timing::Timing;
use crate::write_behind::{self, WriteBehind};

impl<K, V> TieredCacheBuilder<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Connects the Redis level (if configured) and starts what runs on
    /// it: the bus and the write-behind flusher.
    pub(super) async fn connect_redis(
        &self,
        local: &LocalLevel<K, V>,
        settings: &Settings,
        timing: Timing,
    ) -> Result<RedisParts<K, V>, Error> {
        let own_writes = Arc::new(OwnWrites::new());
        let topology = match &self.redis {
            RedisSetting::None => {
                return Ok(RedisParts {
                    l2: None,
                    bus: None,
                    write_behind: None,
                    own_writes,
                });
            }
            RedisSetting::Url(url) => RedisTopology::parse(url)?,
            RedisSetting::Topology(topology) => topology.clone(),
        };
        let l2 = RemoteCache::connect(RemoteConfig {
            topology,
            timeout: self.l2_timeout,
            connect_timeout: self.l2_connect_timeout,
            breaker: BreakerConfig {
                failure_threshold: self.breaker_failure_threshold,
                cooldown: self.breaker_cooldown,
            },
            events: local.events.clone(),
            name: self.namespace.clone(),
            timing,
        })
        .await?;
        let key_prefix = &settings.key_prefix;
        let bus = if self.bus {
            let sharded = l2.topology().is_cluster();
            let (channel, log) = channel_and_log(key_prefix, sharded);
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
                events: local.events.clone(),
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
        } else {
            None
        };
        let write_behind = match (&self.write_behind, &self.versioning) {
            (Some((flush, interval)), Some(versioning)) => {
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
                    key_prefix,
                    &versioning.field,
                    write_behind::Config {
                        flush: Arc::clone(flush),
                        interval: *interval,
                        replica_wait,
                        events: local.events.clone(),
                    },
                ))
            }
            _ => None,
        };
        Ok(RedisParts {
            l2: Some(l2),
            bus,
            write_behind,
            own_writes,
        })
    }
}

/// What [`TieredCacheBuilder::connect_redis`] starts.
pub(super) struct RedisParts<K, V> {
    pub(super) l2: Option<RemoteCache>,
    pub(super) bus: Option<Bus>,
    pub(super) write_behind: Option<WriteBehind<K, V>>,
    /// Versioned writes on their way into L1 (shared by the bus and the manager).
    pub(super) own_writes: Arc<OwnWrites<K>>,
}
