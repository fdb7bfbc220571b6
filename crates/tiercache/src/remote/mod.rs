//! L2: Redis, behind a timeout, a circuit breaker and a supervisor. This
//! file owns the operations the cache uses (reads, guarded writes, deletes,
//! clears); how each call runs is in `connection`, the Lua scripts in
//! [`scripts`], stored forms in [`codec`](crate::codec), where Redis is in [`topology`].
//!
//! Owns the connection, the breaker and the L2 error counter. Works on
//! already-encoded bytes and full Redis keys; it knows nothing about value
//! types (see [`codec`](crate::codec)) or about which key belongs to which cache.
//!
//! # Failure model
//!
//! Nothing here returns an error to its caller. Every operation answers
//! `None`/`false` when Redis could not be used: not connected yet, breaker
//! open, error or timeout (each call is bounded by the configured timeout).
//! Failures are counted and logged at most once per [`LOG_EVERY`](crate::task::LOG_EVERY), with the
//! number of suppressed ones. The manager turns "unavailable" into a miss.
//!
//! # Connection lifecycle
//!
//! [`RemoteCache::connect`] makes one connection attempt and returns whether
//! or not it worked; the L2 starts `Down` if it did not. A supervisor task
//! (aborted when the last handle is dropped) then
//!
//! - retries the first connection with exponential backoff (100 ms → 2 s);
//! - while the breaker is open, sends a `PING` probe every cooldown, so the
//!   level comes back `Up` even when no traffic would probe it;
//! - rebuilds the connection from scratch after a few failed probes, in case the old one is wedged (e.g. its reconnect gave up).
//!
//! - on a cluster, reconnects (at most twice a second) after a call timed
//!   out, so that a hung primary's slots go to its replica once it took
//!   over (redis-rs re-reads the slot map on `MOVED` or a dropped
//!   connection, not on a timeout).
//!
//! Between those, redis-rs reconnects a dropped connection by itself
//! (`ConnectionManager` for one server, the cluster client per node).

pub(crate) mod scripts;

mod clear;
#[cfg(feature = "cluster")]
mod cluster;
mod connection;
pub(crate) mod topology;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::{Cmd, Value};

use crate::batch::Batcher;
use crate::breaker::{BreakerConfig, CircuitBreaker};
use crate::clock::SystemClock;
use crate::error::Error;
use crate::events::Events;
use crate::stats::L2State;
use crate::task::{AbortOnDrop, LogLimiter};
use crate::timing::Timing;
pub(crate) use connection::is_availability_failure;
use connection::{Attempt, Inner, Lent, supervise};
use scripts::{BUMP_TAG, DELETE_IF_EQUAL, GUARDED_SET};
use topology::{Conn, RedisTopology};

/// Single-key reads in flight at once; more wait and go out as one `MGET`.
const READ_LANES: usize = 2;
/// Most keys in one batched `MGET`.
const MAX_READ_BATCH: usize = 100;

/// Everything the L2 needs to connect and behave.
#[derive(Debug, Clone)]
pub(crate) struct RemoteConfig {
    pub(crate) topology: RedisTopology,
    /// Bound on every call.
    pub(crate) timeout: Duration,
    /// Bound on every connection attempt.
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker: BreakerConfig,
    /// Where L2 state changes are announced.
    pub(crate) events: Events,
    /// The cache's name (its namespace), for tracing.
    pub(crate) name: String,
    /// Where each call's duration is recorded.
    pub(crate) timing: Timing,
}

/// A handle to the Redis level; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct RemoteCache {
    inner: Arc<Inner>,
    /// Single-key reads, sent as one `MGET` when they arrive together.
    gets: Batcher<String, Read>,
    _supervisor: Arc<AbortOnDrop>,
}

impl RemoteCache {
    /// Makes one connection attempt and starts the supervisor.
    ///
    /// Never fails because Redis is unreachable: the L2 then starts `Down`.
    /// Fails with [`Error::Config`] when Redis answers but is not what the
    /// URL says (a cluster node named as one server, or a server named as
    /// a cluster): retrying could not fix that.
    /// Must be called within a Tokio runtime.
    pub(crate) async fn connect(config: RemoteConfig) -> Result<Self, Error> {
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(Error::config("L2 timeouts must be positive"));
        }
        let reroute = Arc::new(tokio::sync::Notify::new());
        let inner = Arc::new(Inner {
            breaker: CircuitBreaker::with_clock(config.breaker, Arc::new(SystemClock)),
            reroute: Arc::clone(&reroute),
            conn: RwLock::new(None),
            writer: RwLock::new(None),
            lends: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            log: LogLimiter::default(),
            up: AtomicBool::new(false),
            config,
        });
        match inner.try_establish().await {
            Attempt::Connected => {}
            Attempt::Failed => {
                inner.breaker.trip();
                inner.note_state();
            }
            Attempt::Misconfigured(error) => return Err(Error::config(error)),
        }
        let supervisor = tokio::spawn(supervise(Arc::downgrade(&inner), reroute));
        Ok(Self {
            // No deadline of its own: each call is bounded by the L2 timeout.
            gets: Batcher::new(READ_LANES, MAX_READ_BATCH, None, {
                let inner = Arc::clone(&inner);
                move |keys| {
                    let inner = Arc::clone(&inner);
                    async move { inner.get_batch(keys).await }
                }
            }),
            inner,
            _supervisor: Arc::new(AbortOnDrop(supervisor)),
        })
    }

    /// `Up` when connected with the breaker closed, else `Down`.
    pub(crate) fn state(&self) -> L2State {
        if self.inner.current_conn().is_some() && self.inner.breaker.is_closed() {
            L2State::Up
        } else {
            L2State::Down
        }
    }

    /// Failed calls so far.
    pub(crate) fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// Where Redis is.
    pub(crate) fn topology(&self) -> &RedisTopology {
        &self.inner.config.topology
    }

    /// Bound on every connection attempt.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.inner.config.connect_timeout
    }

    /// Sends this cache's writes (values, deletions, tag bumps, bus
    /// publishes) over `conn` while it is set, else over the shared
    /// connection.
    ///
    /// The bus receiver lends its connection, on which client tracking is
    /// on with `NOLOOP`: Redis then reports to this instance only the
    /// writes of others, so a value this instance just wrote is not
    /// dropped from its own L1 by its own write's invalidation.
    pub(crate) fn route_writes(&self, conn: Option<redis::aio::MultiplexedConnection>) {
        let lent = conn.map(|conn| Lent {
            number: self.inner.lends.fetch_add(1, Ordering::Relaxed),
            conn: Conn::Listener(conn),
        });
        *self.inner.writer.write().unwrap_or_else(|e| e.into_inner()) = lent;
    }

    /// Bound on every call.
    pub(crate) fn timeout(&self) -> Duration {
        self.inner.config.timeout
    }

    /// The value at `key`: `Some(None)` when absent, `None` when Redis was
    /// unusable.
    ///
    /// Reads that arrive while [`READ_LANES`] others are in flight are sent
    /// together as one `MGET` (see [`Batcher`]): under load, Redis and this
    /// process pay one command and one wake-up per batch, not per read.
    ///
    /// The whole read, its wait for a lane included, is bounded by one L2
    /// timeout: with Redis hung, reads queued behind batches that are
    /// themselves timing out give up with them rather than one batch later
    /// each. A read that gives up leaves its key in its batch; the answer
    /// is dropped.
    pub(crate) async fn get(&self, key: String) -> Read {
        match tokio::time::timeout(self.inner.config.timeout, self.gets.call(key)).await {
            Ok(Ok(read)) => read,
            Ok(Err(_)) | Err(_) => Read::Unavailable,
        }
    }

    /// One `MGET` for all `keys`, answers in key order.
    pub(crate) async fn get_many(&self, keys: &[String]) -> Option<Vec<Option<Vec<u8>>>> {
        self.inner.mget(keys).await
    }

    /// Writes one value: `SET key value PX ttl`, or through the version
    /// guard when `guard` (the JSON version field) is given. Returns whether
    /// Redis stored it (`Some(false)`: the guard refused it), or `None` when
    /// Redis was unusable.
    pub(crate) async fn set(&self, write: &Write, guard: Option<&str>) -> Option<bool> {
        let cmd = write.cmd(guard);
        self.inner
            .call_write("SET", |conn| async move { conn.query::<Value>(&cmd).await })
            .await
            .map(|reply| is_stored(&reply))
    }

    /// All writes in one pipeline (one round trip on a single server);
    /// whether each was stored, or `None` when Redis was unusable.
    pub(crate) async fn set_many(
        &self,
        writes: &[Write],
        guard: Option<&str>,
    ) -> Option<Vec<bool>> {
        if writes.is_empty() {
            return Some(Vec::new());
        }
        let cmds: Vec<Cmd> = writes.iter().map(|write| write.cmd(guard)).collect();
        let replies: Vec<Value> = self
            .inner
            .call_write(
                "SET pipeline",
                |conn| async move { conn.exec_batch(cmds).await },
            )
            .await?;
        (replies.len() == writes.len()).then(|| replies.iter().map(is_stored).collect())
    }

    /// Any one command (used by write-behind's stream commands), under the
    /// breaker and the timeout; `None` when Redis was unusable or refused it.
    pub(crate) async fn command<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        cmd: Cmd,
    ) -> Option<T> {
        self.inner
            .call(what, |conn| async move { conn.query(&cmd).await })
            .await
    }

    /// Keyed commands in as few round trips as the topology allows (see
    /// `Conn::exec_batch`), under the breaker and the timeout; replies in
    /// order, or `None` when Redis was unusable.
    pub(crate) async fn batch_command<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        cmds: Vec<Cmd>,
    ) -> Option<Vec<T>> {
        if cmds.is_empty() {
            return Some(Vec::new());
        }
        self.inner
            .call(what, |conn| async move { conn.exec_batch(cmds).await })
            .await
    }

    /// Like [`command`](Self::command), for a command that writes values of
    /// this cache (write-behind's scripts): sent where writes go (see
    /// [`route_writes`](Self::route_writes)).
    pub(crate) async fn write_command<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        cmd: Cmd,
    ) -> Option<T> {
        self.inner
            .call_write(what, |conn| async move { conn.query(&cmd).await })
            .await
    }

    /// Like [`command`](Self::command) but sent even while the breaker is
    /// open, for background work that retries on its own pacing (the bus
    /// publisher): its first success after an outage closes the breaker, so
    /// such work resumes as soon as Redis answers rather than a cooldown
    /// later.
    pub(crate) async fn background_command<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        cmd: Cmd,
    ) -> Option<T> {
        self.inner
            .on_writer(what, |conn| async move { conn.query(&cmd).await })
            .await
    }

    /// `cmd`, then `WAIT 1 <timeout>`, in one round trip on this handle's
    /// connection (routed whole to `cmd`'s node on a cluster): `cmd`'s reply
    /// and how many replicas confirmed every write made so far on the
    /// connection. `WAIT` holds the connection up to `timeout`, so give it
    /// a handle of its own ([`with_timeout`](Self::with_timeout)).
    pub(crate) async fn command_then_wait<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        cmd: Cmd,
        timeout: Duration,
    ) -> Option<(T, u64)> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd).cmd("WAIT").arg(1).arg(
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        self.inner
            .call(what, |conn| async move { conn.query_pipeline(&pipe).await })
            .await
    }

    /// Another handle to the same Redis, with a connection of its own whose
    /// calls may take `extra` longer than this one's.
    pub(crate) async fn with_timeout(&self, extra: Duration) -> Result<Self, Error> {
        let mut config = self.inner.config.clone();
        config.timeout += extra;
        // A helper connection: its state is not the cache's L2 state.
        config.events = Events::new();
        Self::connect(config).await
    }

    /// Raises the tag generation stored at `key` (see [`BUMP_TAG`]) and
    /// returns the new one; `None` when Redis was unusable.
    pub(crate) async fn bump_tag(&self, key: &str) -> Option<u64> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(BUMP_TAG).arg(1).arg(key);
        self.inner
            .call_write(
                "EVAL bump tag",
                |conn| async move { conn.query(&cmd).await },
            )
            .await
    }

    /// `SET key value NX PX ttl`: whether it was set (`false`: the key
    /// exists), `None` when Redis was unusable.
    pub(crate) async fn set_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Option<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        self.inner
            .call("SET NX", |conn| async move {
                conn.query::<Option<String>>(&cmd).await
            })
            .await
            .map(|set| set.is_some())
    }

    /// Deletes `key` if it holds `value` (see [`DELETE_IF_EQUAL`]).
    pub(crate) async fn delete_if_equal(&self, key: &str, value: &str) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(DELETE_IF_EQUAL).arg(1).arg(key).arg(value);
        let _: Option<Value> = self
            .inner
            .call("EVAL delete if equal", |conn| async move {
                conn.query(&cmd).await
            })
            .await;
    }

    /// `UNLINK` of all `keys` in one command; returns whether Redis took it.
    pub(crate) async fn delete(&self, keys: &[String]) -> bool {
        if keys.is_empty() {
            return true;
        }
        let mut cmd = redis::cmd("UNLINK");
        cmd.arg(keys);
        self.inner
            .call_write(
                "UNLINK",
                |conn| async move { conn.query::<u64>(&cmd).await },
            )
            .await
            .is_some()
    }

    /// On a cluster, has the supervisor reconnect soon (rate-limited) to
    /// read the slot map afresh: for callers whose own failures (not an L2
    /// call's timeout) suggest stale routes.
    pub(crate) fn reroute(&self) {
        self.inner.reroute();
    }

    /// The primary serving `key`'s slot now (the server itself on a single
    /// node), sent past the breaker like
    /// [`background_command`](Self::background_command): the bus receiver
    /// asks it on its own pacing while following a failover.
    pub(crate) async fn slot_primary(&self, key: &str) -> Option<topology::Node> {
        self.inner
            .on_writer("CLUSTER SLOTS", |conn| async move {
                conn.slot_primary(key).await
            })
            .await
    }

    /// Every cluster primary (the server itself on a single node); `None`
    /// when Redis was unusable.
    pub(crate) async fn primaries(&self) -> Option<Vec<topology::Node>> {
        self.inner
            .call(
                "cluster nodes",
                |conn| async move { conn.key_holders().await },
            )
            .await
    }
}

/// The answer to a single-key read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Read {
    /// The key's bytes.
    Found(Vec<u8>),
    /// Redis answered: no such key.
    Absent,
    /// Redis could not be used (down, breaker open, timeout, error).
    Unavailable,
}

impl Read {
    /// From a `GET` reply; `None` when the call failed.
    fn from_reply(reply: Option<Option<Vec<u8>>>) -> Self {
        match reply {
            Some(Some(bytes)) => Self::Found(bytes),
            Some(None) => Self::Absent,
            None => Self::Unavailable,
        }
    }
}

/// One value to store in Redis.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) key: String,
    /// The stored form (see [`codec`](crate::codec)).
    pub(crate) value: Vec<u8>,
    pub(crate) ttl: Duration,
    /// The value's version for the guard; `-1` for "absent" (a negative
    /// entry), which never replaces a versioned value or a tombstone.
    pub(crate) version: i64,
}

/// Whether a reply to [`Write::cmd`] means "stored": `OK` from `SET`, 1
/// (written) or 2 (already there) from the guard.
fn is_stored(reply: &Value) -> bool {
    matches!(reply, Value::Okay | Value::Int(1 | 2))
}

impl Write {
    /// `SET … PX` (replying `OK`) or the guard script (`EVAL`:
    /// it is only sent on fills and writes, and `EVAL` needs no
    /// `SCRIPT LOAD` per node or after a restart).
    fn cmd(&self, guard: Option<&str>) -> Cmd {
        // PX keeps sub-second TTLs (negative entries, tests) exact; never 0,
        // which Redis rejects.
        let ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        match guard {
            None => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&self.key).arg(&self.value).arg("PX").arg(ms);
                cmd
            }
            Some(field) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(GUARDED_SET)
                    .arg(1)
                    .arg(&self.key)
                    .arg(self.version)
                    .arg(&self.value)
                    .arg(ms)
                    .arg(field);
                cmd
            }
        }
    }
}

impl Inner {
    /// A batch of [`RemoteCache::get`]s: a `GET` for one key, else one `MGET`.
    async fn get_batch(&self, keys: Vec<String>) -> Vec<Read> {
        if let [key] = keys.as_slice() {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key);
            let value: Option<Option<Vec<u8>>> = self
                .call("GET", |conn| async move { conn.query(&cmd).await })
                .await;
            return vec![Read::from_reply(value)];
        }
        match self.mget(&keys).await {
            Some(values) => values
                .into_iter()
                .map(|v| Read::from_reply(Some(v)))
                .collect(),
            None => keys.iter().map(|_| Read::Unavailable).collect(),
        }
    }

    /// One `MGET` for `keys`, answers in key order; `None` when Redis was
    /// unusable.
    async fn mget(&self, keys: &[String]) -> Option<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        let values: Vec<Option<Vec<u8>>> = self
            .call("MGET", |conn| async move { conn.query(&cmd).await })
            .await?;
        // A reply of another length would misattribute values to keys.
        (values.len() == keys.len()).then_some(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_command_never_has_a_zero_ttl() {
        let write = Write {
            key: "k".into(),
            value: b"v".to_vec(),
            ttl: Duration::from_micros(10),
            version: 1,
        };
        let packed = write.cmd(None).get_packed_command();
        let text = String::from_utf8(packed).unwrap();
        assert!(text.ends_with("$2\r\nPX\r\n$1\r\n1\r\n"), "{text:?}");
    }
}
