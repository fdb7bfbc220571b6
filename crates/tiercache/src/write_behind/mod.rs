//! Write-behind: changes acknowledged once they are in Redis (the cache and
//! a durable queue), written to the store later, in batches. This file owns
//! the public types and the queue handle (enqueue, pending values, drain,
//! stats); the flusher is in `flusher`, the stream's wire format in `stream`.
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

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::Value;
use tokio::sync::{Mutex, Notify};

use crate::remote::RemoteCache;
use crate::remote::codec::Codec;
use crate::remote::scripts::ENQUEUE;
use crate::stats::{DURATION_BUCKETS_MS, WriteBehindStats};
use crate::task::LogLimiter;

mod flusher;
mod stream;

use flusher::{Round, RoundState, round, run};

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
