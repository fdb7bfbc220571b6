//! The flusher: rounds that claim what dead consumers left, read the
//! stream through the consumer group, coalesce to the newest change per
//! key, hand the batch to the caller's [`Flush`], then settle the pending
//! values and acknowledge; rejected changes are retried alone and
//! dead-lettered.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use redis::Value;

use super::partition::Partition;
use super::stream::{self, Entry};
use super::{BATCH, CLAIM_IDLE, FlushError, GROUP, MAX_BACKOFF, Queued, Shared};
use crate::events::CacheEvent;
use crate::manager::value_key;
use crate::remote::scripts::{DROP_OLDER, ENSURE_GROUP, SETTLE};
use crate::stats::duration_bucket;

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Round {
    /// Nothing to do.
    Idle,
    /// A batch reached the store (or the dead letters).
    Flushed,
    /// Redis or the store failed.
    Failed,
}

/// The flusher: a round whenever woken or every interval; backs off while
/// rounds fail.
pub(super) async fn run<K, V>(shared: Arc<Shared<K, V>>)
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
#[derive(Debug)]
pub(super) struct RoundState {
    /// The consumer group exists (forgotten when a read fails, since the
    /// stream may have been deleted with it).
    group_ready: bool,
    /// When entries of dead consumers were last claimed (and the queue's
    /// length last read, if no round read entries since).
    last_claim: Option<Instant>,
    /// Entries delivered to this consumer may be unacknowledged (claimed,
    /// or a flush failed): read them before new ones. Clear, the round
    /// saves that read, so that an idle partition costs one read a round.
    own_pending: bool,
    /// The partition's length as last read.
    len: u64,
}

impl Default for RoundState {
    fn default() -> Self {
        Self {
            group_ready: false,
            last_claim: None,
            // A failed round before a restart of this process left nothing
            // under this consumer's (new) name, but look once anyway.
            own_pending: true,
            len: 0,
        }
    }
}

/// One round over every partition: flushed if any flushed, failed if any
/// failed (and none flushed), else idle.
pub(super) async fn round<K, V>(shared: &Shared<K, V>) -> Round
where
    K: FromStr + fmt::Display + Eq + std::hash::Hash + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let mut states = shared.round.lock().await;
    let mut outcome = Round::Idle;
    for (partition, state) in shared.partitions.all().iter().zip(states.iter_mut()) {
        let round = shared.partition_round(partition, state).await;
        outcome = match (outcome, round) {
            (Round::Flushed, _) | (_, Round::Flushed) => Round::Flushed,
            (Round::Failed, _) | (_, Round::Failed) => Round::Failed,
            (Round::Idle, Round::Idle) => Round::Idle,
        };
    }
    let queued = states.iter().map(|state| state.len).sum();
    shared.counters.pending.store(queued, Ordering::Relaxed);
    outcome
}

impl<K, V> Shared<K, V>
where
    K: FromStr + fmt::Display + Eq + std::hash::Hash + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// One partition's round. An idle one reads once (new entries), and
    /// once every [`CLAIM_IDLE`]` / 2` also claims and reads the length.
    async fn partition_round(&self, partition: &Partition, state: &mut RoundState) -> Round {
        if !state.group_ready {
            if !self.ensure_group(partition).await {
                return Round::Failed;
            }
            state.group_ready = true;
        }
        // Claiming more often than entries can become claimable is wasted.
        let periodic = state
            .last_claim
            .is_none_or(|at| at.elapsed() >= CLAIM_IDLE / 2);
        if periodic {
            state.last_claim = Some(Instant::now());
            if self.claim(partition).await.unwrap_or(true) {
                state.own_pending = true;
            }
        }
        // Our own unacknowledged entries first (a failed flush, or claimed).
        let mut entries = Some(Vec::new());
        if state.own_pending {
            entries = self.read(partition, "0").await;
            state.own_pending = !entries.as_ref().is_some_and(Vec::is_empty);
        }
        if entries.as_ref().is_some_and(Vec::is_empty) {
            entries = self.read(partition, ">").await;
        }
        let Some(entries) = entries else {
            state.group_ready = false;
            return Round::Failed;
        };
        let read = !entries.is_empty();
        let outcome = if read {
            self.flush_entries(partition, entries).await
        } else {
            Round::Idle
        };
        if outcome == Round::Failed {
            state.own_pending = true;
        }
        if (read || periodic)
            && let Some(len) = self.queue_len(partition).await
        {
            state.len = len;
        }
        outcome
    }

    /// Creates the group (and the stream) if missing; reading from the
    /// stream's start so that entries queued before it existed are flushed.
    async fn ensure_group(&self, partition: &Partition) -> bool {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ENSURE_GROUP)
            .arg(1)
            .arg(&partition.stream)
            .arg(GROUP);
        self.l2
            .command::<Value>("EVAL ensure group", cmd)
            .await
            .is_some()
    }

    pub(super) async fn queue_len(&self, partition: &Partition) -> Option<u64> {
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(&partition.stream);
        self.l2.command("XLEN", cmd).await
    }

    /// Takes over entries other consumers left idle for [`CLAIM_IDLE`];
    /// whether it took any (`None`: Redis did not answer).
    async fn claim(&self, partition: &Partition) -> Option<bool> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&partition.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(u64::try_from(CLAIM_IDLE.as_millis()).unwrap_or(u64::MAX))
            .arg("0-0")
            .arg("COUNT")
            .arg(BATCH)
            .arg("JUSTID");
        // [next cursor, [claimed ids], [deleted ids]].
        let reply: Value = self.l2.command("XAUTOCLAIM", cmd).await?;
        Some(match reply {
            Value::Array(parts) => {
                matches!(parts.get(1), Some(Value::Array(ids)) if !ids.is_empty())
            }
            _ => true,
        })
    }

    /// `XREADGROUP` from `start`: `0` for our pending entries, `>` for new ones.
    async fn read(&self, partition: &Partition, start: &str) -> Option<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(&partition.stream)
            .arg(start);
        let reply: Value = self.l2.command("XREADGROUP", cmd).await?;
        Some(stream::parse_read(reply))
    }

    async fn flush_entries(&self, partition: &Partition, entries: Vec<Entry>) -> Round {
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut newest: HashMap<K, Queued<K, V>> = HashMap::new();
        let mut unreadable = Vec::new();
        let total = entries.len();
        for entry in entries {
            match stream::decode(&entry, self.codec.as_ref()) {
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
            self.dead_letter(partition, &entry.fields, &reason).await;
        }
        let batch: Vec<Queued<K, V>> = newest.into_values().collect();
        let started = Instant::now();
        let result = self.flush.flush(&batch).await;
        match result {
            Ok(()) => {}
            Err(FlushError::Unavailable(error)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.events.emit(|| CacheEvent::WriteBehindFailed {
                    changes: batch.len(),
                });
                self.log.warn(|suppressed| {
                    tracing::warn!(%error, suppressed, stream = %partition.stream, "write-behind flush failed; retrying");
                });
                return Round::Failed;
            }
            Err(FlushError::Rejected(error)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, stream = %partition.stream, "write-behind batch rejected; flushing its changes one by one");
                for queued in &batch {
                    match self.flush.flush(std::slice::from_ref(queued)).await {
                        Ok(()) => {}
                        Err(FlushError::Rejected(error)) => {
                            let fields = stream::encode_fields(queued, self.codec.as_ref());
                            self.dead_letter(partition, &fields, &chain(error.as_ref()))
                                .await;
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
        if !self.atomic {
            self.drop_older_values(&written).await;
        }
        self.settle(partition, &written).await;
        if !self.acknowledge(partition, &ids).await {
            // The store has them; Redis will hand them out again, and
            // applying them again is harmless (versions).
            return Round::Failed;
        }
        self.counters
            .flushed
            .fetch_add(total as u64, Ordering::Relaxed);
        self.events
            .emit(|| CacheEvent::WriteBehindFlushed { changes: total });
        Round::Flushed
    }

    /// Forgets the pending values of `(key, version)` changes the store has
    /// (or that were dead-lettered). If Redis fails here, they stay until a
    /// later change of the key is settled: reads then get the value the
    /// store has too, only from Redis.
    async fn settle(&self, partition: &Partition, written: &[(String, u64)]) {
        if written.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SETTLE)
            .arg(1)
            .arg(&partition.pending)
            .arg(&self.field);
        for (key, version) in written {
            cmd.arg(key).arg(version);
        }
        let _: Option<Value> = self.l2.write_command("EVAL settle", cmd).await;
    }

    /// On a cluster, where a write stores its value only after queueing
    /// it: drops each written key's cached value if it is older than the
    /// version the store now has (a writer that died between the two
    /// steps), so that readers load the new one instead of serving the old
    /// one until its TTL. A no-op for every value stored as usual.
    async fn drop_older_values(&self, written: &[(String, u64)]) {
        let cmds = written
            .iter()
            .map(|(key, version)| {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(DROP_OLDER)
                    .arg(1)
                    .arg(value_key(&self.key_prefix, key))
                    .arg(version)
                    .arg(&self.field);
                cmd
            })
            .collect();
        let _: Option<Vec<Value>> = self.l2.batch_command("EVAL drop older", cmds).await;
    }

    async fn acknowledge(&self, partition: &Partition, ids: &[String]) -> bool {
        let mut ack = redis::cmd("XACK");
        ack.arg(&partition.stream).arg(GROUP).arg(ids);
        let mut del = redis::cmd("XDEL");
        del.arg(&partition.stream).arg(ids);
        self.l2.command::<u64>("XACK", ack).await.is_some()
            && self.l2.command::<u64>("XDEL", del).await.is_some()
    }

    /// Moves one change to the dead-letter stream with `reason`. The
    /// original is acknowledged with the rest of its batch.
    async fn dead_letter(
        &self,
        partition: &Partition,
        fields: &HashMap<String, Vec<u8>>,
        reason: &str,
    ) {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&partition.dead).arg("*");
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
            self.settle(
                partition,
                &[(String::from_utf8_lossy(key).into_owned(), version)],
            )
            .await;
        }
        let key = fields
            .get("k")
            .map(|k| String::from_utf8_lossy(k).into_owned());
        if let Some(key) = &key {
            self.events
                .emit(|| CacheEvent::WriteBehindDeadLettered { key: key.clone() });
        }
        if self
            .l2
            .command::<Value>("XADD dead letter", cmd)
            .await
            .is_some()
        {
            tracing::error!(key, reason, dead_letters = %partition.dead, "write-behind change rejected by the store; moved to the dead letters");
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
