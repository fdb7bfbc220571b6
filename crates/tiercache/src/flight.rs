//! Single-flight: concurrent misses of one key share one load.
//!
//! A map from key to a `tokio::sync::OnceCell` holding the load's result.
//! The first caller to reach the cell runs its `init`; everyone else waits
//! for the cell and gets a clone of the same result, errors included, so a
//! failing load is reported to every waiter once instead of being retried
//! by each of them. Results are not cached here: the entry leaves the map
//! as soon as the load has finished, and the next miss starts a new flight.
//!
//! Why not quick_cache's placeholder guard: when a guard is dropped without
//! a value (the loader failed), quick_cache hands the guard to the next
//! waiter, which would run *its* loader, so N waiters of a failing key would
//! make up to N loads. The `OnceCell` shares the failure instead, and still
//! hands initialization to another waiter if the running one is cancelled.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

const SHARDS: usize = 16;

type Map<K, T> = HashMap<K, Arc<OnceCell<T>>>;

/// In-flight loads, keyed by cache key.
#[derive(Debug)]
pub(crate) struct Flights<K, T> {
    shards: Box<[Mutex<Map<K, T>>]>,
    hasher: RandomState,
}

impl<K: Eq + Hash + Clone, T: Clone> Flights<K, T> {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<Map<K, T>> {
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.shards[index]
    }

    /// Runs `init` for `key`, or joins the run already in flight.
    ///
    /// Returns the result and whether this caller's `init` was the one that
    /// ran. If the running caller is cancelled, a waiting caller runs its own
    /// `init` in its place.
    pub(crate) async fn run<F, Fut>(&self, key: &K, init: F) -> (T, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let shard = self.shard(key);
        let cell = Arc::clone(lock(shard).entry(key.clone()).or_default());
        let _leave = Leave {
            shard,
            key,
            cell: &cell,
        };
        let mut ran = false;
        let value = cell
            .get_or_init(|| {
                ran = true;
                init()
            })
            .await
            .clone();
        (value, ran)
    }

    /// Number of keys with a flight registered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

fn lock<K, T>(shard: &Mutex<Map<K, T>>) -> MutexGuard<'_, Map<K, T>> {
    // The map is only mutated by single insert/remove calls, so a panic
    // elsewhere cannot leave it inconsistent.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unregisters a flight once it is over for good.
struct Leave<'a, K: Eq + Hash, T> {
    shard: &'a Mutex<Map<K, T>>,
    key: &'a K,
    cell: &'a Arc<OnceCell<T>>,
}

impl<K: Eq + Hash, T> Drop for Leave<'_, K, T> {
    fn drop(&mut self) {
        let mut map = lock(self.shard);
        let Some(current) = map.get(self.key) else {
            return;
        };
        // A finished flight must go, or later misses would reuse its result.
        // An unfinished one goes only when nobody else holds it (the map's
        // reference and ours): its callers were all cancelled. Joiners clone
        // under this same lock, so the count cannot change underneath.
        let finished = self.cell.initialized();
        let abandoned = Arc::strong_count(self.cell) == 2;
        if Arc::ptr_eq(current, self.cell) && (finished || abandoned) {
            map.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_runs_of_one_key_share_one_init() {
        let flights = Arc::new(Flights::<u64, u64>::new());
        let inits = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (flights, inits, barrier) = (flights.clone(), inits.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    flights
                        .run(&7, || async {
                            inits.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            42
                        })
                        .await
                })
            })
            .collect();
        let mut leaders = 0;
        for task in tasks {
            let (value, ran) = task.await.unwrap();
            assert_eq!(value, 42);
            leaders += usize::from(ran);
        }
        assert_eq!(inits.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(flights.len(), 0, "finished flights are unregistered");
    }

    #[tokio::test]
    async fn a_finished_flight_is_not_reused() {
        let flights = Flights::<u64, u64>::new();
        assert_eq!(flights.run(&1, || async { 1 }).await, (1, true));
        assert_eq!(flights.run(&1, || async { 2 }).await, (2, true));
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let flights = Arc::new(Flights::<u64, &'static str>::new());
        let leader = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run(&1, std::future::pending::<&'static str>).await })
        };
        tokio::task::yield_now().await;
        let waiter = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run(&1, || async { "waiter" }).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        assert_eq!(waiter.await.unwrap(), ("waiter", true));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_flight_is_unregistered() {
        let flights = Flights::<u64, u64>::new();
        let run = flights.run(&1, std::future::pending::<u64>);
        let timed_out = tokio::time::timeout(Duration::from_millis(10), run).await;
        assert!(timed_out.is_err());
        assert_eq!(flights.len(), 0);
    }
}
