//! The Redis half of the read paths: one key (with the pending write-behind
//! value and the stampede lease) and a batch (one `MGET`), each filling L1
//! with what it found. A key Redis may hold an old version of (an
//! invalidation it missed, see `unapplied`) is not read from Redis at all.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::counters::Counter;
use super::decode::Entry;
use super::lease::Leased;
use super::{CacheKey, Inner, Lookup, Policy, Shared, Source};
use crate::fence::Ticket;
use crate::remote::{Read, RemoteCache};

/// What Redis answered for one key.
pub(super) enum L2Answer<'a, V> {
    /// Found (and put in L1).
    Hit(Shared<V>),
    /// Not found, unreadable or not trusted; `lease` is held when this
    /// caller is the one to load (release it after).
    Miss {
        lease: Option<(&'a RemoteCache, String)>,
    },
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Reads `key` from Redis (then the write-behind queue); with the
    /// stampede lease on, waits for another instance's load or takes the
    /// lease.
    pub(super) async fn read_l2(
        self: &Arc<Self>,
        key: &K,
        ticket: Ticket,
        policy: &Policy,
    ) -> L2Answer<'_, V> {
        // Redis may hold a version older than a write it missed.
        let Some(l2) = self
            .l2
            .as_ref()
            .filter(|_| policy.use_l2 && !self.unapplied.distrusts(key))
        else {
            return L2Answer::Miss { lease: None };
        };
        let mut lease = None;
        let read = l2.get(self.redis_key(key)).await;
        let answered = !matches!(read, Read::Unavailable);
        let mut found = match read {
            Read::Found(stored) => self.decode(stored).await,
            Read::Absent | Read::Unavailable => None,
        };
        if found.is_none() {
            found = self.pending_value(key).await;
        }
        if found.is_none()
            && answered
            && let Some(length) = self.settings.stampede_lease
        {
            match self.lease(l2, key, length).await {
                Leased::Held(token) => lease = Some((l2, token)),
                Leased::Filled(entry) => found = Some(entry),
                Leased::Load => {}
            }
        }
        if let Some(Entry { value, weight }) = found {
            self.record_l2_hit(&value);
            self.fill_l1(key, value.clone(), weight, ticket, policy);
            return L2Answer::Hit(value);
        }
        self.counters.incr(Counter::L2Misses);
        L2Answer::Miss { lease }
    }

    /// One `MGET` for `missing`; answers what it can and returns the rest.
    pub(super) async fn fill_many_from_l2<'k>(
        &self,
        missing: Vec<&'k K>,
        answers: &mut HashMap<&'k K, Lookup<V>>,
        ticket: Ticket,
    ) -> Vec<&'k K> {
        let Some(l2) = &self.l2 else {
            return missing;
        };
        // Keys Redis may hold old versions of go to the loader.
        let (missing, mut distrusted) = self.unapplied.split(missing);
        if missing.is_empty() {
            return distrusted;
        }
        let redis_keys: Vec<String> = missing.iter().map(|k| self.redis_key(k)).collect();
        let Some(stored) = l2.get_many(&redis_keys).await else {
            self.counters.add(Counter::L2Misses, missing.len() as u64);
            distrusted.extend(missing);
            return distrusted;
        };
        let mut still_missing = Vec::new();
        for (key, stored) in missing.into_iter().zip(stored) {
            let found = match stored {
                Some(stored) => self.decode(stored).await,
                None => None,
            };
            if !self.answer_from_l2(key, found, answers, ticket) {
                still_missing.push(key);
            }
        }
        let pending = match &self.write_behind {
            Some(queue) if !still_missing.is_empty() => {
                let keys: Vec<String> = still_missing.iter().map(ToString::to_string).collect();
                queue.pending(&keys).await
            }
            _ => None,
        };
        let mut pending = pending.unwrap_or_default().into_iter();
        let mut missing = Vec::new();
        for key in still_missing {
            let found = match pending.next().flatten() {
                Some(stored) => self.decode(stored).await,
                None => None,
            };
            if !self.answer_from_l2(key, found, answers, ticket) {
                self.counters.incr(Counter::L2Misses);
                missing.push(key);
            }
        }
        missing.extend(distrusted);
        missing
    }

    /// Records `found` (a value read from Redis: the cache or the
    /// write-behind queue) as `key`'s answer and fills L1; `false` if there
    /// is none.
    fn answer_from_l2<'k>(
        &self,
        key: &'k K,
        found: Option<Entry<V>>,
        answers: &mut HashMap<&'k K, Lookup<V>>,
        ticket: Ticket,
    ) -> bool {
        let Some(Entry { value, weight }) = found else {
            return false;
        };
        self.record_l2_hit(&value);
        self.fill_l1(key, value.clone(), weight, ticket, &self.settings.policy);
        answers.insert(
            key,
            Lookup {
                value,
                source: Source::L2,
            },
        );
        true
    }

    /// Write-behind: the newest queued value of `key`, which the store may
    /// not have yet (see the write-behind module docs, "Pending values").
    async fn pending_value(&self, key: &K) -> Option<Entry<V>> {
        let queue = self.write_behind.as_ref()?;
        let pending = queue.pending(&[key.to_string()]).await?;
        let stored = pending.into_iter().next().flatten()?;
        self.decode(stored).await
    }

    fn record_l2_hit(&self, value: &Shared<V>) {
        self.counters.incr(Counter::L2Hits);
        if value.is_none() {
            self.counters.incr(Counter::NegativeHits);
        }
    }
}
