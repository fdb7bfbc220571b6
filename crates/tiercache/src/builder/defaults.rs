//! The default of every builder knob, one constant each: the builder starts
//! from these, and services that expose the knobs (flags, environment
//! variables) show the same constants as their defaults.

use std::time::Duration;

/// Default for [`TieredCacheBuilder::namespace`](super::TieredCacheBuilder::namespace).
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default for [`TieredCacheBuilder::key_prefix`](super::TieredCacheBuilder::key_prefix).
pub const DEFAULT_KEY_PREFIX: &str = "cache:";
/// Default for [`TieredCacheBuilder::l1_max_entries`](super::TieredCacheBuilder::l1_max_entries).
pub const DEFAULT_L1_MAX_ENTRIES: u64 = 10_000;
/// Default for [`TieredCacheBuilder::l1_max_bytes`](super::TieredCacheBuilder::l1_max_bytes): 64 MiB.
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default for [`TieredCacheBuilder::l1_ttl`](super::TieredCacheBuilder::l1_ttl).
pub const DEFAULT_L1_TTL: Duration = Duration::from_secs(300);
/// Default for [`TieredCacheBuilder::l2_ttl`](super::TieredCacheBuilder::l2_ttl).
pub const DEFAULT_L2_TTL: Duration = Duration::from_secs(3_600);
/// Default for [`TieredCacheBuilder::negative_ttl`](super::TieredCacheBuilder::negative_ttl).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Default for [`TieredCacheBuilder::ttl_jitter`](super::TieredCacheBuilder::ttl_jitter).
pub const DEFAULT_TTL_JITTER: f64 = 0.1;
/// Default for [`TieredCacheBuilder::l2_timeout`](super::TieredCacheBuilder::l2_timeout).
pub const DEFAULT_L2_TIMEOUT: Duration = Duration::from_millis(100);
/// Default for [`TieredCacheBuilder::l2_connect_timeout`](super::TieredCacheBuilder::l2_connect_timeout).
pub const DEFAULT_L2_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::breaker_failure_threshold`](super::TieredCacheBuilder::breaker_failure_threshold).
pub const DEFAULT_BREAKER_FAILURE_THRESHOLD: u32 = 5;
/// Default for [`TieredCacheBuilder::breaker_cooldown`](super::TieredCacheBuilder::breaker_cooldown).
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::heartbeat_interval`](super::TieredCacheBuilder::heartbeat_interval).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::change_log_len`](super::TieredCacheBuilder::change_log_len).
pub const DEFAULT_CHANGE_LOG_LEN: usize = 10_000;
/// Default for [`TieredCacheBuilder::fail_safe`](super::TieredCacheBuilder::fail_safe)'s throttle.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(1);
/// Default for [`TieredCacheBuilder::tombstone_ttl`](super::TieredCacheBuilder::tombstone_ttl).
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Default for [`TieredCacheBuilder::write_behind_replica_wait`](super::TieredCacheBuilder::write_behind_replica_wait)
/// on a cluster.
pub const DEFAULT_WRITE_BEHIND_REPLICA_WAIT: Duration = Duration::from_millis(100);
