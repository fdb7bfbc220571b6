//! Cross-instance stampede protection (opt-in, [`stampede_lease`](crate::TieredCacheBuilder::stampede_lease)):
//! when several instances miss the same key at once, one loads it and the
//! others wait for its value to appear in Redis instead of each running
//! the loader.
//!
//! Single-flight already makes one load per key per instance; the lease
//! extends that across instances with a short per-key lock in Redis,
//! `SET <lease key> <token> NX PX <lease>`. The instance that takes it
//! loads (and fills Redis, as every load does) and gives it back; the
//! others poll Redis for the key until it appears, or until the lease is
//! free again (its holder failed, died or took longer than the lease),
//! and then take it and load themselves. Nothing depends on the lease for correctness: a holder that
//! dies or is slow only costs the waiters the lease's length, and fills are
//! version-guarded, so a second load cannot put an older value over a newer
//! one. The lease keys, `{key_prefix}{namespace}#lease:{key}`, sit outside the
//! cache's keyspace (client tracking and clears leave them alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::decode::Entry;
use super::{CacheKey, Inner};
use crate::remote::{Read, RemoteCache};

/// How often a waiter looks for the holder's value.
const POLL: Duration = Duration::from_millis(10);

/// How a miss went once the lease was asked for.
pub(super) enum Leased<V> {
    /// This instance holds the lease: load, then [`Inner::release_lease`].
    Held(String),
    /// Another instance loaded it meanwhile.
    Filled(Entry<V>),
    /// Load without a lease: it ran out, or Redis could not tell.
    Load,
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn lease_key(&self, key: &K) -> String {
        let base = self
            .settings
            .key_prefix
            .strip_suffix(':')
            .unwrap_or(&self.settings.key_prefix);
        format!("{base}#lease:{key}")
    }

    /// Takes the lease on `key`, or waits for the holder's value to reach
    /// Redis, taking the lease over if the holder gives it back or lets it
    /// expire first.
    pub(super) async fn lease(
        self: &Arc<Self>,
        l2: &RemoteCache,
        key: &K,
        lease: Duration,
    ) -> Leased<V> {
        let token = format!("{:016x}", rand::random::<u64>());
        let lease_key = self.lease_key(key);
        let redis_key = self.redis_key(key);
        // A holder's lease lasts `lease` at most; past twice that, Redis is
        // not behaving as the lease assumes: load.
        let until = Instant::now() + lease * 2;
        loop {
            // Taken by us at first try, or once the holder gave it back
            // (its load failed) or let it expire (it died, or is slow).
            match l2.set_if_absent(&lease_key, &token, lease).await {
                Some(true) => return Leased::Held(token),
                Some(false) => {}
                None => return Leased::Load,
            }
            if Instant::now() >= until {
                return Leased::Load;
            }
            tokio::time::sleep(POLL).await;
            match l2.get(redis_key.clone()).await {
                Read::Found(stored) => {
                    if let Some(entry) = self.decode(stored).await {
                        return Leased::Filled(entry);
                    }
                }
                Read::Absent => {}
                Read::Unavailable => return Leased::Load,
            }
        }
    }

    /// Gives the lease back (if still ours), so that waiters whose holder
    /// failed to load stop waiting at once.
    pub(super) async fn release_lease(&self, l2: &RemoteCache, key: &K, token: &str) {
        l2.delete_if_equal(&self.lease_key(key), token).await;
    }
}
