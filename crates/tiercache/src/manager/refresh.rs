//! Eager refresh: a hit past the refresh point reloads its key in the
//! background, one refresh per key at a time, and a key whose refresh
//! failed is not retried for the fail-safe throttle (so that a failing
//! loader is not called on every hit).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::counters::Counter;
use super::{CacheKey, Inner, Loaded, Policy};

use crate::clock::coarse;

const SHARDS: usize = 16;
/// Above this many remembered failures in a shard, expired ones are pruned.
const PRUNE_FROM: usize = 1_024;

/// `None`: a refresh is running; `Some(ms)`: the last one failed, retry
/// from that coarse-clock time.
type Shard<K> = HashMap<K, Option<u64>>;

#[derive(Debug)]
pub(crate) struct Refreshes<K> {
    shards: Box<[Mutex<Shard<K>>]>,
    hasher: RandomState,
}

impl<K: Eq + Hash + Clone> Refreshes<K> {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Shard<K>> {
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the refresh of `key`: `false` if one is running or a recent
    /// one failed less than its throttle ago.
    pub(crate) fn begin(&self, key: &K) -> bool {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(None) => false,
            Some(Some(retry_at)) if coarse::now_ms() < *retry_at => false,
            _ => {
                shard.insert(key.clone(), None);
                true
            }
        }
    }

    /// Ends a claimed refresh; a failed one blocks the key for `throttle_ms`.
    pub(crate) fn end(&self, key: &K, succeeded: bool, throttle_ms: u64) {
        let mut shard = self.shard(key);
        if succeeded {
            shard.remove(key);
            return;
        }
        let now = coarse::now_ms();
        if shard.len() >= PRUNE_FROM {
            shard.retain(|_, state| state.is_none_or(|retry_at| retry_at > now));
        }
        shard.insert(key.clone(), Some(now.saturating_add(throttle_ms)));
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Reloads `key` in the background (eager refresh), unless a refresh of
    /// it runs already or failed less than the fail-safe throttle ago.
    pub(super) fn refresh<F, Fut, E>(self: &Arc<Self>, key: &K, loader: F, policy: Policy)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: StdError + Send + Sync + 'static,
    {
        if !self.refreshes.begin(key) {
            return;
        }
        self.counters.incr(Counter::Refreshes);
        let ticket = self.local.ticket();
        let load = self.load_and_store(loader(), key, ticket, policy);
        let inner = Arc::clone(self);
        let key = key.clone();
        tokio::spawn(async move {
            let succeeded = match load.await {
                Ok(_) => true,
                Err(error) => {
                    inner.counters.incr(Counter::RefreshErrors);
                    tracing::debug!(%error, "eager refresh failed");
                    false
                }
            };
            let throttle =
                u64::try_from(inner.settings.fail_safe_throttle.as_millis()).unwrap_or(u64::MAX);
            inner.refreshes.end(&key, succeeded, throttle);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_refresh_per_key_and_failures_are_throttled() {
        let _clock = coarse::acquire();
        let refreshes = Refreshes::new();
        assert!(refreshes.begin(&1));
        assert!(!refreshes.begin(&1), "already running");
        assert!(refreshes.begin(&2));
        refreshes.end(&1, true, 0);
        assert!(refreshes.begin(&1), "a finished refresh can start again");
        refreshes.end(&1, false, 60_000);
        assert!(!refreshes.begin(&1), "a failed refresh is throttled");
        refreshes.end(&2, false, 0);
        assert!(refreshes.begin(&2), "a zero throttle retries at once");
    }
}
