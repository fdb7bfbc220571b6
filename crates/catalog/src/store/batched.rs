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
//! How: at most `lanes` batches run at a time. A read joins the queue; if a
//! lane is free it takes the queue (up to [`MAX_BATCH`] ids) and runs it at
//! once, so a read on an idle service waits for nothing and pays no timer.
//! When every lane is busy the read waits in the queue, and the next lane
//! to finish takes the whole queue in one batch. The batch size therefore
//! follows the load: 1 when idle, larger exactly when queries would
//! otherwise queue for the pool.
//!
//! Semantics are those of [`Store::get`] for each id: a batch runs in its
//! own task (a cancelled request never cancels other requests' reads), a
//! batch of one id is a plain `get`, and when a batch query fails for a
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
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use metrics::Counter;
use tokio::sync::oneshot;

use super::{Expected, PageRequest, ProductChange, Store, StoreError, Updated};
use crate::domain::{NewProduct, Product, ProductPatch};
use crate::metrics::{DB_BATCHED_READS, DB_READ_BATCHES, Metrics};

/// Most ids one batch query asks for.
const MAX_BATCH: usize = 100;

type Reply = oneshot::Sender<Result<Option<Product>, StoreError>>;

/// Reads waiting for a lane, and how many lanes are running.
#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<(i64, Reply)>,
    running: usize,
}

/// What a lane needs, shared by every lane.
#[derive(Debug)]
struct Lanes {
    inner: Arc<dyn Store>,
    queue: Mutex<Queue>,
    /// How long one batch may take before it is abandoned.
    deadline: Duration,
    reads: Counter,
    batches: Counter,
}

/// Wraps another store; single reads are batched, everything else passes
/// through.
#[derive(Debug)]
pub struct BatchedReads {
    lanes: Arc<Lanes>,
    max_lanes: usize,
}

impl BatchedReads {
    /// Wraps `inner`, running at most `lanes` (at least 1) batch queries at
    /// a time, each for at most `deadline`, and counting reads and batches
    /// in `metrics`.
    pub fn new(inner: Arc<dyn Store>, lanes: u32, deadline: Duration, metrics: &Metrics) -> Self {
        Self {
            lanes: Arc::new(Lanes {
                inner,
                queue: Mutex::new(Queue::default()),
                deadline,
                reads: metrics.counter(DB_BATCHED_READS),
                batches: metrics.counter(DB_READ_BATCHES),
            }),
            max_lanes: usize::try_from(lanes).unwrap_or(usize::MAX).max(1),
        }
    }

    fn inner(&self) -> &dyn Store {
        self.lanes.inner.as_ref()
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // Every critical section is a push or a drain: a panic cannot leave
    // the queue half-changed.
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes up to [`MAX_BATCH`] of the oldest waiting reads.
fn take(waiting: &mut Vec<(i64, Reply)>) -> Vec<(i64, Reply)> {
    if waiting.len() <= MAX_BATCH {
        std::mem::take(waiting)
    } else {
        waiting.drain(..MAX_BATCH).collect()
    }
}

/// One lane: runs `batch`, then whatever queued meanwhile, until the queue
/// is empty.
async fn run_lane(lanes: Arc<Lanes>, mut batch: Vec<(i64, Reply)>) {
    loop {
        lanes.batches.increment(1);
        lanes
            .reads
            .increment(u64::try_from(batch.len()).unwrap_or(u64::MAX));
        // A panic in the store or a hung query drops this batch's replies
        // (its readers get an error) but must not take the lane with it:
        // the queue behind it would wait forever.
        let work = AssertUnwindSafe(answer(lanes.inner.as_ref(), batch)).catch_unwind();
        let _ = tokio::time::timeout(lanes.deadline, work).await;
        let mut state = lock(&lanes.queue);
        if state.waiting.is_empty() {
            state.running -= 1;
            return;
        }
        batch = take(&mut state.waiting);
    }
}

/// Reads the ids of `batch` and answers every waiter.
async fn answer(inner: &dyn Store, mut batch: Vec<(i64, Reply)>) {
    if batch.len() == 1 {
        let (id, reply) = batch.remove(0);
        // The reader may have given up (its request was cancelled).
        let _ = reply.send(inner.get(id).await);
        return;
    }
    batch.sort_unstable_by_key(|(id, _)| *id);
    let mut ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
    ids.dedup();
    match inner.get_many(&ids).await {
        Ok(found) => {
            let mut found: HashMap<i64, Product> = found.into_iter().map(|p| (p.id, p)).collect();
            // An id read twice (rare: the cache's single-flight joins
            // concurrent reads of a key) is cloned for all but its last reader.
            let mut replies = batch.into_iter().peekable();
            while let Some((id, reply)) = replies.next() {
                let product = if replies.peek().is_some_and(|(next, _)| *next == id) {
                    found.get(&id).cloned()
                } else {
                    found.remove(&id)
                };
                let _ = reply.send(Ok(product));
            }
        }
        Err(StoreError::Unavailable(err)) => {
            // The same answer for every reader; `sqlx::Error` is not `Clone`,
            // so each gets an I/O error carrying the original message.
            let message = err.to_string();
            for (_, reply) in batch {
                let copy = sqlx::Error::Io(std::io::Error::other(message.clone()));
                let _ = reply.send(Err(StoreError::Unavailable(copy)));
            }
        }
        Err(_) => {
            // Which row broke the batch is unknown: read each on its own.
            for (id, reply) in batch {
                let _ = reply.send(inner.get(id).await);
            }
        }
    }
}

#[async_trait]
impl Store for BatchedReads {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner().migrate().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner().ping().await
    }

    async fn close(&self) {
        self.inner().close().await;
    }

    async fn get(&self, id: i64) -> Result<Option<Product>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = lock(&self.lanes.queue);
            state.waiting.push((id, reply));
            if state.running < self.max_lanes {
                state.running += 1;
                Some(take(&mut state.waiting))
            } else {
                None
            }
        };
        if let Some(batch) = start {
            tokio::spawn(run_lane(Arc::clone(&self.lanes), batch));
        }
        answer.await.unwrap_or_else(|_| {
            // The lane dropped the reply: the batch passed its deadline, the
            // store panicked, or the runtime is shutting down.
            Err(StoreError::Unavailable(sqlx::Error::Io(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "the batch read was abandoned"),
            )))
        })
    }

    async fn get_many(&self, ids: &[i64]) -> Result<Vec<Product>, StoreError> {
        self.inner().get_many(ids).await
    }

    async fn list(&self, page: &PageRequest) -> Result<Vec<Product>, StoreError> {
        self.inner().list(page).await
    }

    async fn create(&self, new: &NewProduct) -> Result<Product, StoreError> {
        self.inner().create(new).await
    }

    async fn create_many(&self, new: &[NewProduct]) -> Result<u64, StoreError> {
        self.inner().create_many(new).await
    }

    async fn replace(
        &self,
        id: i64,
        new: &NewProduct,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        self.inner().replace(id, new, expected).await
    }

    async fn patch(
        &self,
        id: i64,
        patch: &ProductPatch,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        self.inner().patch(id, patch, expected).await
    }

    async fn delete(&self, id: i64, expected: Expected) -> Result<Product, StoreError> {
        self.inner().delete(id, expected).await
    }

    async fn apply(&self, changes: &[ProductChange]) -> Result<(), StoreError> {
        self.inner().apply(changes).await
    }

    async fn count(&self) -> Result<i64, StoreError> {
        self.inner().count().await
    }
}
