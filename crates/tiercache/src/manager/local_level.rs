//! [`LocalLevel`]: this instance's L1 together with what keeps it honest
//! (fill fences and the tag generations it knows), so that dropping a key or
//! clearing L1 means the same whether the manager or the bus does it.

use std::sync::Arc;

use super::{CacheKey, Shared, Tags};
use crate::events::{CacheEvent, ClearReason, Events, InvalidationOrigin};
use crate::fence::{Fences, Ticket};
use crate::local::{Lifetime, LocalCache};

/// L1, its fences and its tag generations, and the events of what happens
/// to it; cheap to clone (shared parts).
pub(crate) struct LocalLevel<K, V> {
    pub(crate) l1: LocalCache<K, Shared<V>>,
    fences: Arc<Fences>,
    pub(crate) tags: Arc<Tags>,
    pub(crate) events: Events,
}

impl<K, V> Clone for LocalLevel<K, V> {
    fn clone(&self) -> Self {
        Self {
            l1: self.l1.clone(),
            fences: Arc::clone(&self.fences),
            tags: Arc::clone(&self.tags),
            events: self.events.clone(),
        }
    }
}

/// Whether a fenced insert stayed in L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Filled {
    Kept,
    /// An invalidation of the key came in while it loaded: removed again.
    Fenced,
}

impl<K, V> LocalLevel<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    pub(crate) fn new(l1: LocalCache<K, Shared<V>>, events: Events) -> Self {
        Self {
            l1,
            fences: Arc::new(Fences::new()),
            tags: Arc::new(Tags::new()),
            events,
        }
    }

    /// Taken before a load reads any level; checked after its L1 fill.
    pub(super) fn ticket(&self) -> Ticket {
        self.fences.start()
    }

    /// Whether `key` was invalidated (or L1 cleared) since `ticket`.
    pub(super) fn crossed(&self, key: &K, ticket: Ticket) -> bool {
        self.fences.crossed(key, ticket)
    }

    /// Drops `key`, fencing out fills of it that are still loading.
    pub(crate) fn drop_key(&self, key: &K, origin: InvalidationOrigin) {
        self.fences.invalidate(key);
        self.l1.remove(key);
        self.events.emit(|| CacheEvent::Invalidated {
            key: key.to_string(),
            origin,
        });
    }

    /// Empties L1, fences out every running fill and forgets the known tag
    /// generations (they are read from Redis again).
    pub(crate) fn clear(&self, reason: ClearReason) {
        self.fences.clear();
        self.l1.clear();
        self.tags.forget_all();
        self.events.emit(|| CacheEvent::Cleared { reason });
    }

    /// Puts the newest version of `key`, written under `ticket`, into L1
    /// ([`insert_fenced`](Self::insert_fenced)), then fences out the fills
    /// of older versions still under way: reads that found the version it
    /// replaced, and writes of an older version that were queued before it
    /// but answer after it. One that landed after the insert is dropped
    /// with it; the next read takes Redis's copy, which is guarded by
    /// version.
    #[cfg(feature = "redis")]
    pub(super) fn insert_newest(
        &self,
        key: &K,
        value: Shared<V>,
        weight: usize,
        life: Lifetime,
        ticket: Ticket,
    ) -> Filled {
        let written = value.clone();
        let filled = self.insert_fenced(key, value, weight, life, ticket);
        self.fences.invalidate(key);
        let ours = match (self.l1.peek(key), &written) {
            (Some(Some(held)), Some(value)) => Arc::ptr_eq(&held, value),
            (Some(None), None) => true,
            _ => false,
        };
        if !ours {
            self.l1.remove(key);
        }
        filled
    }

    /// Puts a value that was loaded under `ticket` into L1, unless its key
    /// was invalidated meanwhile.
    pub(super) fn insert_fenced(
        &self,
        key: &K,
        value: Shared<V>,
        weight: usize,
        life: Lifetime,
        ticket: Ticket,
    ) -> Filled {
        for evicted in self.l1.insert_with(key, value, weight, life).keys() {
            self.events.emit(|| CacheEvent::Evicted {
                key: evicted.to_string(),
            });
        }
        // After the insert: see `fence.rs` for why this order is race-free.
        if self.fences.crossed(key, ticket) {
            self.l1.remove(key);
            return Filled::Fenced;
        }
        Filled::Kept
    }
}
