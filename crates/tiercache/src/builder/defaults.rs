//! The default of every builder knob, one constant each: the builder starts
//! from these, and services that expose the knobs (flags, environment
//! variables) show the same constants as their defaults.

use std::time::Duration;

/// Default for [`TieredCacheBuilder::namespace`](crate::TieredCacheBuilder::namespace).
pub const NAMESPACE: &str = "default";
/// Default for [`TieredCacheBuilder::key_prefix`](crate::TieredCacheBuilder::key_prefix).
pub const KEY_PREFIX: &str = "cache:";
/// Default for [`TieredCacheBuilder::l1_max_entries`](crate::TieredCacheBuilder::l1_max_entries).
pub const L1_MAX_ENTRIES: u64 = 10_000;
/// Default for [`TieredCacheBuilder::l1_max_bytes`](crate::TieredCacheBuilder::l1_max_bytes): 64 MiB.
pub const L1_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default for [`TieredCacheBuilder::l1_ttl`](crate::TieredCacheBuilder::l1_ttl).
pub const L1_TTL: Duration = Duration::from_secs(300);
/// Default for [`TieredCacheBuilder::l2_ttl`](crate::TieredCacheBuilder::l2_ttl).
pub const L2_TTL: Duration = Duration::from_secs(3_600);
/// Default for [`TieredCacheBuilder::negative_ttl`](crate::TieredCacheBuilder::negative_ttl).
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Default for [`TieredCacheBuilder::ttl_jitter`](crate::TieredCacheBuilder::ttl_jitter).
pub const TTL_JITTER: f64 = 0.1;
/// Default for [`TieredCacheBuilder::l2_timeout`](crate::TieredCacheBuilder::l2_timeout).
pub const L2_TIMEOUT: Duration = Duration::from_millis(100);
/// Default for [`TieredCacheBuilder::l2_connect_timeout`](crate::TieredCacheBuilder::l2_connect_timeout).
pub const L2_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::breaker_failure_threshold`](crate::TieredCacheBuilder::breaker_failure_threshold).
pub const BREAKER_FAILURE_THRESHOLD: u32 = 5;
/// Default for [`TieredCacheBuilder::breaker_cooldown`](crate::TieredCacheBuilder::breaker_cooldown).
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::heartbeat_interval`](crate::TieredCacheBuilder::heartbeat_interval).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::change_log_len`](crate::TieredCacheBuilder::change_log_len).
pub const CHANGE_LOG_LEN: usize = 10_000;
/// Default for [`TieredCacheBuilder::fail_safe_throttle`](crate::TieredCacheBuilder::fail_safe_throttle).
pub const FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::tombstone_ttl`](crate::TieredCacheBuilder::tombstone_ttl).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Default for [`TieredCacheBuilder::write_behind_replica_wait`](crate::TieredCacheBuilder::write_behind_replica_wait)
/// on a cluster.
pub const WRITE_BEHIND_REPLICA_WAIT: Duration = Duration::from_millis(100);
