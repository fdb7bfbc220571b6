//! L2: Redis, behind a timeout, a circuit breaker and a supervisor.
//!
//! Owns the connection, the breaker and the L2 error counter. Works on
//! already-encoded bytes and full Redis keys; it knows nothing about value
//! types (see [`codec`]) or about which key belongs to which cache.
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
//! - rebuilds the connection from scratch after [`REBUILD_AFTER`] failed
//!   probes, in case the old one is wedged (e.g. its reconnect gave up).
//!
//! Between those, redis-rs reconnects a dropped connection by itself
//! (`ConnectionManager` for one server, the cluster client per node).

pub(crate) mod codec;

pub(crate) mod breaker;
pub(crate) mod topology;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::{Cmd, RedisError, Value};
use tracing::Instrument;

use crate::batch::Batcher;
use crate::clock::SystemClock;
use crate::error::Error;
use crate::stats::L2State;
use crate::task::{AbortOnDrop, LogLimiter};
use breaker::{BreakerConfig, CircuitBreaker, Permit};
use topology::{Conn, ConnectSettings, RedisTopology};

/// Failed probes after which the supervisor rebuilds the connection.
const REBUILD_AFTER: u32 = 3;
/// `SCAN … COUNT`: keys examined per round trip when clearing a prefix.
const SCAN_COUNT: usize = 500;
/// Single-key reads in flight at once; more wait and go out as one `MGET`.
const READ_LANES: usize = 2;
/// Most keys in one batched `MGET`.
const MAX_READ_BATCH: usize = 100;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Everything the L2 needs to connect and behave.
#[derive(Debug, Clone)]
pub(crate) struct RemoteConfig {
    pub(crate) topology: RedisTopology,
    /// Bound on every call.
    pub(crate) timeout: Duration,
    /// Bound on every connection attempt.
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker: BreakerConfig,
}

/// A handle to the Redis level; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct RemoteCache {
    inner: Arc<Inner>,
    /// Single-key reads, sent as one `MGET` when they arrive together.
    gets: Batcher<String, Read>,
    _supervisor: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct Inner {
    config: RemoteConfig,
    /// `None` until the first connection succeeds.
    conn: RwLock<Option<Conn>>,
    /// Where writes go when set: the bus receiver's connection (see
    /// [`RemoteCache::route_writes`]).
    writer: RwLock<Option<Lent>>,
    /// Numbers the connections lent, so that a failed write takes back only
    /// the one it used.
    lends: AtomicU64,
    breaker: CircuitBreaker,
    errors: AtomicU64,
    log: LogLimiter,
}

/// The bus receiver's connection, lent for writes.
#[derive(Debug, Clone)]
struct Lent {
    number: u64,
    conn: Conn,
}

/// A failed call: whether it failed for want of Redis (rather than Redis
/// refusing the command).
struct Unavailable(bool);

impl RemoteCache {
    /// Makes one connection attempt and starts the supervisor.
    ///
    /// Never fails because Redis is unreachable: the L2 then starts `Down`.
    /// Must be called within a Tokio runtime.
    pub(crate) async fn connect(config: RemoteConfig) -> Result<Self, Error> {
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(Error::config("L2 timeouts must be positive"));
        }
        let inner = Arc::new(Inner {
            breaker: CircuitBreaker::with_clock(config.breaker, Arc::new(SystemClock)),
            conn: RwLock::new(None),
            writer: RwLock::new(None),
            lends: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            log: LogLimiter::default(),
            config,
        });
        if !inner.try_establish().await {
            inner.breaker.trip();
        }
        let supervisor = tokio::spawn(supervise(Arc::downgrade(&inner)));
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

    /// Deletes every key starting with `prefix` but `keep`: `SCAN MATCH
    /// prefix* COUNT 500` on every node holding keys, `UNLINK` per batch
    /// found.
    ///
    /// Each round trip has its own timeout, so a large keyspace is cleared
    /// in many short calls. Returns the number of keys unlinked, or `None`
    /// if Redis failed part way (some keys may be left).
    pub(crate) async fn clear_prefix(&self, prefix: &str, keep: &str) -> Option<u64> {
        let pattern = format!("{}*", escape_glob(prefix));
        let nodes = self
            .inner
            .call(
                "cluster nodes",
                |conn| async move { conn.key_holders().await },
            )
            .await?;
        let mut unlinked = 0;
        for node in &nodes {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, mut keys): (u64, Vec<Vec<u8>>) = self
                    .inner
                    .call(
                        "SCAN",
                        |conn| async move { conn.query_node(node, scan).await },
                    )
                    .await?;
                keys.retain(|key| key != keep.as_bytes());
                if !keys.is_empty() {
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(&keys);
                    // UNLINK is split per slot by the cluster client, so the
                    // keys of one node's batch need not share a slot.
                    unlinked += self
                        .inner
                        .call(
                            "UNLINK",
                            |conn| async move { conn.query::<u64>(&unlink).await },
                        )
                        .await?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Some(unlinked)
    }
}

/// Lua `version_of(stored, field)`: the version of a stored value (see
/// [`codec`]): the digits after a `0x03` (versioned), `0x04` (tombstone) or
/// `0x05` (deleted) marker, `-1` for a negative entry, the JSON field
/// `field` of JSON text, `nil` when absent or unreadable.
macro_rules! version_of_lua {
    () => {
        r"
local function version_of(cur, field)
  if not cur then return nil end
  local first = string.byte(cur, 1)
  if first == nil then return -1 end
  if first >= 3 and first <= 5 then return tonumber(string.match(cur, '^.(%d+)')) end
  if first > 8 then
    local ok, doc = pcall(cjson.decode, cur)
    if ok and type(doc) == 'table' then return tonumber(doc[field]) end
  end
  return nil
end
"
    };
}
pub(crate) use version_of_lua;

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
    /// The stored form (see [`codec`]).
    pub(crate) value: Vec<u8>,
    pub(crate) ttl: Duration,
    /// The value's version for the guard; `-1` for "absent" (a negative
    /// entry), which never replaces a versioned value or a tombstone.
    pub(crate) version: i64,
}

/// The version guard (SPEC §4: "never replace a newer version with an
/// older one"). Stores ARGV[2] under KEYS[1] for ARGV[3] ms unless what is
/// stored has a higher version than ARGV[1]. The stored version is read
/// from the value itself: the digits after a `0x03` (versioned) or `0x04`
/// (tombstone) marker, `-1` for a negative entry (the empty string), else
/// the JSON field named ARGV[4]. A value whose version cannot be read is
/// replaced. Returns 1 when stored, 0 when refused, 2 when the very same
/// bytes are already there (left as they are, TTL included: rewriting them
/// would only send every instance a client-tracking invalidation for a
/// value that did not change).
const GUARDED_SET: &str = concat!(
    version_of_lua!(),
    r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[2] then return 2 end
local old = version_of(cur, ARGV[4])
if old and old > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"
);

/// Whether a reply to [`Write::cmd`] means "stored": `OK` from `SET`, 1
/// (written) or 2 (already there) from the guard.
fn is_stored(reply: &Value) -> bool {
    matches!(reply, Value::Okay | Value::Int(1 | 2))
}

/// New tag generation: `max(stored + 1, Redis time in ms)`. Time-based so
/// that a generation never comes back after its key was deleted (by a
/// cache clear, say): entries keyed by an old generation must stay
/// unreachable.
const BUMP_TAG: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local new = math.max(cur + 1, now)
redis.call('SET', KEYS[1], string.format('%.0f', new))
return new
";

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

/// Escapes the glob metacharacters of `SCAN MATCH`, so a prefix is literal.
fn escape_glob(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Whether `error` says Redis is unavailable (as opposed to Redis having
/// answered and rejected this particular command).
pub(crate) fn is_availability_failure(error: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match error.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ),
        // Redis answered: with an error code redis-rs has no name for
        // (WRONGTYPE, OOM, NOAUTH…), or with a reply of an unexpected type.
        ErrorKind::Extension | ErrorKind::Parse | ErrorKind::UnexpectedReturnType => false,
        // I/O, cluster routing, authentication, client-side failures of the
        // connection: when in doubt, protect the caller from waiting.
        _ => true,
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

    fn current_conn(&self) -> Option<Conn> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn connect_settings(&self) -> ConnectSettings {
        ConnectSettings {
            response_timeout: self.config.timeout,
            connect_timeout: self.config.connect_timeout,
        }
    }

    /// One bounded connection attempt; on success installs the connection
    /// and closes the breaker.
    async fn try_establish(&self) -> bool {
        let attempt = Conn::establish(&self.config.topology, self.connect_settings());
        let error = match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok(conn)) => {
                *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                self.breaker.on_success();
                tracing::info!(redis = %self.config.topology, "L2 connected");
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connection attempt timed out".to_owned(),
        };
        self.log.warn(|suppressed| {
            tracing::warn!(redis = %self.config.topology, %error, suppressed, "L2 unavailable; serving without it");
        });
        false
    }

    /// Runs one Redis call under the breaker and the timeout.
    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if self.breaker.permit() == Permit::Refused {
            return None;
        }
        let conn = self.current_conn()?;
        self.run(what, conn, f).await
    }

    /// Like [`call`](Self::call), over the connection writes go to.
    async fn call_write<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if self.breaker.permit() == Permit::Refused {
            return None;
        }
        self.on_writer(what, f).await
    }

    /// Runs one call on the connection writes go to: the lent one, else the
    /// shared one. A lent connection that failed for want of Redis (closed,
    /// timed out) is taken back, so that the writes after it use the shared
    /// connection until the bus lends a new one.
    async fn on_writer<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let lent = self
            .writer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(lent) = lent else {
            let conn = self.current_conn()?;
            return self.run(what, conn, f).await;
        };
        match self.attempt(what, lent.conn, f).await {
            Ok(value) => Some(value),
            Err(Unavailable(unavailable)) => {
                if unavailable {
                    let mut writer = self.writer.write().unwrap_or_else(|e| e.into_inner());
                    if writer
                        .as_ref()
                        .is_some_and(|held| held.number == lent.number)
                    {
                        *writer = None;
                    }
                }
                None
            }
        }
    }

    /// Runs one Redis call on `conn` under the timeout, the breaker having
    /// allowed it.
    async fn run<T, F, Fut>(&self, what: &'static str, conn: Conn, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.attempt(what, conn, f).await.ok()
    }

    /// [`run`](Self::run), telling a failure for want of Redis from a refusal.
    async fn attempt<T, F, Fut>(
        &self,
        what: &'static str,
        conn: Conn,
        f: F,
    ) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        // A debug span per Redis call (`RUST_LOG=tiercache=debug`); with
        // debug off it costs one level check.
        let call = tokio::time::timeout(self.config.timeout, f(conn))
            .instrument(tracing::debug_span!("redis", command = what));
        let (failure, unavailable) = match call.await {
            Ok(Ok(value)) => {
                self.record_success();
                return Ok(value);
            }
            Ok(Err(error)) => {
                let unavailable = is_availability_failure(&error);
                if unavailable {
                    self.record_failure();
                } else {
                    self.record_success();
                }
                (error.to_string(), unavailable)
            }
            Err(_) => {
                self.record_failure();
                (format!("timed out after {:?}", self.config.timeout), true)
            }
        };
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.log.warn(|suppressed| {
            tracing::warn!(command = what, error = %failure, suppressed, "L2 call failed; treated as a miss");
        });
        Err(Unavailable(unavailable))
    }

    fn record_success(&self) {
        if self.breaker.on_success() {
            tracing::info!(redis = %self.config.topology, "L2 is back; circuit breaker closed");
        }
    }

    fn record_failure(&self) {
        if self.breaker.on_failure() {
            tracing::warn!(
                redis = %self.config.topology,
                cooldown = ?self.config.breaker.cooldown,
                "L2 failing; circuit breaker open, skipping Redis until a probe succeeds"
            );
        }
    }

    /// Sends a `PING` if the breaker wants a probe now; `None` if it does not.
    async fn probe(&self) -> Option<bool> {
        if self.breaker.permit() == Permit::Refused {
            return None;
        }
        let ping = redis::cmd("PING");
        let conn = self.current_conn()?;
        let answered = self
            .run("PING", conn, |conn| async move {
                conn.query::<String>(&ping).await
            })
            .await;
        Some(answered.is_some())
    }
}

/// Background care of one L2: first connection, probes, rebuilds.
///
/// Holds only a `Weak`, so it never keeps a dropped cache alive; it also
/// exits when upgrading fails.
async fn supervise(inner: Weak<Inner>) {
    let mut retry = FIRST_RETRY;
    let mut failed_probes = 0u32;
    loop {
        let pause = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.current_conn().is_none() || failed_probes >= REBUILD_AFTER {
                if inner.try_establish().await {
                    failed_probes = 0;
                    retry = FIRST_RETRY;
                    inner.config.breaker.cooldown
                } else {
                    inner.breaker.trip();
                    let pause = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    pause
                }
            } else {
                if !inner.breaker.is_closed() {
                    match inner.probe().await {
                        Some(true) => failed_probes = 0,
                        Some(false) => failed_probes += 1,
                        None => {}
                    }
                }
                inner.config.breaker.cooldown
            }
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(escape_glob("cache:"), "cache:");
        assert_eq!(escape_glob("a*b?c[d]e\\"), "a\\*b\\?c\\[d\\]e\\\\");
    }

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

    #[test]
    fn rejected_commands_do_not_count_as_unavailability() {
        let unexpected = RedisError::from((redis::ErrorKind::UnexpectedReturnType, "x"));
        assert!(!is_availability_failure(&unexpected));
        let wrong_type = redis::make_extension_error("WRONGTYPE".into(), None);
        assert!(!is_availability_failure(&wrong_type));
        let loading = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
            "loading",
        ));
        assert!(is_availability_failure(&loading));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_availability_failure(&io));
    }
}
