//! The knobs of the Redis level (feature `redis`): where Redis is, its
//! TTL and timeouts, the circuit breaker, the bus, tombstones, write-behind
//! and the stampede lease.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{RedisSetting, TieredCacheBuilder};
use crate::manager::CacheKey;
use crate::remote::topology::RedisTopology;
use crate::write_behind::Flush;

impl<K, V> TieredCacheBuilder<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// How long a value stays in Redis. Default [`defaults::L2_TTL`](crate::defaults::L2_TTL) (3,600 s).
    pub fn l2_ttl(mut self, ttl: Duration) -> Self {
        self.l2_ttl = ttl;
        self
    }

    #[cfg(feature = "compression")]
    /// Encoded values of at least this many bytes are LZ4-compressed in
    /// Redis (when that makes them smaller). Default `None`: never, so that
    /// JSON values stay readable by any client.
    pub fn compression_threshold(mut self, bytes: Option<usize>) -> Self {
        self.compression_threshold = bytes;
        self
    }

    /// Uses Redis as L2, given a URL in any form [`RedisTopology::parse`]
    /// accepts; parsed by [`build`](Self::build). Default: no L2.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis = RedisSetting::Url(url.into());
        self
    }

    /// Uses Redis as L2 at `topology`. Default: no L2.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), tiercache::Error> {
    /// use tiercache::{RedisTopology, TieredCache};
    /// let cache: TieredCache<u64, String> = TieredCache::builder()
    ///     .redis(RedisTopology::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")?)
    ///     .build()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis(mut self, topology: RedisTopology) -> Self {
        self.redis = RedisSetting::Topology(topology);
        self
    }

    /// Bound on every Redis call; a call that takes longer counts as an L2
    /// error and the lookup falls through. Default [`defaults::L2_TIMEOUT`](crate::defaults::L2_TIMEOUT) (100 ms).
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.l2_timeout = timeout;
        self
    }

    /// Bound on every attempt to connect to Redis, including the one
    /// `build` waits for. Default [`defaults::L2_CONNECT_TIMEOUT`](crate::defaults::L2_CONNECT_TIMEOUT) (1 s).
    pub fn l2_connect_timeout(mut self, timeout: Duration) -> Self {
        self.l2_connect_timeout = timeout;
        self
    }

    /// Consecutive failed Redis calls after which Redis is skipped (the
    /// circuit breaker opens). Default [`defaults::BREAKER_FAILURE_THRESHOLD`](crate::defaults::BREAKER_FAILURE_THRESHOLD) (5).
    pub fn breaker_failure_threshold(mut self, failures: u32) -> Self {
        self.breaker_failure_threshold = failures;
        self
    }

    /// How long Redis is skipped once the breaker opens before a probe is
    /// sent; also the probe interval while it stays down.
    /// Default [`defaults::BREAKER_COOLDOWN`](crate::defaults::BREAKER_COOLDOWN) (1 s).
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Whether this cache joins the invalidation bus (the pub/sub channel
    /// `{key_prefix}{namespace}:bus`) when Redis is configured. Default
    /// `true`; without Redis there is no bus whatever this says.
    ///
    /// Turn it off only for a cache that is never written to by more than
    /// one instance: without the bus other instances' L1 copies live until
    /// their L1 TTL.
    pub fn bus(mut self, enabled: bool) -> Self {
        self.bus = enabled;
        self
    }

    /// How often this instance publishes a heartbeat on the bus. A
    /// connection that hears nothing (not even its own heartbeats) for
    /// three intervals is presumed dead: it is rebuilt and the change log
    /// replayed. Default [`defaults::HEARTBEAT_INTERVAL`](crate::defaults::HEARTBEAT_INTERVAL) (1 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How many bus messages the change log (`{key_prefix}{namespace}:bus:log`,
    /// a capped Redis stream) keeps, about. An instance that missed
    /// messages replays them from the log and drops only the keys they
    /// named; one that was away longer than the log reaches back empties
    /// its L1 instead. Each entry is one coalesced message (up to 500 keys).
    /// Default [`defaults::CHANGE_LOG_LEN`](crate::defaults::CHANGE_LOG_LEN) (10,000).
    pub fn change_log_len(mut self, entries: usize) -> Self {
        self.change_log_len = entries;
        self
    }

    /// Whether the bus asks Redis for client tracking of this cache's keys
    /// (`CLIENT TRACKING ON BCAST PREFIX {key_prefix}{namespace}: NOLOOP`),
    /// so that a value changed, deleted, expired or evicted in Redis by
    /// anyone (another service, a script, `redis-cli`) leaves every
    /// instance's L1 within the bus's delay. Default `true`; on a cluster
    /// every primary is tracked. Costs one invalidation message per changed
    /// key per instance; an instance that holds the key reads it back once
    /// to tell its own writes from others' (in an unversioned cache on a
    /// cluster, its own writes drop its copy: the next read is an L2 hit).
    pub fn client_tracking(mut self, enabled: bool) -> Self {
        self.client_tracking = enabled;
        self
    }

    /// How long a tombstone left by [`TieredCache::invalidate_version`](crate::TieredCache::invalidate_version)
    /// refuses older versions. It must outlast the slowest load that can
    /// race a write (bound it with [`hard_timeout`](Self::hard_timeout)).
    /// Default [`defaults::TOMBSTONE_TTL`](crate::defaults::TOMBSTONE_TTL) (60 s).
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// Turns on write-behind (see [`TieredCache::write_behind`](crate::TieredCache::write_behind)): changes
    /// are queued in Redis Streams (one on a single server, partitioned on
    /// a cluster) and `flush` writes them to the store in batches, polling
    /// every `interval` when idle. Needs a versioned cache. Default: off.
    /// [`TieredCache::write_behind`](crate::TieredCache::write_behind) has
    /// an example with a `Flush` implementation.
    pub fn write_behind(mut self, flush: impl Flush<K, V>, interval: Duration) -> Self {
        self.write_behind = Some((Arc::new(flush), interval));
        self
    }

    /// How long a write-behind write waits for a replica to confirm it
    /// (`WAIT 1 <timeout>` after queueing) before it is acknowledged, so
    /// that a failover of the primary that took it does not lose it; `None`
    /// acknowledges once the primary has it. The wait costs one replication
    /// round trip per write (sub-millisecond on one host, about the network
    /// latency between primary and replica otherwise). When no replica
    /// confirms within `timeout`, the write is acknowledged anyway (it is
    /// queued), counted in [`WriteBehindStats::unreplicated`](crate::WriteBehindStats::unreplicated)
    /// and logged. Default: [`defaults::WRITE_BEHIND_REPLICA_WAIT`](crate::defaults::WRITE_BEHIND_REPLICA_WAIT) on a
    /// cluster (turn it off for a cluster without replicas, where every
    /// write would wait the full timeout), `None` on a single server (set it
    /// when yours has a replica).
    pub fn write_behind_replica_wait(mut self, timeout: Option<Duration>) -> Self {
        self.replica_wait = Some(timeout);
        self
    }

    /// Cross-instance stampede protection: when several instances miss one
    /// key at once, the first takes a lease on it in Redis (`SET NX PX`,
    /// for `lease`) and loads; the others wait, polling Redis every 10 ms,
    /// for its value, and load themselves only if the lease is free again
    /// first (its holder's load failed, or outlasted `lease`).
    /// One load per key across all instances instead of one per instance,
    /// for the price of a `SET` on every L2 miss and, for the waiters, up
    /// to `lease` of waiting. Set `lease` a little above your loader's
    /// usual time. Needs Redis; `None` (the default) turns it off.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn f() -> Result<(), tiercache::Error> {
    /// let cache = tiercache::TieredCache::<u64, String>::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .stampede_lease(Some(Duration::from_millis(500)))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn stampede_lease(mut self, lease: Option<Duration>) -> Self {
        self.stampede_lease = lease;
        self
    }
}
