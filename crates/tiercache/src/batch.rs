//! [`Batcher`]: answers concurrent single requests with batch calls.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

/// The batch function: one result per request, in request order.
type RunBatch<T, R> = dyn Fn(Vec<T>) -> BoxFuture<'static, Vec<R>> + Send + Sync;

/// Collects concurrent requests of type `T` into batches answered by one
/// call each.
///
/// Why: a round trip to Redis or a database has a fixed cost (a system call
/// each way, a wake-up of the server process, for a database a pool
/// checkout) that dominates a small request. When many requests are in
/// flight at once, one batch call (`MGET`, `WHERE id = ANY($1)`) pays that
/// cost once for all of them.
///
/// How: at most `lanes` batch calls run at a time. A request joins a queue;
/// if a lane is free it starts one, which takes the queue as soon as its
/// task runs, so on an idle service a request waits for nothing and pays no
/// timer, and requests made together (a `join_all`) share one batch. When
/// every lane is busy, requests wait in the queue, and the next lane to
/// finish takes up to `max_batch` of them as one batch. The batch size therefore follows
/// the load: 1 when idle, larger exactly when calls would otherwise queue.
/// This is the adaptive batching of DataLoader without its fixed window.
///
/// Each batch runs in its own task, so a cancelled request never cancels
/// the others' answers, and a panic or a hung call (past the optional
/// deadline) costs only its own batch: its requests get [`Abandoned`], and
/// the lane goes on with the queue.
///
/// Cheap to clone: clones share the queue and the lanes.
///
/// ```
/// use tiercache::building_blocks::Batcher;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// // One lane, batches of up to 100, no deadline: squares computed a batch at a time.
/// let squares = Batcher::new(1, 100, None, |numbers: Vec<u64>| async move {
///     numbers.iter().map(|n| n * n).collect::<Vec<u64>>()
/// });
/// assert_eq!(squares.call(7).await, Ok(49));
/// # });
/// ```
pub struct Batcher<T, R> {
    shared: Arc<Shared<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T, R> std::fmt::Debug for Batcher<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("lanes", &self.shared.lanes)
            .field("max_batch", &self.shared.max_batch)
            .field("deadline", &self.shared.deadline)
            .finish_non_exhaustive()
    }
}

struct Shared<T, R> {
    run: Box<RunBatch<T, R>>,
    queue: Mutex<Queue<T, R>>,
    lanes: usize,
    max_batch: usize,
    deadline: Option<Duration>,
}

/// Requests waiting for a lane, and how many lanes are running.
struct Queue<T, R> {
    waiting: Vec<(T, oneshot::Sender<R>)>,
    running: usize,
}

/// The batch a request was in did not answer it: the batch function
/// panicked, passed the batcher's deadline, returned fewer results than it
/// was given requests, or the runtime is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch call was abandoned")]
pub struct Abandoned;

impl<T, R> Batcher<T, R>
where
    T: Send + 'static,
    R: Send + 'static,
{
    /// A batcher running at most `lanes` batches at a time (at least 1),
    /// each of at most `max_batch` requests (at least 1), through `run`.
    ///
    /// `run` gets the requests of one batch (duplicates included, oldest
    /// first) and must return one result per request, in the same order.
    /// With a `deadline`, a batch still running after it is abandoned, so
    /// that a call hung on a dead connection frees its lane.
    pub fn new<F, Fut>(lanes: usize, max_batch: usize, deadline: Option<Duration>, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        Self {
            shared: Arc::new(Shared {
                run: Box::new(move |batch| run(batch).boxed()),
                queue: Mutex::new(Queue {
                    waiting: Vec::new(),
                    running: 0,
                }),
                lanes: lanes.max(1),
                max_batch: max_batch.max(1),
                deadline,
            }),
        }
    }

    /// Answers `request`, in a batch with whatever else is queued when a
    /// lane takes it.
    ///
    /// # Errors
    ///
    /// [`Abandoned`] when its batch gave no answer for it.
    pub async fn call(&self, request: T) -> Result<R, Abandoned> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = lock(&self.shared.queue);
            queue.waiting.push((request, reply));
            let start = queue.running < self.shared.lanes;
            if start {
                queue.running += 1;
            }
            start
        };
        if start {
            tokio::spawn(run_lane(Arc::clone(&self.shared)));
        }
        answer.await.map_err(|_| Abandoned)
    }
}

fn lock<T, R>(queue: &Mutex<Queue<T, R>>) -> MutexGuard<'_, Queue<T, R>> {
    // Every critical section is a push or a drain: a panic cannot leave
    // the queue half-changed.
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes up to `max` of the oldest waiting requests.
fn take<T>(waiting: &mut Vec<T>, max: usize) -> Vec<T> {
    if waiting.len() <= max {
        std::mem::take(waiting)
    } else {
        waiting.drain(..max).collect()
    }
}

/// One lane: runs batches of what is queued until the queue is empty.
///
/// The first batch is taken when the lane's task first runs, not when it is
/// spawned: requests made together (by the same task, or before the spawning
/// task yields) then share it instead of the first going alone.
async fn run_lane<T, R>(shared: Arc<Shared<T, R>>)
where
    T: Send + 'static,
    R: Send + 'static,
{
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            if queue.waiting.is_empty() {
                queue.running -= 1;
                return;
            }
            take(&mut queue.waiting, shared.max_batch)
        };
        let (requests, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
        // A panic (even in the call that builds the future) or a hung call
        // drops this batch's replies but must not take the lane with it:
        // the queue behind it would wait forever.
        let work = AssertUnwindSafe(async { (shared.run)(requests).await }).catch_unwind();
        let results = match shared.deadline {
            Some(deadline) => tokio::time::timeout(deadline, work).await.ok(),
            None => Some(work.await),
        };
        if let Some(Ok(results)) = results {
            for (reply, result) in replies.into_iter().zip(results) {
                // The requester may have given up (it was cancelled).
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::*;

    /// A batcher of one lane whose batches (of at most 10) each wait for a
    /// permit of `gate` and record their sizes in `sizes`.
    struct Gated {
        gate: Arc<Semaphore>,
        sizes: Arc<Mutex<Vec<usize>>>,
        batcher: Batcher<u32, u32>,
    }

    impl Gated {
        fn new() -> Self {
            let gate = Arc::new(Semaphore::new(0));
            let sizes = Arc::new(Mutex::new(Vec::new()));
            let batcher = Batcher::new(1, 10, None, {
                let (gate, sizes) = (Arc::clone(&gate), Arc::clone(&sizes));
                move |batch: Vec<u32>| {
                    let (gate, sizes) = (Arc::clone(&gate), Arc::clone(&sizes));
                    async move {
                        sizes.lock().unwrap().push(batch.len());
                        gate.acquire().await.unwrap().forget();
                        batch.iter().map(|n| n + 1).collect()
                    }
                }
            });
            Self {
                gate,
                sizes,
                batcher,
            }
        }

        /// Calls with `n` in a task of its own.
        fn spawn_call(&self, n: u32) -> tokio::task::JoinHandle<Result<u32, Abandoned>> {
            let batcher = self.batcher.clone();
            tokio::spawn(async move { batcher.call(n).await })
        }

        /// Yields until the lane has started a batch and `queued` requests
        /// wait behind it.
        async fn until_running_with_queued(&self, queued: usize) {
            while self.sizes.lock().unwrap().is_empty()
                || lock(&self.batcher.shared.queue).waiting.len() < queued
            {
                tokio::task::yield_now().await;
            }
        }
    }

    #[tokio::test]
    async fn requests_queued_behind_a_busy_lane_share_batches_of_at_most_max() {
        let gated = Gated::new();
        let first = gated.spawn_call(0);
        gated.until_running_with_queued(0).await;
        let queued: Vec<_> = (1..=15).map(|n| gated.spawn_call(n)).collect();
        gated.until_running_with_queued(15).await;
        gated.gate.add_permits(3);

        assert_eq!(first.await.unwrap(), Ok(1));
        for (n, answer) in (1..=15).zip(queued) {
            assert_eq!(answer.await.unwrap(), Ok(n + 1));
        }
        assert_eq!(*gated.sizes.lock().unwrap(), [1, 10, 5]);
        assert_eq!(lock(&gated.batcher.shared.queue).running, 0);
    }

    #[tokio::test]
    async fn a_lone_request_is_a_batch_of_one() {
        let calls = Arc::new(AtomicUsize::new(0));
        let batcher = Batcher::new(2, 100, None, {
            let calls = Arc::clone(&calls);
            move |batch: Vec<&'static str>| {
                calls.fetch_add(1, Ordering::Relaxed);
                async move { batch.iter().map(|s| s.len()).collect() }
            }
        });

        assert_eq!(batcher.call("abc").await, Ok(3));
        assert_eq!(batcher.call("hello").await, Ok(5));
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn requests_made_together_share_one_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::new(2, 100, None, {
            let sizes = Arc::clone(&sizes);
            move |batch: Vec<u32>| {
                sizes.lock().unwrap().push(batch.len());
                async move { batch }
            }
        });

        let answers = futures_util::future::join_all((0..5).map(|n| batcher.call(n))).await;

        assert_eq!(answers, (0..5).map(Ok).collect::<Vec<_>>());
        assert_eq!(*sizes.lock().unwrap(), [5]);
    }

    #[tokio::test]
    async fn a_panicking_batch_abandons_its_requests_and_frees_its_lane() {
        let batcher = Batcher::new(1, 10, None, |batch: Vec<u32>| async move {
            assert!(!batch.contains(&13), "unlucky");
            batch
        });

        assert_eq!(batcher.call(13).await, Err(Abandoned));
        assert_eq!(batcher.call(12).await, Ok(12));
    }

    #[tokio::test]
    async fn a_short_answer_abandons_the_requests_it_left_out() {
        let batcher = Batcher::new(1, 10, None, |_: Vec<u32>| async { Vec::<u32>::new() });

        assert_eq!(batcher.call(1).await, Err(Abandoned));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_past_its_deadline_is_abandoned_and_frees_its_lane() {
        let deadline = Some(Duration::from_millis(50));
        let batcher = Batcher::new(1, 10, deadline, |batch: Vec<u64>| async move {
            tokio::time::sleep(Duration::from_millis(batch[0])).await;
            batch
        });

        assert_eq!(batcher.call(60_000).await, Err(Abandoned));
        assert_eq!(batcher.call(0).await, Ok(0));
    }

    #[tokio::test]
    async fn a_cancelled_request_does_not_cancel_its_batch() {
        let gated = Gated::new();
        let cancelled = gated.spawn_call(1);
        gated.until_running_with_queued(0).await;
        let kept = gated.spawn_call(2);
        gated.until_running_with_queued(1).await;
        cancelled.abort();
        gated.gate.add_permits(2);

        let kept = tokio::time::timeout(Duration::from_secs(5), kept).await;
        assert_eq!(
            kept.expect("the queued request was answered").unwrap(),
            Ok(3)
        );
        assert_eq!(*gated.sizes.lock().unwrap(), [1, 1]);
    }
}
