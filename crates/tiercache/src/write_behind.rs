//! Write-behind: changes acknowledged once they are in Redis (the cache and
//! a durable queue), written to the store later, in batches.
//!
//! # The queue
//!
//! One Redis Stream per cache, `{key_prefix}{namespace}#wb` (outside the
//! `{key_prefix}{namespace}:` keyspace, so that [`clear`](crate::TieredCache::clear)
//! never deletes writes the store does not have yet), read through the
//! consumer group `flushers`. A write ([`TieredCache::write_behind`](crate::TieredCache::write_behind))
//! is one Lua script that checks the version against what Redis holds
//! (strictly newer, or it is a conflict), stores the new value (or a
//! "deleted" marker) and appends the change to the stream: the cache and the
//! queue change together or not at all, before the caller answers.
//!
//! # Pending values
//!
//! Until the store has a change, Redis is the only place that does, so the
//! script also records the stored form in the hash
//! `{key_prefix}{namespace}#wb:pending` (key → newest queued value), and
//! removes it only once the flusher wrote that version (or dead-lettered
//! it). A cache clear, a TTL or an eviction can drop the value key, never
//! the hash: a read that misses the value key asks the hash before the
//! loader (the store, which is behind), and the script checks new versions
//! against both.
//!
//! # The flusher
//!
//! Every instance runs one flusher, a consumer of the group named by its
//! instance id. Each round it takes over entries another consumer left
//! unacknowledged for [`CLAIM_IDLE`] (a crashed instance: `XAUTOCLAIM`),
//! re-reads its own unacknowledged entries (a failed flush), else reads new
//! ones; coalesces them to the newest change per key; hands the batch to the
//! caller's [`Flush`]; and after it returns `Ok` acknowledges and deletes
//! the entries (`XACK` + `XDEL`). A transient failure leaves them pending
//! and backs off; a rejection is retried change by change, and the changes
//! the store rejects alone go to the dead-letter stream
//! `{key_prefix}{namespace}#wb:dead` with the reason, counted and logged.
//!
//! Entries are delivered at least once (a claim can race a slow flush), so
//! the store must apply a change only over an older version
//! (`… WHERE version < $new`): replays and reordered batches are then
//! harmless, and a later write is never overtaken by an earlier one.
//!
//! # Limits
//!
//! The script touches the value key and the stream in one call, which Redis
//! Cluster only allows in one hash slot: write-behind needs a single Redis
//! node (the builder refuses it on a cluster).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::Value;
use tokio::sync::{Mutex, Notify};

use crate::remote::codec::Codec;
use crate::remote::{RemoteCache, version_of_lua};
use crate::stats::{DURATION_BUCKETS_MS, WriteBehindStats, duration_bucket};
use crate::task::LogLimiter;

/// Most entries one round reads (and one batch holds before coalescing).
const BATCH: usize = 500;
/// Entries another consumer left unacknowledged this long are taken over.
pub const CLAIM_IDLE: Duration = Duration::from_secs(2);
/// Longest wait between retries of a failing store.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const GROUP: &str = "flushers";

/// A change to write to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<V> {
    /// The key now has this value.
    Put(V),
    /// The key was deleted.
    Delete,
}

/// One queued change, as the flusher hands it to [`Flush`].
#[derive(Debug, Clone, PartialEq)]
pub struct Queued<K, V> {
    /// The changed key.
    pub key: K,
    /// The version the change creates (for a delete: one more than the
    /// deleted version). Apply it only over an older version.
    pub version: u64,
    /// What changed.
    pub change: Change<V>,
}

/// Why a batch did not reach the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// The store is unreachable or busy: the batch is retried with backoff.
    #[error("the store is unavailable")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// The store refused the batch for good (a constraint, a bad value):
    /// its changes are retried one by one, and those refused alone are
    /// dead-lettered.
    #[error("the store rejected the change")]
    Rejected(#[source] Box<dyn StdError + Send + Sync>),
}

/// Writes batches of queued changes to the store; implemented by the
/// service that owns the store.
pub trait Flush<K, V>: Send + Sync + 'static {
    /// Applies `batch` (at most one change per key) in one transaction,
    /// each change only over an older version.
    fn flush<'a>(&'a self, batch: &'a [Queued<K, V>]) -> BoxFuture<'a, Result<(), FlushError>>;
}

/// Settings of the write-behind queue.
pub(crate) struct Config<K, V> {
    pub(crate) flush: Arc<dyn Flush<K, V>>,
    /// Pause between rounds when the queue is empty.
    pub(crate) interval: Duration,
}

/// The queue of one cache: the script that enqueues, and the flusher.
pub(crate) struct WriteBehind<K, V> {
    shared: Arc<Shared<K, V>>,
    _flusher: crate::task::AbortOnDrop,
}

impl<K, V> fmt::Debug for WriteBehind<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehind")
            .field("stream", &self.shared.stream)
            .finish_non_exhaustive()
    }
}

struct Shared<K, V> {
    l2: RemoteCache,
    codec: Arc<dyn Codec<V>>,
    flush: Arc<dyn Flush<K, V>>,
    stream: String,
    dead: String,
    /// Key → stored form of its newest change not yet in the store.
    pending: String,
    /// The JSON version field (for the scripts' `version_of`).
    field: String,
    consumer: String,
    interval: Duration,
    /// Wakes the flusher after a local write.
    wake: Notify,
    /// One round at a time (the flusher's, or a drain's), and what rounds
    /// remember.
    round: Mutex<RoundState>,
    counters: Counters,
    log: LogLimiter,
}

#[derive(Debug, Default)]
struct Counters {
    pending: AtomicU64,
    flushed: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    batches: AtomicU64,
    coalesced: AtomicU64,
    last_batch: AtomicU64,
    flush_us_sum: AtomicU64,
    flush_buckets: [AtomicU64; DURATION_BUCKETS_MS.len() + 1],
}

/// Checks the version, stores the value, records it as pending and
/// appends the change. KEYS: the value key, the stream, the pending hash.
/// ARGV: version, stored value, TTL (ms), JSON version field, key, op,
/// payload. Returns the entry id, or false when Redis holds this version or
/// a newer one (in the value key or the pending hash).
const ENQUEUE: &str = concat!(
    version_of_lua!(),
    r"
local new = tonumber(ARGV[1])
local old = version_of(redis.call('GET', KEYS[1]), ARGV[4])
local queued = version_of(redis.call('HGET', KEYS[3], ARGV[5]), ARGV[4])
if (old and old >= new) or (queued and queued >= new) then return false end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[2])
return redis.call('XADD', KEYS[2], '*', 'k', ARGV[5], 'v', ARGV[1], 'op', ARGV[6], 'd', ARGV[7])
"
);

/// Forgets pending values the store now has. KEYS: the pending hash. ARGV:
/// the JSON version field, then key, version pairs; a field is removed only
/// if it holds that version or an older one (a newer write is still queued).
const SETTLE: &str = concat!(
    version_of_lua!(),
    r"
for i = 2, #ARGV, 2 do
  local queued = version_of(redis.call('HGET', KEYS[1], ARGV[i]), ARGV[1])
  if queued == nil or queued <= tonumber(ARGV[i + 1]) then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
"
);

/// What [`WriteBehind::enqueue`] asks Redis to do.
pub(crate) struct Enqueue<'a> {
    pub(crate) redis_key: &'a str,
    pub(crate) key: String,
    pub(crate) version: u64,
    /// The value key's new content (a sealed value or a deleted marker).
    pub(crate) stored: Vec<u8>,
    pub(crate) ttl: Duration,
    pub(crate) field: &'a str,
    /// The codec output of the value (empty for a delete).
    pub(crate) payload: Vec<u8>,
    pub(crate) delete: bool,
}

/// How an enqueue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    Queued,
    /// Redis holds this version or a newer one.
    Conflict,
    /// Redis could not be used: nothing was queued.
    Unavailable,
}

impl<K, V> WriteBehind<K, V>
where
    K: FromStr + fmt::Display + Eq + std::hash::Hash + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Starts the flusher for the queue under `key_prefix`
    /// (`{key_prefix}{namespace}:` without its final `:`).
    pub(crate) fn start(
        l2: RemoteCache,
        codec: Arc<dyn Codec<V>>,
        key_prefix: &str,
        field: &str,
        config: Config<K, V>,
    ) -> Self {
        let base = key_prefix.strip_suffix(':').unwrap_or(key_prefix);
        let shared = Arc::new(Shared {
            l2,
            codec,
            flush: config.flush,
            stream: format!("{base}#wb"),
            dead: format!("{base}#wb:dead"),
            pending: format!("{base}#wb:pending"),
            field: field.to_owned(),
            consumer: format!("{:016x}", rand::random::<u64>()),
            interval: config.interval,
            wake: Notify::new(),
            round: Mutex::new(RoundState::default()),
            counters: Counters::default(),
            log: LogLimiter::default(),
        });
        let flusher = tokio::spawn(run(Arc::clone(&shared)));
        Self {
            shared,
            _flusher: crate::task::AbortOnDrop(flusher),
        }
    }

    pub(crate) async fn enqueue(&self, write: Enqueue<'_>) -> Enqueued {
        let shared = &self.shared;
        let ms = u64::try_from(write.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ENQUEUE)
            .arg(3)
            .arg(write.redis_key)
            .arg(&shared.stream)
            .arg(&shared.pending)
            .arg(write.version)
            .arg(write.stored)
            .arg(ms)
            .arg(write.field)
            .arg(write.key)
            .arg(if write.delete { "del" } else { "put" })
            .arg(write.payload);
        match shared.l2.write_command::<Value>("EVAL enqueue", cmd).await {
            None => Enqueued::Unavailable,
            Some(Value::Nil | Value::Boolean(false)) => Enqueued::Conflict,
            Some(_) => {
                shared.counters.pending.fetch_add(1, Ordering::Relaxed);
                shared.wake.notify_one();
                Enqueued::Queued
            }
        }
    }

    /// The stored form of the newest queued change of each key (`None`: no
    /// change of it is waiting), or `None` when Redis was unusable.
    pub(crate) async fn pending(&self, keys: &[String]) -> Option<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&self.shared.pending).arg(keys);
        let values: Vec<Option<Vec<u8>>> = self.shared.l2.command("HMGET pending", cmd).await?;
        (values.len() == keys.len()).then_some(values)
    }

    /// Flushes until the queue is empty or `limit` passes; returns whether
    /// it is empty. For graceful shutdown.
    pub(crate) async fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let outcome = round(&self.shared).await;
            if self.shared.queue_len().await == Some(0) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if outcome != Round::Flushed {
                tokio::time::sleep(self.shared.interval).await;
            }
        }
    }

    pub(crate) fn stats(&self) -> WriteBehindStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WriteBehindStats {
            pending: get(&c.pending),
            flushed: get(&c.flushed),
            failed: get(&c.failed),
            dead_lettered: get(&c.dead_lettered),
            batches: get(&c.batches),
            coalesced: get(&c.coalesced),
            last_batch: get(&c.last_batch),
            flush_ms_sum: get(&c.flush_us_sum) / 1_000,
            flush_buckets: c.flush_buckets.each_ref().map(get),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Nothing to do.
    Idle,
    /// A batch reached the store (or the dead letters).
    Flushed,
    /// Redis or the store failed.
    Failed,
}

/// The flusher: a round whenever woken or every interval; backs off while
/// rounds fail.
async fn run<K, V>(shared: Arc<Shared<K, V>>)
where
    K: FromStr + fmt::Display + Eq + std::hash::Hash + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let mut backoff = shared.interval;
    loop {
        match round(&shared).await {
            Round::Flushed => {
                backoff = shared.interval;
                continue;
            }
            Round::Idle => {
                backoff = shared.interval;
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep(shared.interval) => {}
                }
            }
            Round::Failed => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// What one round leaves to the next.
#[derive(Debug, Default)]
struct RoundState {
    /// The consumer group exists (forgotten when a read fails, since the
    /// stream may have been deleted with it).
    group_ready: bool,
    /// When entries of dead consumers were last claimed.
    last_claim: Option<Instant>,
}

/// Creates the consumer group (and the stream) unless it exists; a
/// `BUSYGROUP` refusal stays inside the script instead of counting as a
/// failed Redis call. KEYS: the stream. ARGV: the group.
const ENSURE_GROUP: &str = r"
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
return 1
";

/// One entry of the stream.
#[derive(Debug)]
struct Entry {
    id: String,
    fields: HashMap<String, Vec<u8>>,
}

async fn round<K, V>(shared: &Shared<K, V>) -> Round
where
    K: FromStr + fmt::Display + Eq + std::hash::Hash + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let mut state = shared.round.lock().await;
    if !state.group_ready {
        if !shared.ensure_group().await {
            return Round::Failed;
        }
        state.group_ready = true;
    }
    // Claiming more often than entries can become claimable is wasted.
    if state
        .last_claim
        .is_none_or(|at| at.elapsed() >= CLAIM_IDLE / 2)
    {
        state.last_claim = Some(Instant::now());
        let _ = shared.claim().await;
    }
    // Our own unacknowledged entries first (a failed flush, or claimed).
    let mut entries = shared.read("0").await;
    if entries.as_ref().is_some_and(Vec::is_empty) {
        entries = shared.read(">").await;
    }
    let Some(entries) = entries else {
        state.group_ready = false;
        return Round::Failed;
    };
    if let Some(len) = shared.queue_len().await {
        shared.counters.pending.store(len, Ordering::Relaxed);
    }
    if entries.is_empty() {
        return Round::Idle;
    }
    let outcome = shared.flush_entries(entries).await;
    if let Some(len) = shared.queue_len().await {
        shared.counters.pending.store(len, Ordering::Relaxed);
    }
    outcome
}

impl<K, V> Shared<K, V>
where
    K: FromStr + fmt::Display + Eq + std::hash::Hash + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Creates the group (and the stream) if missing; reading from the
    /// stream's start so that entries queued before it existed are flushed.
    async fn ensure_group(&self) -> bool {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ENSURE_GROUP).arg(1).arg(&self.stream).arg(GROUP);
        self.l2
            .command::<Value>("EVAL ensure group", cmd)
            .await
            .is_some()
    }

    async fn queue_len(&self) -> Option<u64> {
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(&self.stream);
        self.l2.command("XLEN", cmd).await
    }

    /// Takes over entries other consumers left idle for [`CLAIM_IDLE`].
    async fn claim(&self) -> Option<()> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(u64::try_from(CLAIM_IDLE.as_millis()).unwrap_or(u64::MAX))
            .arg("0-0")
            .arg("COUNT")
            .arg(BATCH)
            .arg("JUSTID");
        self.l2
            .command::<Value>("XAUTOCLAIM", cmd)
            .await
            .map(|_| ())
    }

    /// `XREADGROUP` from `start`: `0` for our pending entries, `>` for new ones.
    async fn read(&self, start: &str) -> Option<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(start);
        let reply: Value = self.l2.command("XREADGROUP", cmd).await?;
        Some(parse_read(reply))
    }

    async fn flush_entries(&self, entries: Vec<Entry>) -> Round {
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut newest: HashMap<K, Queued<K, V>> = HashMap::new();
        let mut unreadable = Vec::new();
        let total = entries.len();
        for entry in entries {
            match self.decode(&entry) {
                Ok(queued) => match newest.get(&queued.key) {
                    Some(kept) if kept.version >= queued.version => {}
                    _ => {
                        newest.insert(queued.key.clone(), queued);
                    }
                },
                Err(reason) => unreadable.push((entry, reason)),
            }
        }
        for (entry, reason) in unreadable {
            self.dead_letter(&entry.fields, &reason).await;
        }
        let batch: Vec<Queued<K, V>> = newest.into_values().collect();
        let started = Instant::now();
        let result = self.flush.flush(&batch).await;
        match result {
            Ok(()) => {}
            Err(FlushError::Unavailable(error)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.log.warn(|suppressed| {
                    tracing::warn!(%error, suppressed, stream = %self.stream, "write-behind flush failed; retrying");
                });
                return Round::Failed;
            }
            Err(FlushError::Rejected(error)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, stream = %self.stream, "write-behind batch rejected; flushing its changes one by one");
                for queued in &batch {
                    match self.flush.flush(std::slice::from_ref(queued)).await {
                        Ok(()) => {}
                        Err(FlushError::Rejected(error)) => {
                            let fields = encode_fields(queued, self.codec.as_ref());
                            self.dead_letter(&fields, &chain(error.as_ref())).await;
                        }
                        Err(FlushError::Unavailable(_)) => return Round::Failed,
                    }
                }
            }
        }
        let took = started.elapsed();
        self.counters.flush_us_sum.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.counters.flush_buckets[duration_bucket(took_ms)].fetch_add(1, Ordering::Relaxed);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .last_batch
            .store(batch.len() as u64, Ordering::Relaxed);
        self.counters
            .coalesced
            .fetch_add((total - batch.len()) as u64, Ordering::Relaxed);
        // Acknowledged only now that the store has the changes.
        let written: Vec<(String, u64)> = batch
            .iter()
            .map(|q| (q.key.to_string(), q.version))
            .collect();
        self.settle(&written).await;
        if !self.acknowledge(&ids).await {
            // The store has them; Redis will hand them out again, and
            // applying them again is harmless (versions).
            return Round::Failed;
        }
        self.counters
            .flushed
            .fetch_add(total as u64, Ordering::Relaxed);
        Round::Flushed
    }

    fn decode(&self, entry: &Entry) -> Result<Queued<K, V>, String> {
        let text = |name: &str| {
            entry
                .fields
                .get(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or_else(|| format!("field {name:?} missing"))
        };
        let key = text("k")?
            .parse::<K>()
            .map_err(|_| "key does not parse".to_owned())?;
        let version = text("v")?
            .parse::<u64>()
            .map_err(|_| "version does not parse".to_owned())?;
        let change = match text("op")? {
            "del" => Change::Delete,
            "put" => {
                let payload = entry.fields.get("d").map_or(&[][..], Vec::as_slice);
                Change::Put(self.codec.decode(payload).map_err(|e| e.to_string())?)
            }
            other => return Err(format!("unknown op {other:?}")),
        };
        Ok(Queued {
            key,
            version,
            change,
        })
    }

    /// Forgets the pending values of `(key, version)` changes the store has
    /// (or that were dead-lettered). If Redis fails here, they stay until a
    /// later change of the key is settled: reads then get the value the
    /// store has too, only from Redis.
    async fn settle(&self, written: &[(String, u64)]) {
        if written.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SETTLE).arg(1).arg(&self.pending).arg(&self.field);
        for (key, version) in written {
            cmd.arg(key).arg(version);
        }
        let _: Option<Value> = self.l2.write_command("EVAL settle", cmd).await;
    }

    async fn acknowledge(&self, ids: &[String]) -> bool {
        let mut ack = redis::cmd("XACK");
        ack.arg(&self.stream).arg(GROUP).arg(ids);
        let mut del = redis::cmd("XDEL");
        del.arg(&self.stream).arg(ids);
        self.l2.command::<u64>("XACK", ack).await.is_some()
            && self.l2.command::<u64>("XDEL", del).await.is_some()
    }

    /// Moves one change to the dead-letter stream with `reason`. The
    /// original is acknowledged with the rest of its batch.
    async fn dead_letter(&self, fields: &HashMap<String, Vec<u8>>, reason: &str) {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.dead).arg("*");
        for (name, value) in fields {
            cmd.arg(name).arg(value);
        }
        cmd.arg("reason").arg(reason);
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        // The rejected value must not be served in the store's stead.
        let version = fields
            .get("v")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        if let (Some(key), Some(version)) = (fields.get("k"), version) {
            self.settle(&[(String::from_utf8_lossy(key).into_owned(), version)])
                .await;
        }
        let key = fields
            .get("k")
            .map(|k| String::from_utf8_lossy(k).into_owned());
        if self
            .l2
            .command::<Value>("XADD dead letter", cmd)
            .await
            .is_some()
        {
            tracing::error!(key, reason, dead_letters = %self.dead, "write-behind change rejected by the store; moved to the dead letters");
        } else {
            tracing::error!(
                key,
                reason,
                "write-behind change rejected by the store and could not be dead-lettered; dropped"
            );
        }
    }
}

/// An error and its causes, `outer: inner: …`: the store's own words go
/// into the dead letter, which only operators read.
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn encode_fields<K: fmt::Display, V: 'static>(
    queued: &Queued<K, V>,
    codec: &dyn Codec<V>,
) -> HashMap<String, Vec<u8>> {
    let mut fields = HashMap::new();
    fields.insert("k".to_owned(), queued.key.to_string().into_bytes());
    fields.insert("v".to_owned(), queued.version.to_string().into_bytes());
    let (op, payload) = match &queued.change {
        Change::Put(value) => ("put", codec.encode(value).unwrap_or_default()),
        Change::Delete => ("del", Vec::new()),
    };
    fields.insert("op".to_owned(), op.as_bytes().to_vec());
    fields.insert("d".to_owned(), payload);
    fields
}

/// The entries of an `XREADGROUP` reply (one stream), in RESP2 or RESP3 form.
fn parse_read(reply: Value) -> Vec<Entry> {
    let streams = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .flat_map(|entries| match entries {
            Value::Array(entries) => entries,
            _ => Vec::new(),
        })
        .filter_map(parse_entry)
        .collect()
}

fn parse_entry(entry: Value) -> Option<Entry> {
    let Value::Array(mut parts) = entry else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = bytes(parts.pop()?)?;
    let values: Vec<Vec<u8>> = match fields {
        Value::Array(values) => values.into_iter().filter_map(bytes).collect(),
        Value::Map(pairs) => pairs
            .into_iter()
            .flat_map(|(k, v)| [k, v])
            .filter_map(bytes)
            .collect(),
        // An entry deleted while pending comes back with no fields.
        _ => return None,
    };
    let fields = values
        .chunks_exact(2)
        .map(|pair| {
            (
                String::from_utf8_lossy(&pair[0]).into_owned(),
                pair[1].clone(),
            )
        })
        .collect();
    Some(Entry {
        id: String::from_utf8(id).ok()?,
        fields,
    })
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn read_replies_parse_in_resp2_form() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("k"), bulk("7"), bulk("op"), bulk("del")]),
                ]),
                // Deleted while pending: no fields.
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);

        let entries = parse_read(reply);

        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].fields["k"], b"7");
        assert_eq!(entries[0].fields["op"], b"del");
        assert!(parse_read(Value::Nil).is_empty());
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// Reply trees of the shapes Redis sends (arrays, maps, bulk
        /// strings, integers, nil) nested a few levels deep.
        fn reply() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Nil),
                any::<i64>().prop_map(Value::Int),
                prop::collection::vec(any::<u8>(), 0..12).prop_map(Value::BulkString),
                prop::sample::select(vec!["k", "v", "op", "d", "put", "del", "1-0", "7"])
                    .prop_map(|text| Value::BulkString(text.as_bytes().to_vec())),
            ];
            leaf.prop_recursive(4, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
                ]
            })
        }

        proptest! {
            #![proptest_config(testkit::fuzz_config())]

            /// Any reply parses without panicking, and garbage next to a
            /// well-formed entry does not hide it.
            #[test]
            fn garbage_in_a_read_reply_hides_no_entry(
                before in prop::collection::vec(reply(), 0..4),
                after in prop::collection::vec(reply(), 0..4),
                anything in reply(),
            ) {
                let _ = parse_read(anything);
                let good = Value::Array(vec![
                    Value::BulkString(b"9-9".to_vec()),
                    Value::Array(vec![
                        Value::BulkString(b"k".to_vec()),
                        Value::BulkString(b"42".to_vec()),
                    ]),
                ]);
                let entries: Vec<Value> = before.into_iter().chain([good]).chain(after).collect();
                let reply = Value::Array(vec![Value::Array(vec![
                    Value::BulkString(b"stream".to_vec()),
                    Value::Array(entries),
                ])]);
                let parsed = parse_read(reply);
                prop_assert!(
                    parsed.iter().any(|e| e.id == "9-9" && e.fields.get("k").map(Vec::as_slice) == Some(&b"42"[..])),
                    "{:?}", parsed
                );
            }
        }
    }
}
