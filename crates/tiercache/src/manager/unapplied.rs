//! Invalidations Redis did not take: a write's L2 step (tombstone, `UNLINK`,
//! write-through `SET`) failed or timed out, so Redis may still hold the
//! old version, and every L1 that misses would refill from it.
//!
//! Until Redis has taken them this instance does not trust Redis for those
//! keys (reads skip L2 and go to the loader, whose value is written back
//! version-guarded, which also repairs Redis), and a repair task retries
//! them in the background: one pipeline per round, coalesced per key,
//! with a backoff while Redis fails. Once applied, the keys are announced
//! on the bus again, so the other instances drop what they read from
//! Redis meanwhile.
//!
//! The set is bounded ([`MAX_KEYS`]). Past the bound, or when a
//! [`clear`](super::TieredCache::clear) could not reach Redis, it stops
//! naming keys and distrusts all of Redis instead, until the repair has
//! removed every key of the cache from Redis (`SCAN` + `UNLINK`) and told
//! the other instances to clear their L1.
//!
//! The set lives in this process: it outlasts a Redis outage, not a crash
//! of this process during one (then the Redis copy lives until its TTL,
//! as before).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::{CacheKey, Inner};
use crate::codec;
use crate::remote::Write;

/// Most keys remembered; past this the set distrusts all of Redis.
pub(crate) const MAX_KEYS: usize = 100_000;
/// Most keys repaired in one round (one pipeline).
pub(crate) const ROUND: usize = 1_000;
/// First pause after a failed round; it doubles up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between two rounds while Redis fails: once Redis answers
/// again, the repair is at most this late.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// How to repair one key in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Repair {
    /// A tombstone refusing every version below this one (0: none known).
    pub(crate) version: u64,
    /// Remove the key whatever it holds (an unversioned invalidation).
    pub(crate) unlink: bool,
}

/// The keys whose invalidation Redis has not taken yet.
#[derive(Debug)]
pub(crate) struct Unapplied<K> {
    keys: Mutex<HashMap<K, Repair>>,
    /// `keys.len()`, readable without the lock: the read path checks it
    /// on every L1 miss, and it is almost always 0.
    len: AtomicUsize,
    /// All of Redis is distrusted (see the module documentation).
    everything: AtomicBool,
    /// Wakes the repair task.
    pub(crate) wake: Notify,
}

impl<K> Default for Unapplied<K> {
    fn default() -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
            everything: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }
}

impl<K: Eq + std::hash::Hash + Clone> Unapplied<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Repair>> {
        // Every update leaves the map whole.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that `key` needs `repair` (coalesced with what it needed).
    pub(crate) fn record(&self, key: &K, repair: Repair) {
        {
            let mut keys = self.lock();
            if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
                drop(keys);
                self.distrust_all();
                return;
            }
            let entry = keys.entry(key.clone()).or_insert(Repair {
                version: 0,
                unlink: false,
            });
            entry.version = entry.version.max(repair.version);
            entry.unlink |= repair.unlink;
            self.len.store(keys.len(), Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    /// Distrusts all of Redis until the repair has emptied the cache's keys.
    pub(crate) fn distrust_all(&self) {
        self.everything.store(true, Ordering::Relaxed);
        let mut keys = self.lock();
        keys.clear();
        self.len.store(0, Ordering::Relaxed);
        drop(keys);
        self.wake.notify_one();
    }

    /// Whether Redis may hold an outdated value for `key`.
    #[inline]
    pub(crate) fn distrusts(&self, key: &K) -> bool {
        if self.everything.load(Ordering::Relaxed) {
            return true;
        }
        self.len.load(Ordering::Relaxed) != 0 && self.lock().contains_key(key)
    }

    /// `keys` split into those Redis can be asked for and those it may hold
    /// an outdated value of.
    pub(crate) fn split<'k>(&self, keys: Vec<&'k K>) -> (Vec<&'k K>, Vec<&'k K>) {
        if self.is_empty() {
            return (keys, Vec::new());
        }
        keys.into_iter().partition(|key| !self.distrusts(key))
    }

    /// Whether all of Redis is distrusted.
    pub(crate) fn distrusts_everything(&self) -> bool {
        self.everything.load(Ordering::Relaxed)
    }

    /// Whether anything waits for repair.
    pub(crate) fn is_empty(&self) -> bool {
        !self.everything.load(Ordering::Relaxed) && self.len.load(Ordering::Relaxed) == 0
    }

    /// Up to `limit` keys to repair.
    pub(crate) fn batch(&self, limit: usize) -> Vec<(K, Repair)> {
        self.lock()
            .iter()
            .take(limit)
            .map(|(key, repair)| (key.clone(), *repair))
            .collect()
    }

    /// Forgets the keys of `batch` that Redis took, unless a newer repair
    /// was recorded for one meanwhile.
    pub(crate) fn applied(&self, batch: &[(K, Repair)]) {
        let mut keys = self.lock();
        for (key, repair) in batch {
            if keys.get(key) == Some(repair) {
                keys.remove(key);
            }
        }
        self.len.store(keys.len(), Ordering::Relaxed);
    }

    /// Trusts Redis again after the cache's keys were removed from it.
    pub(crate) fn cleared(&self) {
        self.everything.store(false, Ordering::Relaxed);
    }
}

impl Repair {
    /// After a versioned write: refuse every version below `version`.
    pub(crate) fn tombstone(version: u64) -> Self {
        Self {
            version,
            unlink: false,
        }
    }

    /// After an unversioned invalidation: remove whatever is there.
    pub(crate) fn unlink() -> Self {
        Self {
            version: 0,
            unlink: true,
        }
    }
}

/// Retries the invalidations Redis has not taken, until the cache is
/// dropped: a round whenever there are some, with a backoff while Redis
/// fails.
pub(super) async fn repair<K, V>(inner: Weak<Inner<K, V>>, unapplied: Arc<Unapplied<K>>)
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        if unapplied.is_empty() {
            unapplied.wake.notified().await;
        }
        let Some(inner) = inner.upgrade() else { return };
        let repaired = inner.repair_round().await;
        drop(inner);
        if repaired {
            backoff = FIRST_BACKOFF;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// How Redis must be repaired for `key` if writing `value` there fails.
    pub(super) fn repair_for(&self, value: Option<&Arc<V>>) -> Repair {
        match (&self.versioning, value) {
            (Some(versioning), Some(value)) => Repair::tombstone((versioning.version_of)(value)),
            _ => Repair::unlink(),
        }
    }

    /// One round of repairs; whether Redis took them (or there were none).
    async fn repair_round(&self) -> bool {
        let Some(l2) = &self.l2 else { return true };
        if self.unapplied.distrusts_everything() {
            if l2
                .clear_prefix(&self.settings.key_prefix, &self.settings.change_log_key())
                .await
                .is_none()
            {
                return false;
            }
            self.unapplied.cleared();
            // What the other instances read from Redis meanwhile may be old.
            if let Some(bus) = &self.bus {
                bus.publish_clear();
            }
            tracing::info!("Redis cleared of this cache's keys; trusted again");
            return true;
        }
        let batch = self.unapplied.batch(ROUND);
        if batch.is_empty() {
            return true;
        }
        let unlinked: Vec<String> = batch
            .iter()
            .filter(|(_, repair)| repair.unlink)
            .map(|(key, _)| self.redis_key(key))
            .collect();
        if !l2.delete(&unlinked).await {
            return false;
        }
        if let Some(versioning) = &self.versioning {
            let writes: Vec<Write> = batch
                .iter()
                .filter(|(_, repair)| !repair.unlink)
                .map(|(key, repair)| Write {
                    key: self.redis_key(key),
                    value: codec::tombstone(repair.version),
                    ttl: self.settings.tombstone_ttl,
                    version: i64::try_from(repair.version).unwrap_or(i64::MAX),
                })
                .collect();
            // Stored or refused (Redis holds a newer version): both repaired.
            if l2
                .set_many(&writes, Some(&versioning.field))
                .await
                .is_none()
            {
                return false;
            }
        }
        self.unapplied.applied(&batch);
        let keys: Vec<K> = batch.into_iter().map(|(key, _)| key).collect();
        tracing::info!(keys = keys.len(), "invalidations Redis missed are applied");
        self.announce(&keys);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOMBSTONE: fn(u64) -> Repair = |version| Repair {
        version,
        unlink: false,
    };

    #[test]
    fn repairs_coalesce_per_key_and_a_newer_one_survives_an_older_apply() {
        let unapplied = Unapplied::default();
        assert!(!unapplied.distrusts(&1) && unapplied.is_empty());
        unapplied.record(&1, TOMBSTONE(3));
        unapplied.record(&1, TOMBSTONE(2));
        unapplied.record(
            &2,
            Repair {
                version: 0,
                unlink: true,
            },
        );
        let mut batch = unapplied.batch(10);
        batch.sort_unstable_by_key(|(key, _)| *key);
        assert_eq!(batch[0], (1, TOMBSTONE(3)));
        assert!(batch[1].1.unlink);

        unapplied.record(&1, TOMBSTONE(4));
        unapplied.applied(&batch);
        assert!(unapplied.distrusts(&1), "version 4 is not applied yet");
        assert!(!unapplied.distrusts(&2));
        unapplied.applied(&unapplied.batch(10));
        assert!(unapplied.is_empty());
    }

    #[test]
    fn past_the_bound_all_of_redis_is_distrusted_until_cleared() {
        let unapplied = Unapplied::default();
        for key in 0..MAX_KEYS {
            unapplied.record(&key, TOMBSTONE(1));
        }
        assert!(!unapplied.distrusts_everything());
        unapplied.record(&MAX_KEYS, TOMBSTONE(1));
        assert!(unapplied.distrusts_everything());
        assert!(unapplied.distrusts(&usize::MAX), "any key");
        assert!(unapplied.batch(10).is_empty(), "the keys are forgotten");
        unapplied.cleared();
        assert!(unapplied.is_empty());
    }
}
