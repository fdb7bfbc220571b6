//! Write-behind: changes acknowledged once they are in Redis (the cache and
//! a durable queue), written to the store later, in batches. This file owns
//! the public types and the queue handle (enqueue, pending values, drain,
//! stats); the flusher is in `flusher`, the stream's wire format in `stream`.
//!
//! # The queue
//!
//! On a single server one Redis Stream per cache, `{key_prefix}{namespace}#wb`
//! (outside the `{key_prefix}{namespace}:` keyspace, so that [`clear`](crate::TieredCache::clear)
//! never deletes writes the store does not have yet); on a cluster
//! [`CLUSTER_PARTITIONS`](partition::CLUSTER_PARTITIONS) streams, each key's
//! changes always in the same one (see [`partition`]). Each is read through
//! the consumer group `flushers`. On a single server a write
//! ([`TieredCache::write_behind`](crate::TieredCache::write_behind)) is one
//! Lua script that checks the version against what Redis holds (strictly
//! newer, or it is a conflict), stores the new value (or a "deleted"
//! marker) and appends the change to the stream: the cache and the queue
//! change together or not at all, before the caller answers. On a cluster
//! the value key lives in another slot than the queue, so a write is three
//! steps: read the value key's version, queue (the same checks, one
//! script on the partition: this is the commit point), then store the
//! value through the version guard.
//!
//! # Replicas
//!
//! Redis replicates asynchronously: a primary that fails right after
//! queueing a change can take it with it. With [`ReplicaWait`] set, the
//! queueing script is followed by `WAIT 1 <timeout>` in the same round trip,
//! on a connection of its own (`WAIT` holds its connection up to the
//! timeout, which must not stall reads): the caller answers only once a
//! replica has the change, or the timeout passed, in which case the
//! change is still queued and acknowledged, counted as `unreplicated` and
//! logged.
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

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::Value;
use tokio::sync::{Mutex, Notify};

use crate::codec::Codec;
use crate::events::Events;
use crate::remote::RemoteCache;
use crate::remote::scripts::{ENQUEUE, ENQUEUE_PARTITION, VERSION_OF};
use crate::stats::{DURATION_BUCKETS_MS, WriteBehindStats};
use crate::task::LogLimiter;

mod flusher;
pub(crate) mod partition;
mod stream;

use flusher::{Round, RoundState, round, run};
use partition::Partitions;

/// Most entries one round reads (and one batch holds before coalescing).
const BATCH: usize = 500;
/// Entries another consumer left unacknowledged this long are taken over.
pub(crate) const CLAIM_IDLE: Duration = Duration::from_secs(2);
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
#[non_exhaustive]
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
    /// Wait for a replica before acknowledging a write.
    pub(crate) replica_wait: Option<ReplicaWait>,
    /// Where flush results are announced.
    pub(crate) events: Events,
}

/// Acknowledge a write only once a replica has it (`WAIT 1 <timeout>`), or
/// `timeout` passed.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaWait {
    /// A connection of its own, whose calls may take `timeout` longer than
    /// the L2 timeout.
    pub(crate) conn: RemoteCache,
    pub(crate) timeout: Duration,
}

/// The queue of one cache: the script that enqueues, and the flusher.
pub(crate) struct WriteBehind<K, V> {
    shared: Arc<Shared<K, V>>,
    _flusher: crate::task::AbortOnDrop,
}

impl<K, V> fmt::Debug for WriteBehind<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehind")
            .field("partitions", &self.shared.partitions)
            .finish_non_exhaustive()
    }
}

struct Shared<K, V> {
    l2: RemoteCache,
    codec: Arc<dyn Codec<V>>,
    flush: Arc<dyn Flush<K, V>>,
    partitions: Partitions,
    /// Whether the value key and the queue can change in one script (a
    /// single server), or the value key is written separately (a cluster).
    atomic: bool,
    replica_wait: Option<ReplicaWait>,
    /// `{key_prefix}{namespace}:`, which a key's value key starts with.
    key_prefix: String,
    /// The JSON version field (for the scripts' `version_of`).
    field: String,
    consumer: String,
    interval: Duration,
    /// Wakes the flusher after a local write.
    wake: Notify,
    /// One round at a time (the flusher's, or a drain's), and what rounds
    /// remember of each partition.
    round: Mutex<Vec<RoundState>>,
    counters: Counters,
    log: LogLimiter,
    events: Events,
}

#[derive(Debug, Default)]
struct Counters {
    pending: AtomicU64,
    flushed: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    unreplicated: AtomicU64,
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
        let cluster = l2.topology().is_cluster();
        let partitions = Partitions::new(base, cluster);
        let rounds = partitions
            .all()
            .iter()
            .map(|_| RoundState::default())
            .collect();
        let shared = Arc::new(Shared {
            l2,
            codec,
            flush: config.flush,
            partitions,
            atomic: !cluster,
            replica_wait: config.replica_wait,
            key_prefix: key_prefix.to_owned(),
            field: field.to_owned(),
            consumer: format!("{:016x}", rand::random::<u64>()),
            interval: config.interval,
            wake: Notify::new(),
            round: Mutex::new(rounds),
            counters: Counters::default(),
            log: LogLimiter::default(),
            events: config.events,
        });
        let flusher = tokio::spawn(run(Arc::clone(&shared)));
        Self {
            shared,
            _flusher: crate::task::AbortOnDrop(flusher),
        }
    }

    pub(crate) async fn enqueue(&self, write: Enqueue<'_>) -> Enqueued {
        let shared = &self.shared;
        let partition = &shared.partitions.all()[shared.partitions.of(&write.key)];
        let ttl_ms = u64::try_from(write.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let op = if write.delete { "del" } else { "put" };
        let mut cmd = redis::cmd("EVAL");
        if shared.atomic {
            cmd.arg(ENQUEUE)
                .arg(3)
                .arg(write.redis_key)
                .arg(&partition.stream)
                .arg(&partition.pending)
                .arg(write.version)
                .arg(&write.stored)
                .arg(ttl_ms)
                .arg(write.field)
                .arg(&write.key)
                .arg(op)
                .arg(&write.payload);
        } else {
            let mut version = redis::cmd("EVAL");
            version
                .arg(VERSION_OF)
                .arg(1)
                .arg(write.redis_key)
                .arg(write.field);
            let Some(current) = shared
                .l2
                .command::<Option<i64>>("EVAL version of", version)
                .await
            else {
                return Enqueued::Unavailable;
            };
            cmd.arg(ENQUEUE_PARTITION)
                .arg(2)
                .arg(&partition.stream)
                .arg(&partition.pending)
                .arg(write.version)
                .arg(&write.stored)
                .arg(write.field)
                .arg(&write.key)
                .arg(op)
                .arg(&write.payload)
                .arg(current.map(|v| v.to_string()).unwrap_or_default());
        }
        match shared.queue(cmd).await {
            None => return Enqueued::Unavailable,
            Some(Value::Nil | Value::Boolean(false)) => return Enqueued::Conflict,
            Some(_) => {}
        }
        if !shared.atomic {
            shared.store_value(write).await;
        }
        shared.counters.pending.fetch_add(1, Ordering::Relaxed);
        shared.wake.notify_one();
        Enqueued::Queued
    }

    /// The stored form of the newest queued change of each key (`None`: no
    /// change of it is waiting), or `None` when Redis was unusable: one
    /// `HMGET` per partition the keys fall in, in parallel.
    pub(crate) async fn pending(&self, keys: &[String]) -> Option<Vec<Option<Vec<u8>>>> {
        let partitions = &self.shared.partitions;
        let mut by_partition: Vec<Vec<usize>> = vec![Vec::new(); partitions.all().len()];
        for (i, key) in keys.iter().enumerate() {
            by_partition[partitions.of(key)].push(i);
        }
        let reads = by_partition
            .iter()
            .zip(partitions.all())
            .filter(|(indexes, _)| !indexes.is_empty())
            .map(|(indexes, partition)| async move {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&partition.pending);
                for &i in indexes {
                    cmd.arg(&keys[i]);
                }
                let values: Vec<Option<Vec<u8>>> =
                    self.shared.l2.command("HMGET pending", cmd).await?;
                (values.len() == indexes.len()).then_some((indexes, values))
            });
        let mut found = vec![None; keys.len()];
        for read in futures_util::future::join_all(reads).await {
            let (indexes, values) = read?;
            for (&i, value) in indexes.iter().zip(values) {
                found[i] = value;
            }
        }
        Some(found)
    }

    /// Flushes until the queue is empty or `limit` passes; returns whether
    /// it is empty. For graceful shutdown.
    pub(crate) async fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let outcome = round(&self.shared).await;
            if self.shared.queued().await == Some(0) {
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
            unreplicated: get(&c.unreplicated),
            flush_buckets: c.flush_buckets.each_ref().map(get),
        }
    }
}

impl<K, V> Shared<K, V>
where
    K: FromStr + fmt::Display + Eq + std::hash::Hash + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Entries in every partition; `None` when Redis did not tell.
    async fn queued(&self) -> Option<u64> {
        let mut total = 0;
        for partition in self.partitions.all() {
            total += self.queue_len(partition).await?;
        }
        Some(total)
    }

    /// Sends a queueing script: over the connection writes go to, or with
    /// [`ReplicaWait`] followed by `WAIT 1` on the waiting connection (one
    /// round trip). Returns the script's reply.
    async fn queue(&self, cmd: redis::Cmd) -> Option<Value> {
        let Some(wait) = &self.replica_wait else {
            return self.l2.write_command("EVAL enqueue", cmd).await;
        };
        let (reply, replicas) = wait
            .conn
            .command_then_wait::<Value>("EVAL enqueue + WAIT", cmd, wait.timeout)
            .await?;
        if replicas == 0 && !matches!(reply, Value::Nil | Value::Boolean(false)) {
            self.counters.unreplicated.fetch_add(1, Ordering::Relaxed);
            self.log.warn(|suppressed| {
                tracing::warn!(timeout = ?wait.timeout, suppressed, "write-behind change queued but no replica confirmed it in time; a failover now could lose it");
            });
        }
        Some(reply)
    }

    /// A cluster's last step: the value key, through the version guard (a
    /// newer value stays). The change is queued already; if this fails (or
    /// the writer dies first), the flusher drops the older value once the
    /// store has the change (see `drop_older_values`).
    async fn store_value(&self, write: Enqueue<'_>) {
        let value = crate::remote::Write {
            key: write.redis_key.to_owned(),
            value: write.stored,
            ttl: write.ttl,
            version: i64::try_from(write.version).unwrap_or(i64::MAX),
        };
        if self.l2.set(&value, Some(write.field)).await.is_none() {
            tracing::warn!(key = %write.key, "write-behind change queued, but its value could not be stored in the cache");
        }
    }
}
