//! [`BatchedReads`]: a [`Store`] decorator that answers concurrent
//! single-product reads with batch queries.
//!
//! Why: on a cache miss each request used to cost one query, and with many
//! misses at once (a cold cache, an L1-only instance under load, an
//! invalidation storm) the store's per-query cost (a round trip, a wake-up
//! of the server process, a pool checkout) dominates. Reads that arrive
//! while earlier ones are in flight are instead collected and fetched
//! together with one [`Store::get_many`], so the per-query cost is paid per
//! batch.
//!
//! How: a [`tiercache::building_blocks::Batcher`] of `lanes` lanes, the batcher the cache's
//! own Redis reads use: a read on an idle service is a plain
//! [`Store::get`] that waits for nothing; when every lane is busy, reads
//! queue and the next lane to finish takes up to [`MAX_BATCH`] of them as
//! one query.
//!
//! Semantics are those of [`Store::get`] for each id: a cancelled request
//! never cancels other requests' reads, and when a batch query fails for a
//! reason other than the store being unavailable (a row that does not
//! decode, say) each id is read again on its own, so one bad row fails
//! only the reads of that row. Writes and every other call go straight to
//! the inner store.
//!
//! A batch still running after its deadline (the cache's hard loader
//! timeout, by which every reader has given up) is abandoned and its
//! readers told the store is unavailable: a query hung on a dead
//! connection must not hold a lane, and with it every later read, for as
//! long as TCP takes to notice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tiercache::building_blocks::Batcher;

use super::decorator::{Decorator, StoreMetrics};
use super::{Store, StoreError};
use crate::domain::Product;

/// Most ids one batch query asks for.
const MAX_BATCH: usize = 100;

type Answer = Result<Option<Product>, StoreError>;

/// Wraps another store; single reads are batched, everything else passes
/// through.
#[derive(Debug)]
pub struct BatchedReads {
    inner: Arc<dyn Store>,
    reads: Batcher<i64, Answer>,
}

impl BatchedReads {
    /// Wraps `inner`, running at most `lanes` (at least 1) batch queries at
    /// a time, each for at most `deadline`, and counting reads and batches
    /// in `metrics`.
    pub fn new(
        inner: Arc<dyn Store>,
        lanes: u32,
        deadline: Duration,
        metrics: &dyn StoreMetrics,
    ) -> Self {
        let reads = metrics.batched_reads();
        let batches = metrics.read_batches();
        let store = Arc::clone(&inner);
        let lanes = usize::try_from(lanes).unwrap_or(usize::MAX);
        Self {
            reads: Batcher::new(lanes, MAX_BATCH, Some(deadline), move |ids: Vec<i64>| {
                count(&reads, &batches, ids.len());
                let store = Arc::clone(&store);
                async move { read_batch(store.as_ref(), ids).await }
            }),
            inner,
        }
    }
}

fn count(reads: &Counter, batches: &Counter, size: usize) {
    batches.increment(1);
    reads.increment(u64::try_from(size).unwrap_or(u64::MAX));
}

/// Reads the ids of one batch; one answer per id, in order.
async fn read_batch(inner: &dyn Store, ids: Vec<i64>) -> Vec<Answer> {
    if let [id] = ids.as_slice() {
        return vec![inner.get(*id).await];
    }
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    match inner.get_many(&distinct).await {
        Ok(found) => {
            let mut found: HashMap<i64, Product> = found.into_iter().map(|p| (p.id, p)).collect();
            // An id read twice (rare: the cache's single-flight joins
            // concurrent reads of a key) is cloned for all but its last
            // reader, which takes it.
            let last: HashMap<i64, usize> =
                ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    Ok(if last[id] == i {
                        found.remove(id)
                    } else {
                        found.get(id).cloned()
                    })
                })
                .collect()
        }
        Err(StoreError::Unavailable(err)) => {
            // The same answer for every reader; `sqlx::Error` is not `Clone`,
            // so each gets an I/O error carrying the original message.
            let message = err.to_string();
            ids.iter()
                .map(|_| {
                    let copy = sqlx::Error::Io(std::io::Error::other(message.clone()));
                    Err(StoreError::Unavailable(copy))
                })
                .collect()
        }
        Err(_) => {
            // Which row broke the batch is unknown: read each on its own.
            let mut answers = Vec::with_capacity(ids.len());
            for id in ids {
                answers.push(inner.get(id).await);
            }
            answers
        }
    }
}

impl Decorator for BatchedReads {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn get(&self, id: i64) -> Result<Option<Product>, StoreError> {
        self.reads.call(id).await.unwrap_or_else(|_| {
            // The batch passed its deadline, the store panicked, or the
            // runtime is shutting down.
            Err(StoreError::Unavailable(sqlx::Error::Io(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "the batch read was abandoned"),
            )))
        })
    }
}
