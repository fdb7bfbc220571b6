//! Stored values back to values: opening (versions, tombstones,
//! decompression) and decoding what Redis returned, weighed for L1; large
//! values on the blocking pool.
//!
//! Cache-level failures are absorbed here: a value that cannot be decoded
//! is a miss.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::counters::Counter;
use super::encode::{BLOCKING_FROM, ENTRY_OVERHEAD, entry_weight};
use super::{CacheKey, Inner, Shared};
use crate::codec::{self, Codec, CodecError, Opened};

/// A value (or negative entry) read from Redis, with its L1 weight.
pub(crate) struct Entry<V> {
    pub(crate) value: Shared<V>,
    pub(crate) weight: usize,
}

/// What a stored value decodes to.
pub(crate) enum Decoded<V> {
    /// A value or a negative entry: an answer.
    Entry(Entry<V>),
    /// A tombstone: refuses older versions, answers nothing (a miss).
    Tombstone,
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Decodes a stored value and weighs it; `None` (a miss) for a
    /// tombstone, or a value that is foreign or corrupt.
    pub(super) async fn decode(&self, stored: Vec<u8>) -> Option<Entry<V>> {
        let decoded = if stored.len() >= BLOCKING_FROM {
            let codec = Arc::clone(&self.codec);
            tokio::task::spawn_blocking(move || decode_with(codec.as_ref(), &stored))
                .await
                .unwrap_or_else(|_| Err(CodecError::new("decoding task failed")))
        } else {
            decode_with(self.codec.as_ref(), &stored)
        };
        match decoded {
            Ok(Decoded::Entry(entry)) => Some(entry),
            Ok(Decoded::Tombstone) => None,
            Err(error) => {
                self.counters.incr(Counter::DecodeErrors);
                tracing::debug!(%error, "undecodable L2 value treated as a miss");
                None
            }
        }
    }
}

/// Opens and decodes a stored value with `codec`.
pub(crate) fn decode_with<V: 'static>(
    codec: &dyn Codec<V>,
    stored: &[u8],
) -> Result<Decoded<V>, CodecError> {
    Ok(match codec::open(stored)? {
        Opened::Absent | Opened::Deleted => Decoded::Entry(Entry {
            value: None,
            weight: ENTRY_OVERHEAD,
        }),
        Opened::Tombstone => Decoded::Tombstone,
        Opened::Value(bytes) => {
            let value = codec.decode(&bytes)?;
            Decoded::Entry(Entry {
                weight: entry_weight(codec, &value, bytes.len()),
                value: Some(Arc::new(value)),
            })
        }
    })
}

#[cfg(test)]
#[cfg(feature = "postcard")]
mod tests {
    use super::*;
    use crate::codec::{JsonCodec, PostcardCodec};

    fn entry<V: 'static>(codec: &dyn Codec<V>, stored: &[u8]) -> Entry<V> {
        match decode_with(codec, stored).unwrap() {
            Decoded::Entry(entry) => entry,
            Decoded::Tombstone => panic!("a tombstone, not an entry"),
        }
    }

    #[test]
    fn negative_marker_decodes_as_absent_with_any_codec() {
        let json: &dyn Codec<String> = &JsonCodec;
        let postcard: &dyn Codec<String> = &PostcardCodec;
        assert_eq!(entry(json, b"").value, None);
        assert_eq!(entry(postcard, b"").value, None);
        assert!(matches!(
            decode_with(json, &codec::tombstone(3)).unwrap(),
            Decoded::Tombstone
        ));
    }

    #[test]
    fn decoded_values_are_weighed_by_their_encoded_size() {
        let codec: &dyn Codec<String> = &JsonCodec;
        let Entry { value, weight } = entry(codec, br#""hello""#);
        assert_eq!(value.as_deref().map(String::as_str), Some("hello"));
        assert_eq!(weight, ENTRY_OVERHEAD + 7);
    }
}
