//! Values to their stored form: encoding and sealing (compression) on the
//! way into Redis, weighed for L1; large values on the blocking pool (the
//! way back is `decode`).
//!
//! Cache-level failures are absorbed here: a value that cannot be encoded
//! is kept in L1 only.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CacheKey, Inner};
use crate::codec::{self, Codec, CodecError};

/// Per-entry weight on top of the value: what L1's own structures take.
#[expect(clippy::cast_possible_truncation, reason = "a small constant (84)")]
pub(super) const ENTRY_OVERHEAD: usize = crate::local::SLOT_BYTES as usize;
/// A value's L1 weight: what its codec says it takes in memory, plus L1's
/// own cost per entry.
pub(super) fn entry_weight<V: 'static>(
    codec: &dyn Codec<V>,
    value: &V,
    encoded_len: usize,
) -> usize {
    ENTRY_OVERHEAD + codec.weigh(value, encoded_len)
}

/// Encoding, compression and decoding above this size run on the blocking
/// pool, so a huge value cannot stall a runtime worker.
pub(super) const BLOCKING_FROM: usize = 64 * 1024;

/// The stored form of a value, ready for Redis.
pub(super) enum Encoded {
    /// Sealed bytes (before any version prefix).
    Stored(#[cfg_attr(not(feature = "redis"), expect(dead_code))] Vec<u8>),
    /// Not for Redis: no Redis configured, or the value could not be
    /// encoded or sealed (it stays in L1 only).
    L1Only,
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The stored form of a value (or negative entry) and its L1 weight.
    pub(super) async fn encode(&self, value: Option<&Arc<V>>) -> (Encoded, usize) {
        let Some(value) = value else {
            return (Encoded::Stored(Vec::new()), ENTRY_OVERHEAD);
        };
        let encoded = match self.codec.encode(value) {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::warn!(%error, "value could not be encoded; cached in L1 only");
                return (Encoded::L1Only, ENTRY_OVERHEAD + std::mem::size_of::<V>());
            }
        };
        let weight = entry_weight(self.codec.as_ref(), value, encoded.len());
        if !self.has_l2() {
            return (Encoded::L1Only, weight);
        }
        let threshold = self.settings.compression_threshold;
        let sealed = if encoded.len() >= BLOCKING_FROM && threshold.is_some() {
            tokio::task::spawn_blocking(move || codec::seal(encoded, threshold))
                .await
                .unwrap_or_else(|_| Err(CodecError::new("compression task failed")))
        } else {
            codec::seal(encoded, threshold)
        };
        match sealed {
            Ok(sealed) => (Encoded::Stored(sealed), weight),
            Err(error) => {
                tracing::warn!(%error, "value could not be sealed; cached in L1 only");
                (Encoded::L1Only, weight)
            }
        }
    }
}
