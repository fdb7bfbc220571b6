//! What happened inside a cache, for whoever listens
//! ([`TieredCache::subscribe`](crate::TieredCache::subscribe)): evictions,
//! invalidations applied and where they came from, L1 clears and why, L2 and
//! bus state changes, stale answers, write-behind flush results.
//!
//! Events go out on a bounded broadcast channel. Emitting costs one atomic
//! load while nobody listens (the event is not even built); a listener that
//! falls behind by more than [`EVENT_CAPACITY`] events gets one
//! [`CacheEvent::Lagged`] instead of the events it missed, and never slows
//! the cache down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;

use crate::stats::{BusState, L2State};

/// Events a listener may fall behind by before it misses some.
pub const EVENT_CAPACITY: usize = 1_024;

/// Something that happened in a cache. Keys are their `Display` strings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheEvent {
    /// L1 pushed an entry out to stay within its bounds (or refused one
    /// heavier than a shard holds).
    Evicted {
        /// The entry's key.
        key: String,
    },
    /// A key left this instance's L1 because it changed.
    Invalidated {
        /// The key.
        key: String,
        /// Who said it changed.
        origin: InvalidationOrigin,
    },
    /// This instance's L1 was emptied.
    Cleared {
        /// Why.
        reason: ClearReason,
    },
    /// Redis became reachable (`Up`) or stopped being (`Down`).
    L2StateChanged {
        /// The new state.
        state: L2State,
    },
    /// The bus subscribed and caught up (`Subscribed`), or lost its
    /// connection (`Connecting`).
    BusStateChanged {
        /// The new state.
        state: BusState,
    },
    /// A read was answered with a fail-safe fallback.
    StaleAnswer {
        /// The key read.
        key: String,
        /// Why the fallback was served.
        reason: StaleReason,
    },
    /// Write-behind: a batch of changes reached the store.
    WriteBehindFlushed {
        /// Changes acknowledged (queued entries, before coalescing).
        changes: usize,
    },
    /// Write-behind: the store was unavailable; the batch is retried.
    WriteBehindFailed {
        /// Changes in the batch.
        changes: usize,
    },
    /// Write-behind: the store rejected a change; it went to the dead letters.
    WriteBehindDeadLettered {
        /// The change's key.
        key: String,
    },
    /// This listener fell behind and missed this many events.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// Where an invalidation applied to L1 came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidationOrigin {
    /// This instance wrote or invalidated the key.
    Local,
    /// Another instance, through the bus.
    Bus,
    /// The bus's change log, replayed after a gap.
    Replay,
    /// Redis client tracking: someone wrote the key in Redis.
    Tracking,
}

/// Why L1 was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClearReason {
    /// [`clear`](crate::TieredCache::clear) or
    /// [`clear_local`](crate::TieredCache::clear_local) on this instance.
    Requested,
    /// Another instance cleared the cache.
    RemoteClear,
    /// The bus subscribed for the first time: what L1 held was loaded
    /// before this instance listened.
    FirstSubscription,
    /// The change log was trimmed past this instance's position.
    LogTruncated,
    /// The change log was lost (Redis restarted or was flushed).
    LogLost,
    /// Redis client tracking reported `FLUSHDB`/`FLUSHALL`.
    RedisFlush,
    /// The bus named a key that does not parse as a key of this cache.
    UnknownKey,
}

/// Why a read got a fail-safe fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StaleReason {
    /// The loader failed (or hit the hard timeout).
    LoaderError,
    /// The loader was slower than the soft timeout.
    SoftTimeout,
    /// The loader failed recently and is not retried yet.
    Throttled,
}

/// The sending side, shared by every part of one cache.
#[derive(Debug, Clone)]
pub(crate) struct Events {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    sender: broadcast::Sender<CacheEvent>,
    listeners: AtomicUsize,
}

impl Events {
    pub(crate) fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                sender: broadcast::Sender::new(EVENT_CAPACITY),
                listeners: AtomicUsize::new(0),
            }),
        }
    }

    /// Sends the event `make` builds, if anyone listens.
    #[inline]
    pub(crate) fn emit(&self, make: impl FnOnce() -> CacheEvent) {
        if self.shared.listeners.load(Ordering::Relaxed) > 0 {
            // Fails only when every listener left meanwhile.
            let _ = self.shared.sender.send(make());
        }
    }

    pub(crate) fn subscribe(&self) -> CacheEvents {
        self.shared.listeners.fetch_add(1, Ordering::Relaxed);
        CacheEvents {
            receiver: self.shared.sender.subscribe(),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A subscription to a cache's [`CacheEvent`]s, from
/// [`TieredCache::subscribe`](crate::TieredCache::subscribe). Events
/// emitted before it was taken are not seen; dropping it unsubscribes.
#[derive(Debug)]
pub struct CacheEvents {
    receiver: broadcast::Receiver<CacheEvent>,
    shared: Arc<Shared>,
}

impl CacheEvents {
    /// The next event; `None` once the cache (every handle and task of it)
    /// is gone.
    pub async fn recv(&mut self) -> Option<CacheEvent> {
        match self.receiver.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(CacheEvent::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<CacheEvent> {
        match self.receiver.try_recv() {
            Ok(event) => Some(event),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                Some(CacheEvent::Lagged { missed })
            }
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                None
            }
        }
    }
}

impl Drop for CacheEvents {
    fn drop(&mut self) {
        self.shared.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_built_only_for_listeners() {
        let events = Events::new();
        let mut built = 0;
        events.emit(|| {
            built += 1;
            CacheEvent::Cleared {
                reason: ClearReason::Requested,
            }
        });
        assert_eq!(built, 0, "nobody listens: nothing built");
        let mut listener = events.subscribe();
        events.emit(|| {
            built += 1;
            CacheEvent::Cleared {
                reason: ClearReason::Requested,
            }
        });
        assert_eq!(built, 1);
        assert_eq!(
            listener.try_recv(),
            Some(CacheEvent::Cleared {
                reason: ClearReason::Requested
            })
        );
        assert_eq!(listener.try_recv(), None);
        drop(listener);
        events.emit(|| unreachable!("the listener left"));
    }

    #[test]
    fn a_slow_listener_is_told_what_it_missed() {
        let events = Events::new();
        let mut listener = events.subscribe();
        for n in 0..EVENT_CAPACITY + 5 {
            events.emit(|| CacheEvent::Evicted { key: n.to_string() });
        }
        assert_eq!(listener.try_recv(), Some(CacheEvent::Lagged { missed: 5 }));
        assert_eq!(
            listener.try_recv(),
            Some(CacheEvent::Evicted {
                key: "5".to_owned()
            })
        );
    }
}
