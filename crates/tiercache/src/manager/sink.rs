//! The receiving side of the bus for one cache ([`L1Handle`]): turns the
//! keys the bus and client tracking report back into cache keys and drops
//! them from L1, fenced like local invalidations.
//!
//! Client tracking reports every change of a key under the cache's prefix,
//! whoever made it. In a versioned cache each report comes with what Redis
//! holds now, so the sink can tell:
//!
//! - this instance's own write coming back (L1 holds that version, or a
//!   write of it is on its way into L1: `own_writes.rs`; or Redis holds a
//!   tombstone L1's version is not older than): L1 is left alone;
//! - a change while L1 holds another version: dropped and fenced;
//! - a change while L1 holds nothing: most often another instance's fill
//!   (which changes no version), so nothing is fenced, or every fill of
//!   the key running here would be thrown away. A fill that read the old
//!   value just before the change can still land afterwards; so such keys
//!   are checked again once any such fill is over ([`L1Sink::recheck`]),
//!   and dropped then if L1 holds an older version than Redis.
//!
//! In an unversioned cache every report drops and fences the key.

use std::sync::Arc;

use super::decode::{Decoded, decode_with};
use super::{CacheKey, LocalLevel, OwnWrites, Shared};
use crate::builder::Versioning;
use crate::bus::L1Sink;
use crate::codec::{self, Codec};
use crate::events::{ClearReason, InvalidationOrigin};

/// What the bus may do to one cache's L1.
pub(crate) struct L1Handle<K, V> {
    pub(crate) local: LocalLevel<K, V>,
    /// For a versioned cache: how to read the version of a stored value.
    pub(crate) versions: Option<(Arc<dyn Codec<V>>, Versioning<V>)>,
    pub(crate) own_writes: Arc<OwnWrites<K>>,
}

/// What a tracked change means for L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// This instance's own write: leave L1 alone.
    Own,
    /// L1 holds nothing: check again later (see the module docs).
    Later,
    /// Drop the key.
    Drop,
}

impl<K, V> L1Handle<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// The version of a value (`-1` for a negative entry).
    fn version(&self, versioning: &Versioning<V>, value: &Shared<V>) -> i64 {
        match value {
            Some(value) => i64::try_from((versioning.version_of)(value)).unwrap_or(i64::MAX),
            None => -1,
        }
    }

    /// The oldest version L1 may hold given what Redis holds now, and
    /// whether Redis holds exactly that version (a value or a negative
    /// entry) or only refuses older ones (a tombstone); `None` when unknown
    /// (not versioned, not read, absent, undecodable).
    fn floor(&self, stored: Option<&[u8]>) -> Option<(i64, Exact)> {
        let (codec, versioning) = self.versions.as_ref()?;
        let stored = stored?;
        if let Some(version) = codec::tombstone_version(stored) {
            return Some((i64::try_from(version).unwrap_or(i64::MAX), Exact::No));
        }
        match decode_with(codec.as_ref(), stored) {
            Ok(Decoded::Entry(now)) => Some((self.version(versioning, &now.value), Exact::Yes)),
            _ => None,
        }
    }

    fn verdict(&self, key: &K, stored: Option<&[u8]>) -> Verdict {
        let Some((_, versioning)) = &self.versions else {
            return Verdict::Drop;
        };
        let held = self.local.l1.peek(key);
        if held.is_none() && !self.own_writes.writing(key) {
            // Nothing to drop, nothing of ours on its way: only a fill
            // running now could land something older.
            return Verdict::Later;
        }
        let Some((floor, exact)) = self.floor(stored) else {
            return Verdict::Drop;
        };
        match held {
            Some(held) => {
                let held = self.version(versioning, &held);
                let current = match exact {
                    Exact::Yes => held == floor,
                    Exact::No => held >= floor,
                };
                if current { Verdict::Own } else { Verdict::Drop }
            }
            None if exact == Exact::Yes && self.own_writes.pending(key, floor) => Verdict::Own,
            None => Verdict::Later,
        }
    }
}

/// Whether Redis holds exactly the floor version or only refuses older ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exact {
    Yes,
    No,
}

impl<K, V> L1Sink for L1Handle<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    fn remove(&self, keys: &[String], origin: InvalidationOrigin) {
        for key in keys {
            match key.parse::<K>() {
                Ok(key) => self.local.drop_key(&key, origin),
                Err(_) => {
                    // We cannot tell which entry it names; drop them all.
                    tracing::warn!(%key, "bus key does not parse as a key of this cache; L1 cleared");
                    self.local.clear(ClearReason::UnknownKey);
                    return;
                }
            }
        }
    }

    fn wants_stored(&self, name: &str) -> bool {
        self.versions.is_some()
            && name.parse::<K>().is_ok_and(|key| {
                self.local.l1.peek(&key).is_some() || self.own_writes.writing(&key)
            })
    }

    fn changed(&self, changes: &[(String, Option<Vec<u8>>)]) -> Vec<String> {
        let mut later = Vec::new();
        for (name, stored) in changes {
            let Ok(key) = name.parse::<K>() else {
                continue;
            };
            match self.verdict(&key, stored.as_deref()) {
                Verdict::Own => {}
                Verdict::Drop => self.local.drop_key(&key, InvalidationOrigin::Tracking),
                Verdict::Later => later.push(name.clone()),
            }
        }
        later
    }

    fn holds(&self, name: &str) -> bool {
        name.parse::<K>()
            .is_ok_and(|key| self.local.l1.peek(&key).is_some())
    }

    fn recheck(&self, changes: &[(String, Vec<u8>)]) {
        let Some((_, versioning)) = &self.versions else {
            return;
        };
        for (name, stored) in changes {
            let (Ok(key), Some((floor, _))) = (name.parse::<K>(), self.floor(Some(stored))) else {
                continue;
            };
            if let Some(held) = self.local.l1.peek(&key)
                && self.version(versioning, &held) < floor
            {
                self.local.l1.remove(&key);
            }
        }
    }

    fn tags(&self, tags: &[(String, u64)]) {
        for (tag, generation) in tags {
            self.local.tags.raise(tag, *generation);
        }
    }

    fn clear(&self, reason: ClearReason) {
        self.local.clear(reason);
    }
}
